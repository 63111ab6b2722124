//! A CACLM run: HyperT5's stage-1 hyper-pretraining (`config::caclm`, Phang et al., 2022,
//! §4.2). Each window of the corpus becomes a one-example text-to-text task (input B, target C)
//! whose context encoder reads the window's segments A and D (`set_fixed_context`), so the
//! ordinary trainer drives it: a micro-batch is one window (the hypermodel generates one set of
//! parameters per window), `training.gradient_accumulation` windows make a step, and only the
//! groups in `training.train_groups` (the hypermodel's `hyper`) train. The trainer's own
//! evaluation would greedy-decode every window; instead the LM loss on C of the held-out
//! windows is measured before and after training, and with each window's hypermodel fed
//! another document's A and D (does the hypermodel use its context?). The run folder is the
//! ordinary one (`result.json`, `curves.svg`, `adapter/`); `adapter/` holds the hypermodel and
//! starts stage 2 through `init_from`.
use std::path::Path;

use anyhow::{ensure, Context};
use burn::tensor::{backend::AutodiffBackend, ElementConversion};
use serde::Serialize;

use super::RunFlags;
use crate::{
    bridge::HostGraph,
    config::RunConfig,
    data::{caclm::Window, Example, Task, TaskKind},
    heads::{Head, Output},
    model::Model,
    plan::Plan,
    train::TaskRun,
};

/// The CACLM part of `result.json`.
#[derive(Serialize, Clone, Debug)]
pub struct CaclmReport {
    pub corpus: String,
    pub train_windows: usize,
    pub eval_windows: usize,
    /// Mean per-token NLL of the held-out windows' C, with the hypermodel reading each
    /// window's own A and D: before training, after training.
    pub eval_loss_before: f64,
    pub eval_loss_after: f64,
    /// After training, with each held-out window's hypermodel fed another window's A and D,
    /// from another document where there is one ([`other_window`]; null with fewer than two
    /// held-out windows). Higher than `eval_loss_after` when the hypermodel passes on what it
    /// read.
    pub eval_loss_other_context: Option<f64>,
    /// The longest segment of the first windows in tokens (A, B, C, D): beyond
    /// `training.max_length` (B, C) or the encoder's `max_length` (A, D) they are truncated.
    pub max_tokens: [usize; 4],
}

/// The one-example task of a window: input B, target C (a multiple-choice example with C its
/// only option, so the text-to-text head's target is C).
fn window_task(name: String, w: &Window) -> Task {
    Task {
        name,
        kind: TaskKind::MultipleChoice,
        labels: Vec::new(),
        train: vec![Example {
            text_a: w.b.clone(),
            options: vec![w.c.clone()],
            ..Default::default()
        }],
        eval: Vec::new(),
        eval_split: "caclm".into(),
        metric: "accuracy".into(),
    }
}

/// The window whose context held-out window `i` gets in the other-context measurement: the
/// next one (cyclically) from another document, else simply the next one.
pub fn other_window(windows: &[Window], i: usize) -> usize {
    let n = windows.len();
    (1..n)
        .map(|k| (i + k) % n)
        .find(|&j| windows[j].doc != windows[i].doc)
        .unwrap_or((i + 1) % n)
}

/// Mean per-token NLL of each task's window (its C given B), the context encoder reading the
/// task's fixed context.
pub fn lm_loss<B: AutodiffBackend>(
    model: &Model<B>,
    tasks: &[Task],
    head: &Head,
    max_length: usize,
    device: &B::Device,
) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for task in tasks {
        let graph = HostGraph::inference(&model.params);
        crate::model::context::before_eval_pass(model, &graph, task)?;
        let batch: Vec<&Example> = task.train.iter().collect();
        let Output::Loss(l) = head.forward(model, &graph, task, &batch, max_length, device)? else {
            anyhow::bail!("CACLM needs the text-to-text head's LM loss");
        };
        total += l.detach().sum().into_scalar().elem::<f64>();
    }
    Ok(total / tasks.len().max(1) as f64)
}

/// Tokens of the longest A, B, C, D among the first 64 windows.
fn max_tokens<B: AutodiffBackend>(
    model: &Model<B>,
    windows: &[Window],
) -> anyhow::Result<[usize; 4]> {
    let tok = model
        .tokenizer
        .as_ref()
        .context("/backbone: CACLM needs the backbone's tokenizer.json")?;
    let mut m = [0; 4];
    for w in windows.iter().take(64) {
        for (i, s) in [&w.a, &w.b, &w.c, &w.d].into_iter().enumerate() {
            let n = tok
                .encode(s.as_str(), true)
                .map_err(|e| anyhow::anyhow!(e))?
                .len();
            m[i] = m[i].max(n);
        }
    }
    Ok(m)
}

