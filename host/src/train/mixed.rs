//! Batches that mix tasks, and the examples' task ids in the pass context.
//!
//! A model's task map (`Model::task_index`) gives each training task an id (its position in
//! the run; a new task can be mapped to the prototype PHA retrieved for it). A single-task pass
//! marks its task (`task_id`, [1]); `Model::hooks` then publishes `task_ids` ([n], int) for the
//! rows the backbone runs. A mixed batch publishes one id per example itself. Mixed batches are
//! answered by the per-task heads indexed per example: the batch is encoded once, each task's
//! rows go through its own classification or regression head; text-to-text answers every row
//! with the shared LM head.
use std::collections::BTreeMap;

use anyhow::Context;
use burn::tensor::{backend::AutodiffBackend, Int, Tensor, TensorData};
use rand::{
    distr::{weighted::WeightedIndex, Distribution},
    rngs::StdRng,
    SeedableRng,
};

pub use crate::model::{mark_task, publish_task_ids, TASK_ID, TASK_IDS};

use super::{task_probabilities, Sampler, TaskRun};
use crate::{
    bridge::{HostGraph, Value},
    config::TrainingSpec,
    data::Example,
    heads::{per_example_loss, target_text, Head, Output},
    model::Model,
};

/// Gives the run's tasks ids by position, when several train together and the model has no
/// task map yet (a new task adapted alone gets its id from retrieval instead).
pub fn register_tasks<B: AutodiffBackend>(model: &Model<B>, runs: &[TaskRun<'_>]) {
    let mut map = model.task_index.borrow_mut();
    if runs.len() > 1 && map.is_empty() {
        for (i, r) in runs.iter().enumerate() {
            map.insert(r.task.name.clone(), i as i64);
        }
    }
}

/// Draws each example's task (by `task_sampling`), then the example from that task's
/// sampler: one batch mixes tasks.
pub struct MixedSampler {
    rng: StdRng,
    pick: WeightedIndex<f64>,
    tasks: Vec<Sampler>,
}

impl MixedSampler {
    pub fn new(sizes: &[usize], t: &TrainingSpec, seed: u64) -> anyhow::Result<Self> {
        let probs = task_probabilities(sizes, t.task_sampling, t.temperature);
        Ok(MixedSampler {
            rng: StdRng::seed_from_u64(seed ^ 0x313C_ED00),
            pick: WeightedIndex::new(&probs).context("task sampling weights")?,
            tasks: sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| Sampler::new(n, seed.wrapping_add(i as u64)))
                .collect(),
        })
    }

    /// `(task, example)` pairs of one batch.
    pub fn next_batch(&mut self, size: usize) -> Vec<(usize, usize)> {
        (0..size)
            .map(|_| {
                let t = self.pick.sample(&mut self.rng);
                (t, self.tasks[t].next_batch(1)[0])
            })
            .collect()
    }
}

/// The training loss of one mixed micro-batch: every example's head loss, averaged, plus the
/// modules' auxiliary losses. Counts the examples of each task in `per_task`.
pub fn loss<B: AutodiffBackend>(
    model: &Model<B>,
    graph: &HostGraph<'_, B>,
    runs: &[TaskRun<'_>],
    items: &[(usize, usize)],
    t: &TrainingSpec,
    per_task: &mut BTreeMap<String, usize>,
    device: &B::Device,
) -> anyhow::Result<Tensor<B, 1>> {
    let n = items.len();
    let batch: Vec<&Example> = items
        .iter()
        .map(|&(ti, i)| &runs[ti].task.train[i])
        .collect();
    for &(ti, _) in items {
        *per_task.entry(runs[ti].task.name.clone()).or_default() += 1;
    }
    let ids: Vec<i64> = {
        let map = model.task_index.borrow();
        items
            .iter()
            .map(|&(ti, _)| map.get(&runs[ti].task.name).copied().unwrap_or(ti as i64))
            .collect()
    };
    let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), device);
    graph
        .context
        .borrow_mut()
        .insert(TASK_IDS.into(), Value::Int(ids.into_primitive()));
    let per_example = if runs
        .iter()
        .all(|r| matches!(r.head, Head::TextToText { .. }))
    {
        text_to_text(model, graph, runs, items, &batch, t.max_length, device)?
    } else {
        per_task_heads(model, graph, runs, items, &batch, t, device)?
    };
    Ok(graph.with_aux_losses(per_example.mean()))
}

/// Encodes the batch once and answers each task's rows with its own head; `[n]` losses in
/// batch order.
fn per_task_heads<B: AutodiffBackend>(
    model: &Model<B>,
    graph: &HostGraph<'_, B>,
    runs: &[TaskRun<'_>],
    items: &[(usize, usize)],
    batch: &[&Example],
    t: &TrainingSpec,
    device: &B::Device,
) -> anyhow::Result<Tensor<B, 1>> {
    let n = batch.len();
    let texts: Vec<_> = batch
        .iter()
        .map(|e| (e.text_a.clone(), e.text_b.clone()))
        .collect();
    let tb = model.tokenize(&texts, t.max_length, device)?;
    let pooled = model.pooled(graph, &tb)?;
    let mut parts = Vec::new();
    let mut order = Vec::new();
    for (ti, run) in runs.iter().enumerate() {
        let rows: Vec<usize> = (0..n).filter(|&i| items[i].0 == ti).collect();
        if rows.is_empty() {
            continue;
        }
        let index = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                rows.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [rows.len()],
            ),
            device,
        );
        let features = pooled.clone().select(0, index);
        let sub: Vec<&Example> = rows.iter().map(|&i| batch[i]).collect();
        let out = match &run.head {
            Head::Classification { prefix, classes } => Output::Scores {
                logits: model.head_linear(graph, features, prefix)?,
                valid: Tensor::ones([rows.len(), *classes], device),
            },
            Head::Regression { prefix } => Output::Values(
                model
                    .head_linear(graph, features, prefix)?
                    .reshape([rows.len()]),
            ),
            other => anyhow::bail!(
                "task `{}`: mixed batches are answered by classification, regression or text-to-text heads, not {other:?}",
                run.task.name
            ),
        };
        parts.push(per_example_loss(out, &sub, t.label_smoothing, device));
        order.extend(rows);
    }
    // Back to batch order (the mean does not care, but per-example values should line up).
    let mut inverse = vec![0i64; n];
    for (pos, &i) in order.iter().enumerate() {
        inverse[i] = pos as i64;
    }
    let inverse = Tensor::<B, 1, Int>::from_data(TensorData::new(inverse, [n]), device);
    Ok(Tensor::cat(parts, 0).select(0, inverse))
}

/// Teacher forcing over a mixed batch: each example's answer from its own task.
fn text_to_text<B: AutodiffBackend>(
    model: &Model<B>,
    graph: &HostGraph<'_, B>,
    runs: &[TaskRun<'_>],
    items: &[(usize, usize)],
    batch: &[&Example],
    max_len: usize,
    device: &B::Device,
) -> anyhow::Result<Tensor<B, 1>> {
    let inputs: Vec<_> = batch
        .iter()
        .map(|e| {
            let text = match &e.text_b {
                Some(b) => format!("{} [SEP] {b}", e.text_a),
                None => e.text_a.clone(),
            };
            (text, None)
        })
        .collect();
    let targets: Vec<_> = batch
        .iter()
        .zip(items)
        .map(|(e, &(ti, _))| (target_text(e, runs[ti].task), None))
        .collect();
    let tb = model.tokenize(&inputs, max_len, device)?;
    let answers = model.tokenize(&targets, max_len, device)?;
    crate::heads::teacher_forced_loss(model, graph, &tb, answers)
}
