//! The downstream trainer on real data with a tiny model: it fits a small training set, and the
//! same seed gives the same numbers.
use peft_host::{config::RunConfig, data, model::Model, train};
use peft_registry::Registry;
use peft_tests::*;

fn run(seed: u64) -> train::TrainReport {
    let _ = shared();
    let mut cfg = tiny_bert_config(serde_json::json!([{ "plugin": "houlsby" }]));
    cfg["backbone"]["config"]["hidden_dropout_prob"] = 0.1.into();
    cfg["training"] = serde_json::json!({ "steps": 40, "batch_size": 8, "learning_rate": 1e-2, "max_length": 32 });
    cfg["seed"] = seed.into();
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let task =
        data::load_task(&data::data_dir(None).unwrap(), "glue-sst2", 8, 32, 13, seed).unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), task.labels.len()).unwrap();
    train::train(&model, &task, &cfg, &Default::default(), false).unwrap()
}

#[test]
fn trains_and_is_reproducible() {
    let a = run(7);
    assert_eq!(a.losses.len(), 40);
    assert!(a.losses.iter().all(|(_, l)| l.is_finite()));
    // Eight examples seen every step: the adapters and head must fit them.
    let first: f64 = a.losses[..3].iter().map(|(_, l)| l).sum::<f64>() / 3.0;
    let last: f64 = a.losses[37..].iter().map(|(_, l)| l).sum::<f64>() / 3.0;
    assert!(
        last < 0.7 * first,
        "the training loss should fall: {first} -> {last}"
    );
    let ev = a.evaluations.last().unwrap();
    assert_eq!(ev.examples, 32);
    assert!((0.0..=1.0).contains(&ev.accuracy) && ev.loss > 0.0);
    let b = run(7);
    assert_eq!(a.losses, b.losses, "same seed, same losses");
    assert_eq!(
        a.evaluations.last().unwrap().accuracy,
        b.evaluations.last().unwrap().accuracy
    );
}

fn run_with(training: serde_json::Value, train_n: usize) -> train::TrainReport {
    let mut cfg = tiny_bert_config(serde_json::json!([{ "plugin": "houlsby" }]));
    cfg["backbone"]["config"]["hidden_dropout_prob"] = 0.0.into();
    cfg["backbone"]["config"]["attention_probs_dropout_prob"] = 0.0.into();
    cfg["training"] = training;
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let task = data::load_task(
        &data::data_dir(None).unwrap(),
        "glue-sst2",
        train_n,
        16,
        13,
        3,
    )
    .unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), task.labels.len()).unwrap();
    train::train(&model, &task, &cfg, &Default::default(), false).unwrap()
}

#[test]
fn accumulated_micro_batches_equal_one_large_batch() {
    let base = serde_json::json!({ "steps": 4, "learning_rate": 5e-3, "max_length": 24 });
    let mut big = base.clone();
    big["batch_size"] = 8.into();
    let mut acc = base;
    acc["batch_size"] = 4.into();
    acc["gradient_accumulation"] = 2.into();
    // Eight training examples: the large batch and the two micro-batches see the same ones.
    let (a, b) = (run_with(big, 8), run_with(acc, 8));
    for ((_, x), (_, y)) in a.losses.iter().zip(&b.losses) {
        assert!(
            (x - y).abs() < 1e-5,
            "losses {:?} vs {:?}",
            a.losses,
            b.losses
        );
    }
}

#[test]
fn sgd_with_clipping_and_label_smoothing_trains() {
    let r = run_with(
        serde_json::json!({ "steps": 30, "batch_size": 8, "learning_rate": 0.5, "optimizer": "sgd", "momentum": 0.9,
                             "max_grad_norm": 1.0, "label_smoothing": 0.1, "max_length": 24 }),
        8,
    );
    assert!(r.losses.iter().all(|(_, l)| l.is_finite()));
    let (first, last) = (r.losses[0].1, r.losses.last().unwrap().1);
    assert!(last < first, "{first} -> {last}");
}
