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
