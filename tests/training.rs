//! The downstream trainer on real data with a tiny model: it fits a small training set, and the
//! same seed gives the same numbers.
use peft_host::{config::RunConfig, data, model::Model, train};
use peft_registry::Registry;
use peft_tests::*;

/// burn's CPU backend draws dropout masks from one process-wide generator: training tests
/// running in parallel threads would interleave their draws, so each holds this lock.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

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
    let _rng = serial();
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
    let _rng = serial();
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
    let _rng = serial();
    let r = run_with(
        serde_json::json!({ "steps": 30, "batch_size": 8, "learning_rate": 0.5, "optimizer": "sgd", "momentum": 0.9,
                             "max_grad_norm": 1.0, "label_smoothing": 0.1, "max_length": 24 }),
        8,
    );
    assert!(r.losses.iter().all(|(_, l)| l.is_finite()));
    let (first, last) = (r.losses[0].1, r.losses.last().unwrap().1);
    assert!(last < first, "{first} -> {last}");
}

/// Stopped after 5 of 12 steps (what SIGINT does), then resumed from the checkpoint with a
/// freshly built model: the same losses and metrics as the uninterrupted run.
#[test]
fn interrupted_and_resumed_run_equals_uninterrupted_run() {
    let _rng = serial();
    let _ = shared();
    let mut cfg = tiny_bert_config(serde_json::json!([{ "plugin": "houlsby" }]));
    cfg["backbone"]["config"]["hidden_dropout_prob"] = 0.1.into();
    cfg["training"] = serde_json::json!({ "steps": 12, "batch_size": 8, "learning_rate": 5e-3, "max_length": 24,
                                          "eval_every": 4, "checkpoint_every": 3 });
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let task = data::load_task(&data::data_dir(None).unwrap(), "glue-sst2", 64, 16, 13, 5).unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let build =
        || Model::<B>::build(&cfg, &registry, &Default::default(), task.labels.len()).unwrap();
    let dev = Default::default();
    let (full_dir, cut_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let opts =
        |dir: &std::path::Path, resume: bool, stop_after: Option<usize>| train::TrainOptions {
            progress: false,
            checkpoint_dir: Some(dir.to_path_buf()),
            resume,
            stop_after,
        };
    let full = train::train_with(
        &build(),
        &task,
        &cfg,
        &dev,
        &opts(full_dir.path(), false, None),
    )
    .unwrap();

    let err = train::train_with(
        &build(),
        &task,
        &cfg,
        &dev,
        &opts(cut_dir.path(), false, Some(5)),
    )
    .unwrap_err();
    let stopped = err
        .downcast_ref::<train::Interrupted>()
        .expect("stopped by request");
    assert_eq!(stopped.step, 5);
    assert!(cut_dir.path().join("checkpoint/progress.json").exists());
    let resumed = train::train_with(
        &build(),
        &task,
        &cfg,
        &dev,
        &opts(cut_dir.path(), true, None),
    )
    .unwrap();

    assert_eq!(resumed.losses, full.losses, "losses after resuming");
    assert_eq!(
        resumed.evaluations, full.evaluations,
        "evaluations after resuming"
    );
    // Resuming without a checkpoint says so.
    let empty = tempfile::tempdir().unwrap();
    let err = train::train_with(&build(), &task, &cfg, &dev, &opts(empty.path(), true, None))
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("no checkpoint to resume from"),
        "{err:#}"
    );
}
