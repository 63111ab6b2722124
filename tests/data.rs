//! Task readers on the real files in ../shared/data, as they are.
use peft_host::data::{data_dir, load_task, TaskKind};
use peft_tests::*;

fn data() -> std::path::PathBuf {
    let _ = shared();
    data_dir(None).expect("the shared data folder")
}

#[test]
fn glue_sst2_full_training_set_and_dev() {
    let t = load_task(&data(), "glue-sst2", 0, 0, 13, 42).unwrap();
    assert_eq!((t.train.len(), t.eval.len()), (67_349, 872));
    assert_eq!(t.labels, ["negative", "positive"]);
    let pos = t.eval.iter().filter(|e| e.label == 1).count();
    assert_eq!(pos, 444, "SST-2 dev has 444 positive sentences");
    // A seeded subsample is reproducible.
    let a = load_task(&data(), "glue/sst2", 100, 50, 13, 7).unwrap();
    let b = load_task(&data(), "glue-sst2", 100, 50, 13, 7).unwrap();
    assert_eq!(a.train, b.train);
    assert_eq!((a.train.len(), a.eval.len()), (100, 50));
    // Another run seed draws other training examples but is scored on the same ones.
    let c = load_task(&data(), "glue-sst2", 100, 50, 13, 8).unwrap();
    assert_ne!(a.train, c.train);
    assert_eq!(a.eval, c.eval);
}

#[test]
fn glue_rte_pairs() {
    let t = load_task(&data(), "glue/rte", 0, 0, 13, 42).unwrap();
    assert_eq!((t.train.len(), t.eval.len()), (2_240, 277));
    assert!(t.train.iter().all(|e| e.text_b.is_some()));
    let entail = t.eval.iter().filter(|e| e.label == 0).count();
    assert_eq!(entail, 146, "RTE dev: 146 entailment, 131 not");
}

#[test]
fn crossfit_k_shot_splits() {
    let t = load_task(&data(), "glue-rte", 0, 0, 13, 42).unwrap();
    assert_eq!(t.train.len(), 16);
    assert_eq!(t.labels, ["entailment", "not_entailment"]);
    assert!(t.train[0].text_b.is_some(), "`[SEP]` splits the pair");
    let err = load_task(&data(), "no-such-task", 0, 0, 13, 42).unwrap_err();
    assert!(
        err.to_string().contains("unknown task `no-such-task`"),
        "{err}"
    );
}

#[test]
fn other_glue_classification_tasks() {
    for (name, train, eval, classes) in [
        ("glue/cola", 8_551, 527, 2),
        ("glue/mrpc", 3_300, 0, 2),
        ("glue/qqp", 8_999, 0, 2),
        ("glue/mnli", 8_999, 0, 3),
        ("glue/qnli", 8_999, 0, 2),
    ] {
        let t = load_task(&data(), name, 0, 0, 13, 42).unwrap();
        assert_eq!(t.train.len(), train, "{name}");
        if eval > 0 {
            assert_eq!(t.eval.len(), eval, "{name}");
        }
        assert!(!t.eval.is_empty());
        assert_eq!(t.labels.len(), classes, "{name}");
        let seen: std::collections::BTreeSet<usize> = t.train.iter().map(|e| e.label).collect();
        assert_eq!(seen.len(), classes, "{name}: every class occurs");
    }
    let err = load_task(&data(), "glue/wnli", 0, 0, 13, 42).unwrap_err();
    assert!(err.to_string().contains("are supported"), "{err}");
}

#[test]
fn glue_stsb_is_regression() {
    let t = load_task(&data(), "glue/stsb", 0, 0, 13, 42).unwrap();
    assert_eq!(t.kind, TaskKind::Regression);
    assert_eq!(t.metric, "pearson");
    assert!(t.labels.is_empty());
    assert!(t.train.len() > 5_000 && !t.eval.is_empty());
    assert!(t
        .train
        .iter()
        .chain(&t.eval)
        .all(|e| (0.0..=5.0).contains(&e.value)));
    // The first re-split row, as in the file: label "3.000".
    assert_eq!(t.train[0].value, 3.0);
    let spread = t.train.iter().filter(|e| e.value > 4.0).count();
    assert!(spread > 500, "scores cover the range, not a constant");
}

