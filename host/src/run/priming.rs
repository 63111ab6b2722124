//! The two-stage run of a config with a `priming` section (see `config::PrimingSpec`).
//!
//! Stage 1 builds the model with a head per upstream task, makes the upstream and downstream
//! groups (and the heads) trainable, and hands the priming plugin one [`HostGraph`] and the
//! host's trainer services ([`Services`]). Checkpoints go to `<run>/stage1/checkpoint`; SIGINT
//! stops after the current step with a checkpoint, and `--resume` continues from it to the
//! same primed weights. The primed upstream groups are written atomically to
//! `<run>/primed.safetensors`.
//!
//! Stage 2, per downstream task and split seed: a fresh model (same seed), the primed tensors
//! loaded, then the ordinary trainer on the downstream groups and the task's head only.
use std::{collections::BTreeMap, path::Path, time::Instant};

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use crate::{
    bridge::{value::ft, HostGraph},
    by_rank,
    config::{PrimingSpec, RunConfig},
    model::Model,
    train::{
        services::{ServiceOptions, Services},
        Interrupted, TaskRun, TrainOptions,
    },
};

/// How stage 1 is driven beyond the config.
#[derive(Clone, Debug, Default)]
pub struct PrimeOptions {
    pub resume: bool,
    /// Stop after this many upstream steps, as SIGINT does (tests).
    pub stop_after: Option<usize>,
}

/// What stage 1 reports.
#[derive(Serialize, Clone, Debug)]
pub struct PrimeReport {
    pub plugin: String,
    pub combination: String,
    pub upstream_tasks: Vec<String>,
    pub steps: usize,
    pub losses: Vec<(usize, f64)>,
    pub seconds: f64,
    pub seconds_per_step: f64,
    /// The plugin's own report.
    pub plugin_report: serde_json::Value,
    /// Parameters written to `primed.safetensors`.
    pub primed_parameters: usize,
}

/// One downstream fine-tuning run.
#[derive(Serialize, Clone, Debug)]
pub struct DownstreamRow {
    pub task: String,
    pub split_seed: u64,
    pub metric: String,
    pub score: f64,
    pub seconds: f64,
}

/// The groups stage 1 makes trainable: upstream, downstream, and the upstream tasks' heads.
fn with_head(groups: &[String]) -> Vec<String> {
    let mut g = groups.to_vec();
    if !g.iter().any(|x| x == "head") {
        g.push("head".into());
    }
    g
}

fn spec_of(cfg: &RunConfig) -> anyhow::Result<&PrimingSpec> {
    cfg.priming
        .as_ref()
        .context("this config has no `priming` section")
}

