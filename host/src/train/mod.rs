//! The downstream trainer: one task or several mixed by a sampler, each with its head; loss,
//! optimiser over the trainable groups, evaluation, checkpoints.
pub mod checkpoint;
pub mod mixed;
pub mod optim;
mod relabel;
mod sampling;
pub mod services;

use std::{collections::BTreeMap, time::Instant};

use anyhow::Context;
use burn::tensor::{backend::AutodiffBackend, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::{
    bridge::HostGraph,
    config::RunConfig,
    data::{Example, Task, TaskKind},
    heads::{per_example_loss, target_text, Head, Output},
    model::Model,
};
pub use optim::schedule;
use optim::{accumulate, clip_global_norm, InnerPrim, Optim};
pub use sampling::task_probabilities;
use sampling::MultiSampler;
pub(crate) use sampling::Sampler;

/// One task's scores at one evaluation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub step: usize,
    pub task: String,
    /// The task's headline metric (its benchmark's convention, `Task::metric`) and its value.
    pub metric: String,
    pub score: f64,
    /// Mean negative log-likelihood of the answers (mean squared error for regression).
    pub loss: f64,
    pub examples: usize,
    /// Every metric computed: accuracy, macro_f1 (and matthews for two classes); pearson,
    /// spearman and mse for regression.
    pub metrics: BTreeMap<String, f64>,
}

impl Evaluation {
    /// A metric by name; NaN when this task's kind does not have it.
    pub fn get(&self, metric: &str) -> f64 {
        self.metrics.get(metric).copied().unwrap_or(f64::NAN)
    }

