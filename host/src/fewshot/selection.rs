//! Model selection on dev data: each (task, method, split seed) tries every candidate setting
//! (learning rate × steps) trained on the k-shot `_train` file and scored on the k-shot `_dev`
//! file; the best dev score chooses, and only the chosen setting is scored on the test file.
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;

/// One hyperparameter setting a grid may choose.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub learning_rate: f64,
    pub steps: usize,
}

impl Candidate {
    /// `cfg` with this setting.
    pub fn apply(&self, cfg: &RunConfig) -> RunConfig {
        let mut c = cfg.clone();
        c.training.learning_rate = self.learning_rate;
        c.training.steps = self.steps;
        c
    }

    /// A folder name for this setting's dev runs.
    pub fn folder(&self) -> String {
        format!("lr{}-steps{}", self.learning_rate, self.steps)
    }
}

/// A candidate's dev score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tried {
    pub learning_rate: f64,
    pub steps: usize,
    pub dev_score: f64,
}

/// What a split seed chose, and every candidate's dev score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub learning_rate: f64,
    pub steps: usize,
    pub dev_score: f64,
    /// The split the candidates were scored on (`dev`).
    pub split: String,
    pub tried: Vec<Tried>,
}

/// The candidates: every learning rate with every step count (the base config's value where a
/// list is empty), in the order given. Fewer than two means nothing to choose.
pub fn candidates(base: &RunConfig, lrs: &[f64], steps: &[usize]) -> Vec<Candidate> {
    let lrs = if lrs.is_empty() {
        vec![base.training.learning_rate]
    } else {
        lrs.to_vec()
    };
    let steps = if steps.is_empty() {
        vec![base.training.steps]
    } else {
        steps.to_vec()
    };
    let mut out = Vec::new();
    for &learning_rate in &lrs {
        for &steps in &steps {
            let c = Candidate {
                learning_rate,
                steps,
            };
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

/// The config that scores candidate `c` of a cell on its k-shot `_dev` file.
pub fn dev_config(cell: &RunConfig, c: &Candidate) -> RunConfig {
    let mut cfg = c.apply(cell);
    cfg.task.eval_split = Some("dev".into());
    cfg
}

/// The best dev score; ties go to the earlier candidate (a stable, documented rule). `None`
/// when no candidate has a score.
pub fn choose(tried: Vec<Tried>) -> Option<Choice> {
    // NaN scores (a diverged run) never win.
    let best = tried
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.dev_score.is_nan())
        .fold(None, |b: Option<usize>, (i, t)| match b {
            Some(j) if tried[j].dev_score >= t.dev_score => Some(j),
            _ => Some(i),
        })?;
    let t = &tried[best];
    Some(Choice {
        learning_rate: t.learning_rate,
        steps: t.steps,
        dev_score: t.dev_score,
        split: "dev".into(),
        tried: tried.clone(),
    })
}