/// Stage 1: primes the model on the upstream tasks and writes `<dir>/primed.safetensors`.
pub fn prime<B: AutodiffBackend>(
    cfg: &RunConfig,
    registry: &peft_registry::Registry,
    data: &Path,
    dir: &Path,
    opts: &PrimeOptions,
    device: &B::Device,
) -> anyhow::Result<PrimeReport> {
    let spec = spec_of(cfg)?;
    anyhow::ensure!(
        !spec.upstream_tasks.is_empty(),
        "/priming/upstream_tasks: priming needs at least one upstream task"
    );
    let mut tasks = Vec::with_capacity(spec.upstream_tasks.len());
    for (i, t) in spec.upstream_tasks.iter().enumerate() {
        let task = crate::data::load(data, t, cfg.seed)
            .with_context(|| format!("/priming/upstream_tasks/{i}"))?;
        anyhow::ensure!(
            !task.train.is_empty(),
            "/priming/upstream_tasks/{i}: task `{}` has no training examples",
            task.name
        );
        tasks.push(task);
    }
    let model = Model::<B>::build(cfg, registry, device, 0)?;
    let mut runs = Vec::with_capacity(tasks.len());
    for (task, t) in tasks.iter().zip(&spec.upstream_tasks) {
        let prefix = format!("head.{}", task.name.replace(['/', '.'], "-"));
        let head = crate::heads::Head::resolve(t, task, &prefix)?;
        head.create(&mut model.params.borrow_mut(), model.info().hidden_size)?;
        runs.push(TaskRun { task, head });
    }
    let mut trainable = with_head(&spec.upstream_groups);
    trainable.extend(spec.downstream_groups.iter().cloned());
    model.set_trainable(&trainable)?;
    for g in spec.upstream_groups.iter().chain(&spec.downstream_groups) {
        anyhow::ensure!(
            model.params.borrow().iter().any(|p| &p.group == g),
            "/priming: no parameter is in group `{g}`; which module creates it?"
        );
    }
    let graph = HostGraph::new(&model.params, true);
    let services = Services::new(
        &model,
        &graph,
        &runs,
        cfg,
        device.clone(),
        ServiceOptions {
            upstream_groups: with_head(&spec.upstream_groups),
            downstream_groups: with_head(&spec.downstream_groups),
            steps: spec.steps,
            checkpoint_every: spec.checkpoint_every,
            checkpoint_dir: Some(dir.join("stage1")),
            resume: opts.resume,
            stop_after: opts.stop_after,
        },
    )?;
    let mut plugin = registry
        .create_priming(&spec.plugin, &spec.config)
        .map_err(|e| anyhow::anyhow!("/priming/plugin: {e}"))?;
    let start = Instant::now();
    let done_before = services.steps_done();
    let result = plugin.run(graph.as_abi(), services.as_abi()).into_result();
    if let Some(step) = services.stopped() {
        return Err(Interrupted {
            step,
            dir: dir.join("stage1"),
        }
        .into());
    }
    let plugin_report = match result {
        Ok(r) => serde_json::from_str(r.as_str()).unwrap_or(serde_json::Value::Null),
        Err(e) => bail!("priming plugin `{}`: {e}", spec.plugin),
    };
    anyhow::ensure!(
        services.steps_done() == spec.steps,
        "priming plugin `{}` returned after {} of {} steps (it must call `next_step` until it answers done)",
        spec.plugin,
        services.steps_done(),
        spec.steps
    );
    let seconds = start.elapsed().as_secs_f64();
    let losses = services.losses();
    drop(services);
    drop(graph);
    let primed_parameters = save_primed(
        &model,
        &spec.upstream_groups,
        &dir.join("primed.safetensors"),
    )?;
    let ran = spec.steps - done_before;
    Ok(PrimeReport {
        plugin: spec.plugin.clone(),
        combination: spec.combination(),
        upstream_tasks: tasks.iter().map(|t| t.name.clone()).collect(),
        steps: spec.steps,
        losses,
        seconds,
        seconds_per_step: seconds / ran.max(1) as f64,
        plugin_report,
        primed_parameters,
    })
}

/// Writes the parameters of `groups` (safetensors, atomically); returns their element count.
pub fn save_primed<B: AutodiffBackend>(
    model: &Model<B>,
    groups: &[String],
    path: &Path,
) -> anyhow::Result<usize> {
    let store = model.params.borrow();
    let mut tensors = Vec::new();
    for p in store.iter().filter(|p| groups.contains(&p.group)) {
        let v: Vec<f32> = by_rank!(p.shape.len(), |D| Ok(ft::<B, D>(p.value.clone())
            .inner()
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| peft_api::ApiError::internal(format!("{e:?}")))?))?;
        tensors.push((p.name.clone(), p.shape.clone(), v));
    }
    let count = tensors.iter().map(|t| t.2.len()).sum();
    let bytes = crate::backbone::weights::serialize_f32(&tensors)?;
    crate::files::write_atomic(path, &bytes)?;
    Ok(count)
}

/// Loads `primed.safetensors` into a model (every tensor must exist with its shape).
pub fn load_primed<B: AutodiffBackend>(model: &Model<B>, path: &Path) -> anyhow::Result<usize> {
    let ck = crate::backbone::weights::Checkpoint::read(path)?;
    let mut store = model.params.borrow_mut();
    let device = store.device.clone();
    let mut n = 0;
    for (name, (shape, v)) in ck.tensors {
        anyhow::ensure!(
            store.contains(&name),
            "{}: tensor `{name}` is no parameter of this model",
            path.display()
        );
        n += v.len();
        let prim = crate::params::from_values::<B>(&shape, v, &device)?;
        store.assign(&name, prim)?;
    }
    Ok(n)
}

