//! Unit tests of the few-shot grid: cells, reuse, shards, selection and the table.

use std::path::{Path, PathBuf};

use super::*;

#[test]
fn shards_cover_every_cell_once_and_bad_shards_are_refused() {
    let parts: Vec<Part> = (0..3)
        .map(|i| Part::shard(&format!("{i}/3")).unwrap())
        .collect();
    for k in 0..20 {
        assert_eq!(parts.iter().filter(|p| p.has(k)).count(), 1, "cell {k}");
    }
    for bad in ["3/3", "1/0", "a/2", "2", "-1/2"] {
        assert!(Part::shard(bad).is_err(), "{bad}");
    }
}

#[test]
fn collect_refuses_while_cells_are_missing_and_runs_nothing() {
    let registry = peft_registry::Registry::with_static_plugins().unwrap();
    let out = tempfile::tempdir().unwrap();
    let grid = Grid {
        base: default_base(),
        methods: vec!["lora".into()],
        tasks: vec!["trec".into(), "emo".into()],
        seeds: vec![13, 21],
        refuse_stale: false,
        part: Part::Collect,
        candidates: Vec::new(),
    };
    let err = run_grid(
        &grid,
        &registry,
        Path::new("/nonexistent"),
        out.path(),
        crate::device::DeviceSpec::Cpu,
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("4 of 4 cells are missing"), "{err}");
    assert!(err.contains("emo lora seed 21: not run yet"), "{err}");
    assert!(!out.path().join("fewshot.json").exists());
}

fn cell(method: &str, task: &str, seed: u64, score: f64) -> Cell {
    Cell {
        method: method.into(),
        task: task.into(),
        seed,
        metric: "macro_f1".into(),
        score,
        examples: 10,
        train_seconds: 1.0,
        result: PathBuf::new(),
        split: "test".into(),
        chosen: None,
    }
}

#[test]
fn mean_and_sample_std_per_task_and_method() {
    let cells = [
        cell("lora", "b", 13, 0.5),
        cell("lora", "b", 21, 0.7),
        cell("houlsby", "b", 13, 0.6),
        cell("lora", "a", 13, 0.9),
        cell("houlsby", "a", 13, 0.45),
    ];
    let s = summarise(&cells);
    assert_eq!(s.len(), 4);
    assert_eq!((s[0].task.as_str(), s[0].method.as_str()), ("b", "lora"));
    assert!((s[0].mean - 0.6).abs() < 1e-12);
    // Sample std of {0.5, 0.7}: sqrt(0.02 / 1).
    assert!((s[0].std - 0.02f64.sqrt()).abs() < 1e-12);
    assert_eq!(
        (s[1].method.as_str(), s[1].seeds, s[1].std),
        ("houlsby", 1, 0.0)
    );
    let table = markdown(&s);
    assert!(
        table.contains("| b | macro_f1 | 60.0 ± 14.1 (2) | 60.0 ± 0.0 (1) |"),
        "{table}"
    );
    assert!(
        table.contains("| a | macro_f1 | 90.0 ± 0.0 (1) | 45.0 ± 0.0 (1) |"),
        "{table}"
    );
    assert!(
        table.contains("| **mean** | | **75.0** | **52.5** |"),
        "{table}"
    );
    // Houlsby against LoRA: RG 0 on b, -0.5 on a; ARG -0.25, RGSTD 0.25.
    let g = relative_gains(&s);
    assert_eq!((g[1].method.as_str(), g[1].tasks), ("houlsby", 2));
    assert!((g[1].arg + 0.25).abs() < 1e-12 && (g[1].rgstd - 0.25).abs() < 1e-12);
    assert_eq!((g[0].arg, g[0].rgstd), (0.0, 0.0));
    assert!(
        table.contains("| **ARG ± RGSTD vs lora** | | +0.0 ± 0.0 | -25.0 ± 25.0 |"),
        "{table}"
    );
}

