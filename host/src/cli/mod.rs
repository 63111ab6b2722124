//! The `peft-host` command line: arguments, and one function per verb in [`verbs`]. The work
//! itself lives in the library (`run`, `fewshot`, `bench`, `config`), so the CLI stays thin.
mod adapt;
mod eval;
mod export;
mod malloc;
mod predict;
mod verbs;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::{config::RunConfig, device::DeviceSpec, validate::validate};

/// Parameter-efficient fine-tuning of pretrained transformers, with methods as plugins.
#[derive(Parser, Debug)]
#[command(name = "peft-host", version = crate::serve::CODE_VERSION, about, long_about = None, propagate_version = true)]
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
        /// Task data folder (default: PEFT_DATA, then shared/data or data in a folder above the
        /// current one or the executable).
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
        /// Data-parallel training over this many processes (default: WORLD_SIZE, else 1); see
        /// docs/engine.md.
        #[arg(long, help_heading = "Data-parallel")]
        world_size: Option<usize>,
        /// This process's rank, 0..world-size (default: RANK); rank 0 writes the results.
        #[arg(long, help_heading = "Data-parallel")]
        rank: Option<usize>,
        /// HOST:PORT where rank 0 starts the coordinator (default: MASTER_ADDR:MASTER_PORT).
        #[arg(long, help_heading = "Data-parallel")]
        coordinator: Option<String>,
        /// HOST[:PORT] the other ranks reach this one at (default: this machine's address
        /// towards the coordinator, port coordinator + 1 + rank).
        #[arg(long, help_heading = "Data-parallel")]
        node_address: Option<String>,
        /// Seconds to wait for the other ranks (joining, each step) before giving up.
        #[arg(long, default_value_t = 600, help_heading = "Data-parallel")]
        dist_timeout: u64,
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
        /// Stop with the reason when a stored cell was made by another config or code
        /// version, instead of rerunning it.
        #[arg(long)]
        refuse_stale: bool,
        /// Run only cells i, i+n, i+2n, ... (0-based `i/n`) into a shared --out, for one of n
        /// machines (a Slurm array: `--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`).
        #[arg(long, value_parser = crate::fewshot::Part::shard, conflicts_with = "collect")]
        shard: Option<crate::fewshot::Part>,
        /// Run nothing: build the table from the cells the shards stored in --out.
        #[arg(long)]
        collect: bool,
        /// Learning rates to choose from (comma-separated) on each split's k-shot `_dev`
        /// file; the chosen setting alone is scored on the test file.
        #[arg(long, value_delimiter = ',')]
        select_lr: Vec<f64>,
        /// Step counts to choose from (comma-separated), crossed with --select-lr.
        #[arg(long, value_delimiter = ',')]
        select_steps: Vec<usize>,
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
    /// Predict with a saved adapter folder (`<run>/adapter`): text lines or JSONL in, JSONL
    /// out (label and scores per input).
    Predict {
        /// The adapter folder a run wrote.
        adapter: PathBuf,
        /// Input file, `-` for stdin: one text per line (TAB between a pair) or JSONL with
        /// the task's fields (text/sentence/sentence1/premise/question, text_b/sentence2/
        /// hypothesis/passage, options).
        #[arg(long, default_value = "-")]
        input: PathBuf,
        #[arg(long, value_enum, default_value_t = crate::serve::predict::InputFormat::Auto)]
        format: crate::serve::predict::InputFormat,
        /// The task whose head predicts (when the adapter has several).
        #[arg(long)]
        task: Option<String>,
        /// Write the JSONL here (atomically) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Batch size (default: the run's).
        #[arg(long)]
        batch: Option<usize>,
        #[arg(long)]
        quiet: bool,
    },
    /// Score a saved adapter folder on its task: run's table, and eval.json.
    Eval {
        adapter: PathBuf,
        /// The task (when the adapter has several).
        #[arg(long)]
        task: Option<String>,
        #[arg(long, env = "PEFT_DATA")]
        data: Option<PathBuf>,
        /// Score on a fixed subsample of this many examples (0 = all; default: the run's).
        #[arg(long)]
        eval_examples: Option<usize>,
        /// Where to write the JSON (default: <adapter>/eval.json).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write a saved adapter in HF peft's format (LoRA), or `--merge`d into the backbone as
    /// model.safetensors + config.json for transformers.
    Export {
        adapter: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        merge: bool,
        /// `base_model_name_or_path` in HF peft's adapter_config.json (default: the backbone).
        #[arg(long)]
        base_model: Option<String>,
    },
    /// Adapt a new task without gradient steps: a hypermodel run's adapter folder (trained
    /// with a `context_encoder`, e.g. HyperT5) reads the task's few-shot examples and the
    /// generated modules are saved as an ordinary adapter folder (use it with predict/eval).
    Adapt {
        /// The adapter folder of the hypermodel run (`<run>/adapter`).
        hypermodel: PathBuf,
        /// The new task, from the data folder (its k-shot `_train` file of --split-seed).
        #[arg(long, required_unless_present = "examples")]
        task: Option<String>,
        #[arg(long, default_value_t = 13)]
        split_seed: u64,
        /// Or a CrossFit-format JSONL file of examples (`input`, `output`, `options`).
        #[arg(long, conflicts_with = "task")]
        examples: Option<PathBuf>,
        /// The new adapter folder.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, env = "PEFT_DATA")]
        data: Option<PathBuf>,
    },
    /// Dump a saved adapter's outputs (token ids, last hidden states, pooled states, logits)
    /// on some inputs as JSON, for cross-checks with other implementations.
    Dump {
        adapter: PathBuf,
        #[arg(long, default_value = "-")]
        input: PathBuf,
        #[arg(long)]
        task: Option<String>,
        #[arg(long)]
        out: PathBuf,
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
        #[arg(long, default_value_t = 60, value_parser = at_least_one())]
        runs: usize,
        /// Activations shape: batch, time, hidden.
        #[arg(long, num_args = 3, default_values_t = [32, 128, 384])]
        shape: Vec<usize>,
        #[arg(long)]
        json: bool,
    },
    /// The blocked attention kernel against the dense one it replaced, interleaved, at a fixed
    /// number of tokens per batch for each sequence length (MiniLM's 12 heads, width 384).
    Attention {
        #[arg(long, default_value_t = 4096)]
        tokens: usize,
        /// Sequence lengths, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [64, 128, 256, 512])]
        seq: Vec<usize>,
        #[arg(long, default_value_t = 10, value_parser = at_least_one())]
        runs: usize,
        #[arg(long)]
        json: bool,
    },
    /// MiniLM inference and training-step time on batch x seq tokens.
    Model {
        /// Module plugins to train (none: inference only).
        #[arg(long)]
        plugin: Vec<String>,
        /// A run config instead of `--plugin` and the backbone flags: its backbone, modules,
        /// context encoder (HyperT5: the hypermodel runs in every training pass over `k`
        /// texts of its `max_length`) and `training.train_groups`; its tasks are not read.
        #[arg(long, conflicts_with_all = ["plugin", "backbone", "backbone_dtype", "matmul_precision"])]
        config: Option<std::path::PathBuf>,
        #[arg(long, default_value = "all-MiniLM-L6-v2")]
        backbone: String,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        seq: usize,
        #[arg(long, default_value_t = 10, value_parser = at_least_one())]
        runs: usize,
        #[arg(long)]
        json: bool,
        /// How the frozen backbone's weight matrices are held (the config's `backbone.dtype`).
        #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
        backbone_dtype: String,
        /// With `--backbone-dtype bf16`: how the products read their activations (the
        /// config's `backbone.matmul_precision`).
        #[arg(long, default_value = "high", value_parser = ["high", "medium"])]
        matmul_precision: String,
        /// Also time each CPU kernel (per phase: ms per run, share, and what no kernel covers;
        /// `PEFT_OP_TIMES=1` does the same).
        #[arg(long)]
        op_times: bool,
        /// Tasks mixed in the batch (example `i` is task `i mod N` in each pass's context),
        /// the count a module that takes one is given (PHA's prototypes), as a multi-task run
        /// would fill it in.
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
        tasks: u32,
    },
    /// An encoder-decoder's (T5, BART) teacher-forced inference, greedy decoding and training
    /// step, on the shapes of scripts/pytorch_seq2seq_reference.py.
    Seq2seq {
        /// Module plugins to train (none: no training step).
        #[arg(long)]
        plugin: Vec<String>,
        /// A model name (see `peft-host models`) or a folder with config.json and
        /// model.safetensors.
        #[arg(long)]
        backbone: String,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        src: usize,
        #[arg(long, default_value_t = 32)]
        tgt: usize,
        #[arg(long, default_value_t = 32)]
        new_tokens: usize,
        #[arg(long, default_value_t = 5, value_parser = at_least_one())]
        runs: usize,
        #[arg(long)]
        json: bool,
        /// How the frozen backbone's weight matrices are held (the config's `backbone.dtype`).
        #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
        backbone_dtype: String,
        /// With `--backbone-dtype bf16`: how the products (and, under `medium`, attention with
        /// heads of 64+ dimensions) read their activations (`backbone.matmul_precision`).
        #[arg(long, default_value = "high", value_parser = ["high", "medium"])]
        matmul_precision: String,
        /// Also time each CPU kernel per phase (as `bench model --op-times`).
        #[arg(long)]
        op_times: bool,
    },
}

