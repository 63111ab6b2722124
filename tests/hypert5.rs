//! HyperT5: the context-encoder host path and the `hypert5` plugin on a tiny BERT (shapes,
//! gradients, hyper-init, caching, bad input) and on MiniLM with a real CrossFit task.
use burn::tensor::{activation, Tensor};
use peft_host::{
    bridge::{value::ft, HostGraph, Value},
    config::RunConfig,
    data::{self, Example, Task, TaskKind},
    model::Model,
};
use peft_registry::Registry;
use peft_tests::*;
use serde_json::json;

fn float(v: &Value<B>) -> burn::tensor::ops::FloatTensor<B> {
    match v {
        Value::Float(f) => f.clone(),
        Value::Int(_) => panic!("expected a float context tensor"),
    }
}

/// Tiny BERT (2 layers, hidden 32, 4 heads) with HyperT5 generating what `generate` asks for.
fn tiny(
    generate: serde_json::Value,
    modules: serde_json::Value,
    k: usize,
) -> anyhow::Result<(RunConfig, Model<B>)> {
    let mut cfg = tiny_bert_config(modules);
    cfg["backbone"]["config"]["hidden_dropout_prob"] = 0.0.into();
    cfg["backbone"]["config"]["attention_probs_dropout_prob"] = 0.0.into();
    cfg["context_encoder"] = json!({ "plugin": "hypert5", "config": {
        "generate": generate, "prefix_length": 3, "lora_rank": 2, "head_hidden": 16,
        "k": k, "max_length": 24, "out_init_std": 0.05
    }});
    let cfg: RunConfig = serde_json::from_value(cfg)?;
    let registry = Registry::with_static_plugins()?;
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0)?;
    Ok((cfg, model))
}

fn both() -> (RunConfig, Model<B>) {
    tiny(
        json!(["prefix", "lora"]),
        json!([
            { "plugin": "prefix", "config": { "prefix_length": 3, "from_context": "hypert5.prefix" } },
            { "plugin": "lora", "config": { "rank": 2, "from_context": "hypert5.lora" } }
        ]),
        4,
    )
    .unwrap()
}

fn toy_task(n: usize) -> Task {
    let words = [
        "good", "bad", "fine", "awful", "great", "poor", "nice", "sad",
    ];
    let ex = |i: usize| Example {
        text_a: format!(
            "the film was {} and {}",
            words[i % 8],
            words[(i * 3 + 1) % 8]
        ),
        label: i % 2,
        ..Default::default()
    };
    Task {
        name: "toy".into(),
        kind: TaskKind::Classification,
        labels: vec!["negative".into(), "positive".into()],
        train: (0..n).map(ex).collect(),
        eval: (n..n + 6).map(ex).collect(),
        eval_split: "dev".into(),
        metric: "accuracy".into(),
    }
}

/// One training pass's generation on two examples of the toy task: the graph holding what the
/// encoder put in the pass context.
fn generate_once(model: &Model<B>) -> HostGraph<'_, B> {
    let task = toy_task(8);
    let graph = HostGraph::new(&model.params, true);
    let batch: Vec<&Example> = task.train.iter().take(2).collect();
    let enc = model.context_encoder.as_ref().unwrap();
    enc.before_train_pass(model, &graph, &task, &task, &batch)
        .unwrap();
    graph
}

#[test]
fn generates_prefix_and_lora_of_the_documented_shapes() {
    let (_, model) = both();
    let graph = generate_once(&model);
    let ctx = graph.context.borrow();
    let shape = |n: &str| ft::<B, 4>(float(&ctx[n])).dims();
    // [L, 2, P, heads * head_dim]; A [L, 2, r, H], B [L, 2, H, r].
    assert_eq!(shape("hypert5.prefix"), [2, 2, 3, 32]);
    assert_eq!(shape("hypert5.lora_A"), [2, 2, 2, 32]);
    assert_eq!(shape("hypert5.lora_B"), [2, 2, 32, 2]);
    // Hypermodel: embedding LayerNorm + 2 copied layers + queries + pooling + 2 heads.
    let counts = model.params.borrow().counts_by_group();
    let layer = 4 * (32 * 32 + 32) + 2 * 32 + (64 * 32 + 64) + (32 * 64 + 32) + 2 * 32;
    let pool = 4 * (32 * 32 + 32) + 2 * 32;
    let heads = (16 * 32 + 16)
        + (2 * 3 * 32 * 16 + 2 * 3 * 32)
        + (16 * 32 + 16)
        + (4 * 2 * 32 * 16 + 4 * 2 * 32);
    assert_eq!(
        counts["hyper"].0,
        2 * 32 + 2 * layer + 4 * 32 + pool + heads
    );
    // The copy starts equal to the backbone.
    let store = model.params.borrow();
    let a = vals(
        store
            .tensor::<2>("hypert5.encoder.layer.1.intermediate.dense.weight")
            .unwrap(),
    );
    let b = vals(
        store
            .tensor::<2>("encoder.layer.1.intermediate.dense.weight")
            .unwrap(),
    );
    assert_eq!(a, b);
}

