//! The downstream trainer on real data with a tiny model: it fits a small training set, and the
//! same seed gives the same numbers.
use peft_host::{config::RunConfig, data, heads, model::Model, train};
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
    assert!((0.0..=1.0).contains(&ev.accuracy()) && ev.loss > 0.0);
    let b = run(7);
    assert_eq!(a.losses, b.losses, "same seed, same losses");
    assert_eq!(
        a.evaluations.last().unwrap().accuracy(),
        b.evaluations.last().unwrap().accuracy()
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
            ..Default::default()
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

fn tiny_model(modules: serde_json::Value) -> (RunConfig, Model<B>) {
    let _ = shared();
    let mut cfg = tiny_bert_config(modules);
    cfg["backbone"]["config"]["hidden_dropout_prob"] = 0.0.into();
    cfg["backbone"]["config"]["attention_probs_dropout_prob"] = 0.0.into();
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    (cfg, model)
}

fn example(a: &str, options: &[&str], label: usize) -> data::Example {
    data::Example {
        text_a: a.into(),
        options: options.iter().map(|o| o.to_string()).collect(),
        label,
        ..Default::default()
    }
}

fn scores(out: heads::Output<B>) -> (Vec<f32>, Vec<f32>) {
    let heads::Output::Scores { logits, valid } = out else {
        panic!("option scoring gives scores")
    };
    let v = |t: burn::tensor::Tensor<B, 2>| t.into_data().convert::<f32>().into_vec().unwrap();
    (v(logits), v(valid))
}

/// `train_with` on the CPU with no checkpoints or progress.
fn train_plain(
    model: &Model<B>,
    task: &data::Task,
    cfg: &RunConfig,
) -> anyhow::Result<train::TrainReport> {
    train::train_with(model, task, cfg, &Default::default(), &Default::default())
}

/// Trains `task` alone with the head `auto` picks.
fn fit_with_auto_head(
    model: &Model<B>,
    cfg: &RunConfig,
    task: &data::Task,
) -> (heads::Head, train::TrainReport) {
    let head = heads::Head::resolve(&Default::default(), task, "head").unwrap();
    head.create(&mut model.params.borrow_mut(), 32).unwrap();
    let runs = [train::TaskRun {
        task,
        head: head.clone(),
    }];
    let r = train_runs(model, &runs, cfg);
    (head, r)
}

/// Mean training loss of the first three and the last three steps.
fn first_and_last_losses(r: &train::TrainReport) -> (f64, f64) {
    let mean = |v: &[(usize, f64)]| v.iter().map(|(_, l)| l).sum::<f64>() / v.len() as f64;
    (mean(&r.losses[..3]), mean(&r.losses[r.losses.len() - 3..]))
}

/// Option scoring ranks (input, option) pairs with one shared head: a batch of examples with
/// 2 and 4 options gives each example the scores it gets alone, padding scores vanish under
/// softmax, and reordering the options reorders the scores.
#[test]
fn option_scoring_scores_each_pair_and_pads_the_rest() {
    let (_, model) = tiny_model(serde_json::json!([{ "plugin": "houlsby" }]));
    let head = heads::Head::OptionScoring;
    head.create(&mut model.params.borrow_mut(), 32).unwrap();
    let a = example("the film was great", &["positive", "negative"], 0);
    let b = example(
        "which one is a fruit",
        &["apple", "chair", "a small red car", "cloud"],
        0,
    );
    let task = data::Task {
        name: "mc".into(),
        kind: data::TaskKind::MultipleChoice,
        labels: vec![],
        train: vec![],
        eval: vec![],
        eval_split: "test".into(),
        metric: "accuracy".into(),
    };
    let dev = Default::default();
    let run = |batch: &[&data::Example]| {
        let g = peft_host::bridge::HostGraph::inference(&model.params);
        scores(head.forward(&model, &g, &task, batch, 32, &dev).unwrap())
    };
    let (both, valid) = run(&[&a, &b]);
    assert_eq!(both.len(), 8);
    assert_eq!(valid, [1., 1., 0., 0., 1., 1., 1., 1.]);
    let (alone_a, _) = run(&[&a]);
    let (alone_b, _) = run(&[&b]);
    for (x, y) in both[..2].iter().zip(&alone_a) {
        assert!((x - y).abs() < 1e-5, "{both:?} vs {alone_a:?}");
    }
    for (x, y) in both[4..].iter().zip(&alone_b) {
        assert!((x - y).abs() < 1e-5, "{both:?} vs {alone_b:?}");
    }
    assert!(both[2] < -1e8 && both[3] < -1e8, "padded options: {both:?}");
    let mut rev = b.clone();
    rev.options.reverse();
    let (reversed, _) = run(&[&rev]);
    let mut want = alone_b.clone();
    want.reverse();
    for (x, y) in reversed.iter().zip(&want) {
        assert!((x - y).abs() < 1e-5, "{reversed:?} vs {want:?}");
    }
    // Distinct options get distinct scores (the option text reaches the head).
    assert!((alone_b[0] - alone_b[1]).abs() > 1e-7);
}

#[test]
fn option_scoring_fits_a_multiple_choice_task() {
    let _rng = serial();
    let (mut cfg, model) = tiny_model(serde_json::json!([{ "plugin": "houlsby" }]));
    cfg.training = serde_json::from_value(
        serde_json::json!({ "steps": 60, "batch_size": 8, "learning_rate": 3e-2, "max_length": 48 }),
    )
    .unwrap();
    let task = data::load_task(
        &data::data_dir(None).unwrap(),
        "superglue/copa",
        8,
        16,
        13,
        3,
    )
    .unwrap();
    assert_eq!(task.kind, data::TaskKind::MultipleChoice);
    let (head, r) = fit_with_auto_head(&model, &cfg, &task);
    assert_eq!(head, heads::Head::OptionScoring);
    let (first, last) = first_and_last_losses(&r);
    assert!(
        last < 0.7 * first,
        "training loss should fall: {first} -> {last}"
    );
    let ev = r.last("superglue/copa").unwrap();
    assert_eq!((ev.metric.as_str(), ev.examples), ("accuracy", 16));
    assert!((0.0..=1.0).contains(&ev.score) && ev.loss.is_finite());
    // The shared head: one weight row, no per-task classifier.
    let store = model.params.borrow();
    assert_eq!(store.get("option_head.weight").unwrap().shape, [1, 32]);
    assert!(store.get("head.weight").is_none());
}

#[test]
fn regression_head_fits_stsb_and_reports_correlations() {
    let _rng = serial();
    let (mut cfg, model) = tiny_model(serde_json::json!([{ "plugin": "houlsby" }]));
    cfg.training = serde_json::from_value(
        serde_json::json!({ "steps": 40, "batch_size": 8, "learning_rate": 1e-2, "max_length": 48 }),
    )
    .unwrap();
    let task = data::load_task(&data::data_dir(None).unwrap(), "glue/stsb", 8, 24, 13, 3).unwrap();
    // A classifier cannot answer a regression task: the error says what to use.
    let spec = peft_host::config::TaskSpec {
        head: peft_host::config::HeadKind::Classification,
        ..Default::default()
    };
    let err = heads::Head::resolve(&spec, &task, "head").unwrap_err();
    assert!(err.to_string().contains("use `regression`"), "{err}");
    let (head, r) = fit_with_auto_head(&model, &cfg, &task);
    assert!(matches!(head, heads::Head::Regression { .. }));
    let (first, last) = first_and_last_losses(&r);
    assert!(
        last < 0.5 * first,
        "squared error should fall: {first} -> {last}"
    );
    let ev = r.last("glue/stsb").unwrap();
    assert_eq!(ev.metric, "pearson");
    for m in ["pearson", "spearman", "mse"] {
        assert!(ev.get(m).is_finite(), "{m} in {:?}", ev.metrics);
    }
    assert!(ev.get("accuracy").is_nan());
    assert!((ev.get("mse") - ev.loss).abs() < 1e-9);
}

#[test]
fn task_sampling_probabilities() {
    use peft_host::config::TaskSampling as S;
    let p = train::task_probabilities(&[100, 10_000], S::Proportional, 10.0);
    assert!((p[0] - 100.0 / 10_100.0).abs() < 1e-12);
    let t10 = train::task_probabilities(&[100, 10_000], S::Temperature, 10.0);
    let (a, b) = (100f64.powf(0.1), 10_000f64.powf(0.1));
    assert!((t10[0] - a / (a + b)).abs() < 1e-12 && (t10[1] - b / (a + b)).abs() < 1e-12);
    assert_eq!(
        train::task_probabilities(&[100, 10_000], S::Temperature, 1.0),
        p,
        "T = 1 is proportional"
    );
    assert_eq!(
        train::task_probabilities(&[3, 7, 90], S::Uniform, 10.0),
        [1.0 / 3.0; 3]
    );
}

/// Two tasks trained together: each batch from one task, each task its own head, each
/// evaluated on its own split; with uniform sampling both are drawn about equally.
#[test]
fn multi_task_training_mixes_tasks_with_their_own_heads() {
    let _rng = serial();
    let (mut cfg, model) = tiny_model(serde_json::json!([{ "plugin": "lora" }]));
    cfg.training = serde_json::from_value(serde_json::json!({
        "steps": 24, "batch_size": 4, "learning_rate": 5e-3, "max_length": 32,
        "task_sampling": "uniform", "eval_every": 12
    }))
    .unwrap();
    let dir = data::data_dir(None).unwrap();
    let sst2 = data::load_task(&dir, "glue-sst2", 16, 8, 13, 3).unwrap();
    let cb = data::load_task(&dir, "crossfit/superglue-cb", 0, 8, 13, 3).unwrap();
    let mut runs = Vec::new();
    for t in [&sst2, &cb] {
        let prefix = format!("head.{}", t.name.replace('/', "-"));
        let head = heads::Head::resolve(&Default::default(), t, &prefix).unwrap();
        head.create(&mut model.params.borrow_mut(), 32).unwrap();
        runs.push(train::TaskRun { task: t, head });
    }
    let r = train_runs(&model, &runs, &cfg);
    assert_eq!(r.task, "glue-sst2+crossfit/superglue-cb");
    let counts: Vec<usize> = r.batches_per_task.values().copied().collect();
    assert_eq!(counts.iter().sum::<usize>(), 24);
    assert!(counts.iter().all(|&c| c >= 6), "uniform draws: {counts:?}");
    // Evaluated at step 12 and at the end, each task on its own split and metric.
    assert_eq!(r.evaluations.len(), 4);
    let cb_ev = r.last("crossfit/superglue-cb").unwrap();
    assert_eq!((cb_ev.metric.as_str(), cb_ev.examples), ("macro_f1", 8));
    assert_eq!(r.last("glue-sst2").unwrap().metric, "accuracy");
    let store = model.params.borrow();
    assert_eq!(store.get("head.glue-sst2.weight").unwrap().shape, [2, 32]);
    assert_eq!(
        store
            .get("head.crossfit-superglue-cb.weight")
            .unwrap()
            .shape,
        [3, 32]
    );
    // Both heads trained (moved from their zero-initialised biases).
    for name in ["head.glue-sst2.bias", "head.crossfit-superglue-cb.bias"] {
        let b: Vec<f32> = store
            .tensor::<1>(name)
            .unwrap()
            .into_data()
            .convert::<f32>()
            .into_vec()
            .unwrap();
        assert!(b.iter().any(|x| x.abs() > 1e-6), "{name} did not train");
    }
}

/// Text-to-text on T5 and BART: teacher forcing on the LM head fits eight SST-2 sentences
/// (with LoRA attached), and greedy decoding then writes each one's label word.
#[test]
fn text_to_text_fits_and_decodes_on_t5_and_bart() {
    let _rng = serial();
    let dir = data::data_dir(None).unwrap();
    let mut task = data::load_task(&dir, "glue-sst2", 8, 0, 13, 5).unwrap();
    task.eval = task.train.clone();
    let mut texts: Vec<String> = task.train.iter().map(|e| e.text_a.clone()).collect();
    texts.extend(task.labels.iter().cloned());
    for (fixture_name, specials, template) in [
        (
            "t5-v1_1-tiny",
            &["<pad>", "</s>", "<unk>"][..],
            &["$A", "</s>"][..],
        ),
        (
            "bart-tiny",
            &["<s>", "<pad>", "</s>", "<unk>"][..],
            &["<s>", "$A", "</s>"][..],
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let tok = word_tokenizer(tmp.path(), specials, template, &texts);
        let cfg: RunConfig = serde_json::from_value(serde_json::json!({
            "backbone": { "path": fixture(fixture_name), "tokenizer": tok },
            "modules": [{ "plugin": "lora" }],
            "task": { "head": "text_to_text", "max_new_tokens": 4 },
            "training": { "steps": 60, "batch_size": 8, "learning_rate": 1e-2, "max_length": 48,
                          "train_groups": ["adapter", "backbone"] }
        }))
        .unwrap();
        let registry = Registry::with_static_plugins().unwrap();
        let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
        let r = train_plain(&model, &task, &cfg).unwrap();
        let (first, last) = (r.losses[0].1, r.losses.last().unwrap().1);
        assert!(last < 0.1 * first, "{fixture_name}: NLL {first} -> {last}");
        let ev = r.last("glue-sst2").unwrap();
        assert_eq!(
            ev.get("exact_match"),
            1.0,
            "{fixture_name}: {:?}",
            ev.metrics
        );
        assert_eq!(ev.accuracy(), 1.0);
        // What greedy decoding writes is the label word itself.
        let head = heads::Head::resolve(&cfg.task, &task, "head").unwrap();
        let graph = peft_host::bridge::HostGraph::inference(&model.params);
        let batch: Vec<&data::Example> = task.eval.iter().collect();
        let out = head
            .generate(&model, &graph, &batch, 48, &Default::default())
            .unwrap();
        let want: Vec<&str> = batch
            .iter()
            .map(|e| task.labels[e.label].as_str())
            .collect();
        assert_eq!(out, want, "{fixture_name}");
    }
}

#[test]
fn text_to_text_on_an_encoder_only_backbone_is_refused() {
    let (mut cfg, model) = tiny_model(serde_json::json!([]));
    cfg.task.head = peft_host::config::HeadKind::TextToText;
    cfg.training.train_groups = vec!["backbone".into()];
    let task = data::load_task(&data::data_dir(None).unwrap(), "glue-sst2", 4, 4, 13, 5).unwrap();
    let err = train_plain(&model, &task, &cfg).unwrap_err();
    assert!(
        format!("{err:#}").contains("is encoder-only: text-to-text needs an encoder-decoder"),
        "{err:#}"
    );
}

/// The siamese head encodes each sentence of a pair on its own and classifies
/// `[u, v, |u − v|, u ∗ v]`: its weight is `[classes, 4 · hidden]`, it fits a few pairs, and a
/// task of single sentences is refused.
#[test]
fn siamese_head_fits_sentence_pairs() {
    let _rng = serial();
    let (mut cfg, model) = tiny_model(serde_json::json!([{ "plugin": "houlsby" }]));
    cfg.task.head = peft_host::config::HeadKind::Siamese;
    cfg.training = serde_json::from_value(
        serde_json::json!({ "steps": 40, "batch_size": 8, "learning_rate": 1e-2, "max_length": 48 }),
    )
    .unwrap();
    let dir = data::data_dir(None).unwrap();
    let task = data::load_task(&dir, "glue/rte", 8, 8, 13, 3).unwrap();
    let r = train_plain(&model, &task, &cfg).unwrap();
    let (first, last) = first_and_last_losses(&r);
    assert!(
        last < 0.7 * first,
        "training loss should fall: {first} -> {last}"
    );
    assert_eq!(
        model.params.borrow().get("head.weight").unwrap().shape,
        [2, 128]
    );
    let sst2 = data::load_task(&dir, "glue-sst2", 4, 4, 13, 3).unwrap();
    let (_, other) = tiny_model(serde_json::json!([]));
    let err = train_plain(&other, &sst2, &cfg).unwrap_err();
    assert!(
        format!("{err:#}").contains("the siamese head needs sentence pairs"),
        "{err:#}"
    );
}
