//! HyperT5's T5 layout on the tiny T5 v1.1 fixture: the hypermodel (encoder copy over the
//! examples, decoder copy fed learned queries) generates prefixes for encoder self-, decoder
//! self- and decoder cross-attention; shapes, gradients reaching every hypermodel parameter,
//! and a text-to-text task whose loss falls with only the hypermodel training.
use peft_host::{
    bridge::HostGraph,
    config::RunConfig,
    data::{self, Example},
    heads::Head,
    model::Model,
};
use peft_registry::Registry;
use peft_tests::*;
use serde_json::json;

fn setup(dir: &std::path::Path, steps: usize) -> (RunConfig, data::Task) {
    t5_hyper_setup(
        dir,
        T5Hyper {
            generate: json!(["prefix"]),
            modules: t5_prefix_consumers(),
            encoder: json!({ "prefix_length": 2, "head_hidden": 16, "out_init_std": 0.05 }),
            steps,
            extra_words: &["sep"],
        },
    )
}

#[test]
fn t5_hypermodel_generates_three_prefix_kinds_and_every_parameter_gets_a_gradient() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, task) = setup(tmp.path(), 1);
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    let enc = model.context_encoder.as_ref().unwrap();
    assert_eq!(
        enc.outputs,
        [
            "hypert5.prefix_encoder",
            "hypert5.prefix_decoder",
            "hypert5.prefix_cross"
        ]
    );
    model.set_trainable(&["hyper".into()]).unwrap();
    let graph = HostGraph::new(&model.params, true);
    let batch: Vec<&Example> = task.train.iter().take(3).collect();
    // The hypermodel reads these examples (a training pass would draw k others of the task).
    enc.encode(&model, &graph, &task, &batch).unwrap();
    {
        // [layers, key/value, P, heads * d_kv]: 2 layers per stack, 4 heads of 16.
        let ctx = graph.context.borrow();
        for n in &enc.outputs {
            assert_eq!(
                peft_host::bridge::value::ft::<B, 4>(float_value(&ctx[n])).dims(),
                [2, 2, 2, 64],
                "{n}"
            );
        }
    }
    // At initialisation the hypermodel's encoder is the backbone's: same states on the
    // examples as `input answer` pairs.
    {
        let ctx = graph.context.borrow();
        let got = vals(peft_host::bridge::value::ft::<B, 3>(float_value(
            &ctx["hypert5.examples"],
        )));
        let mut plain_cfg = cfg.clone();
        plain_cfg.modules.clear();
        plain_cfg.context_encoder = None;
        let plain = Model::<B>::build(&plain_cfg, &registry, &Default::default(), 0).unwrap();
        let texts: Vec<_> = batch
            .iter()
            .map(|e| (e.text_a.clone(), Some(task.labels[e.label].clone())))
            .collect();
        let tb = plain.tokenize(&texts, 32, &Default::default()).unwrap();
        let g = HostGraph::inference(&plain.params);
        let want = vals(plain.encode(&g, &tb).unwrap());
        let d = max_diff(&got, &want);
        assert!(
            d < 1e-4,
            "hypermodel encoder differs from the backbone's by {d}"
        );
    }
    let head = Head::resolve(&cfg.task, &task, "head").unwrap();
    let grads = text_to_text_loss(&head, &model, &graph, &task, &batch, 48).backward();
    let n = assert_gradient_reaches_every_trainable(&model, "hyper", &grads);
    // Encoder: 2 position tables + 2 × (4 attention + norm + 3 FFN + norm) + final norm per
    // stack (decoder blocks add cross-attention and its norm), queries, 3 heads × 4.
    assert_eq!(n, 2 + 2 * 9 + 1 + 2 * 14 + 1 + 1 + 12);
}

#[test]
fn t5_hypermodel_alone_learns_a_small_text_to_text_task() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, task) = setup(tmp.path(), 40);
    let (_, first, last) = train_one_task(&cfg, &task, 5);
    eprintln!("T5 hypermodel, hyper only: loss {first:.3} -> {last:.3}");
    assert!(last < 0.7 * first, "loss {first} -> {last}");
}

