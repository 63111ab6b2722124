//! The few-shot grid: every method on every CrossFit task's k-shot split for every split seed,
//! each cell an ordinary run (its own result.json, curves and checkpoints), then mean and
//! standard deviation per task and method. Cells already done are read back, not rerun, so an
//! interrupted grid continues where it stopped.
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;

/// The split seeds of the CrossFit/MetaICL k-shot files.
pub const SEEDS: [u64; 5] = [13, 21, 42, 87, 100];

/// Eight tasks of different kinds and lengths: sentiment, entailment (two and three way),
/// science entailment, question type, topic, emotion, paraphrase.
pub const DEFAULT_TASKS: [&str; 8] = [
    "glue-sst2",
    "glue-rte",
    "superglue-cb",
    "scitail",
    "trec",
    "ag_news",
    "emo",
    "glue-mrpc",
];

/// One cell: a method on a task's split seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub method: String,
    pub task: String,
    pub seed: u64,
    pub metric: String,
    pub score: f64,
    pub examples: usize,
    pub train_seconds: f64,
    pub result: PathBuf,
    /// The split scored: `test`, or `dev` for a task without a `_test` file (marked in the
    /// table and left out of its mean).
    #[serde(default = "test_split")]
    pub split: String,
}

fn test_split() -> String {
    "test".into()
}

/// Mean and standard deviation over seeds of one method on one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub method: String,
    pub task: String,
    pub metric: String,
    pub seeds: usize,
    pub mean: f64,
    /// Sample standard deviation (n - 1); 0 for one seed.
    pub std: f64,
    /// `test`, or `dev` when some seed of this task was scored on its dev file.
    #[serde(default = "test_split")]
    pub split: String,
}

/// The config of one cell: `base` with the method's module, the task's k-shot split `seed`
/// (also the run's seed) and every test example unless `eval_examples` caps them.
pub fn cell_config(base: &RunConfig, method: &str, task: &str, seed: u64) -> RunConfig {
    let mut cfg = base.clone();
    cfg.modules = RunConfig::for_plugin(method).modules;
    cfg.tasks.clear();
    cfg.task.name = format!("crossfit/{}", task.trim_start_matches("crossfit/"));
    cfg.task.split_seed = seed;
    cfg.task.train_examples = 0;
    cfg.seed = seed;
    cfg
}

/// The training defaults of a few-shot cell: the whole k-shot set in each batch, a short
/// schedule at a higher rate than full-data runs.
pub fn default_base() -> RunConfig {
    serde_json::from_value(serde_json::json!({
        "backbone": "all-MiniLM-L6-v2",
        "training": {
            "steps": 40, "batch_size": 16, "learning_rate": 3e-3, "warmup_steps": 4,
            "max_length": 128, "checkpoint_every": 0
        }
    }))
    .expect("few-shot defaults")
}

/// Reads a cell's result.json back.
pub fn read_cell(method: &str, task: &str, seed: u64, path: &Path) -> anyhow::Result<Cell> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let r: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let ev = r["report"]["evaluations"]
        .as_array()
        .and_then(|v| v.last())
        .with_context(|| format!("{}: no evaluation", path.display()))?;
    let num = |v: &serde_json::Value, k: &str| {
        v[k].as_f64()
            .with_context(|| format!("{}: no number `{k}`", path.display()))
    };
    Ok(Cell {
        method: method.into(),
        task: task.into(),
        seed,
        metric: ev["metric"].as_str().unwrap_or_default().into(),
        score: num(ev, "score")?,
        examples: num(ev, "examples")? as usize,
        train_seconds: num(&r["report"], "train_seconds")?,
        result: path.to_path_buf(),
        split: r["report"]["eval_split"]
            .as_str()
            .unwrap_or("test")
            .to_string(),
    })
}

