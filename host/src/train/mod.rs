//! The downstream trainer: batches, loss, AdamW over the trainable groups, evaluation.
pub mod checkpoint;
pub mod optim;

use std::time::Instant;

use anyhow::Context;
use burn::tensor::{backend::AutodiffBackend, Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{
    bridge::{value::ft, HostGraph},
    by_rank,
    config::RunConfig,
    data::{Example, Task},
    model::Model,
};
use optim::{InnerPrim, Optim};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
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
    label_smoothing: f64,
    device: &B::Device,
) -> anyhow::Result<Tensor<B, 1>> {
    let tb = model.tokenize(&texts(batch), max_len, device)?;
    let logits = model.logits(graph, &tb)?;
    let y = labels::<B>(batch, device);
    let logp = burn::tensor::activation::log_softmax(logits, 1);
    let n = batch.len();
    let nll = logp
        .clone()
        .gather(1, y.unsqueeze_dim::<2>(1))
        .neg()
        .reshape([n]);
    // PyTorch's label smoothing: (1 - e) * nll + e * mean over classes of -log p.
    let per_example = if label_smoothing > 0.0 {
        nll * (1.0 - label_smoothing) + logp.mean_dim(1).neg().reshape([n]) * label_smoothing
    } else {
        nll
    };
    let mut loss = per_example.mean();
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

/// How a training run is driven beyond its config.
#[derive(Default, Clone, Debug)]
pub struct TrainOptions {
    pub progress: bool,
    /// Folder of the run's checkpoints (`<out>/<run>`); none: no checkpoints.
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// Continue from the checkpoint in `checkpoint_dir`.
    pub resume: bool,
    /// Stop (after writing a checkpoint) once this many steps are done: what SIGINT does, for
    /// tests.
    pub stop_after: Option<usize>,
}

/// Set by the CLI's SIGINT handler: the trainer writes a checkpoint and stops at the next step.
pub static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A run that stopped early (SIGINT or `stop_after`) after checkpointing `step` steps.
#[derive(Debug, thiserror::Error)]
#[error("interrupted after step {step}; checkpoint in {}: continue with `run --resume`", dir.display())]
pub struct Interrupted {
    pub step: usize,
    pub dir: std::path::PathBuf,
}

pub fn train<B: AutodiffBackend>(
    model: &Model<B>,
    task: &Task,
    cfg: &RunConfig,
    device: &B::Device,
    progress: bool,
) -> anyhow::Result<TrainReport> {
    train_with(
        model,
        task,
        cfg,
        device,
        &TrainOptions {
            progress,
            ..Default::default()
        },
    )
}

/// Picks the training examples of every micro-batch, in order: a seeded shuffle per epoch.
struct Sampler {
    rng: StdRng,
    order: Vec<usize>,
    cursor: usize,
}

impl Sampler {
    fn new(n: usize, seed: u64) -> Self {
        Sampler {
            rng: StdRng::seed_from_u64(seed),
            order: (0..n).collect(),
            cursor: n,
        }
    }

    fn next_batch(&mut self, size: usize) -> Vec<usize> {
        let mut batch = Vec::with_capacity(size);
        while batch.len() < size.min(self.order.len()) {
            if self.cursor >= self.order.len() {
                self.order.shuffle(&mut self.rng);
                self.cursor = 0;
            }
            batch.push(self.order[self.cursor]);
            self.cursor += 1;
        }
        batch
    }
}

pub fn train_with<B: AutodiffBackend>(
    model: &Model<B>,
    task: &Task,
    cfg: &RunConfig,
    device: &B::Device,
    opts: &TrainOptions,
) -> anyhow::Result<TrainReport> {
    let progress = opts.progress;
    let t = &cfg.training;
    model.set_trainable(&t.train_groups)?;
    let trainable: usize = model.params.borrow().trainable().map(|p| p.numel()).sum();
    anyhow::ensure!(
        trainable > 0,
        "no parameter is trainable: train_groups {:?} matched nothing",
        t.train_groups
    );
    let mut opt = Optim::<B>::new(t);
    let mut sampler = Sampler::new(task.train.len(), cfg.seed);
    let accumulation = t.gradient_accumulation.max(1);
    let mut losses = Vec::new();
    let mut evaluations = Vec::new();
    let mut first_step = 1;
    let mut seconds_before = 0.0;
    if opts.resume {
        let dir = opts
            .checkpoint_dir
            .as_deref()
            .context("--resume needs a checkpoint folder")?;
        let (state, done) = checkpoint::load(dir, &mut model.params.borrow_mut())?;
        opt.import(state, &done.optimizer_steps)?;
        // Replay the data order up to the checkpoint (no computation).
        for _ in 0..done.step * accumulation {
            sampler.next_batch(t.batch_size);
        }
        first_step = done.step + 1;
        losses = done.losses;
        evaluations = done.evaluations;
        seconds_before = done.train_seconds;
        tracing::info!(step = done.step, "resumed from checkpoint");
    }
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
    bar.set_position(first_step as u64 - 1);
    let start = Instant::now();
    for step in first_step..=t.steps {
        // Dropout draws from a stream seeded per step, so a resumed run draws what an
        // uninterrupted one does.
        B::seed(
            device,
            cfg.seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(step as u64),
        );
        // Gradients of `gradient_accumulation` micro-batches, averaged, per trainable parameter.
        let n_trainable = model.params.borrow().trainable().count();
        let mut summed: Vec<Option<InnerPrim<B>>> = (0..n_trainable).map(|_| None).collect();
        let mut lv = 0.0f32;
        for micro in 0..accumulation {
            let batch: Vec<&Example> = sampler
                .next_batch(t.batch_size)
                .into_iter()
                .map(|i| &task.train[i])
                .collect();
            let graph = HostGraph::new(&model.params, true);
            let l = loss(
                model,
                &graph,
                &batch,
                t.max_length,
                t.label_smoothing,
                device,
            )
            .with_context(|| format!("step {step}, micro-batch {micro}"))?;
            lv += l.clone().into_scalar().elem_f32() / accumulation as f32;
            let grads = (l / accumulation as f64).backward();
            drop(graph);
            let store = model.params.borrow();
            for (slot, p) in summed.iter_mut().zip(store.trainable()) {
                let rank = p.shape.len();
                let g = by_rank!(rank, |D| Ok(ft::<B, D>(p.value.clone())
                    .grad(&grads)
                    .map(|g| g.into_primitive().tensor())))?;
                if let Some(g) = g {
                    *slot = Some(match slot.take() {
                        Some(prev) => add_inner::<B>(prev, g, rank)?,
                        None => g,
                    });
                }
            }
        }
        if let Some(max_norm) = t.max_grad_norm {
            clip_global_norm::<B>(&mut summed, max_norm)?;
        }
        opt.set_lr(schedule(t.learning_rate, step, t.warmup_steps, t.steps));
        {
            let mut store = model.params.borrow_mut();
            for (p, g) in store.trainable_mut().zip(summed) {
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
        let stop =
            opts.stop_after == Some(step) || INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst);
        let periodic = t.checkpoint_every > 0 && step % t.checkpoint_every == 0 && step != t.steps;
        if let Some(dir) = opts.checkpoint_dir.as_deref().filter(|_| stop || periodic) {
            let done = checkpoint::Progress {
                step,
                losses: losses.clone(),
                evaluations: evaluations.clone(),
                optimizer_steps: vec![],
                train_seconds: seconds_before + start.elapsed().as_secs_f64(),
            };
            checkpoint::save(dir, &model.params.borrow(), opt.export(), &done)?;
        }
        if stop {
            bar.finish_and_clear();
            let dir = opts.checkpoint_dir.clone().unwrap_or_default();
            return Err(Interrupted { step, dir }.into());
        }
    }
    bar.finish_and_clear();
    let train_seconds = seconds_before + start.elapsed().as_secs_f64();
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

fn add_inner<B: AutodiffBackend>(
    a: InnerPrim<B>,
    b: InnerPrim<B>,
    rank: usize,
) -> anyhow::Result<InnerPrim<B>> {
    use burn::tensor::TensorPrimitive;
    type I<B> = <B as AutodiffBackend>::InnerBackend;
    Ok(by_rank!(rank, |D| Ok((Tensor::<I<B>, D>::from_primitive(
        TensorPrimitive::Float(a)
    )
        + Tensor::<I<B>, D>::from_primitive(
            TensorPrimitive::Float(b)
        ))
    .into_primitive()
    .tensor()))?)
}

/// Scales all gradients so that their global L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`, with its 1e-6 in the denominator).
fn clip_global_norm<B: AutodiffBackend>(
    grads: &mut [Option<InnerPrim<B>>],
    max_norm: f64,
) -> anyhow::Result<()> {
    use burn::tensor::{TensorMetadata, TensorPrimitive};
    type I<B> = <B as AutodiffBackend>::InnerBackend;
    let mut sq = 0.0f64;
    for g in grads.iter().flatten() {
        let n = g.shape().num_elements();
        let flat =
            Tensor::<I<B>, 1>::from_primitive(TensorPrimitive::Float(g.clone())).reshape([n]);
        sq += flat.powf_scalar(2.0).sum().into_scalar().elem_f32() as f64;
    }
    let scale = max_norm / (sq.sqrt() + 1e-6);
    if scale < 1.0 {
        for g in grads.iter_mut() {
            if let Some(x) = g.take() {
                let rank = x.shape().num_dims();
                *g = Some(by_rank!(rank, |D| Ok((Tensor::<I<B>, D>::from_primitive(
                    TensorPrimitive::Float(x)
                ) * scale)
                    .into_primitive()
                    .tensor()))?);
            }
        }
    }
    Ok(())
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