pub fn main() -> ExitCode {
    let tuned = malloc::tune();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    tracing::debug!(tuned, "malloc thresholds (cli/malloc.rs)");
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
    Ok(validate(&text, &path.display().to_string(), registry)?)
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let registry = registry(&cli.plugin_dirs)?;
    let device = cli.device;
    match cli.command {
        Command::Plugins { json } => verbs::plugins(&registry, json),
        Command::Schema { out } => verbs::schema(&registry, &out),
        Command::Validate { config } => verbs::validate(&registry, &config),
        Command::Bench { what } => verbs::bench(&registry, device, what),
        Command::Predict {
            adapter,
            input,
            format,
            task,
            out,
            batch,
            quiet,
        } => predict::predict(
            &registry,
            device,
            predict::PredictArgs {
                adapter,
                input,
                format,
                task,
                out,
                batch,
                quiet,
            },
        ),
        Command::Eval {
            adapter,
            task,
            data,
            eval_examples,
            out,
        } => eval::eval(
            &registry,
            device,
            eval::EvalArgs {
                adapter,
                task,
                data,
                eval_examples,
                out,
            },
        ),
        Command::Export {
            adapter,
            out,
            merge,
            base_model,
        } => export::export(&registry, device, adapter, out, merge, base_model),
        Command::Adapt {
            hypermodel,
            task,
            split_seed,
            examples,
            out,
            data,
        } => adapt::adapt(
            &registry,
            device,
            adapt::AdaptArgs {
                hypermodel,
                task,
                split_seed,
                examples,
                out,
                data,
            },
        ),
        Command::Dump {
            adapter,
            input,
            task,
            out,
        } => export::dump(&registry, device, adapter, input, task, out),
        Command::Plan {
            config,
            json,
            sites,
        } => verbs::plan(&registry, device, &config, json, sites),
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
            refuse_stale,
            shard,
            collect,
            select_lr,
            select_steps,
        } => verbs::fewshot(
            &registry,
            device,
            verbs::FewshotArgs {
                plugin,
                tasks,
                seeds,
                config,
                steps,
                eval_examples,
                data,
                out,
                quiet,
                refuse_stale,
                part: match (shard, collect) {
                    (Some(part), _) => part,
                    (None, true) => crate::fewshot::Part::Collect,
                    (None, false) => crate::fewshot::Part::All,
                },
                select_lr,
                select_steps,
            },
        ),
        Command::Run {
            config,
            plugin,
            data,
            steps,
            task,
            out,
            quiet,
            resume,
            world_size,
            rank,
            coordinator,
            node_address,
            dist_timeout,
        } => verbs::run(
            &registry,
            device,
            verbs::RunArgs {
                config,
                plugin,
                data,
                steps,
                task,
                out,
                quiet,
                resume,
                launch: crate::dist::launch::LaunchArgs {
                    world_size,
                    rank,
                    coordinator,
                    node_address,
                    timeout_s: dist_timeout,
                },
            },
        ),
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

/// The exit status of a training verb: 130 after SIGINT (the checkpoint is written), the
/// error otherwise.
fn finish(result: anyhow::Result<()>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.downcast_ref::<crate::train::Interrupted>().is_some() => {
            eprintln!("{e:#}");
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e),
    }
}

/// `--runs`: a median needs at least one timed run.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}