/// `lora_zero_b`: the generated B starts at exactly zero (ΔW = 0, the backbone unchanged) and A
/// at the heads' small normal values: only B's rows of the head's output layer are zeroed.
#[test]
fn lora_zero_b_starts_the_generated_delta_at_zero() {
    let mut cfg = tiny_bert_config(json!([
        { "plugin": "lora", "config": { "rank": 2, "from_context": "hypert5.lora" } }
    ]));
    cfg["context_encoder"] = json!({ "plugin": "hypert5", "config": {
        "generate": ["lora"], "lora_rank": 2, "head_hidden": 16, "k": 4, "max_length": 24,
        "out_init_std": 0.05, "lora_zero_b": true
    }});
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    let graph = generate_once(&model);
    let ctx = graph.context.borrow();
    let a = vals(ft::<B, 4>(float(&ctx["hypert5.lora_A"])));
    let b = vals(ft::<B, 4>(float(&ctx["hypert5.lora_B"])));
    assert_eq!(b.len(), 2 * 2 * 32 * 2);
    assert!(b.iter().all(|&x| x == 0.0), "B not zero");
    assert!(
        a.iter().filter(|&&x| x != 0.0).count() > a.len() / 2,
        "A zero"
    );
    // The stored head: B's rows zero, A's drawn (per layer output: q's A, q's B, v's A, v's B).
    let store = model.params.borrow();
    let w = vals(
        store
            .tensor::<2>("hypert5.head.lora.dense2.weight")
            .unwrap(),
    );
    let (hid, block, a_len) = (16, 2 * (2 * 32), 2 * 32);
    for (o, row) in w.chunks(hid).enumerate() {
        let zero = row.iter().all(|&x| x == 0.0);
        assert_eq!(zero, o % block >= a_len, "row {o}");
    }
}

#[test]
fn downstream_loss_reaches_every_hypermodel_parameter() {
    let (_, model) = both();
    model.set_trainable(&["hyper".into()]).unwrap();
    let task = toy_task(8);
    let graph = HostGraph::new(&model.params, true);
    let batch: Vec<&Example> = task.train.iter().take(3).collect();
    peft_host::context::before_train_pass(&model, &graph, &task, &task, &batch).unwrap();
    let texts: Vec<_> = batch.iter().map(|e| (e.text_a.clone(), None)).collect();
    let tb = model.tokenize(&texts, 24, &Default::default()).unwrap();
    let h = model.pooled(&graph, &tb).unwrap();
    let loss = (h.clone() * h).sum();
    let grads = loss.backward();
    let store = model.params.borrow();
    let mut n = 0;
    for p in store.trainable() {
        assert_eq!(p.group, "hyper");
        let g = match p.shape.len() {
            1 => vals(store.tensor::<1>(&p.name).unwrap().grad(&grads).unwrap()),
            _ => vals(store.tensor::<2>(&p.name).unwrap().grad(&grads).unwrap()),
        };
        assert!(
            g.iter().any(|&x| x != 0.0),
            "gradient of {} is zero",
            p.name
        );
        assert!(
            g.iter().all(|x| x.is_finite()),
            "gradient of {} is not finite",
            p.name
        );
        n += 1;
    }
    assert!(n > 40, "only {n} hypermodel parameters");
}

