//! The run pipeline the library owns: a validated config in; tasks loaded, the model built,
//! trained and evaluated; result.json, curves.svg and a table out. The CLI only parses
//! arguments and calls in here, so tests and other front ends run exactly what `run` runs.
pub mod caclm;
pub mod priming;
pub mod transfer;

use std::path::Path;

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;

use crate::{config::RunConfig, device::DeviceSpec, model::Model, plan::Plan};

/// Runs `f` on the selected device's backend.
pub fn with_device<T>(
    spec: DeviceSpec,
    f: impl FnOnce(&dyn DeviceRunner<T>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    match spec {
        DeviceSpec::Cpu => f(&CpuRunner),
        DeviceSpec::Cuda(i) => {
            crate::device::check_cuda(i)?;
            #[cfg(feature = "cuda")]
            {
                return f(&CudaRunner(i));
            }
            #[allow(unreachable_code)]
            {
                bail!("CUDA support is not compiled in")
            }
        }
    }
}

/// Object-safe bridge from a device choice to generic code.
pub trait DeviceRunner<T> {
    fn plan(&self, cfg: &RunConfig, registry: &peft_registry::Registry) -> anyhow::Result<Plan>;
    fn run(
        &self,
        cfg: &RunConfig,
        registry: &peft_registry::Registry,
        data: &Path,
        out: &Path,
        flags: RunFlags,
    ) -> anyhow::Result<()>;
}

struct CpuRunner;

impl<T> DeviceRunner<T> for CpuRunner {
    fn plan(&self, cfg: &RunConfig, registry: &peft_registry::Registry) -> anyhow::Result<Plan> {
        plan_generic::<crate::device::Cpu>(cfg, registry, &Default::default())
    }
    fn run(
        &self,
        cfg: &RunConfig,
        registry: &peft_registry::Registry,
        data: &Path,
        out: &Path,
        flags: RunFlags,
    ) -> anyhow::Result<()> {
        run_generic::<crate::device::Cpu>(cfg, registry, data, out, flags, &Default::default())
    }
}

#[cfg(feature = "cuda")]
struct CudaRunner(usize);

#[cfg(feature = "cuda")]
impl<T> DeviceRunner<T> for CudaRunner {
    fn plan(&self, cfg: &RunConfig, registry: &peft_registry::Registry) -> anyhow::Result<Plan> {
        plan_generic::<crate::device::Cuda>(cfg, registry, &burn_cuda::CudaDevice::new(self.0))
    }
    fn run(
        &self,
        cfg: &RunConfig,
        registry: &peft_registry::Registry,
        data: &Path,
        out: &Path,
        flags: RunFlags,
    ) -> anyhow::Result<()> {
        run_generic::<crate::device::Cuda>(
            cfg,
            registry,
            data,
            out,
            flags,
            &burn_cuda::CudaDevice::new(self.0),
        )
    }
}

pub fn plan_for(
    cfg: &RunConfig,
    registry: &peft_registry::Registry,
    dev: &dyn DeviceRunner<Plan>,
) -> anyhow::Result<Plan> {
    dev.plan(cfg, registry)
}

pub fn run(
    cfg: &RunConfig,
    registry: &peft_registry::Registry,
    data: &Path,
    out: &Path,
    flags: RunFlags,
    dev: &dyn DeviceRunner<()>,
) -> anyhow::Result<()> {
    dev.run(cfg, registry, data, out, flags)
}

/// How `run` drives training beyond the config.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunFlags {
    pub progress: bool,
    pub resume: bool,
}

pub fn plan_generic<B: AutodiffBackend>(
    cfg: &RunConfig,
    registry: &peft_registry::Registry,
    device: &B::Device,
) -> anyhow::Result<Plan> {
    let names: Vec<String> = cfg.task_specs().into_iter().map(|t| t.name).collect();
    let cfg = &crate::config::fill_num_tasks(cfg, &names, registry);
    let model = Model::<B>::build(cfg, registry, device, 2)?;
    let mut plan = Plan::of(&model, &cfg.training.train_groups)?;
    plan.priming = priming::plan_of(cfg, &model);
    Ok(plan)
}

