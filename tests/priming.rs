//! Priming: the host's trainer services (each one, and its refusals), the built-in priming
//! plugins in a two-stage run on real CrossFit tasks with a tiny model, stage-1 resume, and
//! swapping in priming plugins built as shared libraries.
use burn::tensor::Tensor;
use peft_api::{ErrorKind, TensorHandle};
use peft_host::{
    bridge::{value::ft, HostGraph, Value},
    config::RunConfig,
    data,
    heads::Head,
    model::Model,
    run::priming::{fine_tune, param_values, prime, PrimeOptions},
    train::{
        services::{ServiceOptions, Services},
        TaskRun,
    },
};
use peft_registry::Registry;
use peft_tests::*;
use serde_json::{json, Value as Json};

/// burn's CPU backend has one process-wide dropout generator: tests that train hold this.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn tiny_cfg() -> RunConfig {
    let mut cfg =
        tiny_bert_config(json!([{ "plugin": "houlsby", "config": { "up_init_std": 0.05 } }]));
    cfg["backbone"]["config"]["hidden_dropout_prob"] = 0.1.into();
    cfg["training"] =
        json!({ "steps": 3, "batch_size": 4, "learning_rate": 1e-2, "max_length": 32 });
    serde_json::from_value(cfg).unwrap()
}

fn tasks() -> Vec<data::Task> {
    let dir = data::data_dir(None).unwrap();
    ["ethos-gender", "ethos-religion"]
        .iter()
        .map(|n| data::load_task(&dir, n, 0, 8, 13, 42).unwrap())
        .collect()
}

fn runs<'a>(model: &Model<B>, tasks: &'a [data::Task]) -> Vec<TaskRun<'a>> {
    let cfg = tiny_cfg();
    tasks
        .iter()
        .map(|t| {
            let head = Head::resolve(&cfg.task, t, &format!("head.{}", t.name)).unwrap();
            head.create(&mut model.params.borrow_mut(), model.info().hidden_size)
                .unwrap();
            TaskRun { task: t, head }
        })
        .collect()
}

fn opts(steps: usize) -> ServiceOptions {
    ServiceOptions {
        upstream_groups: vec!["backbone".into(), "head".into()],
        downstream_groups: vec!["adapter".into(), "head".into()],
        steps,
        ..Default::default()
    }
}

/// Calls a service; returns the output tensors (as burn values) and the JSON.
fn call(
    s: &Services<'_, '_, B>,
    name: &str,
    args: Json,
    inputs: Vec<TensorHandle>,
) -> Result<(Vec<Value<B>>, Json), peft_api::ApiError> {
    let out = s.call(name, &args.to_string(), inputs)?;
    let tensors = out
        .tensors
        .into_iter()
        .map(|h| s.graph.take(h).unwrap())
        .collect();
    Ok((tensors, serde_json::from_str(&out.values.text).unwrap()))
}

fn scalar(v: &Value<B>) -> f32 {
    let Value::Float(p) = v else { panic!("int") };
    ft::<B, 1>(p.clone())
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap()[0]
}