/// The prefix generator head through the op API against the same head written in burn, fed
/// the same (detached) learned-query summary.
#[test]
fn generator_head_gradients_match_native_burn() {
    let (_, model) = tiny(
        json!(["prefix"]),
        json!([{ "plugin": "prefix", "config": { "prefix_length": 3, "from_context": "hypert5.prefix" } }]),
        4,
    )
    .unwrap();
    model.set_trainable(&["hyper".into()]).unwrap();
    let task = toy_task(8);
    let names = [
        "dense1.weight",
        "dense1.bias",
        "dense2.weight",
        "dense2.bias",
    ]
    .map(|n| format!("hypert5.head.prefix.{n}"));
    let r: Tensor<B, 4> = Tensor::from_data(
        burn::tensor::TensorData::new(
            (0..2 * 2 * 3 * 32)
                .map(|i| ((i * 29 % 31) as f32 - 15.0) / 10.0)
                .collect::<Vec<_>>(),
            [2, 2, 3, 32],
        ),
        &Default::default(),
    );
    let grads_of = |grads: &<B as burn::tensor::backend::AutodiffBackend>::Gradients| {
        param_grads(&model, &names, grads)
    };
    // Through the plugin.
    let graph = HostGraph::new(&model.params, true);
    peft_host::context::before_train_pass(&model, &graph, &task, &task, &[]).unwrap();
    let (gen, summary) = {
        let ctx = graph.context.borrow();
        (
            ft::<B, 4>(float(&ctx["hypert5.prefix"])),
            ft::<B, 2>(float(&ctx["hypert5.summary"])),
        )
    };
    let api = grads_of(&(gen.clone() * r.clone()).sum().backward());
    // Natively, from the detached summary.
    let store = model.params.borrow();
    let p2 = |n: &str| store.tensor::<2>(n).unwrap();
    let p1 = |n: &str| store.tensor::<1>(n).unwrap().unsqueeze::<2>();
    let z = summary.detach();
    let hid = activation::gelu(z.matmul(p2(&names[0]).transpose()) + p1(&names[1]));
    let native_gen = (hid.matmul(p2(&names[2]).transpose()) + p1(&names[3])).reshape([2, 2, 3, 32]);
    let d = vals(gen.detach() - native_gen.clone().detach())
        .into_iter()
        .fold(0f32, |m, x| m.max(x.abs()));
    assert!(d < 1e-5, "generated prefixes differ by {d}");
    drop(store);
    let native = grads_of(&(native_gen * r).sum().backward());
    for ((n, a), b) in names.iter().zip(&api).zip(&native) {
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let scale = b.iter().map(|x| x.abs()).fold(0f32, f32::max).max(1.0);
        assert!(d < 1e-5 * scale, "gradient of {n} differs by {d}");
        assert!(a.iter().any(|&x| x != 0.0), "gradient of {n} is zero");
    }
}

#[test]
fn evaluation_generates_once_per_task_and_hyper_init_lands_values() {
    let (_, model) = tiny(
        json!(["prefix"]),
        json!([
            { "name": "gen", "plugin": "prefix", "config": { "prefix_length": 3, "from_context": "hypert5.prefix" } },
            { "name": "plain", "plugin": "prefix", "config": { "prefix_length": 3 } }
        ]),
        4,
    )
    .unwrap();
    let task = toy_task(8);
    let enc = model.context_encoder.as_ref().unwrap();
    let a = enc.generated(&model, &task).unwrap();
    let b = enc.generated(&model, &task).unwrap();
    let prefix = |v: &[(String, Value<B>)]| {
        vals(ft::<B, 4>(float(
            &v.iter().find(|(n, _)| n == "hypert5.prefix").unwrap().1,
        )))
    };
    assert_eq!(prefix(&a), prefix(&b));
    // Hyper-init: generated values into the plain module's own leaves.
    enc.hyper_init(&model, &task, "plain", "hypert5.prefix")
        .unwrap();
    let gen = prefix(&a);
    let store = model.params.borrow();
    for l in 0..2 {
        for (j, kv) in ["prefix_key", "prefix_value"].iter().enumerate() {
            let name = format!("plain.encoder.layer.{l}.attention.self.kv.{kv}");
            let got = vals(store.tensor::<2>(&name).unwrap());
            let off = (l * 2 + j) * 3 * 32;
            assert_eq!(got, gen[off..off + 3 * 32].to_vec(), "{name}");
        }
    }
}

#[test]
fn bad_input_gets_clear_errors() {
    // An output no module reads.
    let err = tiny(json!(["prefix", "lora"]), json!([{ "plugin": "prefix", "config": { "prefix_length": 3, "from_context": "hypert5.prefix" } }]), 4)
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("`hypert5.lora_A`, which no module reads"),
        "{err:#}"
    );
    // A module reading what is not generated.
    let err = tiny(json!(["prefix"]), json!([
        { "plugin": "prefix", "config": { "prefix_length": 3, "from_context": "hypert5.prefix" } },
        { "plugin": "lora", "config": { "rank": 2, "from_context": "hypert5.lora" } }
    ]), 4).err().unwrap();
    assert!(
        format!("{err:#}").contains("reads context `hypert5.lora_A`"),
        "{err:#}"
    );
    // A prefix of the wrong length.
    let (_, model) = tiny(json!(["prefix"]), json!([{ "plugin": "prefix", "config": { "prefix_length": 5, "from_context": "hypert5.prefix" } }]), 4).unwrap();
    let task = toy_task(8);
    let graph = HostGraph::new(&model.params, true);
    peft_host::context::before_train_pass(&model, &graph, &task, &task, &[]).unwrap();
    let tb = model
        .tokenize(&[("x".into(), None)], 8, &Default::default())
        .unwrap();
    let err = model.pooled(&graph, &tb).unwrap_err();
    assert!(err.to_string().contains("prefix_length 5"), "{err}");
    // Fewer examples than k.
    let (_, model) = both();
    let few = toy_task(3);
    let graph = HostGraph::new(&model.params, true);
    let err = peft_host::context::before_train_pass(&model, &graph, &few, &few, &[]).unwrap_err();
    assert!(
        format!("{err:#}")
            .contains("has 3 training examples, but the context encoder `hypert5` reads k = 4"),
        "{err:#}"
    );
    // Long examples are truncated to max_length (24), not refused.
    let mut long = toy_task(8);
    long.train[0].text_a = "word ".repeat(400);
    let graph = HostGraph::new(&model.params, true);
    let enc = model.context_encoder.as_ref().unwrap();
    let shots: Vec<&Example> = long.train.iter().take(4).collect();
    enc.encode(&model, &graph, &long, &shots).unwrap();
    // On T5 one generated LoRA tensor covers one attention kind: a single `lora` module over
    // both stacks would read each layer's slot twice (tests/hypert5_t5_lora.rs has the layout).
    let cfg = json!({
        "backbone": { "path": fixture("t5-v1_1-tiny").to_string_lossy() },
        "modules": [{ "plugin": "lora", "config": { "from_context": "hypert5.lora" } }],
        "context_encoder": { "plugin": "hypert5", "config": { "generate": ["lora"] } }
    });
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let e = Model::<B>::build(&cfg, &registry, &Default::default(), 0)
        .err()
        .unwrap();
    assert!(
        format!("{e:#}").contains("would read the same generated slot"),
        "{e:#}"
    );
}