/// Runs the `caclm` section of `cfg` into `out/<run name>`.
pub fn run<B: AutodiffBackend>(
    cfg: &RunConfig,
    registry: &peft_registry::Registry,
    out: &Path,
    flags: RunFlags,
    device: &B::Device,
) -> anyhow::Result<()> {
    let spec = cfg.caclm.as_ref().context("no `caclm` section")?;
    let dist = crate::dist::current();
    ensure!(
        dist.is_single(),
        "data-parallel training (--world-size) runs plain runs, not CACLM runs"
    );
    let (train, eval) = crate::data::caclm::load(spec)?;
    tracing::info!(corpus = %spec.corpus.display(), train = train.len(), eval = eval.len(), "cut the corpus into CACLM windows");
    let model = Model::<B>::build(cfg, registry, device, 0)?;
    model.seq2seq().context(
        "/backbone: CACLM trains through the language-model head of an encoder-decoder (T5)",
    )?;
    let enc = model
        .context_encoder
        .as_ref()
        .context("/caclm: CACLM pretrains a hypermodel: add a `context_encoder` section")?;
    let mut tasks = Vec::new();
    let mut held_out = Vec::new();
    for (i, w) in train.iter().enumerate() {
        let t = window_task(format!("caclm-train-{i}"), w);
        enc.set_fixed_context(&t.name, vec![w.a.clone(), w.d.clone()]);
        tasks.push(t);
    }
    for (i, w) in eval.iter().enumerate() {
        let t = window_task(format!("caclm-eval-{i}"), w);
        enc.set_fixed_context(&t.name, vec![w.a.clone(), w.d.clone()]);
        held_out.push(t);
    }
    let init = match &cfg.init_from {
        Some(dir) => Some(crate::serve::init::init_from(&model, cfg, dir).context("/init_from")?),
        None => None,
    };
    let head = Head::TextToText {
        max_new_tokens: cfg.task.max_new_tokens,
    };
    let t = &cfg.training;
    let max_tokens = max_tokens(&model, &train)?;
    if max_tokens[1].max(max_tokens[2]) > t.max_length {
        tracing::warn!(
            ?max_tokens,
            max_length = t.max_length,
            "segments B or C exceed training.max_length and are truncated"
        );
    }
    if max_tokens[0].max(max_tokens[3]) > enc.max_length {
        tracing::warn!(
            ?max_tokens,
            max_length = enc.max_length,
            "segments A or D exceed the context encoder's max_length and are truncated"
        );
    }
    let eval_loss_before = lm_loss(&model, &held_out, &head, t.max_length, device)?;
    tracing::info!(eval_loss_before, "held-out LM loss on C before training");
    // One window per micro-batch, no task-wise evaluation (see the module comment).
    let mut tcfg = cfg.clone();
    tcfg.training.batch_size = 1;
    tcfg.training.eval_every = 0;
    let runs: Vec<TaskRun<'_>> = tasks
        .iter()
        .map(|task| TaskRun {
            task,
            head: head.clone(),
        })
        .collect();
    let plan = Plan::of(&model, &t.train_groups)?;
    if flags.progress {
        eprint!("{}", plan.render());
    }
    let modules: Vec<String> = cfg.modules.iter().map(|m| m.instance_name()).collect();
    let name = format!("caclm-{}-seed{}", modules.join("+"), cfg.seed);
    let opts = crate::train::TrainOptions {
        progress: flags.progress,
        checkpoint_dir: Some(out.join(&name)),
        resume: flags.resume,
        stop_after: None,
        dist,
    };
    let mut report = crate::train::train_tasks(&model, &runs, &tcfg, device, &opts)?;
    // The windows' own (empty) evaluations say nothing; the held-out loss below does.
    report.evaluations.clear();
    report.batches_per_task.clear();
    let eval_loss_after = lm_loss(&model, &held_out, &head, t.max_length, device)?;
    let eval_loss_other_context = if eval.len() > 1 {
        for (i, task) in held_out.iter().enumerate() {
            let o = &eval[other_window(&eval, i)];
            enc.set_fixed_context(&task.name, vec![o.a.clone(), o.d.clone()]);
        }
        enc.clear_cache();
        let l = lm_loss(&model, &held_out, &head, t.max_length, device)?;
        enc.clear_cache();
        Some(l)
    } else {
        None
    };
    let caclm = CaclmReport {
        corpus: spec.corpus.display().to_string(),
        train_windows: train.len(),
        eval_windows: eval.len(),
        eval_loss_before,
        eval_loss_after,
        eval_loss_other_context,
        max_tokens,
    };
    let dir = out.join(&name);
    let result = serde_json::json!({
        "config": cfg, "plan": plan, "report": report, "caclm": caclm, "init_from": init,
        "code_version": crate::serve::code_version(),
    });
    let path = dir.join("result.json");
    crate::files::write_atomic(&path, serde_json::to_string_pretty(&result)?.as_bytes())?;
    let adapter = dir.join("adapter");
    crate::serve::folder::save(&model, cfg, &[], &adapter)?;
    let plot = dir.join("curves.svg");
    crate::report::write_curves_svg(&plot, &name, &report.losses, &[], 10)?;
    println!(
        "CACLM: {} windows, {} steps, {:.3} s/step, {} trainable; held-out LM loss on C {:.4} -> {:.4}{}",
        train.len(),
        report.steps,
        report.seconds_per_step,
        crate::plan::thousands(report.trainable_parameters),
        eval_loss_before,
        eval_loss_after,
        eval_loss_other_context
            .map(|l| format!(" ({l:.4} with another document's A and D)"))
            .unwrap_or_default()
    );
    println!("result: {}", path.display());
    println!("curves: {}", plot.display());
    println!("adapter: {} (stage 2: `init_from`)", adapter.display());
    Ok(())
}
