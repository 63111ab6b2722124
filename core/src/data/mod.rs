//! Task data read from the real files as they are: GLUE TSV and JSON re-splits, SuperGLUE
//! JSONL, CrossFit/MetaICL JSONL. One file per benchmark's readers; [`tasks`] maps a task name
//! to its files, labels and metric.
pub mod caclm;
mod crossfit;
mod glue;
mod superglue;
mod tasks;

pub use crossfit::read_crossfit;

/// A task's kind from its examples: multiple choice when any brings its own options.
pub fn kind_of_examples(examples: &[Example]) -> TaskKind {
    crossfit::kind_of(&[examples])
}

/// The headline metric of task `name` by its benchmark's convention.
pub fn headline_metric(name: &str, kind: TaskKind) -> &'static str {
    tasks::metric(name, kind)
}
pub use glue::{read_cola, read_glue_pairs, read_ppft, read_ppft_scores, read_sst2};
use std::path::{Path, PathBuf};
pub use superglue::{read_multirc, read_superglue};

use anyhow::{bail, Context};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

/// One labelled example.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Example {
    pub text_a: String,
    pub text_b: Option<String>,
    /// The class (an index into the task's `labels`) or, in a multiple-choice task, the index
    /// of the right answer in `options`.
    pub label: usize,
    /// This example's own candidate answers (multiple choice); empty: the task's `labels`.
    pub options: Vec<String>,
    /// The target of a regression task (STS-B similarity); 0 otherwise.
    pub value: f64,
}

impl Example {
    /// The candidate answers an option-scoring head ranks for this example.
    pub fn candidates<'a>(&'a self, labels: &'a [String]) -> &'a [String] {
        if self.options.is_empty() {
            labels
        } else {
            &self.options
        }
    }
}

/// What a task asks for, which decides the heads that can answer it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// One fixed label set.
    Classification,
    /// Candidate answers differ per example.
    MultipleChoice,
    /// A real-valued target.
    Regression,
}

/// A task: its examples and label set.
#[derive(Clone, Debug)]
pub struct Task {
    pub name: String,
    pub kind: TaskKind,
    /// The label set (classification); empty for regression.
    pub labels: Vec<String>,
    pub train: Vec<Example>,
    pub eval: Vec<Example>,
    /// Which split the evaluation examples come from.
    pub eval_split: String,
    /// The headline metric, by the benchmark's convention: accuracy for GLUE and SuperGLUE,
    /// Matthews correlation for CoLA, Pearson for STS-B; for CrossFit (MetaICL's rule) macro-F1
    /// on classification and accuracy on multiple choice.
    pub metric: String,
}

/// The data folder: `--data`, else `PEFT_DATA`, else `../shared/data` beside the checkout.
pub fn data_dir(cli: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = match cli {
        Some(p) => vec![p.to_path_buf()],
        None => {
            let mut v = Vec::new();
            if let Some(e) = std::env::var_os("PEFT_DATA") {
                v.push(PathBuf::from(e));
            }
            v.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
            v.push(PathBuf::from("../shared/data"));
            v
        }
    };
    for c in &candidates {
        if c.join("glue").is_dir() || c.join("crossfit").is_dir() {
            return Ok(c.clone());
        }
    }
    bail!(
        "no task data found (looked in {}); pass --data DIR or set PEFT_DATA to a folder with glue/ and crossfit/",
        candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
    )
}

/// Seeds the evaluation subsample (`eval_examples`), independent of the run's seed.
pub const EVAL_SUBSAMPLE_SEED: u64 = 0x5EED;
/// The draw of `holdout` examples, the same for every run.
pub const HOLDOUT_SEED: u64 = 0x401D;

fn subsample(mut v: Vec<Example>, n: usize, seed: u64) -> Vec<Example> {
    if n > 0 && v.len() > n {
        v.shuffle(&mut StdRng::seed_from_u64(seed));
        v.truncate(n);
    }
    v
}