/// Trains only `hyper` (HyperT5) on a toy task through the ordinary trainer; the loss falls.
#[test]
fn hyper_training_on_a_toy_task_lowers_the_loss() {
    let (mut cfg, model) = both();
    cfg.training = serde_json::from_value(json!({
        "steps": 40, "batch_size": 4, "learning_rate": 2e-2, "max_length": 24, "train_groups": ["hyper", "head"]
    }))
    .unwrap();
    let task = toy_task(8);
    let head = peft_host::heads::Head::resolve(&Default::default(), &task, "head").unwrap();
    head.create(&mut model.params.borrow_mut(), 32).unwrap();
    let runs = [peft_host::train::TaskRun { task: &task, head }];
    let r = train_runs(&model, &runs, &cfg);
    let mean = |v: &[(usize, f64)]| v.iter().map(|(_, l)| l).sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&r.losses[..5]), mean(&r.losses[r.losses.len() - 5..]));
    assert!(last < 0.8 * first, "loss should fall: {first} -> {last}");
    assert!(r.last("toy").unwrap().score.is_finite());
}

/// `encoder_group` puts the copied encoder in its own group and `group_learning_rates` gives
/// each group its own peak rate: at rate 0 the copy stays equal to the backbone while the
/// pooling block and heads (`hyper`) train; frozen by leaving it out of `train_groups`, too.
#[test]
fn encoder_group_with_its_own_learning_rate() {
    let mut cfg = tiny_bert_config(json!([
        { "plugin": "lora", "config": { "rank": 2, "from_context": "hypert5.lora" } }
    ]));
    cfg["context_encoder"] = json!({ "plugin": "hypert5", "config": {
        "generate": ["lora"], "lora_rank": 2, "head_hidden": 16, "k": 4, "max_length": 24,
        "out_init_std": 0.05, "encoder_group": "hyper-encoder"
    }});
    let registry = Registry::with_static_plugins().unwrap();
    let copy = "hypert5.encoder.layer.1.intermediate.dense.weight";
    let head = "hypert5.head.lora.dense2.weight";
    for training in [
        json!({ "train_groups": ["hyper", "hyper-encoder", "head"],
                "group_learning_rates": { "hyper-encoder": 0.0 } }),
        json!({ "train_groups": ["hyper", "head"] }),
    ] {
        let mut c = cfg.clone();
        c["training"] = training;
        c["training"]["steps"] = 3.into();
        c["training"]["batch_size"] = 4.into();
        c["training"]["learning_rate"] = 1e-2.into();
        c["training"]["max_length"] = 24.into();
        let c: RunConfig = serde_json::from_value(c).unwrap();
        let model = Model::<B>::build(&c, &registry, &Default::default(), 0).unwrap();
        let group = |n: &str| model.params.borrow().get(n).unwrap().group.clone();
        assert_eq!(group(copy), "hyper-encoder");
        assert_eq!(group(head), "hyper");
        let value = |n: &str| vals(model.params.borrow().tensor::<2>(n).unwrap());
        let (copy0, head0) = (value(copy), value(head));
        let task = toy_task(8);
        let h = peft_host::heads::Head::resolve(&Default::default(), &task, "head").unwrap();
        h.create(&mut model.params.borrow_mut(), 32).unwrap();
        train_runs(
            &model,
            &[peft_host::train::TaskRun {
                task: &task,
                head: h,
            }],
            &c,
        );
        assert_eq!(value(copy), copy0, "the copied encoder must not move");
        assert!(max_diff(&value(head), &head0) > 0.0, "the heads must train");
    }
}