/// On a host older than API 1.3 the T5 hypermodel records its attention as `MATMUL`/`SOFTMAX`
/// with the position bias added as a tensor (1.1: everything composed); on a 1.3 host it runs
/// `ATTENTION_BIAS` and `ATTENTION`. Both give the same generated prefixes and the same
/// gradient for every hypermodel parameter (the relative position tables included).
#[test]
fn t5_hypermodel_on_older_hosts_matches_the_fused_attention() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, task) = setup(tmp.path(), 1);
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    model.set_trainable(&["hyper".into()]).unwrap();
    let enc = model.context_encoder.as_ref().unwrap();
    let head = Head::resolve(&cfg.task, &task, "head").unwrap();
    let batch: Vec<&Example> = task.train.iter().take(3).collect();
    let outputs: Vec<&str> = enc.outputs.iter().map(String::as_str).collect();
    for minor in [1, 2] {
        let api = peft_api::ApiVersion { major: 1, minor };
        assert_same_on_an_older_host(&model, api, &outputs, 1e-5, |graph| {
            enc.encode(&model, graph, &task, &batch).unwrap();
            text_to_text_loss(&head, &model, graph, &task, &batch, 48)
        });
    }
}

/// Figures for docs/performance.md (slow, run by hand): one HyperT5 stage-2 pass — the T5
/// hypermodel over k = 8 examples, LoRA generated for all three attention kinds, a batch of 8
/// through the backbone, forward and backward — on a t5-small-shaped model, this host's fused
/// attention against the composed ops (emulating peft-api 1.1), alternated. Make the model
/// with `scripts/pytorch_seq2seq_reference.py --make DIR --arch t5-small`, then
/// `PEFT_T5_SMALL=DIR cargo test --release -p peft-tests --test hypert5_t5 -- --ignored --nocapture`.
#[test]
#[ignore]
fn t5_small_hypermodel_pass_fused_against_composed() {
    let dir = std::env::var("PEFT_T5_SMALL").expect("PEFT_T5_SMALL: a t5-small-shaped folder");
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, mut task) = t5_hyper_setup(
        tmp.path(),
        T5Hyper {
            generate: json!(["lora"]),
            modules: t5_lora_consumers(4),
            encoder: json!({ "lora_rank": 4, "head_hidden": 256 }),
            steps: 1,
            extra_words: &["sep"],
        },
    );
    let mut v = serde_json::to_value(&cfg).unwrap();
    v["backbone"]["path"] = json!(dir);
    v["context_encoder"]["config"]["k"] = json!(8);
    v["context_encoder"]["config"]["max_length"] = json!(64);
    let cfg: RunConfig = serde_json::from_value(v).unwrap();
    // Examples of ~60 words (each sentence three times), as long as `max_length` allows.
    for e in &mut task.train {
        e.text_a = [e.text_a.as_str(); 3].join(" ");
    }
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    model.set_trainable(&["hyper".into()]).unwrap();
    let enc = model.context_encoder.as_ref().unwrap();
    let head = Head::resolve(&cfg.task, &task, "head").unwrap();
    let batch: Vec<&Example> = task.train.iter().take(8).collect();
    let pass = |older: bool| {
        let mut graph = HostGraph::new(&model.params, true);
        if older {
            graph = graph
                .emulating(peft_api::ApiVersion { major: 1, minor: 1 })
                .unwrap();
        }
        let t = std::time::Instant::now();
        enc.encode(&model, &graph, &task, &batch).unwrap();
        let _ = text_to_text_loss(&head, &model, &graph, &task, &batch, 64).backward();
        t.elapsed().as_secs_f64() * 1e3
    };
    pass(false);
    pass(true);
    let (mut fused, mut composed) = (Vec::new(), Vec::new());
    for round in 0..6 {
        // Alternate which runs first.
        if round % 2 == 0 {
            fused.push(pass(false));
            composed.push(pass(true));
        } else {
            composed.push(pass(true));
            fused.push(pass(false));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let (f, c) = (median(&mut fused), median(&mut composed));
    eprintln!(
        "t5-small HyperT5 pass (k=8, batch 8): fused {:.0} ms ({:.0}-{:.0}), composed (API 1.1) {:.0} ms ({:.0}-{:.0}), ratio {:.2}",
        f.0, f.1, f.2, c.0, c.1, c.2, f.0 / c.0
    );
}