/// Values of a parameter (for tests comparing primed states).
pub fn param_values<B: AutodiffBackend>(model: &Model<B>, name: &str) -> anyhow::Result<Vec<f32>> {
    let store = model.params.borrow();
    let p = store
        .get(name)
        .with_context(|| format!("no parameter `{name}`"))?;
    Ok(by_rank!(p.shape.len(), |D| Ok(ft::<B, D>(
        p.value.clone()
    )
    .into_data()
    .convert::<f32>()
    .into_vec::<f32>()
    .map_err(|e| peft_api::ApiError::internal(format!(
        "{e:?}"
    )))?))?)
}

/// Stage 2: fine-tunes the downstream groups (and the head) on each downstream task's split,
/// per split seed, from `primed` (none: from the plain initialisation, which is FT_A).
pub fn fine_tune<B: AutodiffBackend>(
    cfg: &RunConfig,
    registry: &peft_registry::Registry,
    data: &Path,
    primed: Option<&Path>,
    progress: bool,
    device: &B::Device,
) -> anyhow::Result<Vec<DownstreamRow>> {
    let spec = spec_of(cfg)?;
    let mut down = cfg.clone();
    down.priming = None;
    down.training.train_groups = with_head(&spec.downstream_groups);
    let mut rows = Vec::new();
    for t in cfg.task_specs() {
        for &seed in &spec.split_seeds {
            let mut ts = t.clone();
            ts.split_seed = seed;
            let task = crate::data::load(data, &ts, cfg.seed)
                .with_context(|| format!("downstream task `{}`, split seed {seed}", t.name))?;
            let model = Model::<B>::build(&down, registry, device, 0)?;
            if let Some(p) = primed {
                load_primed(&model, p)?;
            }
            let start = Instant::now();
            let report = crate::train::train_with(
                &model,
                &task,
                &down,
                device,
                &TrainOptions {
                    progress,
                    ..Default::default()
                },
            )?;
            let last = report.last(&task.name).context("no evaluation")?;
            tracing::info!(task = %task.name, split_seed = seed, score = last.score, "downstream");
            rows.push(DownstreamRow {
                task: task.name.clone(),
                split_seed: seed,
                metric: last.metric.clone(),
                score: last.score,
                seconds: start.elapsed().as_secs_f64(),
            });
        }
    }
    Ok(rows)
}

/// Mean and (sample) standard deviation of each task's scores over split seeds.
pub fn summarise(rows: &[DownstreamRow]) -> BTreeMap<String, (f64, f64)> {
    let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in rows {
        by.entry(r.task.clone()).or_default().push(r.score);
    }
    by.into_iter()
        .map(|(t, v)| {
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let var = if v.len() > 1 {
                v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
            } else {
                0.0
            };
            (t, (mean, var.sqrt()))
        })
        .collect()
}

/// `run` for a config with a `priming` section: both stages, result.json, a table.
pub fn run_two_stage<B: AutodiffBackend>(
    cfg: &RunConfig,
    registry: &peft_registry::Registry,
    data: &Path,
    out: &Path,
    flags: super::RunFlags,
    device: &B::Device,
) -> anyhow::Result<()> {
    let spec = spec_of(cfg)?;
    anyhow::ensure!(
        cfg.init_from.is_none(),
        "/init_from: a run with a `priming` section starts stage 2 from its primed state; init_from is for single-stage runs"
    );
    let name = format!(
        "{}-{}-{}",
        super::run_name(cfg),
        spec.plugin,
        spec.combination().replace('+', "p")
    );
    let dir = out.join(&name);
    let primed = dir.join("primed.safetensors");
    let stamp = dir.join("primed.json");
    let identity = stage1_identity(cfg)?;
    if flags.resume && primed.exists() {
        check_stage1_identity(&stamp, &identity)?;
    }
    let stage1 = if flags.resume && primed.exists() {
        tracing::info!("stage 1 already complete: {}", primed.display());
        None
    } else {
        let r = prime::<B>(
            cfg,
            registry,
            data,
            &dir,
            &PrimeOptions {
                resume: flags.resume && dir.join("stage1").exists(),
                stop_after: None,
            },
            device,
        )?;
        if flags.progress {
            eprintln!(
                "primed {} ({}) on {} tasks: {} steps, {:.3} s/step",
                r.plugin,
                r.combination,
                r.upstream_tasks.len(),
                r.steps,
                r.seconds_per_step
            );
        }
        crate::files::write_atomic(&stamp, serde_json::to_string_pretty(&identity)?.as_bytes())?;
        Some(r)
    };
    let rows = fine_tune::<B>(cfg, registry, data, Some(&primed), flags.progress, device)?;
    let summary = summarise(&rows);
    let result = serde_json::json!({
        "config": cfg,
        "code_version": crate::serve::code_version(),
        "combination": spec.combination(),
        "stage1": stage1,
        "downstream": rows,
        "summary": summary.iter().map(|(t, (m, s))| serde_json::json!({"task": t, "mean": m, "std": s})).collect::<Vec<_>>(),
    });
    let path = dir.join("result.json");
    crate::files::write_atomic(&path, serde_json::to_string_pretty(&result)?.as_bytes())?;
    println!(
        "{:<32} {:>12} {:>8} {:>8}",
        "task",
        spec.combination(),
        "mean",
        "std"
    );
    for (t, (m, s)) in &summary {
        println!("{t:<32} {:>12} {m:>8.4} {s:>8.4}", "");
    }
    println!("result: {}", path.display());
    Ok(())
}