/// MiniLM on a real CrossFit task (option scoring): HyperT5 with 2 copied layers, k = 8.
#[test]
fn minilm_hypert5_learns_a_crossfit_task() {
    require_minilm();
    let cfg = json!({
        "backbone": "all-MiniLM-L6-v2",
        "modules": [{ "plugin": "prefix", "config": { "prefix_length": 4, "from_context": "hypert5.prefix" } }],
        "context_encoder": { "plugin": "hypert5", "config": {
            "prefix_length": 4, "encoder_layers": 2, "k": 8, "max_length": 48, "head_hidden": 64
        }},
        "task": { "name": "emo", "head": "option_scoring" },
        "training": { "steps": 16, "batch_size": 4, "learning_rate": 1e-3, "max_length": 64,
                      "train_groups": ["hyper"], "eval_every": 0 }
    });
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    let task = data::load_task(&data::data_dir(None).unwrap(), "emo", 16, 16, 13, 3).unwrap();
    let head = peft_host::heads::Head::resolve(&cfg.task, &task, "head").unwrap();
    head.create(&mut model.params.borrow_mut(), 384).unwrap();
    let runs = [peft_host::train::TaskRun { task: &task, head }];
    let r = train_runs(&model, &runs, &cfg);
    let mean = |v: &[(usize, f64)]| v.iter().map(|(_, l)| l).sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&r.losses[..4]), mean(&r.losses[r.losses.len() - 4..]));
    eprintln!(
        "minilm hypert5: loss {first:.4} -> {last:.4}, {:.3} s/step, {} trainable",
        r.seconds_per_step, r.trainable_parameters
    );
    assert!(last < first, "loss should fall: {first} -> {last}");
}

/// Save and load the hypermodel; adapt a new task by generation alone and save the generated
/// LoRA in the format of a trained one (HF peft's), which loads back into a plain LoRA module.
#[test]
fn hypermodel_round_trip_and_adapting_a_task_saves_an_ordinary_module() {
    let modules = json!([
        { "name": "gen", "plugin": "lora", "config": { "rank": 2, "from_context": "hypert5.lora" } },
        { "name": "plain", "plugin": "lora", "config": { "rank": 2 } }
    ]);
    let (_, model) = tiny(json!(["lora"]), modules.clone(), 4).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Perturb the hypermodel so that a load is visible.
    {
        let mut store = model.params.borrow_mut();
        let name = "hypert5.head.lora.dense2.bias";
        let v = vals(store.tensor::<1>(name).unwrap())
            .iter()
            .map(|x| x + 0.25)
            .collect::<Vec<_>>();
        let t = peft_host::params::from_values::<B>(&[v.len()], v, &Default::default()).unwrap();
        store.assign(name, t).unwrap();
    }
    let n = peft_host::hypermodel::save(&model, &json!({}), dir.path()).unwrap();
    assert!(n > 10);
    let (_, fresh) = tiny(json!(["lora"]), modules, 4).unwrap();
    let task = toy_task(8);
    let enc = fresh.context_encoder.as_ref().unwrap();
    let before = enc.generated(&fresh, &task).unwrap();
    peft_host::hypermodel::load(&fresh, dir.path()).unwrap();
    let after = enc.generated(&fresh, &task).unwrap();
    let orig = model
        .context_encoder
        .as_ref()
        .unwrap()
        .generated(&model, &task)
        .unwrap();
    let a = |v: &[(String, Value<B>)]| vals(ft::<B, 4>(float(&v[0].1)));
    assert_eq!(
        a(&after),
        a(&orig),
        "loaded hypermodel generates what the saved one did"
    );
    assert_ne!(a(&before), a(&after), "the load changed nothing");
    // Adapt: generate into `plain`, save it like a trained LoRA, load into another model.
    enc.hyper_init(&fresh, &task, "plain", "hypert5.lora")
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    peft_host::adapters::save(&fresh, "plain", &json!({ "rank": 2 }), None, out.path()).unwrap();
    assert!(out.path().join("adapter_config.json").exists());
    let (_, other) = tiny(json!(["lora"]), json!([
        { "name": "gen", "plugin": "lora", "config": { "rank": 2, "from_context": "hypert5.lora" } },
        { "name": "plain", "plugin": "lora", "config": { "rank": 2 } }
    ]), 4).unwrap();
    peft_host::adapters::load(&other, "plain", out.path()).unwrap();
    let name = "plain.encoder.layer.1.attention.self.value.lora_B";
    let got = vals(other.params.borrow().tensor::<2>(name).unwrap());
    let want = vals(fresh.params.borrow().tensor::<2>(name).unwrap());
    assert_eq!(got, want);
    // The B of layer 1's value projection is generated slot [1, 1] of `hypert5.lora_B`.
    let gen = vals(ft::<B, 4>(float(
        &after.iter().find(|(n, _)| n == "hypert5.lora_B").unwrap().1,
    )));
    let off = (2 + 1) * 32 * 2;
    assert_eq!(want, gen[off..off + 64].to_vec());
}