#[test]
fn superglue_fewglue_files() {
    for (name, classes) in [
        ("superglue/boolq", 2),
        ("superglue/cb", 3),
        ("superglue/rte", 2),
        ("superglue/wic", 2),
    ] {
        let t = load_task(&data(), name, 0, 0, 13, 42).unwrap();
        assert_eq!(
            t.train.len(),
            32,
            "{name}: FewGLUE has 32 training examples"
        );
        assert!(t.eval.len() > 32, "{name}: the official validation set");
        assert_eq!(t.labels.len(), classes);
        assert!(t.train.iter().all(|e| e.text_b.is_some()));
    }
    let err = load_task(&data(), "superglue/axb", 0, 0, 13, 42).unwrap_err();
    assert!(err.to_string().contains("are supported"), "{err}");
}

#[test]
fn superglue_wsc_and_multirc() {
    let wsc = load_task(&data(), "superglue/wsc", 0, 0, 13, 42).unwrap();
    assert_eq!((wsc.train.len(), wsc.eval.len()), (32, 104));
    assert_eq!(
        wsc.train[0].text_b.as_deref(),
        Some("Does \"it\" refer to \"Tina\"?")
    );
    assert_eq!(wsc.labels[wsc.train[0].label], "true");
    let m = load_task(&data(), "superglue/multirc", 0, 0, 13, 42).unwrap();
    // One example per candidate answer: far more than the 32 passages.
    assert!(m.train.len() > 32 * 3, "{}", m.train.len());
    let first = &m.train[0];
    assert!(first.text_a.starts_with("A stranger in town meets"));
    assert_eq!(
        first.text_b.as_deref(),
        Some("How does Jason react to the stranger who arrives with Susan? He welcomes him with open arm")
    );
    assert_eq!(first.label, 0);
    assert_eq!(m.train[1].label, 1);
}

#[test]
fn superglue_copa_is_multiple_choice() {
    let t = load_task(&data(), "superglue/copa", 0, 0, 13, 42).unwrap();
    assert_eq!(t.kind, TaskKind::MultipleChoice);
    assert_eq!(t.metric, "accuracy");
    assert_eq!(t.train.len(), 32);
    assert_eq!(t.eval.len(), 100, "COPA's official validation set");
    let first = &t.train[0];
    assert_eq!(first.text_a, "The chandelier shattered on the floor.");
    assert_eq!(first.text_b.as_deref(), Some("What was the cause?"));
    assert_eq!(
        first.options[first.label],
        "The chandelier dropped from the ceiling."
    );
    assert!(t.train.iter().all(|e| e.options.len() == 2 && e.label < 2));
}

#[test]
fn crossfit_multiple_choice_and_metrics() {
    // ai2_arc: every question has its own answers.
    let t = load_task(&data(), "crossfit/ai2_arc", 0, 0, 13, 42).unwrap();
    assert_eq!(t.kind, TaskKind::MultipleChoice);
    assert_eq!(t.metric, "accuracy");
    assert!(t.train.iter().all(|e| e.label < e.options.len()));
    let distinct: std::collections::BTreeSet<&Vec<String>> =
        t.train.iter().map(|e| &e.options).collect();
    assert!(distinct.len() > 1, "options differ per example");
    // A fixed label set is classification, scored by macro-F1 (MetaICL); CoLA by Matthews.
    let t = load_task(&data(), "crossfit/glue-sst2", 0, 0, 21, 42).unwrap();
    assert_eq!(
        (t.kind, t.metric.as_str()),
        (TaskKind::Classification, "macro_f1")
    );
    assert!(t.train.iter().chain(&t.eval).all(|e| e.options.is_empty()));
    assert_eq!(t.eval_split, "test");
    assert_eq!(
        load_task(&data(), "glue-cola", 0, 0, 13, 42)
            .unwrap()
            .metric,
        "matthews"
    );
    // The full GLUE SST-2 is scored by accuracy.
    assert_eq!(
        load_task(&data(), "glue-sst2", 8, 8, 13, 42)
            .unwrap()
            .metric,
        "accuracy"
    );
}