/// What stage 1's result depends on: the code, the seed, the backbone and modules, the priming
/// section (but the downstream split seeds) and the training fields the trainer services read
/// (batch size, length, label smoothing, mixed batches). Stage 2's own settings (learning rate,
/// steps, tasks, evaluation split) are left out, so `--resume` reuses a primed state for another
/// downstream setting, and only then.
pub fn stage1_identity(cfg: &RunConfig) -> anyhow::Result<serde_json::Value> {
    let mut priming = serde_json::to_value(spec_of(cfg)?)?;
    if let Some(p) = priming.as_object_mut() {
        p.remove("split_seeds");
    }
    let t = &cfg.training;
    Ok(serde_json::json!({
        "code_version": crate::serve::code_version(),
        "seed": cfg.seed,
        "backbone": cfg.backbone,
        "modules": cfg.modules,
        "priming": priming,
        "training": {
            "batch_size": t.batch_size,
            "max_length": t.max_length,
            "label_smoothing": t.label_smoothing,
            "mixed_batches": t.mixed_batches,
        },
    }))
}

/// Refuses to reuse a primed state that another config or build wrote (or one without a stamp).
fn check_stage1_identity(stamp: &Path, identity: &serde_json::Value) -> anyhow::Result<()> {
    let stored: serde_json::Value = match std::fs::read(stamp) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("{}: not a stage-1 stamp", stamp.display()))?,
        Err(e) => bail!(
            "{}: {e}; the primed state beside it cannot be matched to this config \
             (run without --resume to prime again)",
            stamp.display()
        ),
    };
    if &stored == identity {
        return Ok(());
    }
    let differs: Vec<String> = identity
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| stored.get(k.as_str()) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    bail!(
        "{}: the primed state was made by another {} (run without --resume, or with another --out, \
         to prime again)",
        stamp.display(),
        differs.join(", ")
    )
}

/// The priming part of `plan`: upstream and downstream tasks and groups with their counts.
pub fn plan_of<B: AutodiffBackend>(
    cfg: &RunConfig,
    model: &Model<B>,
) -> Option<crate::plan::PrimingPlan> {
    let spec = cfg.priming.as_ref()?;
    let counts = model.params.borrow().counts_by_group();
    let sets = |groups: &[String]| -> BTreeMap<String, usize> {
        groups
            .iter()
            .map(|g| (g.clone(), counts.get(g).map_or(0, |c| c.0)))
            .collect()
    };
    Some(crate::plan::PrimingPlan {
        plugin: spec.plugin.clone(),
        combination: spec.combination(),
        upstream_tasks: spec.upstream_tasks.iter().map(|t| t.name.clone()).collect(),
        downstream_tasks: cfg.task_specs().iter().map(|t| t.name.clone()).collect(),
        split_seeds: spec.split_seeds.clone(),
        steps: spec.steps,
        upstream_groups: sets(&spec.upstream_groups),
        downstream_groups: sets(&spec.downstream_groups),
    })
}