/// Mean and sample standard deviation per (task, method): tasks in the order first seen,
/// methods in that order within each task.
pub fn summarise(cells: &[Cell]) -> Vec<Summary> {
    let mut tasks: Vec<&str> = Vec::new();
    let mut methods: Vec<&str> = Vec::new();
    for c in cells {
        if !tasks.contains(&c.task.as_str()) {
            tasks.push(&c.task);
        }
        if !methods.contains(&c.method.as_str()) {
            methods.push(&c.method);
        }
    }
    let mut out = Vec::new();
    for task in &tasks {
        for method in &methods {
            let group: Vec<&Cell> = cells
                .iter()
                .filter(|c| c.task == *task && c.method == *method)
                .collect();
            let Some(first) = group.first() else { continue };
            let v: Vec<f64> = group.iter().map(|c| c.score).collect();
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let std = if v.len() > 1 {
                (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
            } else {
                0.0
            };
            out.push(Summary {
                method: method.to_string(),
                task: task.to_string(),
                metric: first.metric.clone(),
                seeds: v.len(),
                mean,
                std,
                split: if group.iter().any(|c| c.split != "test") {
                    "dev".into()
                } else {
                    "test".into()
                },
            });
        }
    }
    out
}

/// ARG and RGSTD of a method against the baseline method over the tasks both ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gain {
    pub method: String,
    pub baseline: String,
    pub arg: f64,
    pub rgstd: f64,
    pub tasks: usize,
}

/// Every method's relative gain over the first method's mean per task (the baseline's own
/// row included, at 0), skipping tasks with a ~0 baseline.
pub fn relative_gains(summaries: &[Summary]) -> Vec<Gain> {
    let Some(baseline) = summaries.first().map(|s| s.method.clone()) else {
        return Vec::new();
    };
    let mut methods: Vec<&str> = Vec::new();
    for s in summaries {
        if !methods.contains(&s.method.as_str()) {
            methods.push(&s.method);
        }
    }
    methods
        .into_iter()
        .map(|m| {
            let pairs: Vec<(f64, f64)> = summaries
                .iter()
                .filter(|s| s.method == m)
                .filter_map(|s| {
                    summaries
                        .iter()
                        .find(|b| b.method == baseline && b.task == s.task)
                        .map(|b| (s.mean, b.mean))
                })
                .collect();
            let (arg, rgstd, tasks) = crate::metrics::arg_rgstd(&pairs);
            Gain {
                method: m.to_string(),
                baseline: baseline.clone(),
                arg,
                rgstd,
                tasks,
            }
        })
        .collect()
}

