//! The downstream trainer: batches, loss, AdamW over the trainable groups, evaluation.
pub mod optim;

use std::time::Instant;

use anyhow::Context;
use burn::tensor::{backend::AutodiffBackend, Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::Serialize;

use crate::{
    bridge::{value::ft, HostGraph},
    by_rank,
    config::RunConfig,
    data::{Example, Task},
    model::Model,
};
use optim::AdamW;

#[derive(Serialize, Clone, Debug)]
pub struct Evaluation {
    pub step: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub loss: f64,
    pub examples: usize,
}

#[derive(Serialize, Clone, Debug)]
pub struct TrainReport {
    pub task: String,
    pub eval_split: String,
    pub train_examples: usize,
    pub steps: usize,
    pub losses: Vec<(usize, f64)>,
    pub evaluations: Vec<Evaluation>,
    pub train_seconds: f64,
    pub seconds_per_step: f64,
    pub trainable_parameters: usize,
}

fn texts(batch: &[&Example]) -> Vec<(String, Option<String>)> {
    batch
        .iter()
        .map(|e| (e.text_a.clone(), e.text_b.clone()))
        .collect()
}

fn labels<B: AutodiffBackend>(batch: &[&Example], device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = batch.iter().map(|e| e.label as i64).collect();
    Tensor::from_data(TensorData::new(v, [batch.len()]), device)
}

/// Cross-entropy of the classification head plus the modules' auxiliary losses.
fn loss<B: AutodiffBackend>(
    model: &Model<B>,
    graph: &HostGraph<'_, B>,
    batch: &[&Example],
    max_len: usize,
    device: &B::Device,
) -> anyhow::Result<Tensor<B, 1>> {
    let tb = model.tokenize(&texts(batch), max_len, device)?;
    let logits = model.logits(graph, &tb)?;
    let y = labels::<B>(batch, device);
    let logp = burn::tensor::activation::log_softmax(logits, 1);
    let n = batch.len();
    let mut loss = logp
        .gather(1, y.unsqueeze_dim::<2>(1))
        .neg()
        .reshape([n])
        .mean();
    for (w, aux) in graph.aux_losses.borrow_mut().drain(..) {
        loss = loss + ft::<B, 1>(aux) * w;
    }
    Ok(loss)
}

pub fn evaluate<B: AutodiffBackend>(
    model: &Model<B>,
    examples: &[Example],
    cfg: &RunConfig,
    step: usize,
    device: &B::Device,
) -> anyhow::Result<Evaluation> {
    let mut preds = Vec::with_capacity(examples.len());
    let mut total_loss = 0.0;
    for chunk in examples.chunks(cfg.training.batch_size.max(1)) {
        let batch: Vec<&Example> = chunk.iter().collect();
        let graph = HostGraph::inference(&model.params);
        let tb = model.tokenize(&texts(&batch), cfg.training.max_length, device)?;
        let logits = model.logits(&graph, &tb)?.detach();
        let y = labels::<B>(&batch, device);
        let logp = burn::tensor::activation::log_softmax(logits.clone(), 1);
        // Sum of log-probabilities of the true labels (negated below).
        let nll: f32 = logp
            .gather(1, y.unsqueeze_dim::<2>(1))
            .sum()
            .into_scalar()
            .elem_f32();
        total_loss -= nll as f64;
        let pred = logits
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        preds.extend(pred.iter().map(|&p| p as usize));
    }
    let n = examples.len().max(1);
    let gold: Vec<usize> = examples.iter().map(|e| e.label).collect();
    Ok(Evaluation {
        step,
        accuracy: crate::metrics::accuracy(&preds, &gold),
        macro_f1: crate::metrics::macro_f1(&preds, &gold),
        loss: total_loss / n as f64,
        examples: examples.len(),
    })
}

trait ElemF32 {
    fn elem_f32(self) -> f32;
}
impl<E: burn::tensor::ElementConversion> ElemF32 for E {
    fn elem_f32(self) -> f32 {
        self.elem::<f32>()
    }
}

pub fn train<B: AutodiffBackend>(
    model: &Model<B>,
    task: &Task,
    cfg: &RunConfig,
    device: &B::Device,
    progress: bool,
) -> anyhow::Result<TrainReport> {
    let t = &cfg.training;
    model.set_trainable(&t.train_groups)?;
    let trainable: usize = model.params.borrow().trainable().map(|p| p.numel()).sum();
    anyhow::ensure!(
        trainable > 0,
        "no parameter is trainable: train_groups {:?} matched nothing",
        t.train_groups
    );
    let mut opt = AdamW::<B>::new(t.learning_rate, t.weight_decay);
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    B::seed(device, cfg.seed);
    let mut order: Vec<usize> = (0..task.train.len()).collect();
    let mut cursor = order.len();
    let bar = if progress {
        ProgressBar::new(t.steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} steps {msg} ({elapsed}<{eta})",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("train {}", task.name));
    let mut losses = Vec::new();
    let mut evaluations = Vec::new();
    let start = Instant::now();
    for step in 1..=t.steps {
        let mut batch = Vec::with_capacity(t.batch_size);
        while batch.len() < t.batch_size.min(task.train.len()) {
            if cursor >= order.len() {
                order.shuffle(&mut rng);
                cursor = 0;
            }
            batch.push(&task.train[order[cursor]]);
            cursor += 1;
        }
        let graph = HostGraph::new(&model.params, true);
        let l = loss(model, &graph, &batch, t.max_length, device)
            .with_context(|| format!("step {step}"))?;
        let lv: f32 = l.clone().into_scalar().elem_f32();
        let grads = l.backward();
        drop(graph);
        let lr = schedule(t.learning_rate, step, t.warmup_steps, t.steps);
        opt.lr = lr;
        {
            let mut store = model.params.borrow_mut();
            for p in store.trainable_mut() {
                let rank = p.shape.len();
                let g = by_rank!(rank, |D| Ok(ft::<B, D>(p.value.clone())
                    .grad(&grads)
                    .map(|g| g.into_primitive().tensor())))?;
                if let Some(g) = g {
                    opt.step(p, g)?;
                }
            }
        }
        losses.push((step, lv as f64));
        bar.set_message(format!("loss {lv:.4}"));
        bar.inc(1);
        if t.eval_every > 0 && step % t.eval_every == 0 && step != t.steps {
            evaluations.push(evaluate(model, &task.eval, cfg, step, device)?);
        }
    }
    bar.finish_and_clear();
    let train_seconds = start.elapsed().as_secs_f64();
    evaluations.push(evaluate(model, &task.eval, cfg, t.steps, device)?);
    Ok(TrainReport {
        task: task.name.clone(),
        eval_split: task.eval_split.clone(),
        train_examples: task.train.len(),
        steps: t.steps,
        losses,
        evaluations,
        train_seconds,
        seconds_per_step: train_seconds / t.steps.max(1) as f64,
        trainable_parameters: trainable,
    })
}

/// Linear warmup to `lr`, then linear decay to zero at `total`.
pub fn schedule(lr: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if warmup > 0 && step <= warmup {
        return lr * step as f64 / warmup as f64;
    }
    if total <= warmup {
        return lr;
    }
    lr * (total - step) as f64 / (total - warmup) as f64
}