#[test]
fn services_answer_and_refuse_bad_arguments_cleanly() {
    let _g = serial();
    let cfg = tiny_cfg();
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    let tasks = tasks();
    let runs = runs(&model, &tasks);
    model
        .set_trainable(&["backbone".into(), "adapter".into(), "head".into()])
        .unwrap();
    let graph = HostGraph::new(&model.params, true);
    let s = Services::new(&model, &graph, &runs, &cfg, Default::default(), opts(2)).unwrap();

    let (_, info) = call(&s, "info", json!({}), vec![]).unwrap();
    assert_eq!(info["tasks"], json!(["ethos-gender", "ethos-religion"]));
    assert_eq!(info["steps"], 2);
    let (_, p) = call(&s, "params", json!({ "groups": ["adapter"] }), vec![]).unwrap();
    let names = p["names"].as_array().unwrap();
    assert!(
        !names.is_empty()
            && names
                .iter()
                .all(|n| n.as_str().unwrap().starts_with("houlsby."))
    );

    let refused = |name: &str, args: Json, kind: ErrorKind, needle: &str| {
        let e = s.call(name, &args.to_string(), vec![]).unwrap_err();
        assert_eq!(e.kind, kind, "{name} {args}: {e}");
        assert!(
            e.message.contains(needle),
            "{name} {args}: `{}` lacks `{needle}`",
            e.message
        );
    };
    refused("teleport", json!({}), ErrorKind::UNSUPPORTED, "teleport");
    refused("params", json!({}), ErrorKind::INVALID_ARGUMENT, "groups");
    refused(
        "params",
        json!({ "groups": ["nope"] }),
        ErrorKind::INVALID_ARGUMENT,
        "`nope`",
    );
    refused(
        "batch",
        json!({ "task": "glue-cola" }),
        ErrorKind::INVALID_ARGUMENT,
        "no upstream task `glue-cola`",
    );
    refused(
        "batch",
        json!({ "task": "ethos-gender", "size": 0 }),
        ErrorKind::INVALID_ARGUMENT,
        "0",
    );
    refused(
        "sample_task",
        json!({ "k": 3 }),
        ErrorKind::INVALID_ARGUMENT,
        "2 upstream tasks",
    );
    refused(
        "loss",
        json!({ "batch": 99 }),
        ErrorKind::INVALID_ARGUMENT,
        "not live",
    );
    refused(
        "step",
        json!({ "groups": ["adapter"], "lr": -1.0 }),
        ErrorKind::INVALID_ARGUMENT,
        "lr",
    );
    refused(
        "step",
        json!({ "groups": ["adapter"], "lr": 0.1, "optimizer": "lbfgs" }),
        ErrorKind::INVALID_ARGUMENT,
        "gradients",
    );
    refused(
        "evaluate",
        json!({ "task": "x" }),
        ErrorKind::INVALID_ARGUMENT,
        "no upstream task",
    );
    refused(
        "loss",
        json!("not an object"),
        ErrorKind::INVALID_ARGUMENT,
        "bad arguments",
    );

    // An override of the wrong shape is refused, and the tensor given is not leaked.
    let (_, b) = call(
        &s,
        "batch",
        json!({ "task": "ethos-gender", "size": 2 }),
        vec![],
    )
    .unwrap();
    let id = b["batches"][0].as_u64().unwrap();
    let h = graph.insert(Value::Float(
        Tensor::<B, 1>::zeros([3], &Default::default())
            .into_primitive()
            .tensor(),
    ));
    let e = s
        .call(
            "loss",
            &json!({ "batch": id, "overrides": ["houlsby.encoder.layer.0.ffn.up.bias"] })
                .to_string(),
            vec![h],
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::SHAPE, "{e}");
    let (_, ev) = call(&s, "evaluate", json!({ "task": "ethos-religion" }), vec![]).unwrap();
    assert_eq!(ev["examples"], 8);
    assert!(ev["score"].as_f64().unwrap().is_finite());
    assert_eq!(graph.live_handles(), 0);
}

