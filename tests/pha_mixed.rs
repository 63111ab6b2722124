//! Mixed-task batches (`training.mixed_batches`): task ids in the pass context, per-task heads
//! indexed per example, and PHA's T5 layout (shared adapters in the encoder, generated ones in
//! the decoder) on the tiny T5 fixture.
use std::collections::BTreeMap;

use burn::tensor::Tensor;
use peft_host::{
    bridge::HostGraph,
    config::RunConfig,
    data::{self, Example},
    heads::{per_example_loss, Head},
    model::Model,
    train::{self, mixed, TaskRun},
};
use peft_registry::Registry;
use peft_tests::*;

fn small(tasks: usize) -> serde_json::Value {
    serde_json::json!({
        "num_tasks": tasks, "z_dim": 8, "retriever_hidden": 12, "layer_embedding_dim": 6,
        "projector_dim": 10, "hyper_hidden": 14, "bottleneck": 4, "shared_bottleneck": 5
    })
}

fn scalar(t: Tensor<B, 1>) -> f64 {
    t.into_data().convert::<f64>().into_vec::<f64>().unwrap()[0]
}

/// A mixed batch's loss is the mean over its examples of each one's own task head's loss, as
/// a single-task pass over that task's rows computes it (with that task's id published).
#[test]
fn a_mixed_batch_answers_each_example_with_its_task_head() {
    let dir = data::data_dir(None).unwrap();
    let sst = data::load_task(&dir, "glue-sst2", 6, 4, 13, 1).unwrap();
    let stsb = data::load_task(&dir, "glue/stsb", 6, 4, 13, 1).unwrap();
    let mut cfg = tiny_bert_config(serde_json::json!([{ "plugin": "pha", "config": small(2) }]));
    cfg["backbone"]["config"]["hidden_dropout_prob"] = 0.0.into();
    cfg["backbone"]["config"]["attention_probs_dropout_prob"] = 0.0.into();
    cfg["training"] = serde_json::json!({ "max_length": 32, "label_smoothing": 0.1 });
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    randomise(&model, "pha.");
    let mut runs = Vec::new();
    for (task, prefix) in [(&sst, "head.sst"), (&stsb, "head.stsb")] {
        let head = Head::resolve(&cfg.task, task, prefix).unwrap();
        head.create(&mut model.params.borrow_mut(), 32).unwrap();
        runs.push(TaskRun { task, head });
    }
    mixed::register_tasks(&model, &runs);
    let items = [(0, 0), (1, 2), (1, 0), (0, 3), (0, 5), (1, 4)];
    let graph = HostGraph::new(&model.params, false);
    let mut per_task = BTreeMap::new();
    let dev = Default::default();
    let got = scalar(
        mixed::loss(
            &model,
            &graph,
            &runs,
            &items,
            &cfg.training,
            &mut per_task,
            &dev,
        )
        .unwrap(),
    );
    assert_eq!(per_task["glue-sst2"], 3);
    assert_eq!(per_task["glue/stsb"], 3);
    let mut total = 0.0;
    for (ti, run) in runs.iter().enumerate() {
        let batch: Vec<&Example> = items
            .iter()
            .filter(|x| x.0 == ti)
            .map(|&(_, i)| &run.task.train[i])
            .collect();
        let graph = HostGraph::new(&model.params, false);
        let out = run
            .head
            .forward(&model, &graph, run.task, &batch, 32, &dev)
            .unwrap();
        total += scalar(per_example_loss(out, &batch, 0.1, &dev).sum());
    }
    let want = total / items.len() as f64;
    assert!(
        (got - want).abs() < 1e-5 * want.abs().max(1.0),
        "mixed {got} vs per task {want}"
    );
    // Task ids matter: the same batch with the tasks' ids swapped gives another loss.
    model.task_index.borrow_mut().insert("glue-sst2".into(), 1);
    model.task_index.borrow_mut().insert("glue/stsb".into(), 0);
    let graph = HostGraph::new(&model.params, false);
    let swapped = scalar(
        mixed::loss(
            &model,
            &graph,
            &runs,
            &items,
            &cfg.training,
            &mut per_task,
            &dev,
        )
        .unwrap(),
    );
    assert!((swapped - got).abs() > 1e-6, "task ids change nothing");
}

/// `mixed_batches` trains two tasks together; every batch mixes them (PHA's losses are added)
/// and the training loss falls.
#[test]
fn mixed_batch_training_learns_and_counts_examples() {
    let dir = data::data_dir(None).unwrap();
    let sst = data::load_task(&dir, "glue-sst2", 16, 8, 13, 1).unwrap();
    let stsb = data::load_task(&dir, "glue/stsb", 16, 8, 13, 1).unwrap();
    let mut cfg = tiny_bert_config(serde_json::json!([{ "plugin": "pha", "config": small(2) }]));
    cfg["training"] = serde_json::json!({
        "steps": 40, "batch_size": 8, "learning_rate": 1e-2, "max_length": 32,
        "mixed_batches": true, "task_sampling": "uniform",
        "train_groups": ["adapter", "retriever", "prototype", "hyper", "head"]
    });
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    let mut runs = Vec::new();
    for (task, prefix) in [(&sst, "head.sst"), (&stsb, "head.stsb")] {
        let head = Head::resolve(&cfg.task, task, prefix).unwrap();
        head.create(&mut model.params.borrow_mut(), 32).unwrap();
        runs.push(TaskRun { task, head });
    }
    let r = train_runs(&model, &runs, &cfg);
    let counted: usize = r.batches_per_task.values().sum();
    assert_eq!(
        counted,
        40 * 8,
        "examples are counted per task in mixed mode"
    );
    assert!(
        r.batches_per_task.values().all(|&c| c > 80),
        "{:?}",
        r.batches_per_task
    );
    let mean = |s: &[(usize, f64)]| s.iter().map(|x| x.1).sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&r.losses[..5]), mean(&r.losses[35..]));
    assert!(last < 0.7 * first, "loss {first} -> {last}");
    assert!(r.last("glue-sst2").is_some() && r.last("glue/stsb").is_some());
}

