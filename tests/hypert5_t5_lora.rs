//! HyperT5's LoRA generation on T5 (tiny T5 v1.1 fixture): the hypermodel emits A and B for the
//! query and value projections of encoder self-, decoder self- and decoder cross-attention,
//! read by three `lora` modules with `from_context`. Shapes, gradients reaching every
//! hypermodel parameter (prefix and LoRA generated together), the generated LoRA equal to a
//! plain LoRA module holding the same A and B (written through `load_generated`, ASSIGN_PARAM),
//! a small text-to-text task learnt with only the hypermodel training, and the config errors.
use burn::tensor::Tensor;
use peft_host::{
    bridge::{value::ft, HostGraph},
    config::RunConfig,
    data::{self, Example},
    heads::Head,
    model::Model,
};
use peft_registry::Registry;
use peft_tests::*;
use serde_json::json;

const RANK: usize = 2;

fn lora_modules() -> Vec<serde_json::Value> {
    t5_lora_consumers(RANK)
}

/// The shared tiny-T5 set-up generating `generate` for `modules`, LoRA at rank `RANK`.
fn setup(
    dir: &std::path::Path,
    generate: serde_json::Value,
    modules: Vec<serde_json::Value>,
    out_std: f64,
    steps: usize,
) -> (RunConfig, data::Task) {
    let encoder = json!({ "prefix_length": 2, "lora_rank": RANK, "head_hidden": 16,
                          "out_init_std": out_std });
    t5_hyper_setup(
        dir,
        T5Hyper {
            generate,
            modules,
            encoder,
            steps,
            extra_words: &[],
        },
    )
}

#[test]
fn t5_hypermodel_generates_prefix_and_lora_and_every_parameter_gets_a_gradient() {
    let tmp = tempfile::tempdir().unwrap();
    let mut modules = t5_prefix_consumers();
    modules.extend(lora_modules());
    let (cfg, task) = setup(tmp.path(), json!(["prefix", "lora"]), modules, 0.05, 1);
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    let enc = model.context_encoder.as_ref().unwrap();
    let mut want: Vec<String> = ["encoder", "decoder", "cross"]
        .iter()
        .map(|a| format!("hypert5.prefix_{a}"))
        .collect();
    for a in ["encoder", "decoder", "cross"] {
        want.push(format!("hypert5.lora_{a}_A"));
        want.push(format!("hypert5.lora_{a}_B"));
    }
    assert_eq!(enc.outputs, want);
    model.set_trainable(&["hyper".into()]).unwrap();
    let graph = HostGraph::new(&model.params, true);
    let batch: Vec<&Example> = task.train.iter().take(3).collect();
    enc.encode(&model, &graph, &task, &batch).unwrap();
    {
        // 2 layers per stack, d_model 64, 4 heads of 16 (inner 64), rank 2.
        let ctx = graph.context.borrow();
        for n in &enc.outputs {
            let dims = ft::<B, 4>(float_value(&ctx[n])).dims();
            let want = if n.contains("prefix") {
                [2, 2, 2, 64]
            } else if n.ends_with("_A") {
                [2, 2, RANK, 64]
            } else {
                [2, 2, 64, RANK]
            };
            assert_eq!(dims, want, "{n}");
        }
        // One query per generated kind, attention kind and layer.
        let summary = ft::<B, 2>(float_value(&ctx["hypert5.summary"])).dims();
        assert_eq!(summary, [2 * (2 + 2 + 2), 64]);
    }
    let head = Head::resolve(&cfg.task, &task, "head").unwrap();
    let grads = text_to_text_loss(&head, &model, &graph, &task, &batch, 48).backward();
    let n = assert_gradient_reaches_every_trainable(&model, "hyper", &grads);
    // The prefix-only hypermodel's 63 tensors (see hypert5_t5.rs), and 3 LoRA heads × 4.
    assert_eq!(n, 63 + 12);
    let lora_heads = trainable_names(&model)
        .iter()
        .filter(|n| n.starts_with("hypert5.head.lora_"))
        .count();
    assert_eq!(lora_heads, 12);
}

/// Teacher-forced LM logits of `model` on the first eval examples, with its context
/// encoder's generated values (if any) in the pass.
fn logits(model: &Model<B>, task: &data::Task) -> Vec<f32> {
    let graph = HostGraph::inference(&model.params);
    peft_host::model::context::before_eval_pass(model, &graph, task).unwrap();
    let texts: Vec<_> = task.eval.iter().map(|e| (e.text_a.clone(), None)).collect();
    let tb = model.tokenize(&texts, 48, &Default::default()).unwrap();
    let answers: Vec<_> = task
        .eval
        .iter()
        .map(|e| (task.labels[e.label].clone(), None))
        .collect();
    let dec = model
        .tokenize(&answers, 8, &Default::default())
        .unwrap()
        .input_ids;
    let l: Tensor<B, 3> = model.seq2seq_logits(&graph, &tb, &dec).unwrap();
    vals(l)
}