#[test]
fn sampling_is_seeded_per_step_and_support_and_query_are_disjoint() {
    let _g = serial();
    let cfg = tiny_cfg();
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    let tasks = tasks();
    let runs = runs(&model, &tasks);
    let draw = || {
        let graph = HostGraph::new(&model.params, true);
        let s = Services::new(&model, &graph, &runs, &cfg, Default::default(), opts(3)).unwrap();
        let mut seen = vec![];
        for _ in 0..3 {
            let (_, n) = call(&s, "next_step", json!({}), vec![]).unwrap();
            assert_eq!(n["done"], false);
            let (_, t) = call(&s, "sample_task", json!({ "k": 2 }), vec![]).unwrap();
            let (_, b) = call(
                &s,
                "batch",
                json!({ "task": t["tasks"][0], "sizes": [4, 4] }),
                vec![],
            )
            .unwrap();
            let ids: Vec<u64> = b["batches"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            let (_, l1) = call(&s, "loss", json!({ "batch": ids[0] }), vec![]).unwrap();
            let (_, l2) = call(&s, "loss", json!({ "batch": ids[1] }), vec![]).unwrap();
            seen.push((
                t["tasks"].clone(),
                l1["loss"].as_f64().unwrap(),
                l2["loss"].as_f64().unwrap(),
            ));
        }
        let (_, n) = call(&s, "next_step", json!({}), vec![]).unwrap();
        assert_eq!(n["done"], true);
        // Batches expire at a step's end.
        assert!(s
            .call("loss", &json!({ "batch": 1 }).to_string(), vec![])
            .is_err());
        seen
    };
    let a = draw();
    assert_eq!(
        a,
        draw(),
        "the same seed draws the same tasks, batches and dropout"
    );
    assert!(
        a.iter().any(|(_, l1, l2)| l1 != l2),
        "support and query differ"
    );
}

/// `loss` under overrides equals the loss after assigning the same values: the adapter's
/// `PARAM` and the backbone's weight reads both see the substitute, and the gradient with
/// respect to the substitute equals the gradient with respect to the assigned parameter.
#[test]
fn loss_under_overrides_equals_loss_with_the_values_assigned() {
    let _g = serial();
    let mut cfg = tiny_cfg();
    cfg.backbone = serde_json::from_value(
        json!({"name": "tiny-bert", "architecture": "bert", "config": {
        "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 128, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0 }}),
    )
    .unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    let tasks = tasks();
    let runs = runs(&model, &tasks);
    model
        .set_trainable(&["backbone".into(), "adapter".into(), "head".into()])
        .unwrap();
    let names = [
        "houlsby.encoder.layer.1.ffn.up.weight",
        "encoder.layer.1.output.dense.weight",
    ];
    let shifted: Vec<Tensor<B, 2>> = names
        .iter()
        .map(|n| {
            let t: Tensor<B, 2> = model.params.borrow().tensor(n).unwrap();
            (t.clone().detach() + t.detach().cos() * 5.0)
                .detach()
                .require_grad()
        })
        .collect();
    let loss_and_grads = |overrides: bool| -> (f32, Vec<Vec<f32>>) {
        let graph = HostGraph::new(&model.params, true);
        let s = Services::new(&model, &graph, &runs, &cfg, Default::default(), opts(1)).unwrap();
        call(&s, "next_step", json!({}), vec![]).unwrap();
        let (_, b) = call(
            &s,
            "batch",
            json!({ "task": "ethos-gender", "size": 4 }),
            vec![],
        )
        .unwrap();
        let id = b["batches"][0].clone();
        let (args, inputs) = if overrides {
            let hs = shifted
                .iter()
                .map(|t| graph.insert(Value::Float(t.clone().into_primitive().tensor())))
                .collect();
            (json!({ "batch": id, "overrides": names }), hs)
        } else {
            (json!({ "batch": id }), vec![])
        };
        let (mut t, _) = call(&s, "loss", args, inputs).unwrap();
        let l = t.pop().unwrap();
        let v = scalar(&l);
        let Value::Float(l) = l else { panic!() };
        let grads = ft::<B, 1>(l).backward();
        let store = model.params.borrow();
        let g = names
            .iter()
            .zip(&shifted)
            .map(|(n, sh)| {
                let w: Tensor<B, 2> = if overrides {
                    sh.clone()
                } else {
                    store.tensor(n).unwrap()
                };
                w.grad(&grads)
                    .unwrap()
                    .into_data()
                    .convert::<f32>()
                    .into_vec()
                    .unwrap()
            })
            .collect();
        (v, g)
    };
    let (base, _) = loss_and_grads(false);
    let (with_overrides, g_over) = loss_and_grads(true);
    assert!(
        (base - with_overrides).abs() > 1e-3,
        "the override changes the loss"
    );
    for (n, t) in names.iter().zip(&shifted) {
        let v = t.clone().detach().into_primitive().tensor();
        model.params.borrow_mut().assign(n, v).unwrap();
    }
    let (assigned, g_assigned) = loss_and_grads(false);
    assert!(
        (assigned - with_overrides).abs() < 1e-5,
        "{assigned} vs {with_overrides}"
    );
    for (a, b) in g_over.iter().zip(&g_assigned) {
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-5, "gradient differs by {d}");
    }
}

/// `step` with given gradients is Adam (first step: `w - lr * g / (|g| + eps)`), and `step`
/// from a loss applies the loss's own gradients.
#[test]
fn step_applies_adam_with_given_or_computed_gradients() {
    let _g = serial();
    let cfg = tiny_cfg();
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    let tasks = tasks();
    let runs = runs(&model, &tasks);
    model
        .set_trainable(&["adapter".into(), "head".into()])
        .unwrap();
    let graph = HostGraph::new(&model.params, true);
    let s = Services::new(&model, &graph, &runs, &cfg, Default::default(), opts(1)).unwrap();
    let name = "houlsby.encoder.layer.0.ffn.up.bias";
    let before = param_values(&model, name).unwrap();
    let g: Vec<f32> = (0..before.len())
        .map(|i| (i as f32 - 10.0) * 0.01)
        .collect();
    let h = graph.insert(Value::Float(
        Tensor::<B, 1>::from_floats(g.as_slice(), &Default::default())
            .into_primitive()
            .tensor(),
    ));
    let (_, out) = call(
        &s,
        "step",
        json!({ "groups": ["adapter"], "names": [name], "lr": 0.01 }),
        vec![h],
    )
    .unwrap();
    assert_eq!(out["updated"], 1);
    let after = param_values(&model, name).unwrap();
    for i in 0..g.len() {
        let want = before[i] - 0.01 * g[i] / (g[i].abs() + 1e-8);
        assert!(
            (after[i] - want).abs() < 1e-6,
            "{i}: {} vs {want}",
            after[i]
        );
    }
    // From a loss: the same update as the gradient GRAD computes.
    call(&s, "next_step", json!({}), vec![]).unwrap();
    let (_, b) = call(
        &s,
        "batch",
        json!({ "task": "ethos-gender", "size": 4 }),
        vec![],
    )
    .unwrap();
    let (mut t, _) = call(&s, "loss", json!({ "batch": b["batches"][0] }), vec![]).unwrap();
    let h = graph.insert(t.pop().unwrap());
    let before = param_values(&model, "head.ethos-gender.bias").unwrap();
    let (_, out) = call(
        &s,
        "step",
        json!({ "groups": ["head"], "lr": 0.01, "optimizer": "sgd", "from_loss": true }),
        vec![h],
    )
    .unwrap();
    assert!(out["updated"].as_u64().unwrap() >= 2);
    let after = param_values(&model, "head.ethos-gender.bias").unwrap();
    assert!(
        before.iter().zip(&after).any(|(a, b)| a != b),
        "the task's head moved"
    );
    assert_eq!(graph.live_handles(), 0);
}

fn priming_cfg(plugin: &str, config: Json, upstream: Json, downstream: Json) -> RunConfig {
    let mut cfg = serde_json::to_value(tiny_cfg()).unwrap();
    cfg["task"] = json!({ "name": "ethos-disability", "eval_examples": 16 });
    cfg["priming"] = json!({
        "plugin": plugin, "config": config,
        "upstream_tasks": [{ "name": "ethos-gender", "eval_examples": 8 }, { "name": "ethos-religion", "eval_examples": 8 }],
        "upstream_groups": upstream, "downstream_groups": downstream,
        "steps": 4, "checkpoint_every": 0, "split_seeds": [13, 21]
    });
    let text = cfg.to_string();
    let registry = Registry::with_static_plugins().unwrap();
    peft_host::validate::validate(&text, "test", &registry).unwrap()
}

fn weights(model_cfg: &RunConfig, primed: &std::path::Path, name: &str) -> Vec<f32> {
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(model_cfg, &registry, &Default::default(), 0).unwrap();
    peft_host::run::priming::load_primed(&model, primed).unwrap();
    param_values(&model, name).unwrap()
}

/// Each built-in algorithm primes (changing the upstream groups only), and stage 2 fine-tunes
/// each downstream split from the primed state.
#[test]
fn every_builtin_algorithm_primes_and_fine_tunes() {
    let _g = serial();
    let registry = Registry::with_static_plugins().unwrap();
    let dir = data::data_dir(None).unwrap();
    for (plugin, config) in [
        (
            "multitask",
            json!({ "tasks_per_step": 2, "batch_size": 4, "learning_rate": 1e-3 }),
        ),
        (
            "maml",
            json!({ "inner_steps": 2, "inner_lr": 0.05, "outer_lr": 1e-3, "support_size": 4, "query_size": 4 }),
        ),
        (
            "maml",
            json!({ "first_order": true, "inner_lr": 0.05, "outer_lr": 1e-3, "support_size": 4, "query_size": 4 }),
        ),
        (
            "reptile",
            json!({ "inner_steps": 2, "inner_lr": 0.05, "outer_lr": 0.5, "batch_size": 4 }),
        ),
    ] {
        let cfg = priming_cfg(plugin, config, json!(["backbone"]), json!(["adapter"]));
        let out = tempfile::tempdir().unwrap();
        let r = prime_default(&cfg, &registry, &dir, out.path())
            .unwrap_or_else(|e| panic!("{plugin}: {e:#}"));
        assert_eq!(r.steps, 4);
        assert_eq!(r.combination, "M_A");
        assert_eq!(r.losses.len(), 4, "{plugin}: one loss per step");
        let primed = out.path().join("primed.safetensors");
        let key = "encoder.layer.1.output.dense.weight";
        let fresh = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
        let init = param_values(&fresh, key).unwrap();
        let moved = weights(&cfg, &primed, key);
        assert!(
            init.iter().zip(&moved).any(|(a, b)| a != b),
            "{plugin}: the backbone moved"
        );
        let rows = fine_tune::<B>(
            &cfg,
            &registry,
            &dir,
            Some(&primed),
            false,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows
            .iter()
            .all(|r| r.task == "ethos-disability" && r.score.is_finite()));
        assert_eq!(rows[0].split_seed, 13);
        assert_eq!(rows[1].split_seed, 21);
    }
}

/// Stopped after 2 of 4 upstream steps (what SIGINT does), then resumed: the primed weights
/// equal those of an uninterrupted run bit for bit, for second-order MAML with Adam state.
/// Bitwise, because nothing less would do: the CPU kernels' reductions run in a fixed order
/// whatever the thread count, and Adam turns any rounding-level difference in a near-zero
/// gradient into a step of up to lr, so a tolerance would either be loose or flaky.
#[test]
fn interrupted_and_resumed_priming_gives_the_same_primed_weights() {
    let _g = serial();
    let registry = Registry::with_static_plugins().unwrap();
    let dir = data::data_dir(None).unwrap();
    let cfg = priming_cfg(
        "maml",
        json!({ "inner_steps": 2, "inner_lr": 0.05, "outer_lr": 1e-3, "support_size": 4, "query_size": 4 }),
        json!(["backbone", "adapter"]),
        json!(["adapter"]),
    );
    let full = tempfile::tempdir().unwrap();
    let whole = prime_default(&cfg, &registry, &dir, full.path()).unwrap();
    let part = tempfile::tempdir().unwrap();
    let err = prime::<B>(
        &cfg,
        &registry,
        &dir,
        part.path(),
        &PrimeOptions {
            resume: false,
            stop_after: Some(2),
        },
        &Default::default(),
    )
    .unwrap_err();
    assert!(
        err.downcast_ref::<peft_host::train::Interrupted>()
            .is_some(),
        "{err:#}"
    );
    assert!(!part.path().join("primed.safetensors").exists());
    assert!(part.path().join("stage1/checkpoint/progress.json").exists());
    let r = prime::<B>(
        &cfg,
        &registry,
        &dir,
        part.path(),
        &PrimeOptions {
            resume: true,
            stop_after: None,
        },
        &Default::default(),
    )
    .unwrap();
    assert_eq!(r.losses.len(), 4);
    for ((s1, a), (s2, b)) in r.losses.iter().zip(&whole.losses) {
        assert_eq!(s1, s2);
        assert_eq!(a.to_bits(), b.to_bits(), "step {s1}: query loss {a} vs {b}");
    }
    let d = max_tensor_diff(
        &full.path().join("primed.safetensors"),
        &part.path().join("primed.safetensors"),
    );
    assert_eq!(d, 0.0, "primed weights differ by {d} after resuming");
    // Without the checkpoint, resuming says so.
    let none = tempfile::tempdir().unwrap();
    let err = prime::<B>(
        &cfg,
        &registry,
        &dir,
        none.path(),
        &PrimeOptions {
            resume: true,
            stop_after: None,
        },
        &Default::default(),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("no checkpoint to resume from"),
        "{err:#}"
    );
}

/// `--resume` reuses a primed state for another downstream setting (learning rate, split
/// seeds), and refuses one that another priming config made, naming what differs.
#[test]
fn resume_reuses_stage_one_only_for_the_same_priming() {
    let _g = serial();
    let registry = Registry::with_static_plugins().unwrap();
    let dir = data::data_dir(None).unwrap();
    let mut cfg = priming_cfg(
        "multitask",
        json!({ "tasks_per_step": 2, "batch_size": 4, "learning_rate": 1e-3 }),
        json!(["backbone"]),
        json!(["adapter"]),
    );
    cfg.priming.as_mut().unwrap().steps = 1;
    cfg.priming.as_mut().unwrap().split_seeds = vec![13];
    let out = tempfile::tempdir().unwrap();
    let flags = |resume| peft_host::run::RunFlags {
        progress: false,
        resume,
    };
    let run = |cfg: &RunConfig, resume| {
        peft_host::run::priming::run_two_stage::<B>(
            cfg,
            &registry,
            &dir,
            out.path(),
            flags(resume),
            &Default::default(),
        )
    };
    run(&cfg, false).unwrap();
    let result = |out: &std::path::Path| -> Json {
        let path = std::fs::read_dir(out)
            .unwrap()
            .map(|e| e.unwrap().path().join("result.json"))
            .find(|p| p.exists())
            .unwrap();
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    assert!(result(out.path())["stage1"].is_object(), "stage 1 ran");
    // Another downstream learning rate and split seed: stage 1 is reused.
    let mut down = cfg.clone();
    down.training.learning_rate = 3e-3;
    down.priming.as_mut().unwrap().split_seeds = vec![21];
    run(&down, true).unwrap();
    let r = result(out.path());
    assert!(r["stage1"].is_null(), "stage 1 was reused: {}", r["stage1"]);
    assert_eq!(r["downstream"][0]["split_seed"], 21);
    // Another priming: refused with what differs.
    let mut other = cfg.clone();
    other.priming.as_mut().unwrap().steps = 2;
    let err = format!("{:#}", run(&other, true).unwrap_err());
    assert!(
        err.contains("primed.json") && err.contains("priming"),
        "{err}"
    );
    // Without --resume it primes again.
    run(&other, false).unwrap();
    assert!(result(out.path())["stage1"].is_object());
}