/// Figures for the report (slow, run by hand): a smoke version of stage-2 multi-task
/// hyper-training of the shipped config (`tests/configs/e2e/hypert5-crossfit-stage2.json`) cut
/// to 3 tasks and a few steps, then adapting an unseen task by generation vs by 16-shot
/// prefix fine-tuning.
/// `cargo test -p peft-tests --test hypert5 -- --ignored stage2_smoke --nocapture`
#[test]
#[ignore]
fn stage2_smoke_and_adaptation_timing() {
    require_minilm();
    let steps: usize = std::env::var("HYPERT5_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let mut cfg = read_json(&root().join("tests/configs/e2e/hypert5-crossfit-stage2.json"));
    cfg["tasks"] = json!(cfg["tasks"].as_array().unwrap()[..3]);
    cfg["training"]["steps"] = steps.into();
    cfg["training"]["warmup_steps"] = 0.into();
    for t in cfg["tasks"].as_array_mut().unwrap() {
        t["eval_examples"] = 8.into();
    }
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    let data_dir = data::data_dir(None).unwrap();
    let tasks: Vec<Task> = cfg
        .task_specs()
        .iter()
        .map(|s| data::load(&data_dir, s, cfg.seed).unwrap())
        .collect();
    let mut runs = Vec::new();
    for (t, s) in tasks.iter().zip(cfg.task_specs()) {
        let head = peft_host::heads::Head::resolve(&s, t, "head").unwrap();
        head.create(&mut model.params.borrow_mut(), 384).unwrap();
        runs.push(peft_host::train::TaskRun { task: t, head });
    }
    let r = train_runs(&model, &runs, &cfg);
    let hyper = model.params.borrow().counts_by_group()["hyper"].0;
    eprintln!(
        "stage 2 smoke: {steps} steps over {:?}, losses {:?}",
        r.batches_per_task, r.losses
    );
    eprintln!(
        "hypermodel parameters: {hyper}; {:.2} s/step (batch 4, k 8)",
        r.seconds_per_step
    );
    let dir = tempfile::tempdir().unwrap();
    peft_host::hypermodel::save(&model, &json!({}), dir.path()).unwrap();
    peft_host::hypermodel::load(&model, dir.path()).unwrap();
    // Adapting an unseen task: one forward pass of the hypermodel over 16 shots.
    let unseen = data::load_task(&data_dir, "glue-rte", 16, 8, 13, 42).unwrap();
    let enc = model.context_encoder.as_ref().unwrap();
    let t0 = std::time::Instant::now();
    let gen = enc.generated(&model, &unseen);
    let generation = t0.elapsed().as_secs_f64();
    // k = 8 in this config; generation from all 16 shots with k = 16 below.
    gen.unwrap();
    // 16-shot prefix fine-tuning on the same task, from random init.
    let ft_steps = 5;
    let ft_cfg: RunConfig = serde_json::from_value(json!({
        "backbone": "all-MiniLM-L6-v2",
        "modules": [{ "plugin": "prefix", "config": { "prefix_length": 8 } }],
        "task": { "name": "glue-rte", "head": "option_scoring" },
        "training": { "steps": ft_steps, "batch_size": 4, "learning_rate": 1e-2, "max_length": 96,
                      "train_groups": ["adapter"], "eval_every": 0 }
    }))
    .unwrap();
    let ft_model = Model::<B>::build(&ft_cfg, &registry, &Default::default(), 0).unwrap();
    let head = peft_host::heads::Head::resolve(&ft_cfg.task, &unseen, "head").unwrap();
    head.create(&mut ft_model.params.borrow_mut(), 384).unwrap();
    let runs = [peft_host::train::TaskRun {
        task: &unseen,
        head,
    }];
    let fr = train_runs(&ft_model, &runs, &ft_cfg);
    eprintln!(
        "adapt glue-rte: generation {generation:.2} s (k = {}); prefix fine-tuning {:.2} s/step (batch 4), {:.1} s for {ft_steps} steps incl. none of the evaluation",
        enc.k, fr.seconds_per_step, fr.train_seconds
    );
}

type Loaded = peft_host::serve::folder::Loaded<B>;

/// Saves `model` (trained with option scoring on `task`) as a hypermodel folder, adapts `task`
/// from it, and checks that the adapted folder scores the task's options as the hypermodel run
/// does with the generated values in its pass context. Returns both loaded folders.
fn adapt_and_compare(
    mut cfg: RunConfig,
    model: Model<B>,
    task: &Task,
    out: &std::path::Path,
) -> (Loaded, Loaded, peft_host::serve::adapt::AdaptReport) {
    use peft_host::{heads::Head, serve};
    Head::OptionScoring
        .create(&mut model.params.borrow_mut(), 32)
        .unwrap();
    cfg.task = peft_host::config::TaskSpec {
        name: task.name.clone(),
        head: peft_host::config::HeadKind::OptionScoring,
        ..Default::default()
    };
    let registry = Registry::with_static_plugins().unwrap();
    let hyper_dir = tempfile::tempdir().unwrap();
    serve::folder::save(
        &model,
        &cfg,
        &[(task, &Head::OptionScoring)],
        hyper_dir.path(),
    )
    .unwrap();
    let hyper = serve::folder::load::<B>(hyper_dir.path(), &registry, &Default::default()).unwrap();
    let report = serve::adapt::adapt(&hyper, task, &registry, out, &Default::default()).unwrap();
    let adapted = serve::folder::load::<B>(out, &registry, &Default::default()).unwrap();
    assert!(adapted.model.context_encoder.is_none());
    assert!(adapted
        .manifest
        .config
        .modules
        .iter()
        .all(|m| m.config.get("from_context").is_none()));
    let (a, b) = (
        option_scores(&hyper.model, task),
        option_scores(&adapted.model, task),
    );
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-5, "adapted scores differ by {d}: {a:?} vs {b:?}");
    (hyper, adapted, report)
}