/// A markdown table: one row per task, one column per method, `mean ± std` in percent.
pub fn markdown(summaries: &[Summary]) -> String {
    let mut methods: Vec<&str> = Vec::new();
    let mut tasks: Vec<(&str, &str)> = Vec::new();
    for s in summaries {
        if !methods.contains(&s.method.as_str()) {
            methods.push(&s.method);
        }
        if !tasks.iter().any(|(t, _)| *t == s.task) {
            tasks.push((&s.task, &s.metric));
        }
    }
    let on_dev = |task: &str| {
        summaries
            .iter()
            .any(|s| s.task == task && s.split != "test")
    };
    let mut out = format!("| task | metric | {} |\n", methods.join(" | "));
    out += &format!("| --- | --- |{}\n", " ---: |".repeat(methods.len()));
    for (task, metric) in &tasks {
        let mark = if on_dev(task) { " (dev †)" } else { "" };
        out += &format!("| {task}{mark} | {metric} |");
        for m in &methods {
            match summaries.iter().find(|s| s.task == *task && s.method == *m) {
                Some(s) => {
                    out += &format!(
                        " {:.1} ± {:.1} ({}) |",
                        100.0 * s.mean,
                        100.0 * s.std,
                        s.seeds
                    )
                }
                None => out += " – |",
            }
        }
        out += "\n";
    }
    // Relative gain of each method over the first (the thesis' ARG and RGSTD, in percent).
    let gains = relative_gains(summaries);
    if !gains.is_empty() {
        out += &format!("| **ARG ± RGSTD vs {}** | |", methods[0]);
        for m in &methods {
            match gains.iter().find(|g| g.method == *m) {
                Some(g) => out += &format!(" {:+.1} ± {:.1} |", 100.0 * g.arg, 100.0 * g.rgstd),
                None => out += " – |",
            }
        }
        out += "\n";
    }
    // Dev-scored tasks stay out of the mean: their 16 examples are no test set.
    let mean_of = |m: &str| {
        let v: Vec<f64> = summaries
            .iter()
            .filter(|s| s.method == m && s.split == "test")
            .map(|s| s.mean)
            .collect();
        100.0 * v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    out += "| **mean** | |";
    for m in &methods {
        out += &format!(" **{:.1}** |", mean_of(m));
    }
    out += "\n";
    let dev: Vec<&str> = tasks
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| on_dev(t))
        .collect();
    if !dev.is_empty() {
        out += &format!(
            "\n† {} has no `_test` file: scored on its k-shot `_dev` file, not comparable with the test scores, and left out of the mean.\n",
            dev.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
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
}

/// A grid: every method on every task for every split seed, over one base config.
#[derive(Clone, Debug)]
pub struct Grid {
    pub base: RunConfig,
    pub methods: Vec<String>,
    pub tasks: Vec<String>,
    pub seeds: Vec<u64>,
    /// Stop with the reason instead of rerunning a cell whose stored result is stale.
    pub refuse_stale: bool,
    /// Which cells this process handles.
    pub part: Part,
}

/// The cells one process of a grid handles: all of them, one machine's shard (cells written
/// into a shared `--out`), or none (collect the stored cells into the table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Part {
    #[default]
    All,
    /// Cells whose index (task, method, seed order) modulo `of` is `index`; no table.
    Shard { index: usize, of: usize },
    /// Runs nothing: the table from the stored cells, refused while any is missing or stale.
    Collect,
}

impl Part {
    /// `i/n` with 0 <= i < n (Slurm's `$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`).
    pub fn shard(text: &str) -> Result<Part, String> {
        let bad = || format!("`{text}` is not a shard: write i/n with 0 <= i < n, e.g. 0/4");
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, of) = (
            i.trim().parse::<usize>().map_err(|_| bad())?,
            n.trim().parse::<usize>().map_err(|_| bad())?,
        );
        if of == 0 || index >= of {
            return Err(bad());
        }
        Ok(Part::Shard { index, of })
    }

    /// Whether the `k`-th cell of the grid is this process's.
    pub fn has(&self, k: usize) -> bool {
        match *self {
            Part::Shard { index, of } => k % of == index,
            Part::All | Part::Collect => true,
        }
    }
}

/// Why the stored `result.json` of a cell cannot stand for `cfg` run by this build: another
/// config, another code version, or unreadable. `None`: it can be reused.
pub fn stale_reason(result: &Path, cfg: &RunConfig) -> Option<String> {
    let r: serde_json::Value = match std::fs::read_to_string(result)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
    {
        Some(r) => r,
        None => return Some("it is unreadable".into()),
    };
    let want = match serde_json::to_value(cfg) {
        Ok(v) => v,
        Err(e) => return Some(format!("the requested config does not serialise: {e}")),
    };
    if r["config"] != want {
        let diff = match (&r["config"], &want) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => b
                .iter()
                .filter(|(k, v)| a.get(*k) != Some(*v))
                .map(|(k, _)| format!("/{k}"))
                .chain(
                    a.keys()
                        .filter(|k| !b.contains_key(*k))
                        .map(|k| format!("/{k}")),
                )
                .collect::<Vec<_>>()
                .join(", "),
            _ => "the whole config".into(),
        };
        return Some(format!(
            "its config differs from the requested one at {diff}"
        ));
    }
    let here = crate::serve::code_version();
    match r["code_version"].as_str() {
        Some(v) if v == here => None,
        Some(v) => Some(format!(
            "it was computed by code version {v}, this is {here}"
        )),
        None => Some(format!(
            "it records no code version (written before they were recorded); this is {here}"
        )),
    }
}