#[test]
fn dev_scored_tasks_are_marked_and_left_out_of_the_mean() {
    let mut dev = cell("lora", "nodev", 13, 0.1);
    dev.split = "dev".into();
    let s = summarise(&[cell("lora", "a", 13, 0.8), dev]);
    assert_eq!((s[0].split.as_str(), s[1].split.as_str()), ("test", "dev"));
    let table = markdown(&s);
    assert!(table.contains("| nodev (dev †) | macro_f1 |"), "{table}");
    assert!(table.contains("| **mean** | | **80.0** |"), "{table}");
    assert!(table.contains("† nodev has no `_test` file"), "{table}");
}

#[test]
fn a_stored_cell_is_reused_only_for_the_same_config_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("result.json");
    let cfg = cell_config(&default_base(), "lora", "glue-rte", 13);
    let write = |config: &RunConfig, version: &str| {
        let r = serde_json::json!({ "config": config, "code_version": version });
        std::fs::write(&path, r.to_string()).unwrap();
    };
    write(&cfg, &crate::serve::code_version());
    assert_eq!(stale_reason(&path, &cfg), None);
    let mut other = cfg.clone();
    other.training.steps += 1;
    write(&other, &crate::serve::code_version());
    let why = stale_reason(&path, &cfg).unwrap();
    assert!(why.contains("/training"), "{why}");
    write(&cfg, "0000000-dirty");
    let why = stale_reason(&path, &cfg).unwrap();
    assert!(why.contains("code version 0000000-dirty"), "{why}");
    std::fs::write(&path, r#"{"config": 1}"#).unwrap();
    assert!(stale_reason(&path, &cfg)
        .unwrap()
        .contains("config differs"));
    std::fs::write(&path, "{").unwrap();
    assert!(stale_reason(&path, &cfg).unwrap().contains("unreadable"));
}

#[test]
fn cells_take_the_task_split_and_seed() {
    let c = cell_config(&default_base(), "lora", "glue-rte", 87);
    assert_eq!(c.task.name, "crossfit/glue-rte");
    assert_eq!(
        (c.task.split_seed, c.seed, c.task.train_examples),
        (87, 87, 0)
    );
    assert_eq!(c.modules[0].plugin, "lora");
    assert_eq!(
        cell_config(&default_base(), "houlsby", "crossfit/scitail", 13)
            .task
            .name,
        "crossfit/scitail"
    );
}

#[test]
fn candidates_cross_learning_rates_and_steps_and_choose_the_best_dev_score() {
    let base = default_base();
    let c = selection::candidates(&base, &[1e-3, 3e-3], &[20, 40]);
    assert_eq!(c.len(), 4);
    assert_eq!((c[1].learning_rate, c[1].steps), (1e-3, 40));
    // An empty list keeps the base's value; a single setting is nothing to choose.
    let one = selection::candidates(&base, &[], &[]);
    assert_eq!(
        one,
        vec![Candidate {
            learning_rate: base.training.learning_rate,
            steps: base.training.steps
        }]
    );
    assert_eq!(selection::candidates(&base, &[1e-3, 1e-3], &[]).len(), 1);
    let t = |lr: f64, s: f64| Tried {
        learning_rate: lr,
        steps: 10,
        dev_score: s,
    };
    let ch = selection::choose(vec![
        t(1.0, 0.5),
        t(2.0, f64::NAN),
        t(3.0, 0.7),
        t(4.0, 0.7),
    ])
    .unwrap();
    assert_eq!(
        (ch.learning_rate, ch.dev_score),
        (3.0, 0.7),
        "best, ties to the first"
    );
    assert_eq!(ch.tried.len(), 4);
    assert!(selection::choose(vec![t(1.0, f64::NAN)]).is_none());
    let dev = selection::dev_config(&cell_config(&base, "lora", "emo", 13), &c[3]);
    assert_eq!(dev.task.eval_split.as_deref(), Some("dev"));
    assert_eq!((dev.training.learning_rate, dev.training.steps), (3e-3, 40));
}