#[test]
fn mixed_batches_refuse_option_scoring_heads() {
    let dir = data::data_dir(None).unwrap();
    let sst = data::load_task(&dir, "glue-sst2", 4, 4, 13, 1).unwrap();
    let rte = data::load_task(&dir, "glue/rte", 4, 4, 13, 1).unwrap();
    let mut cfg = tiny_bert_config(serde_json::json!([{ "plugin": "houlsby" }]));
    cfg["training"] = serde_json::json!({ "steps": 1, "batch_size": 16, "mixed_batches": true });
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    let heads = [
        Head::Classification {
            prefix: "head.a".into(),
            classes: 2,
        },
        Head::OptionScoring,
    ];
    let mut runs = Vec::new();
    for (task, head) in [&sst, &rte].into_iter().zip(heads) {
        head.create(&mut model.params.borrow_mut(), 32).unwrap();
        runs.push(TaskRun { task, head });
    }
    let e = train::train_tasks(
        &model,
        &runs,
        &cfg,
        &Default::default(),
        &Default::default(),
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("mixed batches are answered by classification"),
        "{msg}"
    );
}

/// PHA on T5 (the tiny v1.1 fixture): shared adapters in the encoder, the retriever on the last
/// encoder block's output, generated adapters in the decoder. A mixed text-to-text batch reaches
/// every PHA group with gradients, and mixed training fits the answers.
#[test]
fn pha_on_t5_shares_the_encoder_and_generates_the_decoder() {
    let dir = data::data_dir(None).unwrap();
    let mut sst = data::load_task(&dir, "glue-sst2", 6, 0, 13, 5).unwrap();
    let mut cola = data::load_task(&dir, "glue/cola", 6, 0, 13, 5).unwrap();
    sst.eval = sst.train[..4].to_vec();
    cola.eval = cola.train[..4].to_vec();
    let mut texts: Vec<String> = Vec::new();
    for t in [&sst, &cola] {
        for e in &t.train {
            texts.push(e.text_a.clone());
            texts.extend(e.text_b.clone());
        }
        texts.extend(t.labels.iter().cloned());
    }
    texts.push("sep".into());
    let tmp = tempfile::tempdir().unwrap();
    let tok = word_tokenizer(
        tmp.path(),
        &["<pad>", "</s>", "<unk>"],
        &["$A", "</s>"],
        &texts,
    );
    let cfg: RunConfig = serde_json::from_value(serde_json::json!({
        "backbone": { "path": fixture("t5-v1_1-tiny"), "tokenizer": tok },
        "modules": [{ "plugin": "pha", "config": small(2) }],
        "task": { "head": "text_to_text", "max_new_tokens": 4 },
        "training": { "steps": 60, "batch_size": 8, "learning_rate": 1e-2, "max_length": 48,
                      "mixed_batches": true, "task_sampling": "uniform",
                      "train_groups": ["adapter", "retriever", "prototype", "hyper"] }
    }))
    .unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    let plan = &model.modules.modules[0].plan;
    let sites: Vec<&str> = plan.attachments.iter().map(|a| a.site.as_str()).collect();
    assert_eq!(
        sites,
        [
            "encoder.block.0.ffn",
            "encoder.block.1.ffn",
            "encoder.block.1.output",
            "decoder.block.0.ffn",
            "decoder.block.1.ffn"
        ]
    );
    let runs: Vec<TaskRun> = [&sst, &cola]
        .into_iter()
        .map(|task| TaskRun {
            task,
            head: Head::resolve(&cfg.task, task, "head").unwrap(),
        })
        .collect();
    mixed::register_tasks(&model, &runs);

    // One mixed step by hand: shapes hold and every PHA tensor gets a gradient.
    {
        let probe = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
        mixed::register_tasks(&probe, &runs);
        randomise(&probe, "pha.");
        probe.set_trainable(&cfg.training.train_groups).unwrap();
        let items = [(0, 0), (1, 1), (0, 2), (1, 3)];
        let graph = HostGraph::new(&probe.params, true);
        let l = mixed::loss(
            &probe,
            &graph,
            &runs,
            &items,
            &cfg.training,
            &mut BTreeMap::new(),
            &Default::default(),
        )
        .unwrap();
        let grads = l.backward();
        let store = probe.params.borrow();
        let mut groups = std::collections::BTreeSet::new();
        for p in store.trainable() {
            let g: Vec<f32> = match p.shape.len() {
                1 => store
                    .tensor::<1>(&p.name)
                    .unwrap()
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .to_vec()
                    .unwrap(),
                _ => store
                    .tensor::<2>(&p.name)
                    .unwrap()
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .to_vec()
                    .unwrap(),
            };
            assert!(
                g.iter().any(|&x| x != 0.0),
                "no gradient reaches {}",
                p.name
            );
            assert!(g.iter().all(|x| x.is_finite()), "{}", p.name);
            groups.insert(p.group.clone());
        }
        let groups: Vec<&str> = groups.iter().map(|s| s.as_str()).collect();
        assert_eq!(groups, ["adapter", "hyper", "prototype", "retriever"]);
    }

    let r = train_runs(&model, &runs, &cfg);
    let mean = |s: &[(usize, f64)]| s.iter().map(|x| x.1).sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&r.losses[..5]), mean(&r.losses[55..]));
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}