/// The option scores of `task`'s evaluation examples (the context encoder, if any, run first).
fn option_scores(m: &Model<B>, task: &Task) -> Vec<f32> {
    use peft_host::heads::Head;
    let batch: Vec<&Example> = task.eval.iter().collect();
    let graph = HostGraph::inference(&m.params);
    peft_host::context::before_eval_pass(m, &graph, task).unwrap();
    match Head::OptionScoring
        .forward(m, &graph, task, &batch, 24, &Default::default())
        .unwrap()
    {
        peft_host::heads::Output::Scores { logits, .. } => vals(logits),
        _ => panic!("option scores expected"),
    }
}

/// `adapt`: a hypermodel run's adapter folder generates an unseen task's prefix and LoRA into
/// ordinary modules saved as an adapter folder; that folder, loaded back, scores the task's
/// options exactly as the hypermodel run does with the generated values in its pass context.
#[test]
fn adapt_saves_generated_modules_that_score_as_the_hypermodel_does() {
    use peft_host::{heads::Head, serve};
    let (cfg, model) = both();
    let task = toy_task(8);
    let registry = Registry::with_static_plugins().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (hyper, adapted, report) = adapt_and_compare(cfg, model, &task, out.path());
    assert_eq!(report.examples_read, 4);
    assert_eq!(report.modules, ["prefix", "lora"]);
    let a = option_scores(&hyper.model, &task);
    // The modules moved away from their plain initialisation (LoRA's B starts at zero).
    let fresh =
        Model::<B>::build(&adapted.manifest.config, &registry, &Default::default(), 0).unwrap();
    Head::OptionScoring
        .create(&mut fresh.params.borrow_mut(), 32)
        .unwrap();
    let c = option_scores(&fresh, &task);
    assert!(
        a.iter().zip(&c).any(|(x, y)| (x - y).abs() > 1e-4),
        "generation changed nothing"
    );
    // Bad input: a folder without a hypermodel, a task with fewer examples than k.
    let err = format!(
        "{:#}",
        serve::adapt::adapt(&adapted, &task, &registry, out.path(), &Default::default())
            .unwrap_err()
    );
    assert!(err.contains("not trained with a context encoder"), "{err}");
    let small = toy_task(2);
    let err = format!(
        "{:#}",
        serve::adapt::adapt(&hyper, &small, &registry, out.path(), &Default::default())
            .unwrap_err()
    );
    assert!(err.contains("k = 4"), "{err}");
}

