//! Scoring a saved adapter on a task's evaluation split: the same loading, evaluation split and
//! metrics as `run`, without training.
use std::path::Path;

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use super::folder::{Loaded, TaskRecord};
use crate::{
    config::TaskSpec,
    train::{evaluate, Evaluation, TaskRun},
};

/// What `eval` reports (`eval.json`).
#[derive(Serialize, Clone, Debug)]
pub struct EvalResult {
    pub adapter: String,
    pub code_version: String,
    pub task: String,
    pub eval_split: String,
    pub evaluation: Evaluation,
}

/// Evaluates the adapter's head for `task` (the adapter's only task when `None`) on that task's
/// evaluation split as the run config specifies it; `eval_examples` overrides the subsample.
pub fn eval<B: AutodiffBackend>(
    loaded: &Loaded<B>,
    task: Option<&str>,
    eval_examples: Option<usize>,
    data: &Path,
    device: &B::Device,
) -> anyhow::Result<EvalResult> {
    let unnamed = super::foreign::unnamed_task(loaded);
    let record = match (unnamed, task) {
        (Some(_), None) => anyhow::bail!(
            "{}: this adapter (saved by HF peft) does not say its task: name it with --task; its labels, in order, answer the classifier's classes",
            loaded.dir.display()
        ),
        (Some(head), Some(n)) => TaskRecord {
            name: n.to_string(),
            ..head.clone()
        },
        (None, _) => loaded.task(task)?.clone(),
    };
    let cfg = &loaded.manifest.config;
    let mut spec: TaskSpec = cfg
        .task_specs()
        .into_iter()
        .find(|s| {
            s.name == record.name || s.name.replace('/', "-") == record.name.replace('/', "-")
        })
        .unwrap_or_else(|| TaskSpec {
            name: record.name.clone(),
            ..Default::default()
        });
    if let Some(n) = eval_examples {
        spec.eval_examples = n;
    }
    let data_task = crate::data::load(data, &spec, cfg.seed)
        .with_context(|| format!("loading task `{}`", spec.name))?;
    let record = match unnamed {
        Some(head) => super::foreign::bind_task(head, &data_task, &loaded.dir)?,
        None => record,
    };
    anyhow::ensure!(
        data_task.labels == record.labels,
        "task `{}`: the data's labels {:?} differ from the adapter's {:?}",
        record.name,
        data_task.labels,
        record.labels
    );
    let run = TaskRun {
        task: &data_task,
        head: record.head.clone(),
    };
    let evaluation = evaluate(&loaded.model, &run, cfg, cfg.training.steps, device)?;
    Ok(EvalResult {
        adapter: loaded.dir.display().to_string(),
        code_version: super::code_version(),
        task: data_task.name.clone(),
        eval_split: data_task.eval_split.clone(),
        evaluation,
    })
}

/// The table `run` prints, for one evaluation of a saved adapter.
pub fn render(loaded_modules: &str, trainable: usize, r: &EvalResult) -> String {
    format!(
        "{:<28} {:<18} {:>10} {:>6} {:>9} {:>8}\n{:<28} {:<18} {:>10} {:>6} {:>9} {:>8.4}\n",
        "task",
        "modules",
        "trainable",
        "split",
        "metric",
        "score",
        r.task,
        loaded_modules,
        crate::plan::thousands(trainable),
        r.eval_split,
        r.evaluation.metric,
        r.evaluation.score
    )
}
