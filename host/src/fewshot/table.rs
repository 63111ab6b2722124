//! The grid's table: mean and standard deviation per task and method, relative gains over the
//! first method, which split each score comes from, and which hyperparameters each split chose.
use serde::{Deserialize, Serialize};

use super::cells::{test_split, Cell};

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

/// Which hyperparameters each split seed chose on its `_dev` file, per task and method: one
/// row per (task, method), one entry per seed (`seed: lr × steps (dev score)`). Empty when no
/// cell chose (fixed hyperparameters).
pub fn choices_markdown(cells: &[Cell]) -> String {
    if cells.iter().all(|c| c.chosen.is_none()) {
        return String::new();
    }
    let mut out = String::from(
        "\nHyperparameters chosen on each split's k-shot `_dev` file (best dev score; ties: the first candidate), then trained again and scored once on the test file:\n\n| task | method | seed: learning rate × steps (dev score) |\n| --- | --- | --- |\n",
    );
    let mut rows: Vec<(&str, &str)> = Vec::new();
    for c in cells {
        if !rows.contains(&(c.task.as_str(), c.method.as_str())) {
            rows.push((&c.task, &c.method));
        }
    }
    for (task, method) in rows {
        let entries: Vec<String> = cells
            .iter()
            .filter(|c| c.task == task && c.method == method)
            .map(|c| match &c.chosen {
                Some(ch) => format!(
                    "{}: {} × {} ({:.1})",
                    c.seed,
                    ch.learning_rate,
                    ch.steps,
                    100.0 * ch.dev_score
                ),
                None => format!("{}: fixed", c.seed),
            })
            .collect();
        out += &format!("| {task} | {method} | {} |\n", entries.join("; "));
    }
    let dev: Vec<String> = cells
        .iter()
        .filter(|c| c.chosen.is_some() && c.split != "test")
        .map(|c| format!("{} seed {}", c.task, c.seed))
        .collect();
    if !dev.is_empty() {
        out += &format!(
            "\n‡ {}: no `_test` file, so chosen and scored on the same `_dev` file (optimistic).\n",
            dev.join(", ")
        );
    }
    out
}
