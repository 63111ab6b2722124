//! Adapting a new task without a gradient step (HyperT5): the hypermodel of a run trained with a
//! `context_encoder` reads the task's few-shot examples once, and what it generates is written
//! into *ordinary* modules (each consumer's twin without `from_context`, through the module's
//! `load_generated` call) that are saved as an adapter folder in the format of a trained one —
//! `predict`, `eval`, `export` and `--resume`-free fine-tuning (hyper-init) then use it as any
//! other adapter.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use super::folder::{self, Loaded};
use crate::{
    bridge::HostGraph,
    config::{HeadKind, ModuleSpec, RunConfig, TaskSpec},
    data::Task,
    heads::Head,
    model::Model,
};

/// Where the few-shot examples come from.
pub enum Examples {
    /// A task of the data folder (its k-shot `_train` file of `split_seed`).
    Task { name: String, split_seed: u64 },
    /// A CrossFit-format JSONL file (`input`, `output`, `options` per line).
    File { path: PathBuf, name: String },
}

/// What `adapt` reports (`adapt.json` beside the new adapter).
#[derive(Serialize, Clone, Debug)]
pub struct AdaptReport {
    pub hypermodel: String,
    pub code_version: String,
    pub task: String,
    /// Examples the hypermodel read (the first `k` of the task's training examples).
    pub examples_read: usize,
    pub modules: Vec<String>,
    /// Seconds for the hypermodel's forward pass over the examples and the writes into the
    /// modules (no gradient step).
    pub generation_seconds: f64,
    pub out: String,
}

/// The task whose examples the hypermodel reads.
pub fn load_examples(data: &Path, ex: &Examples) -> anyhow::Result<Task> {
    match ex {
        Examples::Task { name, split_seed } => {
            let spec = TaskSpec {
                name: name.clone(),
                split_seed: *split_seed,
                ..Default::default()
            };
            crate::data::load(data, &spec, 0).with_context(|| format!("loading task `{name}`"))
        }
        Examples::File { path, name } => {
            let mut labels = Vec::new();
            let train = crate::data::read_crossfit(path, &mut labels)?;
            if train.is_empty() {
                bail!("{}: no examples", path.display());
            }
            let kind = crate::data::kind_of_examples(&train);
            Ok(Task {
                name: name.clone(),
                kind,
                metric: crate::data::headline_metric(name, kind).into(),
                labels,
                train,
                eval: Vec::new(),
                eval_split: "none".into(),
            })
        }
    }
}

/// The run config of the adapted model: the hypermodel run's backbone and seed, each consumer
/// module without `from_context` (same plugin, instance name and shape settings), every other
/// module as it was (HyperT5+: a downstream module trained with the hypermodel keeps its trained
/// values), and the task with the shared option-scoring head.
fn adapted_config(cfg: &RunConfig, consumers: &[String], task: &Task) -> anyhow::Result<RunConfig> {
    let mut modules = Vec::new();
    for m in &cfg.modules {
        let name = m.instance_name();
        let mut config = m.config.clone();
        if consumers.contains(&name) {
            if let Some(o) = config.as_object_mut() {
                o.remove("from_context");
            }
        }
        modules.push(ModuleSpec {
            plugin: m.plugin.clone(),
            name: Some(name),
            config,
        });
    }
    let mut out = cfg.clone();
    out.modules = modules;
    out.context_encoder = None;
    out.tasks = Vec::new();
    out.task = TaskSpec {
        name: task.name.clone(),
        head: HeadKind::OptionScoring,
        ..Default::default()
    };
    Ok(out)
}

/// Generates the modules for `task` from a hypermodel folder and saves them into `out`.
pub fn adapt<B: AutodiffBackend>(
    hyper: &Loaded<B>,
    task: &Task,
    registry: &peft_registry::Registry,
    out: &Path,
    device: &B::Device,
) -> anyhow::Result<AdaptReport> {
    let dir = hyper.dir.display();
    let enc = hyper.model.context_encoder.as_ref().with_context(|| {
        format!("{dir}: this adapter was not trained with a context encoder (no hypermodel to generate from)")
    })?;
    let cfg = &hyper.manifest.config;
    let consumers: Vec<String> = cfg
        .modules
        .iter()
        .filter(|m| m.config.get("from_context").is_some())
        .map(|m| m.instance_name())
        .collect();
    if consumers.is_empty() {
        bail!("{dir}: no module reads the context encoder's output (`from_context`)");
    }
    let head_of = |t: &folder::TaskRecord| matches!(t.head, Head::OptionScoring);
    if !hyper.manifest.tasks.iter().any(head_of) {
        bail!("{dir}: the hypermodel run has no option-scoring head, so an unseen task has no head to answer with");
    }
    let new_cfg = adapted_config(cfg, &consumers, task)?;
    let model = Model::<B>::build(&new_cfg, registry, device, 0)
        .with_context(|| format!("{dir}: building the adapted model"))?;
    let head = Head::resolve(&new_cfg.task, task, "head")?;
    head.create(&mut model.params.borrow_mut(), model.info().hidden_size)?;
    // The shared option head and the modules that are not generated (HyperT5+'s downstream
    // module), as trained with the hypermodel.
    {
        let src = hyper.model.params.borrow();
        let mut dst = model.params.borrow_mut();
        let names: Vec<String> = dst
            .iter()
            .filter(|p| {
                p.group == "head" || (p.owner != "backbone" && !consumers.contains(&p.owner))
            })
            .map(|p| p.name.clone())
            .collect();
        for n in names {
            let p = src
                .iter()
                .find(|p| p.name == n)
                .with_context(|| format!("{dir}: the hypermodel run has no `{n}`"))?;
            dst.assign(&n, p.value.clone())?;
        }
    }
    // Generated values are cached by task name: another task of the same name must not reuse them.
    enc.clear_cache();
    let start = Instant::now();
    let generated = enc.generated(&hyper.model, task)?;
    let graph = HostGraph::inference(&model.params);
    for (n, v) in generated {
        graph.context.borrow_mut().insert(n, v);
    }
    for m in model
        .modules
        .modules
        .iter()
        .filter(|m| consumers.contains(&m.name))
    {
        let source = cfg
            .modules
            .iter()
            .find(|s| s.instance_name() == m.name)
            .and_then(|s| s.config.get("from_context"))
            .and_then(|c| c.as_str())
            .context("consumer without from_context")?;
        let args = serde_json::json!({ "context": source }).to_string();
        m.call(&graph, "load_generated", &args)
            .map_err(|e| anyhow::anyhow!("writing `{source}` into `{}`: {e}", m.name))?
            .with_context(|| format!("{} has no `load_generated`", m.describe()))?;
    }
    drop(graph);
    let generation_seconds = start.elapsed().as_secs_f64();
    folder::save(&model, &new_cfg, &[(task, &head)], out)?;
    let report = AdaptReport {
        hypermodel: dir.to_string(),
        code_version: super::code_version(),
        task: task.name.clone(),
        examples_read: enc.k.min(task.train.len()),
        modules: consumers,
        generation_seconds,
        out: out.display().to_string(),
    };
    crate::files::write_atomic(
        &out.join("adapt.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}
