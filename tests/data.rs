//! Task readers on the real files in ../shared/data, as they are.
use peft_host::data::{data_dir, load_task};
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
    let err = load_task(&data(), "glue/stsb", 0, 0, 13, 42).unwrap_err();
    assert!(err.to_string().contains("regression"), "{err}");
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
    let err = load_task(&data(), "superglue/copa", 0, 0, 13, 42).unwrap_err();
    assert!(err.to_string().contains("option scoring"), "{err}");
}