    pub fn accuracy(&self) -> f64 {
        self.get("accuracy")
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct TrainReport {
    /// The task names, `+`-joined when several train together.
    pub task: String,
    pub eval_split: String,
    pub train_examples: usize,
    pub steps: usize,
    pub losses: Vec<(usize, f64)>,
    /// Every task's evaluations, in step order.
    pub evaluations: Vec<Evaluation>,
    pub train_seconds: f64,
    pub seconds_per_step: f64,
    pub trainable_parameters: usize,
    /// How often each task was drawn for a training batch.
    pub batches_per_task: BTreeMap<String, usize>,
}

impl TrainReport {
    /// The last evaluation of a task.
    pub fn last(&self, task: &str) -> Option<&Evaluation> {
        self.evaluations.iter().rev().find(|e| e.task == task)
    }
}

/// A task with the head that answers it.
pub struct TaskRun<'a> {
    pub task: &'a Task,
    pub head: Head,
}

/// The training loss of one micro-batch: the head's loss plus the modules' auxiliary losses.
/// `answers` gives the label words this pass shows (`run.task`'s own, or permuted).
fn loss<B: AutodiffBackend>(
    model: &Model<B>,
    graph: &HostGraph<'_, B>,
    run: &TaskRun<'_>,
    answers: &Task,
    batch: &[&Example],
    t: &crate::config::TrainingSpec,
    device: &B::Device,
) -> anyhow::Result<Tensor<B, 1>> {
    crate::model::context::before_train_pass(model, graph, run.task, answers, batch)?;
    let out = run
        .head
        .forward(model, graph, answers, batch, t.max_length, device)?;
    let loss = per_example_loss(out, batch, t.label_smoothing, device).mean();
    Ok(graph.with_aux_losses(loss))
}

fn floats<B: burn::tensor::backend::Backend, const D: usize>(
    t: Tensor<B, D>,
) -> anyhow::Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// Scores a task's evaluation split with its head, without gradients.
pub fn evaluate<B: AutodiffBackend>(
    model: &Model<B>,
    run: &TaskRun<'_>,
    cfg: &RunConfig,
    step: usize,
    device: &B::Device,
) -> anyhow::Result<Evaluation> {
    let examples = &run.task.eval;
    let (mut preds, mut values, mut generated) = (Vec::new(), Vec::new(), Vec::new());
    let mut total_loss = 0.0;
    for chunk in examples.chunks(cfg.training.batch_size.max(1)) {
        let batch: Vec<&Example> = chunk.iter().collect();
        let graph = HostGraph::inference(&model.params);
        crate::model::context::before_eval_pass(model, &graph, run.task)?;
        let out = run.head.forward(
            model,
            &graph,
            run.task,
            &batch,
            cfg.training.max_length,
            device,
        )?;
        match out {
            Output::Scores { logits, valid } => {
                let logits = logits.detach();
                let n = batch.len();
                let width = logits.dims()[1];
                let scores = floats(logits.clone())?;
                let nll = floats(per_example_loss(
                    Output::Scores { logits, valid },
                    &batch,
                    0.0,
                    device,
                ))?;
                total_loss += nll.iter().map(|&x| x as f64).sum::<f64>();
                for i in 0..n {
                    let row = &scores[i * width..(i + 1) * width];
                    // The first of equal maxima, as torch.argmax.
                    let best = (0..width).fold(0, |b, j| if row[j] > row[b] { j } else { b });
                    preds.push(best);
                }
            }
            Output::Values(v) => {
                let v = floats(v.detach())?;
                for (p, e) in v.iter().zip(&batch) {
                    total_loss += (*p as f64 - e.value).powi(2);
                }
                values.extend(v.into_iter().map(f64::from));
            }
            Output::Loss(l) => {
                // Text-to-text: the loss is the gold answer's NLL; the prediction is what
                // greedy decoding writes, matched against the candidates (or read as a number).
                total_loss += floats(l.detach())?.iter().map(|&x| x as f64).sum::<f64>();
                let graph = HostGraph::inference(&model.params);
                crate::model::context::before_eval_pass(model, &graph, run.task)?;
                let texts =
                    run.head
                        .generate(model, &graph, &batch, cfg.training.max_length, device)?;
                for (text, e) in texts.iter().zip(&batch) {
                    let norm = crate::metrics::normalize_answer(text);
                    if run.task.kind == TaskKind::Regression {
                        values.push(text.trim().parse::<f64>().unwrap_or(f64::NAN));
                    } else {
                        let cands = e.candidates(&run.task.labels);
                        // An answer that is no candidate counts as a class of its own.
                        preds.push(
                            cands
                                .iter()
                                .position(|c| crate::metrics::normalize_answer(c) == norm)
                                .unwrap_or(cands.len()),
                        );
                    }
                    generated.push(text.clone());
                }
            }
        }
    }
    let n = examples.len().max(1);
    let mut metrics = BTreeMap::new();
    if !generated.is_empty() {
        let gold: Vec<String> = examples.iter().map(|e| target_text(e, run.task)).collect();
        metrics.insert(
            "exact_match".into(),
            crate::metrics::exact_match(&generated, &gold),
        );
    }
    if run.task.kind == TaskKind::Regression {
        let gold: Vec<f64> = examples.iter().map(|e| e.value).collect();
        // A generated answer that is not a number scores as 0.
        let unparsed = values.iter().filter(|v| v.is_nan()).count();
        let values: Vec<f64> = values
            .iter()
            .map(|v| if v.is_nan() { 0.0 } else { *v })
            .collect();
        metrics.insert("pearson".into(), crate::metrics::pearson(&values, &gold));
        metrics.insert("spearman".into(), crate::metrics::spearman(&values, &gold));
        let mse = values
            .iter()
            .zip(&gold)
            .map(|(p, g)| (p - g).powi(2))
            .sum::<f64>();
        metrics.insert("mse".into(), mse / n as f64);
        if !generated.is_empty() {
            metrics.insert("unparsed".into(), unparsed as f64 / n as f64);
        }
    } else {
        let gold: Vec<usize> = examples.iter().map(|e| e.label).collect();
        metrics.insert("accuracy".into(), crate::metrics::accuracy(&preds, &gold));
        metrics.insert("macro_f1".into(), crate::metrics::macro_f1(&preds, &gold));
        if run.task.kind == TaskKind::Classification && run.task.labels.len() == 2 {
            metrics.insert("matthews".into(), crate::metrics::matthews(&preds, &gold));
        }
    }
    let metric = run.task.metric.clone();
    let score = metrics.get(&metric).copied().with_context(|| {
        format!(
            "task `{}`: headline metric `{metric}` was not computed",
            run.task.name
        )
    })?;
    Ok(Evaluation {
        step,
        task: run.task.name.clone(),
        metric,
        score,
        loss: total_loss / n as f64,
        examples: examples.len(),
        metrics,
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
    /// The data-parallel group (single process by default): each rank trains on its share of
    /// every batch, gradients are averaged; only rank 0 evaluates and checkpoints.
    pub dist: crate::dist::Dist,
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

/// Trains on one task with the head `cfg.task.head` picks (parameters `head.*`, created
/// unless the model was built with them).
pub fn train_with<B: AutodiffBackend>(
    model: &Model<B>,
    task: &Task,
    cfg: &RunConfig,
    device: &B::Device,
    opts: &TrainOptions,
) -> anyhow::Result<TrainReport> {
    let head = Head::resolve(&cfg.task, task, "head")?;
    head.create(&mut model.params.borrow_mut(), model.info().hidden_size)?;
    train_tasks(model, &[TaskRun { task, head }], cfg, device, opts)
}

/// Trains on several tasks at once (each batch from one task, drawn by
/// `training.task_sampling`) and evaluates each on its own split.
pub fn train_tasks<B: AutodiffBackend>(
    model: &Model<B>,
    runs: &[TaskRun<'_>],
    cfg: &RunConfig,
    device: &B::Device,
    opts: &TrainOptions,
) -> anyhow::Result<TrainReport> {
    anyhow::ensure!(!runs.is_empty(), "no task to train on");
    for r in runs {
        anyhow::ensure!(
            !r.task.train.is_empty(),
            "task `{}` has no training examples",
            r.task.name
        );
    }
    let progress = opts.progress;
    let t = &cfg.training;
    model.set_trainable(&t.train_groups)?;
    let trainable: usize = model.params.borrow().trainable().map(|p| p.numel()).sum();
    anyhow::ensure!(
        trainable > 0,
        "no parameter is trainable: train_groups {:?} matched nothing",
        t.train_groups
    );
    let dist = &opts.dist;
    let evaluate_all = |step: usize| -> anyhow::Result<Vec<Evaluation>> {
        if !dist.is_main() {
            return Ok(Vec::new());
        }
        runs.iter()
            .map(|r| evaluate(model, r, cfg, step, device))
            .collect()
    };
    let mut opt = Optim::<B>::new(t);
    let sizes: Vec<usize> = runs.iter().map(|r| r.task.train.len()).collect();
    let mut sampler = MultiSampler::new(&sizes, t, cfg.seed)?;
    mixed::register_tasks(model, runs);
    let mut mixed = if t.mixed_batches {
        Some(mixed::MixedSampler::new(&sizes, t, cfg.seed)?)
    } else {
        None
    };
    let mut batches_per_task: BTreeMap<String, usize> = BTreeMap::new();
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
            if let Some(m) = mixed.as_mut() {
                for (i, _) in m.next_batch(t.batch_size) {
                    *batches_per_task
                        .entry(runs[i].task.name.clone())
                        .or_default() += 1;
                }
                continue;
            }
            let (i, _) = sampler.next_batch(t.batch_size);
            *batches_per_task
                .entry(runs[i].task.name.clone())
                .or_default() += 1;
        }
        first_step = done.step + 1;
        losses = done.losses;
        evaluations = done.evaluations;
        seconds_before = done.train_seconds;
        tracing::info!(step = done.step, "resumed from checkpoint");
    }
    dist.check_start(cfg, &model.params.borrow())?;
    let names: Vec<&str> = runs.iter().map(|r| r.task.name.as_str()).collect();
    let bar = if progress && dist.is_main() {
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
    bar.set_prefix(format!("train {}", names.join("+")));
    bar.set_position(first_step as u64 - 1);
    let start = Instant::now();
    for step in first_step..=t.steps {
        // Dropout draws from a stream seeded per step, so a resumed run draws what an
        // uninterrupted one does.
        B::seed(
            device,
            cfg.seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(step as u64)
                .wrapping_add(dist.seed_offset()),
        );
        // Gradients of `gradient_accumulation` micro-batches, averaged, per trainable parameter.
        let n_trainable = model.params.borrow().trainable().count();
        let mut summed: Vec<Option<InnerPrim<B>>> = (0..n_trainable).map(|_| None).collect();
        let mut lv = 0.0f32;
        for micro in 0..accumulation {
            if let Some(m) = mixed.as_mut() {
                let all = m.next_batch(t.batch_size);
                // The other ranks' rows count as drawn too, as they would in one process.
                for (i, _) in dist.others(&all) {
                    *batches_per_task
                        .entry(runs[*i].task.name.clone())
                        .or_default() += 1;
                }
                let items = dist.shard(all);
                let graph = HostGraph::new(&model.params, true);
                let l = mixed::loss(
                    model,
                    &graph,
                    runs,
                    &items,
                    t,
                    &mut batches_per_task,
                    device,
                )
                .with_context(|| format!("step {step}, micro-batch {micro} (mixed tasks)"))?;
                lv += l.clone().into_scalar().elem_f32() / accumulation as f32;
                let grads = (l / accumulation as f64).backward();
                drop(graph);
                accumulate::<B>(model, &grads, &mut summed)?;
                continue;
            }
            let (ti, idx) = sampler.next_batch(t.batch_size);
            let run = &runs[ti];
            *batches_per_task.entry(run.task.name.clone()).or_default() += 1;
            let batch: Vec<&Example> = dist
                .shard(idx)
                .into_iter()
                .map(|i| &run.task.train[i])
                .collect();
            let graph = HostGraph::new(&model.params, true);
            let permuted =
                relabel::draw(run.task, &run.head, t.permute_labels, cfg.seed, step, micro);
            let answers = permuted.as_ref().unwrap_or(run.task);
            let l = loss(model, &graph, run, answers, &batch, t, device).with_context(|| {
                format!("step {step}, micro-batch {micro} (task {})", run.task.name)
            })?;
            lv += l.clone().into_scalar().elem_f32() / accumulation as f32;
            let grads = (l / accumulation as f64).backward();
            drop(graph);
            accumulate::<B>(model, &grads, &mut summed)?;
        }
        let asked_stop =
            opts.stop_after == Some(step) || INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst);
        // Data-parallel: the mean over ranks of gradients, loss and stop requests.
        let (lv, any_stop) = dist.average(&model.params.borrow(), &mut summed, lv, asked_stop)?;
        if let Some(max_norm) = t.max_grad_norm {
            clip_global_norm::<B>(&mut summed, max_norm)?;
        }
        {
            let mut store = model.params.borrow_mut();
            for (p, g) in store.trainable_mut().zip(summed) {
                if let Some(g) = g {
                    let peak = t.group_learning_rates.get(&p.group);
                    let peak = peak.copied().unwrap_or(t.learning_rate);
                    opt.set_lr(schedule(peak, step, t.warmup_steps, t.steps));
                    opt.step(p, g)?;
                }
            }
        }
        losses.push((step, lv as f64));
        bar.set_message(format!("loss {lv:.4}"));
        bar.inc(1);
        if t.eval_every > 0 && step % t.eval_every == 0 && step != t.steps {
            evaluations.extend(evaluate_all(step)?);
        }
        let stop = any_stop;
        let periodic = t.checkpoint_every > 0 && step % t.checkpoint_every == 0 && step != t.steps;
        let writes = dist.is_main() && (stop || periodic);
        if let Some(dir) = opts.checkpoint_dir.as_deref().filter(|_| writes) {
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
    evaluations.extend(evaluate_all(t.steps)?);
    let splits: Vec<&str> = runs.iter().map(|r| r.task.eval_split.as_str()).collect();
    Ok(TrainReport {
        task: names.join("+"),
        eval_split: splits.join("+"),
        train_examples: sizes.iter().sum(),
        steps: t.steps,
        losses,
        evaluations,
        train_seconds,
        seconds_per_step: train_seconds / t.steps.max(1) as f64,
        trainable_parameters: trainable,
        batches_per_task,
    })
}