/// Runs each cell of `grid` not done yet under `out` (finished cells are read back; an
/// interrupted one resumes from its checkpoint), then writes fewshot.json and fewshot.md
/// and returns the table. SIGINT surfaces as [`crate::train::Interrupted`].
pub fn run_grid(
    grid: &Grid,
    registry: &peft_registry::Registry,
    data: &Path,
    out: &Path,
    device: crate::device::DeviceSpec,
    quiet: bool,
) -> anyhow::Result<String> {
    use crate::run::{run, run_name, with_device, RunFlags};
    let all = grid.methods.len() * grid.tasks.len() * grid.seeds.len();
    let total = (0..all).filter(|&k| grid.part.has(k)).count() as u64;
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "fewshot [{bar:30}] {pos}/{len} runs {msg} ({elapsed}<{eta})",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    let mut cells = Vec::new();
    let mut missing = Vec::new();
    let mut k = 0;
    for task in &grid.tasks {
        for method in &grid.methods {
            for &seed in &grid.seeds {
                k += 1;
                if !grid.part.has(k - 1) {
                    continue;
                }
                let cfg = cell_config(&grid.base, method, task, seed);
                let dir = out.join(run_name(&cfg));
                let result = dir.join("result.json");
                bar.set_message(format!("{task} {method} seed {seed}"));
                let stale = if result.exists() {
                    stale_reason(&result, &cfg)
                } else {
                    None
                };
                if grid.part == Part::Collect && (stale.is_some() || !result.exists()) {
                    let why = stale.unwrap_or_else(|| "not run yet".into());
                    missing.push(format!("{task} {method} seed {seed}: {why}"));
                    continue;
                }
                if let Some(why) = &stale {
                    if grid.refuse_stale {
                        bar.abandon();
                        anyhow::bail!(
                            "{task} {method} seed {seed}: the stored {} cannot be reused: {why} (rerun without --refuse-stale to recompute it)",
                            result.display()
                        );
                    }
                    tracing::warn!(cell = %dir.display(), "rerunning: the stored result is stale: {why}");
                    // Its checkpoint belongs to the same stale run.
                    let _ = std::fs::remove_dir_all(dir.join("checkpoint"));
                }
                if !result.exists() || stale.is_some() {
                    let flags = RunFlags {
                        progress: false,
                        resume: stale.is_none() && dir.join("checkpoint/progress.json").exists(),
                    };
                    if let Err(e) =
                        with_device(device, |dev| run(&cfg, registry, data, out, flags, dev))
                    {
                        bar.abandon();
                        return Err(e.context(format!("{task} {method} seed {seed}")));
                    }
                }
                cells.push(read_cell(method, task, seed, &result)?);
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    if !missing.is_empty() {
        anyhow::bail!(
            "cannot collect {}: {} of {all} cells are missing or stale (run their shards first):\n  {}",
            out.display(),
            missing.len(),
            missing.join("\n  ")
        );
    }
    if let Part::Shard { index, of } = grid.part {
        return Ok(format!(
            "shard {index}/{of}: {} cells done in {}; when every shard has finished, `fewshot --collect` with the same arguments writes the table\n",
            cells.len(),
            out.display()
        ));
    }
    let summaries = summarise(&cells);
    let table = markdown(&summaries);
    let report = serde_json::json!({
        "base_config": grid.base, "methods": grid.methods, "tasks": grid.tasks,
        "seeds": grid.seeds, "summaries": summaries, "gains": relative_gains(&summaries),
        "cells": cells,
    });
    crate::files::write_atomic(
        &out.join("fewshot.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    crate::files::write_atomic(&out.join("fewshot.md"), table.as_bytes())?;
    Ok(table)
}