/// The answer a text-to-text model learns to write: the label or option, or the score with
/// one decimal.
pub fn target_text(e: &Example, task: &Task) -> String {
    if task.kind == TaskKind::Regression {
        format!("{:.1}", e.value)
    } else {
        e.candidates(&task.labels)
            .get(e.label)
            .cloned()
            .unwrap_or_default()
    }
}

/// Loads a task by name: `glue-sst2` (or `glue/sst2`), `glue/<task>` and `superglue/<task>`
/// from the full GLUE and SuperGLUE files, `crossfit/<task>` (or any other bare name) from
/// CrossFit's k-shot splits (train on `_train`, evaluate on `_test`, or `_dev` where a task
/// has no test file). `train_n`/`eval_n` take seeded subsamples (0: all).
pub fn load_task(
    data: &Path,
    name: &str,
    train_n: usize,
    eval_n: usize,
    split_seed: u64,
    seed: u64,
) -> anyhow::Result<Task> {
    let spec = crate::config::TaskSpec {
        name: name.into(),
        train_examples: train_n,
        eval_examples: eval_n,
        split_seed,
        ..Default::default()
    };
    load(data, &spec, seed)
}

/// Loads the task a config names: its files, the evaluation split it asks for, `k` examples
/// per class when `shots_per_class` is set, then the subsamples.
pub fn load(data: &Path, spec: &crate::config::TaskSpec, seed: u64) -> anyhow::Result<Task> {
    let mut task = tasks::read_named(
        data,
        &spec.name,
        spec.eval_split.as_deref(),
        spec.split_seed,
    )?;
    if spec.holdout > 0 {
        anyhow::ensure!(
            spec.eval_split.is_none(),
            "task `{}`: `holdout` evaluates on held-out training examples; drop `eval_split`",
            spec.name
        );
        anyhow::ensure!(
            task.train.len() > spec.holdout,
            "task `{}`: holdout = {} but the training file has {} examples",
            spec.name,
            spec.holdout,
            task.train.len()
        );
        let mut train = std::mem::take(&mut task.train);
        train.shuffle(&mut StdRng::seed_from_u64(HOLDOUT_SEED));
        task.eval = train.split_off(train.len() - spec.holdout);
        task.train = train;
        task.eval_split = "train-holdout".into();
    }
    if spec.shots_per_class > 0 {
        anyhow::ensure!(
            task.kind == TaskKind::Classification,
            "task `{}`: shots_per_class needs a fixed label set; this task is {:?}",
            spec.name,
            task.kind
        );
        task.train = per_class(
            std::mem::take(&mut task.train),
            task.labels.len(),
            spec.shots_per_class,
            seed,
        );
    }
    task.train = subsample(std::mem::take(&mut task.train), spec.train_examples, seed);
    // The same evaluation subsample for every run seed: runs compare on one set.
    task.eval = subsample(
        std::mem::take(&mut task.eval),
        spec.eval_examples,
        EVAL_SUBSAMPLE_SEED,
    );
    Ok(task)
}

/// `k` examples of each class, drawn with `seed` (all of a class that has fewer), in a seeded
/// order.
pub fn per_class(examples: Vec<Example>, classes: usize, k: usize, seed: u64) -> Vec<Example> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut by_class: Vec<Vec<Example>> = vec![Vec::new(); classes];
    for e in examples {
        if let Some(c) = by_class.get_mut(e.label) {
            c.push(e);
        }
    }
    let mut out = Vec::with_capacity(classes * k);
    for mut c in by_class {
        c.shuffle(&mut rng);
        c.truncate(k);
        out.extend(c);
    }
    out.shuffle(&mut rng);
    out
}

/// The rows of a JSONL file with their 0-based line numbers, blank lines skipped; a row that
/// does not parse names the file and line.
pub(crate) fn jsonl_rows<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> anyhow::Result<Vec<(usize, T)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map(|row| (i, row))
                .with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}