pub fn run_generic<B: AutodiffBackend>(
    cfg: &RunConfig,
    registry: &peft_registry::Registry,
    data: &Path,
    out: &Path,
    flags: RunFlags,
    device: &B::Device,
) -> anyhow::Result<()> {
    let progress = flags.progress;
    let dist = crate::dist::current();
    if cfg.priming.is_some() {
        anyhow::ensure!(
            dist.is_single(),
            "data-parallel training (--world-size) runs plain runs, not two-stage priming runs"
        );
        return priming::run_two_stage::<B>(cfg, registry, data, out, flags, device);
    }
    if cfg.caclm.is_some() {
        return caclm::run::<B>(cfg, registry, out, flags, device);
    }
    let specs = cfg.task_specs();
    let mut tasks = Vec::with_capacity(specs.len());
    for (i, t) in specs.iter().enumerate() {
        let task = crate::data::load(data, t, cfg.seed).with_context(|| {
            if cfg.tasks.is_empty() {
                "/task".to_string()
            } else {
                format!("/tasks/{i}")
            }
        })?;
        tracing::info!(task = %task.name, kind = ?task.kind, train = task.train.len(), eval = task.eval.len(), labels = ?task.labels, metric = %task.metric, "loaded task");
        tasks.push(task);
    }
    let names: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
    let cfg = &crate::config::fill_num_tasks(cfg, &names, registry);
    let model = Model::<B>::build(cfg, registry, device, 0)?;
    let mut runs = Vec::with_capacity(tasks.len());
    for (task, spec) in tasks.iter().zip(&specs) {
        // One task keeps the plain `head.*` names; several get `head.<task>.*` each.
        let prefix = if tasks.len() == 1 {
            "head".to_string()
        } else {
            format!("head.{}", task.name.replace(['/', '.'], "-"))
        };
        let head = crate::heads::Head::resolve(spec, task, &prefix)?;
        head.create(&mut model.params.borrow_mut(), model.info().hidden_size)?;
        runs.push(crate::train::TaskRun { task, head });
    }
    let init = match &cfg.init_from {
        Some(dir) => {
            let r = crate::serve::init::init_from(&model, cfg, dir).context("/init_from")?;
            tracing::info!(folder = %r.folder, tensors = r.tensors, elements = r.elements, unused = ?r.unused, "initialised from an adapter folder");
            Some(r)
        }
        None => None,
    };
    let prototypes = match &cfg.prototype {
        Some(spec) => Some(transfer::pick_prototypes(
            &model,
            spec,
            &runs,
            cfg.training.max_length,
            cfg.seed,
            device,
        )?),
        None => None,
    };
    let plan = Plan::of(&model, &cfg.training.train_groups)?;
    if progress && dist.is_main() {
        eprint!("{}", plan.render());
    }
    let modules = cfg
        .modules
        .iter()
        .map(|m| m.instance_name())
        .collect::<Vec<_>>()
        .join("+");
    let name = run_name(cfg);
    let opts = crate::train::TrainOptions {
        progress,
        checkpoint_dir: Some(out.join(&name)),
        resume: flags.resume,
        stop_after: None,
        dist: dist.clone(),
    };
    let report = crate::train::train_tasks(&model, &runs, cfg, device, &opts)?;
    if !dist.is_main() {
        // Rank 0 evaluates and writes the run; the other ranks only lent their gradients.
        println!(
            "rank {} of {}: trained {} steps (rank 0 writes the results)",
            dist.rank(),
            dist.world_size(),
            report.steps
        );
        return Ok(());
    }
    let heads: Vec<_> = runs
        .iter()
        .map(|r| serde_json::json!({ "task": r.task.name, "head": r.head }))
        .collect();
    let result = serde_json::json!({
        "config": cfg, "plan": plan, "heads": heads, "report": report, "init_from": init,
        "prototypes": prototypes,
        "code_version": crate::serve::code_version(),
    });
    let path = out.join(&name).join("result.json");
    crate::files::write_atomic(&path, serde_json::to_string_pretty(&result)?.as_bytes())?;
    // The trained modules and heads, reusable by `predict`, `eval` and `export`.
    let pairs: Vec<_> = runs.iter().map(|r| (r.task, &r.head)).collect();
    let adapter = out.join(&name).join("adapter");
    crate::serve::folder::save(&model, cfg, &pairs, &adapter)?;
    let plot = out.join(&name).join("curves.svg");
    let curves: Vec<crate::report::Curve> = tasks
        .iter()
        .map(|t| crate::report::Curve {
            name: format!("{} {}", t.name, t.metric),
            points: report
                .evaluations
                .iter()
                .filter(|e| e.task == t.name)
                .map(|e| (e.step, e.score))
                .collect(),
        })
        .collect();
    crate::report::write_curves_svg(&plot, &name, &report.losses, &curves, 10)?;
    println!(
        "{:<28} {:<18} {:>10} {:>6} {:>7} {:>6} {:>9} {:>8}",
        "task", "modules", "trainable", "steps", "s/step", "split", "metric", "score"
    );
    for t in &tasks {
        let last = report.last(&t.name).context("no evaluation")?;
        println!(
            "{:<28} {:<18} {:>10} {:>6} {:>7.3} {:>6} {:>9} {:>8.4}",
            t.name,
            modules,
            crate::plan::thousands(report.trainable_parameters),
            report.steps,
            report.seconds_per_step,
            t.eval_split,
            last.metric,
            last.score
        );
    }
    crate::retrieval::report_training_tasks(
        &model,
        &tasks,
        cfg.training.max_length,
        &out.join(&name),
        device,
    )?;
    println!("result: {}", path.display());
    println!("curves: {}", plot.display());
    println!("adapter: {}", adapter.display());
    Ok(())
}