/// HyperT5+ (`hyper` + a downstream module trained with it): `adapt` keeps the downstream
/// module with its trained values beside the generated ones, so the adapted folder still scores
/// as the hypermodel run does.
#[test]
fn adapt_keeps_a_downstream_module_trained_with_the_hypermodel() {
    let (cfg, model) = tiny(
        json!(["prefix"]),
        json!([
            { "plugin": "prefix", "config": { "prefix_length": 3, "from_context": "hypert5.prefix" } },
            { "name": "down", "plugin": "houlsby", "config": { "bottleneck": 4 } }
        ]),
        4,
    )
    .unwrap();
    // Stand-in for stage-2 training: the downstream adapter far from its near-identity start.
    let trained: Vec<(String, Vec<f32>)> = {
        let mut store = model.params.borrow_mut();
        let down: Vec<(String, Vec<usize>)> = store
            .iter()
            .filter(|p| p.owner == "down")
            .map(|p| (p.name.clone(), p.shape.clone()))
            .collect();
        assert!(!down.is_empty());
        down.into_iter()
            .enumerate()
            .map(|(k, (name, shape))| {
                let n: usize = shape.iter().product();
                let v: Vec<f32> = (0..n)
                    .map(|i| ((i * 7919 + k * 104729) % 1000) as f32 / 2000.0 - 0.25)
                    .collect();
                let t = peft_host::params::from_values::<B>(&shape, v.clone(), &Default::default())
                    .unwrap();
                store.assign(&name, t).unwrap();
                (name, v)
            })
            .collect()
    };
    let task = toy_task(8);
    let out = tempfile::tempdir().unwrap();
    let (_, adapted, report) = adapt_and_compare(cfg, model, &task, out.path());
    assert_eq!(report.modules, ["prefix"], "only the consumer is generated");
    let names: Vec<String> = adapted
        .manifest
        .config
        .modules
        .iter()
        .map(|m| m.instance_name())
        .collect();
    assert_eq!(names, ["prefix", "down"]);
    for (name, v) in trained {
        let got = peft_host::run::priming::param_values(&adapted.model, &name).unwrap();
        assert_eq!(got, v, "{name}: the trained downstream value");
    }
}

/// The hypermodel's copy of the encoder starts at the backbone's values and is f32 when the
/// backbone holds its weights in bf16 (`PARAM` hands plugins a bf16 weight widened, exactly,
/// and the copy is assigned from it inside the host).
#[test]
fn encoder_copy_equals_the_backbone_and_stays_f32_under_a_bf16_backbone() {
    use burn::tensor::{DType, TensorMetadata};
    for dtype in ["f32", "bf16"] {
        let mut cfg = tiny_bert_config(json!([
            { "plugin": "lora", "config": { "rank": 2, "from_context": "hypert5.lora" } }
        ]));
        cfg["backbone"]["dtype"] = dtype.into();
        cfg["context_encoder"] = json!({ "plugin": "hypert5", "config": {
            "generate": ["lora"], "lora_rank": 2, "head_hidden": 16, "k": 2, "max_length": 8
        }});
        let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
        let registry = Registry::with_static_plugins().unwrap();
        let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
        let store = model.params.borrow();
        let backbone: std::collections::HashMap<&str, _> = store
            .iter()
            .filter(|p| p.owner == "backbone")
            .map(|p| (p.name.as_str(), p))
            .collect();
        let mut copies = 0;
        for p in store.iter().filter(|p| p.owner == "hypert5") {
            let Some(b) = p
                .name
                .strip_prefix("hypert5.")
                .and_then(|k| backbone.get(k))
            else {
                continue;
            };
            copies += 1;
            assert_eq!(p.value.dtype(), DType::F32, "{} under {dtype}", p.name);
            let vals = |v: &burn::tensor::ops::FloatTensor<B>, rank: usize| match rank {
                1 => vals(peft_host::nn::value::ft::<B, 1>(v.clone())),
                _ => vals(peft_host::nn::value::ft::<B, 2>(v.clone())),
            };
            assert_eq!(
                vals(&p.value, p.shape.len()),
                vals(&b.value, b.shape.len()),
                "{} under {dtype}",
                p.name
            );
        }
        assert!(
            copies >= 12,
            "the encoder's weight matrices are copied ({copies})"
        );
    }
}

/// On a host older than API 1.2 the BERT hypermodel records its attention (and the learned
/// queries' pooling) as `MATMUL`/`SOFTMAX` with BERT's −10000 mask; on a newer one it runs
/// `ATTENTION`. Both give the same generated prefix and LoRA and the same gradient for every
/// hypermodel parameter.
#[test]
fn older_hosts_run_the_composed_attention_to_the_same_values_and_gradients() {
    let (_, model) = both();
    model.set_trainable(&["hyper".into()]).unwrap();
    let task = toy_task(8);
    let batch: Vec<&Example> = task.train.iter().take(3).collect();
    let enc = model.context_encoder.as_ref().unwrap();
    let texts: Vec<_> = batch.iter().map(|e| (e.text_a.clone(), None)).collect();
    let tb = model.tokenize(&texts, 24, &Default::default()).unwrap();
    let api = peft_api::ApiVersion { major: 1, minor: 1 };
    let outputs = ["hypert5.prefix", "hypert5.lora_A", "hypert5.lora_B"];
    assert_same_on_an_older_host(&model, api, &outputs, 1e-5, |graph| {
        enc.encode(&model, graph, &task, &batch).unwrap();
        let h = model.pooled(graph, &tb).unwrap();
        (h.clone() * h).sum()
    });
}