#[test]
fn generated_lora_equals_a_lora_module_holding_the_same_a_and_b() {
    let tmp = tempfile::tempdir().unwrap();
    // A larger output init so that the generated update visibly moves the logits.
    let (cfg, task) = setup(tmp.path(), json!(["lora"]), lora_modules(), 0.3, 1);
    let registry = Registry::with_static_plugins().unwrap();
    let gen = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    // The plain twins: same modules without `from_context`, no context encoder.
    let mut plain_cfg = cfg.clone();
    for m in &mut plain_cfg.modules {
        m.config.as_object_mut().unwrap().remove("from_context");
    }
    plain_cfg.context_encoder = None;
    let plain = Model::<B>::build(&plain_cfg, &registry, &Default::default(), 0).unwrap();
    let enc = gen.context_encoder.as_ref().unwrap();
    let generated = enc.generated(&gen, &task).unwrap();
    let graph = HostGraph::inference(&plain.params);
    for (n, v) in generated {
        graph.context.borrow_mut().insert(n, v);
    }
    for (m, source) in plain.modules.modules.iter().zip([
        "hypert5.lora_encoder",
        "hypert5.lora_decoder",
        "hypert5.lora_cross",
    ]) {
        let args = json!({ "context": source }).to_string();
        let n = m.call(&graph, "load_generated", &args).unwrap().unwrap();
        // Two layers × (q, v).
        assert_eq!(n, "4", "{}", m.name);
    }
    drop(graph);
    let want = logits(&gen, &task);
    let got = logits(&plain, &task);
    let d = max_diff(&got, &want);
    assert!(d < 1e-5, "generated vs assigned LoRA differ by {d}");
    // The update is not nothing: the backbone alone gives other logits.
    let mut bare_cfg = plain_cfg.clone();
    bare_cfg.modules.clear();
    let bare = Model::<B>::build(&bare_cfg, &registry, &Default::default(), 0).unwrap();
    let d0 = max_diff(&logits(&bare, &task), &want);
    assert!(
        d0 > 1e-3,
        "the generated LoRA changes the logits by only {d0}"
    );
    // The value B of decoder cross-attention layer 1 is slot [1, 1] of `lora_cross_B`.
    let gen_b = {
        let v = enc.generated(&gen, &task).unwrap();
        vals(ft::<B, 4>(float_value(
            &v.iter()
                .find(|(n, _)| n == "hypert5.lora_cross_B")
                .unwrap()
                .1,
        )))
    };
    let name = "lc.decoder.block.1.layer.1.EncDecAttention.v.lora_B";
    let b = vals(plain.params.borrow().tensor::<2>(name).unwrap());
    let off = (2 + 1) * 64 * RANK;
    assert_eq!(b, gen_b[off..off + 64 * RANK].to_vec());
}

#[test]
fn t5_lora_hypermodel_alone_learns_a_small_text_to_text_task() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, task) = setup(tmp.path(), json!(["lora"]), lora_modules(), 0.05, 40);
    let (r, first, last) = train_one_task(&cfg, &task, 5);
    eprintln!(
        "T5 LoRA hypermodel, hyper only ({} parameters): loss {first:.3} -> {last:.3}, {:.2} s/step",
        r.trainable_parameters, r.seconds_per_step
    );
    assert!(last < 0.7 * first, "loss {first} -> {last}");
}

#[test]
fn lora_consumers_that_would_share_a_generated_slot_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    // Decoder q/v of self- and cross-attention in one module: both are layer l's query.
    let modules = vec![
        generated_lora("le", "encoder", None, "hypert5.lora_encoder", RANK),
        generated_lora("ld", "decoder", None, "hypert5.lora_decoder", RANK),
    ];
    let (cfg, _) = setup(tmp.path(), json!(["lora"]), modules, 0.05, 1);
    let err = Model::<B>::build(&cfg, &registry, &Default::default(), 0)
        .err()
        .expect("shared slots must be refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("would read the same generated slot") && msg.contains("EncDecAttention.q"),
        "{msg}"
    );
    // Every T5 output must be read: without the cross-attention consumer the run is refused.
    let modules = lora_modules()[..2].to_vec();
    let (cfg, _) = setup(tmp.path(), json!(["lora"]), modules, 0.05, 1);
    let err = Model::<B>::build(&cfg, &registry, &Default::default(), 0)
        .err()
        .expect("an unread output must be refused");
    assert!(
        format!("{err:#}").contains("`hypert5.lora_cross_A`, which no module reads"),
        "{err:#}"
    );
}