#[test]
fn k_shots_per_class_with_a_seed() {
    let spec = |seed_k: usize| peft_host::config::TaskSpec {
        name: "glue-sst2".into(),
        shots_per_class: seed_k,
        train_examples: 0,
        ..Default::default()
    };
    let a = peft_host::data::load(&data(), &spec(16), 7).unwrap();
    assert_eq!(a.train.len(), 32);
    for c in 0..2 {
        assert_eq!(a.train.iter().filter(|e| e.label == c).count(), 16);
    }
    let b = peft_host::data::load(&data(), &spec(16), 7).unwrap();
    assert_eq!(a.train, b.train, "same seed, same shots");
    let c = peft_host::data::load(&data(), &spec(16), 8).unwrap();
    assert_ne!(a.train, c.train, "another seed, other shots");
    // Per class needs classes.
    let mut copa = spec(4);
    copa.name = "superglue/copa".into();
    let err = peft_host::data::load(&data(), &copa, 7).unwrap_err();
    assert!(err.to_string().contains("needs a fixed label set"), "{err}");
}

#[test]
fn evaluation_split_named_in_the_config() {
    let spec = |name: &str, split: &str| peft_host::config::TaskSpec {
        name: name.into(),
        eval_split: Some(split.into()),
        ..Default::default()
    };
    let dev = peft_host::data::load(&data(), &spec("crossfit/glue-rte", "dev"), 1).unwrap();
    assert_eq!((dev.eval_split.as_str(), dev.eval.len()), ("dev", 16));
    let test = peft_host::data::load(&data(), &spec("crossfit/glue-rte", "test"), 1).unwrap();
    assert_eq!((test.eval_split.as_str(), test.eval.len()), ("test", 277));
    // glue-qqp has no CrossFit test file; GLUE RTE has only its dev set.
    let err = peft_host::data::load(&data(), &spec("glue-qqp", "test"), 1).unwrap_err();
    assert!(err.to_string().contains("no test file"), "{err}");
    let err = peft_host::data::load(&data(), &spec("glue/rte", "test"), 1).unwrap_err();
    assert!(
        err.to_string().contains("is evaluated on its `dev` split"),
        "{err}"
    );
    // SuperGLUE: FewGLUE's 32-example dev file for model selection, the validation set by default.
    let dev32 = peft_host::data::load(&data(), &spec("superglue/cb", "dev32"), 1).unwrap();
    assert_eq!((dev32.eval_split.as_str(), dev32.eval.len()), ("dev32", 32));
    let val = peft_host::data::load(&data(), &spec("superglue/cb", "val"), 1).unwrap();
    assert_eq!((val.eval_split.as_str(), val.eval.len()), ("val", 56));
    assert_ne!(dev32.eval, val.eval);
    let err = peft_host::data::load(&data(), &spec("superglue/cb", "test"), 1).unwrap_err();
    assert!(
        err.to_string().contains("`eval_split` `test` is neither"),
        "{err}"
    );
}

/// `holdout`: the same training examples held out for every run seed, disjoint from what the
/// run trains on, reported as the `train-holdout` split; with `eval_split` it is refused.
#[test]
fn holdout_evaluates_on_training_examples_no_run_trains_on() {
    let spec = |seed_examples: usize| peft_host::config::TaskSpec {
        name: "glue/rte".into(),
        holdout: 200,
        train_examples: seed_examples,
        ..Default::default()
    };
    let a = peft_host::data::load(&data(), &spec(0), 1).unwrap();
    let b = peft_host::data::load(&data(), &spec(100), 2).unwrap();
    assert_eq!(a.eval_split, "train-holdout");
    assert_eq!((a.train.len(), a.eval.len()), (2_240 - 200, 200));
    assert_eq!(
        a.eval, b.eval,
        "the held-out examples do not depend on the run"
    );
    assert_eq!(b.train.len(), 100);
    for e in &b.train {
        assert!(!a.eval.contains(e), "a held-out example is trained on");
    }
    let mut bad = spec(0);
    bad.eval_split = Some("dev".into());
    let err = format!("{:#}", peft_host::data::load(&data(), &bad, 1).unwrap_err());
    assert!(err.contains("drop `eval_split`"), "{err}");
}