#[test]
fn the_table_says_which_split_chose_what() {
    let mut a = cell("lora", "emo", 13, 0.5);
    a.chosen = selection::choose(vec![
        Tried {
            learning_rate: 1e-3,
            steps: 20,
            dev_score: 0.4,
        },
        Tried {
            learning_rate: 3e-3,
            steps: 20,
            dev_score: 0.6,
        },
    ]);
    let mut b = cell("lora", "nodev", 13, 0.5);
    b.split = "dev".into();
    b.chosen = a.chosen.clone();
    let md = choices_markdown(&[a.clone(), b]);
    assert!(
        md.contains("| emo | lora | 13: 0.003 × 20 (60.0) |"),
        "{md}"
    );
    assert!(md.contains("‡ nodev seed 13"), "{md}");
    a.chosen = None;
    assert_eq!(choices_markdown(&[a]), "");
}

/// A tiny random BERT on one CrossFit task: every candidate is trained and scored on the
/// split's `_dev` file, the best is trained again and scored on the test file once; a second
/// call reuses every stored run; collecting names missing dev runs.
#[test]
fn a_grid_chooses_on_dev_and_scores_test_once() {
    let Ok(data) = crate::data::data_dir(None) else {
        eprintln!("skipped: no data folder");
        return;
    };
    let registry = peft_registry::Registry::with_static_plugins().unwrap();
    let out = tempfile::tempdir().unwrap();
    let base: RunConfig = serde_json::from_value(serde_json::json!({
        "backbone": {"name": "tiny-bert", "architecture": "bert", "config": {
            "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 128
        }},
        "task": { "eval_examples": 24 },
        "training": { "steps": 2, "batch_size": 8, "learning_rate": 1e-3,
                      "max_length": 32, "checkpoint_every": 0 }
    }))
    .unwrap();
    let mut grid = Grid {
        candidates: selection::candidates(&base, &[1e-4, 3e-1], &[1, 3]),
        base,
        methods: vec!["lora".into()],
        tasks: vec!["emo".into()],
        seeds: vec![13],
        refuse_stale: true,
        part: Part::All,
    };
    let dev = crate::device::DeviceSpec::Cpu;
    let table = run_grid(&grid, &registry, &data, out.path(), dev, true).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("fewshot.json")).unwrap())
            .unwrap();
    assert_eq!(report["selection"]["on"], "dev");
    let cell: Cell = serde_json::from_value(report["cells"][0].clone()).unwrap();
    let ch = cell.chosen.clone().expect("a choice");
    assert_eq!(ch.tried.len(), 4);
    // Each candidate's dev score is its own dev run's, scored on the `_dev` file.
    for (t, c) in ch.tried.iter().zip(&grid.candidates) {
        let cfg = selection::dev_config(&cell_config(&grid.base, "lora", "emo", 13), c);
        let path = out
            .path()
            .join("select")
            .join(c.folder())
            .join(crate::run::run_name(&cfg))
            .join("result.json");
        let r = read_cell("lora", "emo", 13, &path).unwrap();
        assert_eq!((r.split.as_str(), r.score), ("dev", t.dev_score));
    }
    let best = ch
        .tried
        .iter()
        .map(|t| t.dev_score)
        .fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(ch.dev_score, best);
    // The test score comes from a run with the chosen setting, on the test file.
    assert_eq!(cell.split, "test");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cell.result).unwrap()).unwrap();
    assert_eq!(r["config"]["training"]["learning_rate"], ch.learning_rate);
    assert_eq!(r["config"]["training"]["steps"], ch.steps);
    assert!(
        table.contains("chosen on each split's k-shot `_dev` file"),
        "{table}"
    );
    // Everything is reused (refuse_stale would stop on any stale run), and collecting works.
    let stamp = std::fs::metadata(&cell.result).unwrap().modified().unwrap();
    grid.part = Part::Collect;
    assert_eq!(
        run_grid(&grid, &registry, &data, out.path(), dev, true).unwrap(),
        table
    );
    grid.part = Part::All;
    run_grid(&grid, &registry, &data, out.path(), dev, true).unwrap();
    assert_eq!(
        std::fs::metadata(&cell.result).unwrap().modified().unwrap(),
        stamp
    );
    // A new candidate has no dev run yet: collecting names it.
    grid.candidates.push(Candidate {
        learning_rate: 1e-2,
        steps: 2,
    });
    grid.part = Part::Collect;
    let e = run_grid(&grid, &registry, &data, out.path(), dev, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("emo lora seed 13 lr0.01-steps2 (dev): not run yet"),
        "{e}"
    );
}