/// The folder name of a run under `--out`: tasks, modules and seed.
pub fn run_name(cfg: &RunConfig) -> String {
    let tasks: Vec<String> = cfg
        .task_specs()
        .iter()
        .map(|t| t.name.replace('/', "-"))
        .collect();
    let modules: Vec<String> = cfg.modules.iter().map(|m| m.instance_name()).collect();
    format!(
        "{}-{}-seed{}",
        short_list(&tasks),
        short_list(&modules),
        cfg.seed
    )
}

/// The most bytes a list may take in a run's folder name: file systems refuse names over 255
/// bytes, and a stage-2 run over 30 CrossFit tasks joins to ~400.
const MAX_LIST_BYTES: usize = 96;

/// `a+b+c`, or, when that is longer than [`MAX_LIST_BYTES`], the first name, the count of the
/// others and a hash of the whole list (`a+29more-1f2e3d4c`), so that different lists still get
/// different folders.
fn short_list(names: &[String]) -> String {
    let joined = names.join("+");
    if joined.len() <= MAX_LIST_BYTES || names.len() < 2 {
        return joined;
    }
    // A digest, not std's hasher: folder names must not change between builds.
    use sha2::{Digest, Sha256};
    let hash: String = Sha256::digest(joined.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let first: String = names[0].chars().take(48).collect();
    format!("{first}+{}more-{hash}", names.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::short_list;

    #[test]
    fn long_task_lists_get_a_short_distinct_folder_name() {
        let few: Vec<String> = ["glue-sst2", "glue-rte"].map(String::from).to_vec();
        assert_eq!(short_list(&few), "glue-sst2+glue-rte");
        let many: Vec<String> = (0..30).map(|i| format!("crossfit-task-{i}")).collect();
        let name = short_list(&many);
        assert!(name.starts_with("crossfit-task-0+29more-"), "{name}");
        assert!(name.len() <= 96, "{name}");
        let mut other = many.clone();
        other[29] = "another-task".into();
        assert_ne!(short_list(&other), name);
    }
}
