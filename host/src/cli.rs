//! The `peft-host` command line.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use clap::{Parser, Subcommand};

use crate::{
    config::{run_config_schema, validate::validate, RunConfig},
    device::DeviceSpec,
    model::Model,
    plan::Plan,
};

/// Parameter-efficient fine-tuning of pretrained transformers, with methods as plugins.
#[derive(Parser, Debug)]
#[command(name = "peft-host", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Extra folder of plugin libraries (repeatable; PEFT_PLUGIN_PATH adds more).
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    pub plugin_dirs: Vec<PathBuf>,
    /// Compute device: cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Log more (-v: debug, -vv: trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train and evaluate: a config file, or `--plugin NAME` for the default run.
    Run {
        /// Run config (JSON).
        config: Option<PathBuf>,
        /// Module plugin(s) to run with the default config (repeat to compose).
        #[arg(long)]
        plugin: Vec<String>,
        /// Task data folder (default: PEFT_DATA, then ../shared/data beside the checkout).
        #[arg(long, env = "PEFT_DATA")]
        data: Option<PathBuf>,
        /// Override the number of training steps.
        #[arg(long)]
        steps: Option<usize>,
        /// Override the task.
        #[arg(long)]
        task: Option<String>,
        /// Folder for results (result.json per run).
        #[arg(long, default_value = "runs")]
        out: PathBuf,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Continue an interrupted run from its checkpoint in the output folder.
        #[arg(long)]
        resume: bool,
    },
    /// The few-shot grid: each method on each CrossFit task's k-shot splits (16 examples)
    /// for every split seed; mean and std per task and method (runs done are reused).
    Fewshot {
        /// Methods, each trained on its own (repeat; default houlsby and lora).
        #[arg(long)]
        plugin: Vec<String>,
        /// CrossFit tasks, comma-separated (default: eight tasks, see docs/results.md).
        #[arg(long, value_delimiter = ',')]
        tasks: Vec<String>,
        /// Split seeds, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = crate::fewshot::SEEDS)]
        seeds: Vec<u64>,
        /// Base run config (backbone, training); its modules and task are replaced per cell.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override the training steps.
        #[arg(long)]
        steps: Option<usize>,
        /// Score on a fixed subsample of this many test examples per task (0 = all).
        #[arg(long)]
        eval_examples: Option<usize>,
        #[arg(long, env = "PEFT_DATA")]
        data: Option<PathBuf>,
        #[arg(long, default_value = "runs/fewshot")]
        out: PathBuf,
        #[arg(long)]
        quiet: bool,
    },
    /// List the plugins: built in and from plugin folders.
    Plugins {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Write the JSON Schemas of the run config and of every plugin's config.
    Schema {
        #[arg(long, default_value = "schemas")]
        out: PathBuf,
    },
    /// Check a run config against the host's and the plugins' schemas.
    Validate { config: PathBuf },
    /// Measure: `overhead` (op API vs native burn on one adapter).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Show the resolved composition: which module attaches where, parameters per group.
    Plan {
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Also list every hook site of the backbone.
        #[arg(long)]
        sites: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// One Houlsby adapter forward+backward through a dynamically loaded plugin vs natively.
    Overhead {
        /// The houlsby plugin library (e.g. target/release/libhoulsby.so).
        #[arg(long)]
        plugin: PathBuf,
        #[arg(long, default_value_t = 60)]
        runs: usize,
        /// Activations shape: batch, time, hidden.
        #[arg(long, num_args = 3, default_values_t = [32, 128, 384])]
        shape: Vec<usize>,
        #[arg(long)]
        json: bool,
    },
    /// MiniLM inference and training-step time on batch x seq tokens.
    Model {
        /// Module plugins to train (none: inference only).
        #[arg(long)]
        plugin: Vec<String>,
        #[arg(long, default_value = "all-MiniLM-L6-v2")]
        backbone: String,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        seq: usize,
        #[arg(long, default_value_t = 10)]
        runs: usize,
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,peft_host=info",
        1 => "debug",
        _ => "trace",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn registry(cli_dirs: &[PathBuf]) -> anyhow::Result<peft_registry::Registry> {
    let (r, refused) = crate::registry(cli_dirs)?;
    for e in refused {
        eprintln!("warning: plugin refused: {e}");
    }
    Ok(r)
}

/// Reads and validates a config file, printing every problem.
pub fn load_config(path: &Path, registry: &peft_registry::Registry) -> anyhow::Result<RunConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    validate(&text, &path.display().to_string(), registry).map_err(|e| anyhow::anyhow!("{e}"))
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let registry = registry(&cli.plugin_dirs)?;
    match cli.command {
        Command::Plugins { json } => {
            let rows: Vec<serde_json::Value> = registry
                .entries()
                .map(|e| {
                    serde_json::json!({
                        "name": e.manifest.name, "kind": e.manifest.kind, "version": e.manifest.version,
                        "api_version": e.api_version.to_string(), "origin": e.origin.to_string(),
                        "description": e.manifest.description,
                    })
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<16} {:<16} {:<9} {:<5} origin",
                    "name", "kind", "version", "api"
                );
                for e in registry.entries() {
                    println!(
                        "{:<16} {:<16} {:<9} {:<5} {}",
                        e.manifest.name,
                        e.manifest.kind.to_string(),
                        e.manifest.version,
                        e.api_version.to_string(),
                        e.origin
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema { out } => {
            write_schemas(&out, &registry)?;
            println!("wrote schemas to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { config } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("cannot read config {}", config.display()))?;
            match validate(&text, &config.display().to_string(), &registry) {
                Ok(_) => {
                    println!("{}: valid", config.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprint!("{e}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Bench {
            what:
                BenchCommand::Overhead {
                    plugin,
                    runs,
                    shape,
                    json,
                },
        } => {
            anyhow::ensure!(
                cli.device == DeviceSpec::Cpu,
                "bench overhead runs on the CPU backend"
            );
            let r = crate::bench::op_overhead::<crate::device::Cpu>(
                &plugin,
                [shape[0], shape[1], shape[2]],
                runs,
                &Default::default(),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "Houlsby adapter forward+backward on {:?}, {} runs each, plugin from {}",
                    r.shape, r.native.runs, r.plugin_origin
                );
                for t in [&r.native, &r.plugin_path] {
                    println!(
                        "  {:<28} median {:>8.2} ms  (min {:.2}, max {:.2})",
                        t.name, t.median_ms, t.min_ms, t.max_ms
                    );
                }
                println!("  overhead of the plugin path: {:+.2}%", 100.0 * r.overhead);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchCommand::Model {
                    plugin,
                    backbone,
                    batch,
                    seq,
                    runs,
                    json,
                },
        } => {
            anyhow::ensure!(
                cli.device == DeviceSpec::Cpu,
                "bench model runs on the CPU backend"
            );
            let mut cfg = RunConfig::for_plugin("none");
            cfg.backbone = crate::config::BackboneSpec::Name(backbone);
            cfg.modules = plugin
                .iter()
                .map(|p| RunConfig::for_plugin(p).modules.remove(0))
                .collect();
            let r = crate::bench::model_bench::<crate::device::Cpu>(
                &cfg,
                &registry,
                batch,
                seq,
                runs,
                !plugin.is_empty(),
                &Default::default(),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{} batch {} x seq {}, {} threads, {} runs",
                    r.backbone, r.batch, r.seq, r.threads, r.inference.runs
                );
                println!(
                    "  inference   median {:>8.1} ms  ({:.0} tokens/s)",
                    r.inference.median_ms, r.tokens_per_second
                );
                if let Some(t) = &r.train_step {
                    println!(
                        "  train step  median {:>8.1} ms  ({} + head, {} trainable)",
                        t.median_ms,
                        r.modules.join("+"),
                        crate::plan::thousands(r.trainable_parameters)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan {
            config,
            json,
            sites,
        } => {
            let cfg = load_config(&config, &registry)?;
            let plan = with_device(cli.device, |dev| plan_for(&cfg, &registry, dev))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{}", plan.render());
                if sites {
                    println!("sites");
                    print!("{}", plan.render_sites());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Fewshot {
            plugin,
            tasks,
            seeds,
            config,
            steps,
            eval_examples,
            data,
            out,
            quiet,
        } => {
            let mut base = match &config {
                Some(path) => load_config(path, &registry)?,
                None => crate::fewshot::default_base(),
            };
            if let Some(s) = steps {
                base.training.steps = s;
            }
            if let Some(n) = eval_examples {
                base.task.eval_examples = n;
            }
            let methods = if plugin.is_empty() {
                vec!["houlsby".to_string(), "lora".to_string()]
            } else {
                plugin
            };
            for m in &methods {
                registry
                    .get(m)
                    .map_err(|e| anyhow::anyhow!("--plugin {m}: {e}"))?;
            }
            let tasks = if tasks.is_empty() {
                crate::fewshot::DEFAULT_TASKS.map(String::from).to_vec()
            } else {
                tasks
            };
            let data = crate::data::data_dir(data.as_deref())?;
            on_sigint("checkpointing this cell; rerun the same command to continue");
            let total = (methods.len() * tasks.len() * seeds.len()) as u64;
            let bar = if quiet {
                indicatif::ProgressBar::hidden()
            } else {
                indicatif::ProgressBar::new(total)
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "fewshot [{bar:30}] {pos}/{len} runs {msg} ({elapsed}<{eta})",
                )
                .unwrap()
                .progress_chars("=> "),
            );
            let mut cells = Vec::new();
            for task in &tasks {
                for method in &methods {
                    for &seed in &seeds {
                        let cfg = crate::fewshot::cell_config(&base, method, task, seed);
                        let dir = out.join(run_name(&cfg));
                        let result = dir.join("result.json");
                        bar.set_message(format!("{task} {method} seed {seed}"));
                        if !result.exists() {
                            let flags = RunFlags {
                                progress: false,
                                resume: dir.join("checkpoint/progress.json").exists(),
                            };
                            match with_device(cli.device, |dev| {
                                run(&cfg, &registry, &data, &out, flags, dev)
                            }) {
                                Ok(()) => {}
                                Err(e)
                                    if e.downcast_ref::<crate::train::Interrupted>().is_some() =>
                                {
                                    bar.abandon();
                                    eprintln!("{e}");
                                    return Ok(ExitCode::from(130));
                                }
                                Err(e) => {
                                    return Err(e.context(format!("{task} {method} seed {seed}")))
                                }
                            }
                        }
                        cells.push(crate::fewshot::read_cell(method, task, seed, &result)?);
                        bar.inc(1);
                    }
                }
            }
            bar.finish_and_clear();
            let summaries = crate::fewshot::summarise(&cells);
            let table = crate::fewshot::markdown(&summaries);
            let report = serde_json::json!({
                "base_config": base, "methods": methods, "tasks": tasks, "seeds": seeds,
                "summaries": summaries, "gains": crate::fewshot::relative_gains(&summaries),
                "cells": cells,
            });
            write_atomic(
                &out.join("fewshot.json"),
                serde_json::to_string_pretty(&report)?.as_bytes(),
            )?;
            write_atomic(&out.join("fewshot.md"), table.as_bytes())?;
            print!("{table}");
            println!("results: {}", out.join("fewshot.json").display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            config,
            plugin,
            data,
            steps,
            task,
            out,
            quiet,
            resume,
        } => {
            let mut cfg = match (&config, plugin.is_empty()) {
                (Some(path), true) => load_config(path, &registry)?,
                (None, false) => {
                    let text = serde_json::to_string(&RunConfig::default_run(&plugin))?;
                    validate(&text, "the default config", &registry)
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                }
                (Some(_), false) => bail!("give either a config file or --plugin, not both"),
                (None, true) => {
                    bail!("give a config file or --plugin NAME (see `peft-host plugins`)")
                }
            };
            if let Some(s) = steps {
                cfg.training.steps = s;
            }
            if let Some(t) = task {
                cfg.tasks.clear();
                cfg.task.name = t;
            }
            let data = crate::data::data_dir(data.as_deref())?;
            on_sigint("writing a checkpoint after this step (press again to quit now)");
            let flags = RunFlags {
                progress: !quiet,
                resume,
            };
            match with_device(cli.device, |dev| {
                run(&cfg, &registry, &data, &out, flags, dev)
            }) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) if e.downcast_ref::<crate::train::Interrupted>().is_some() => {
                    eprintln!("{e}");
                    Ok(ExitCode::from(130))
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// SIGINT: the trainer checkpoints at the end of the current step and stops (exit 130); a
/// second SIGINT quits at once.
fn on_sigint(message: &'static str) {
    let _ = ctrlc::set_handler(move || {
        if crate::train::INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: {message}");
    });
}

/// Runs `f` on the selected device's backend.
fn with_device<T>(
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

fn plan_for(
    cfg: &RunConfig,
    registry: &peft_registry::Registry,
    dev: &dyn DeviceRunner<Plan>,
) -> anyhow::Result<Plan> {
    dev.plan(cfg, registry)
}

fn run(
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
    let model = Model::<B>::build(cfg, registry, device, 2)?;
    Plan::of(&model, &cfg.training.train_groups)
}

fn run_generic<B: AutodiffBackend>(
    cfg: &RunConfig,
    registry: &peft_registry::Registry,
    data: &Path,
    out: &Path,
    flags: RunFlags,
    device: &B::Device,
) -> anyhow::Result<()> {
    let progress = flags.progress;
    for (section, spec) in [
        ("context_encoder", &cfg.context_encoder),
        ("priming", &cfg.priming),
    ] {
        if let Some(spec) = spec {
            anyhow::bail!(
                "/{section}: plugin `{}` is valid, but {section} plugins are not run by this host version yet; remove the section",
                spec.plugin
            );
        }
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
    let plan = Plan::of(&model, &cfg.training.train_groups)?;
    if progress {
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
    };
    let report = crate::train::train_tasks(&model, &runs, cfg, device, &opts)?;
    let heads: Vec<_> = runs
        .iter()
        .map(|r| serde_json::json!({ "task": r.task.name, "head": r.head }))
        .collect();
    let result =
        serde_json::json!({ "config": cfg, "plan": plan, "heads": heads, "report": report });
    let path = out.join(&name).join("result.json");
    write_atomic(&path, serde_json::to_string_pretty(&result)?.as_bytes())?;
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
    println!("result: {}", path.display());
    println!("curves: {}", plot.display());
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
    format!("{}-{}-seed{}", tasks.join("+"), modules.join("+"), cfg.seed)
}

/// Writes through a temporary file in the same folder and renames it into place, so a crash
/// never leaves a half-written file where the last good one was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

/// Writes `run-config.schema.json` and `plugins/<name>.schema.json` for every plugin.
pub fn write_schemas(out: &Path, registry: &peft_registry::Registry) -> anyhow::Result<()> {
    for (path, schema) in schema_files(registry) {
        write_atomic(
            &out.join(path),
            (serde_json::to_string_pretty(&schema)? + "\n").as_bytes(),
        )?;
    }
    Ok(())
}

/// The schema files `schema` writes, by relative path.
pub fn schema_files(registry: &peft_registry::Registry) -> Vec<(String, serde_json::Value)> {
    let mut v = vec![("run-config.schema.json".to_string(), run_config_schema())];
    for e in registry.entries() {
        v.push((
            format!("plugins/{}.schema.json", e.manifest.name),
            e.manifest.config_schema.clone(),
        ));
    }
    v
}
