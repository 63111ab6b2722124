//! The few-shot grid: every method on every CrossFit task's k-shot split for every split seed,
//! each cell an ordinary run (its own result.json, curves and checkpoints), then mean and
//! standard deviation per task and method. Cells already done are read back, not rerun, so an
//! interrupted grid continues where it stopped; a stored cell is reused only while its config
//! and code version equal the requested ones ([`cells`]).
//!
//! With several candidate settings (learning rate × steps, [`selection`]) each task, method and
//! split seed chooses one on its k-shot `_dev` file, and only the chosen one is scored on the
//! test file; the table ([`table`]) says which split chose what.
use std::path::Path;

use crate::config::RunConfig;

pub mod cells;
pub mod selection;
pub mod table;
#[cfg(test)]
mod tests;

pub use cells::{read_cell, stale_reason, Cell};
pub use selection::{Candidate, Choice, Tried};
pub use table::{choices_markdown, markdown, relative_gains, summarise, Gain, Summary};

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
    /// Settings to choose from on each split's `_dev` file; fewer than two: the base
    /// config's, fixed.
    pub candidates: Vec<Candidate>,
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

/// Runs each cell of `grid` not done yet under `out` (finished cells are read back; an
/// interrupted one resumes from its checkpoint), then writes fewshot.json and fewshot.md
/// and returns the table. With candidates, each cell first scores every candidate on its
/// `_dev` file (runs under `out/select/<setting>/`), then runs the chosen one on the test file.
/// SIGINT surfaces as [`crate::train::Interrupted`].
pub fn run_grid(
    grid: &Grid,
    registry: &peft_registry::Registry,
    data: &Path,
    out: &Path,
    device: crate::device::DeviceSpec,
    quiet: bool,
) -> anyhow::Result<String> {
    let all = grid.methods.len() * grid.tasks.len() * grid.seeds.len();
    let total = (0..all).filter(|&k| grid.part.has(k)).count() as u64;
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "fewshot [{bar:30}] {pos}/{len} cells {msg} ({elapsed}<{eta})",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    let selecting = grid.candidates.len() > 1;
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
                let label = format!("{task} {method} seed {seed}");
                bar.set_message(label.clone());
                let base = cell_config(&grid.base, method, task, seed);
                let step = |cfg: &RunConfig, dir: &Path, label: &str| {
                    let r = cells::obtain(grid, cfg, dir, label, registry, data, device);
                    if r.is_err() {
                        bar.abandon();
                    }
                    r
                };
                let mut chosen = None;
                let cfg = if selecting {
                    let mut tried = Vec::new();
                    let mut absent = Vec::new();
                    for c in &grid.candidates {
                        let dev = selection::dev_config(&base, c);
                        let dir = out.join("select").join(c.folder());
                        let at = format!("{label} {} (dev)", c.folder());
                        match step(&dev, &dir, &at)? {
                            Ok(result) => {
                                let r = read_cell(method, task, seed, &result)?;
                                tried.push(Tried {
                                    learning_rate: c.learning_rate,
                                    steps: c.steps,
                                    dev_score: r.score,
                                });
                            }
                            Err(why) => absent.push(format!("{at}: {why}")),
                        }
                    }
                    if !absent.is_empty() {
                        missing.extend(absent);
                        continue;
                    }
                    let choice = selection::choose(tried).ok_or_else(|| {
                        anyhow::anyhow!("{label}: no candidate has a dev score (all NaN)")
                    })?;
                    let cfg = Candidate {
                        learning_rate: choice.learning_rate,
                        steps: choice.steps,
                    }
                    .apply(&base);
                    chosen = Some(choice);
                    cfg
                } else {
                    base
                };
                match step(&cfg, out, &label)? {
                    Ok(result) => {
                        let mut cell = read_cell(method, task, seed, &result)?;
                        cell.chosen = chosen;
                        cells.push(cell);
                    }
                    Err(why) => missing.push(format!("{label}: {why}")),
                }
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
    let table = markdown(&summaries) + &choices_markdown(&cells);
    let selection = if selecting {
        serde_json::json!({ "on": "dev", "candidates": grid.candidates })
    } else {
        serde_json::json!({
            "on": null,
            "fixed": {
                "learning_rate": grid.base.training.learning_rate,
                "steps": grid.base.training.steps,
            },
        })
    };
    let report = serde_json::json!({
        "base_config": grid.base, "methods": grid.methods, "tasks": grid.tasks,
        "seeds": grid.seeds, "selection": selection, "summaries": summaries,
        "gains": relative_gains(&summaries), "cells": cells,
    });
    crate::files::write_atomic(
        &out.join("fewshot.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    crate::files::write_atomic(&out.join("fewshot.md"), table.as_bytes())?;
    Ok(table)
}
