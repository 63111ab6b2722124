//! One function per verb: turn parsed arguments into library calls and print the outcome.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{bail, Context};

use super::{finish, load_config, on_sigint, BenchCommand};
use crate::{
    config::{write_schemas, RunConfig},
    device::DeviceSpec,
    run::{plan_for, run as run_on, with_device, RunFlags},
    validate::validate as validate_text,
};

type Registry = peft_registry::Registry;

/// `plugins`: what is registered, built in and from plugin folders.
pub fn plugins(registry: &Registry, json: bool) -> anyhow::Result<ExitCode> {
    if json {
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

/// `schema`: the JSON Schemas of the run config and of every plugin's config.
pub fn schema(registry: &Registry, out: &std::path::Path) -> anyhow::Result<ExitCode> {
    write_schemas(out, registry)?;
    println!("wrote schemas to {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// `validate`: every problem of a config, exit 2 when there is one.
pub fn validate(registry: &Registry, config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read config {}", config.display()))?;
    match validate_text(&text, &config.display().to_string(), registry) {
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

/// `plan`: which module attaches where, parameters per group.
pub fn plan(
    registry: &Registry,
    device: DeviceSpec,
    config: &std::path::Path,
    json: bool,
    sites: bool,
) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config, registry)?;
    let plan = with_device(device, |dev| plan_for(&cfg, registry, dev))?;
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

/// `bench overhead` and `bench model`.
/// The run config a benchmark builds: `backbone` and each plugin with its defaults.
/// The modules' default configs over `backbone`, training the groups `peft-host run --plugin`
/// trains (PHA: its retriever, prototypes and hypernetwork as well as the adapters).
fn bench_config(backbone: crate::config::BackboneDetail, plugins: &[String]) -> RunConfig {
    let mut cfg = RunConfig::for_plugin("none");
    cfg.training.train_groups = RunConfig::default_run(plugins).training.train_groups;
    cfg.backbone = crate::config::BackboneSpec::Detailed(backbone);
    cfg.modules = plugins
        .iter()
        .map(|p| RunConfig::for_plugin(p).modules.remove(0))
        .collect();
    cfg
}

pub fn bench(
    registry: &Registry,
    device: DeviceSpec,
    what: BenchCommand,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(device == DeviceSpec::Cpu, "bench runs on the CPU backend");
    match what {
        BenchCommand::Overhead {
            plugin,
            runs,
            shape,
            json,
        } => {
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
        }
        BenchCommand::Attention {
            tokens,
            seq,
            runs,
            json,
        } => {
            let r = crate::bench::attention_bench(tokens, &seq, runs)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("attention, 12 heads, width 384, {tokens} tokens per batch, median of {runs} runs, interleaved (ms)");
                println!("| seq | batch | dense fwd | blocked fwd | ratio | dense fwd+bwd | blocked fwd+bwd | ratio |");
                println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
                for p in &r {
                    println!(
                        "| {} | {} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.2} |",
                        p.seq,
                        p.batch,
                        p.dense_forward.median_ms,
                        p.blocked_forward.median_ms,
                        p.forward_ratio,
                        p.dense_train.median_ms,
                        p.blocked_train.median_ms,
                        p.train_ratio
                    );
                }
            }
        }
        BenchCommand::Seq2seq {
            plugin,
            backbone,
            batch,
            src,
            tgt,
            new_tokens,
            runs,
            json,
            backbone_dtype,
            matmul_precision,
            op_times,
        } => {
            if op_times {
                crate::nn::timing::set_enabled(true);
            }
            let dir = std::path::Path::new(&backbone);
            let cfg = bench_config(
                crate::config::BackboneDetail {
                    name: Some(backbone.clone()),
                    path: dir.is_dir().then(|| backbone.clone()),
                    dtype: serde_json::from_value(serde_json::json!(backbone_dtype))?,
                    matmul_precision: serde_json::from_value(serde_json::json!(matmul_precision))?,
                    ..Default::default()
                },
                &plugin,
            );
            let r = crate::bench::seq2seq::seq2seq_bench::<crate::device::Cpu>(
                &cfg,
                registry,
                [batch, src, tgt, new_tokens],
                runs,
                !plugin.is_empty(),
                &Default::default(),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{} ({}) batch {} x source {} / target {}, {} new tokens, {} threads, {} runs",
                    r.backbone,
                    r.model_type,
                    r.batch,
                    r.src,
                    r.tgt,
                    r.new_tokens,
                    r.threads,
                    r.inference.runs
                );
                if r.backbone_dtype == "bf16" {
                    println!(
                        "  backbone weights bf16, matmul precision {}",
                        r.matmul_precision
                    );
                }
                for t in [Some(&r.inference), Some(&r.generate), r.train_step.as_ref()]
                    .into_iter()
                    .flatten()
                {
                    println!(
                        "  {:<12} median {:>8.1} ms  (min {:.1}, max {:.1})",
                        t.name, t.median_ms, t.min_ms, t.max_ms
                    );
                }
                if r.train_step.is_some() {
                    println!("  trainable parameters {}", r.trainable_parameters);
                }
                for phase in &r.op_times {
                    println!("\n{}", phase.table());
                }
            }
        }
        BenchCommand::Model {
            plugin,
            config,
            backbone,
            batch,
            seq,
            runs,
            json,
            backbone_dtype,
            matmul_precision,
            op_times,
            tasks,
        } => {
            if op_times {
                crate::nn::timing::set_enabled(true);
            }
            let tasks = tasks as usize;
            let cfg = match &config {
                Some(path) => load_config(path, registry)?,
                None => bench_config(
                    crate::config::BackboneDetail {
                        name: Some(backbone),
                        dtype: serde_json::from_value(serde_json::json!(backbone_dtype))?,
                        matmul_precision: serde_json::from_value(serde_json::json!(
                            matmul_precision
                        ))?,
                        ..Default::default()
                    },
                    &plugin,
                ),
            };
            let names: Vec<String> = (0..tasks).map(|t| format!("task{t}")).collect();
            let cfg = crate::config::fill_num_tasks(&cfg, &names, registry);
            let r = crate::bench::model_bench::<crate::device::Cpu>(
                &cfg,
                registry,
                crate::bench::Shape { batch, seq, tasks },
                runs,
                !cfg.modules.is_empty(),
                &Default::default(),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{} batch {} x seq {}, {} threads, {} runs; backbone weights {} ({:.1} MiB){}",
                    r.backbone,
                    r.batch,
                    r.seq,
                    r.threads,
                    r.inference.runs,
                    r.backbone_dtype,
                    r.backbone_weights_mib,
                    if r.backbone_dtype == "bf16" {
                        format!(", products on {}", r.bf16_products)
                    } else {
                        String::new()
                    }
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
                println!(
                    "  forward {:.1} GFLOP at {:.0} GFLOP/s, {:.0}% of the GEMM's {:.0} GFLOP/s",
                    r.forward_gflop,
                    r.forward_gflops_per_s,
                    100.0 * r.forward_gflops_per_s / r.gemm_gflops_per_s,
                    r.gemm_gflops_per_s
                );
                if let Some(g) = r.train_step_gflops_per_s {
                    println!("  train step {g:.0} GFLOP/s (useful work)");
                }
                for phase in &r.op_times {
                    println!("\n{}", phase.table());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `fewshot`.
pub struct FewshotArgs {
    pub plugin: Vec<String>,
    pub tasks: Vec<String>,
    pub seeds: Vec<u64>,
    pub config: Option<PathBuf>,
    pub steps: Option<usize>,
    pub eval_examples: Option<usize>,
    pub data: Option<PathBuf>,
    pub out: PathBuf,
    pub quiet: bool,
    pub refuse_stale: bool,
    pub part: crate::fewshot::Part,
    /// Learning rates and step counts to choose from on each split's `_dev` file.
    pub select_lr: Vec<f64>,
    pub select_steps: Vec<usize>,
}

/// `fewshot`: the k-shot grid (methods x CrossFit tasks x split seeds).
pub fn fewshot(
    registry: &Registry,
    device: DeviceSpec,
    a: FewshotArgs,
) -> anyhow::Result<ExitCode> {
    let mut base = match &a.config {
        Some(path) => load_config(path, registry)?,
        None => crate::fewshot::default_base(),
    };
    if let Some(s) = a.steps {
        base.training.steps = s;
    }
    if let Some(n) = a.eval_examples {
        base.task.eval_examples = n;
    }
    let methods = if a.plugin.is_empty() {
        vec!["houlsby".to_string(), "lora".to_string()]
    } else {
        a.plugin
    };
    for m in &methods {
        registry.get(m).with_context(|| format!("--plugin {m}"))?;
    }
    let tasks = if a.tasks.is_empty() {
        crate::fewshot::DEFAULT_TASKS.map(String::from).to_vec()
    } else {
        a.tasks
    };
    let data = crate::paths::data_dir(a.data.as_deref())?;
    on_sigint("checkpointing this cell; rerun the same command to continue");
    let grid = crate::fewshot::Grid {
        methods,
        tasks,
        seeds: a.seeds,
        refuse_stale: a.refuse_stale,
        part: a.part,
        candidates: crate::fewshot::selection::candidates(&base, &a.select_lr, &a.select_steps),
        base,
    };
    let table = crate::fewshot::run_grid(&grid, registry, &data, &a.out, device, a.quiet);
    finish(table.map(|table| {
        print!("{table}");
        if !matches!(a.part, crate::fewshot::Part::Shard { .. }) {
            println!("results: {}", a.out.join("fewshot.json").display());
        }
    }))
}

/// Arguments of `run`.
pub struct RunArgs {
    pub config: Option<PathBuf>,
    pub plugin: Vec<String>,
    pub data: Option<PathBuf>,
    pub steps: Option<usize>,
    pub task: Option<String>,
    pub out: PathBuf,
    pub quiet: bool,
    pub resume: bool,
    /// Data-parallel launch flags (`--world-size`, ...).
    pub launch: crate::dist::launch::LaunchArgs,
}

/// `run`: train and evaluate a config file, or the default run of `--plugin` modules.
pub fn run(registry: &Registry, device: DeviceSpec, a: RunArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = match (&a.config, a.plugin.is_empty()) {
        (Some(path), true) => load_config(path, registry)?,
        (None, false) => {
            let text = serde_json::to_string(&RunConfig::default_run(&a.plugin))?;
            validate_text(&text, "the default config", registry)?
        }
        (Some(_), false) => bail!("give either a config file or --plugin, not both"),
        (None, true) => bail!("give a config file or --plugin NAME (see `peft-host plugins`)"),
    };
    if let Some(s) = a.steps {
        cfg.training.steps = s;
    }
    if let Some(t) = a.task {
        cfg.tasks.clear();
        cfg.task.name = t;
    }
    let data = crate::paths::data_dir(a.data.as_deref())?;
    on_sigint("writing a checkpoint after this step (press again to quit now)");
    let dist = match a.launch.resolve(|k| std::env::var(k).ok())? {
        Some(launch) => {
            let dist = launch.connect()?;
            crate::dist::install(dist.clone())?;
            Some(dist)
        }
        None => None,
    };
    let flags = RunFlags {
        progress: !a.quiet,
        resume: a.resume,
    };
    let result = with_device(device, |dev| {
        run_on(&cfg, registry, &data, &a.out, flags, dev)
    });
    if let Some(d) = dist {
        d.finish()?;
    }
    finish(result)
}
