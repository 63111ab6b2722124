//! Task names to files: which reader reads which file of a benchmark's folder, the label set,
//! the evaluation split, and the headline metric. Tables, not a chain of name tests: a new
//! GLUE-style task is one row.
use std::path::Path;

use anyhow::bail;

use super::{
    crossfit::{kind_of, read_crossfit},
    glue::{read_cola, read_glue_pairs, read_ppft, read_ppft_scores, read_sst2},
    superglue::{read_multirc, read_superglue},
    Example, Task, TaskKind,
};

/// How a GLUE file is laid out.
#[derive(Clone, Copy)]
enum Format {
    Sst2,
    Cola,
    /// A `ppft_*.json` re-split of a classification task.
    Ppft,
    /// STS-B's `ppft_*.json` re-split: scores.
    PpftScores,
    /// An official dev TSV with `sentence1`, `sentence2`, `label`.
    GluePairs,
}

impl Format {
    fn read(self, path: &Path, labels: &[&str]) -> anyhow::Result<Vec<Example>> {
        match self {
            Format::Sst2 => read_sst2(path),
            Format::Cola => read_cola(path),
            Format::Ppft => read_ppft(path, labels),
            Format::PpftScores => read_ppft_scores(path),
            Format::GluePairs => read_glue_pairs(path, labels),
        }
    }
}

/// A GLUE task under `glue/<name>/`: its label set in file order, its train and evaluation
/// files, and which split the evaluation file is.
struct GlueTask {
    name: &'static str,
    kind: TaskKind,
    labels: &'static [&'static str],
    train: (Format, &'static str),
    eval: (Format, &'static str),
    split: &'static str,
}

const fn glue(
    name: &'static str,
    labels: &'static [&'static str],
    train: (Format, &'static str),
    eval: (Format, &'static str),
    split: &'static str,
) -> GlueTask {
    GlueTask {
        name,
        kind: TaskKind::Classification,
        labels,
        train,
        eval,
        split,
    }
}

const PPFT_TRAIN: (Format, &str) = (Format::Ppft, "ppft_train.json");
const PPFT_DEV: (Format, &str) = (Format::Ppft, "ppft_dev.json");

/// The GLUE tasks: SST-2 and CoLA from the official TSVs, the others from the `ppft_*.json`
/// re-splits (RTE evaluates on the official dev set).
const GLUE_TASKS: &[GlueTask] = &[
    glue(
        "sst2",
        &["negative", "positive"],
        (Format::Sst2, "train.tsv"),
        (Format::Sst2, "dev.tsv"),
        "dev",
    ),
    glue(
        "cola",
        &["unacceptable", "acceptable"],
        (Format::Cola, "in_domain_train.tsv"),
        (Format::Cola, "in_domain_dev.tsv"),
        "dev",
    ),
    glue("mrpc", &["0", "1"], PPFT_TRAIN, PPFT_DEV, "ppft dev"),
    glue("qqp", &["0", "1"], PPFT_TRAIN, PPFT_DEV, "ppft dev"),
    GlueTask {
        name: "stsb",
        kind: TaskKind::Regression,
        labels: &[],
        train: (Format::PpftScores, "ppft_train.json"),
        eval: (Format::PpftScores, "ppft_dev.json"),
        split: "ppft dev",
    },
    glue(
        "mnli",
        &["entailment", "neutral", "contradiction"],
        PPFT_TRAIN,
        PPFT_DEV,
        "ppft dev",
    ),
    glue(
        "qnli",
        &["entailment", "not_entailment"],
        PPFT_TRAIN,
        PPFT_DEV,
        "ppft dev",
    ),
    glue(
        "rte",
        &["entailment", "not_entailment"],
        PPFT_TRAIN,
        (Format::GluePairs, "glue_dev_official.tsv"),
        "dev",
    ),
];

/// The SuperGLUE tasks read here: folder, reader key, labels (none: multiple choice).
const SUPERGLUE_TASKS: &[(&str, &str, &[&str])] = &[
    ("copa", "copa", &[]),
    ("wsc", "wsc", &["false", "true"]),
    ("multirc", "multirc", &["false", "true"]),
    ("boolq", "boolq", &["false", "true"]),
    ("cb", "cb", &["entailment", "contradiction", "neutral"]),
    ("rte", "rte", &["entailment", "not_entailment"]),
    ("wic", "wic", &["false", "true"]),
];

/// The headline metric by the benchmark's convention: Pearson for regression, Matthews for
/// CoLA, macro-F1 on CrossFit classification (MetaICL's rule), accuracy otherwise.
pub(super) fn metric(name: &str, kind: TaskKind) -> &'static str {
    let crossfit =
        !(name.starts_with("glue/") || name.starts_with("superglue/") || name == "glue-sst2");
    match kind {
        TaskKind::Regression => "pearson",
        _ if name.ends_with("cola") => "matthews",
        TaskKind::Classification if crossfit => "macro_f1",
        _ => "accuracy",
    }
}

fn strings(l: &[&str]) -> Vec<String> {
    l.iter().map(|x| x.to_string()).collect()
}

/// Reads task `name`'s train and evaluation examples (see [`super::load_task`]).
pub(super) fn read_named(
    data: &Path,
    name: &str,
    eval_split: Option<&str>,
    split_seed: u64,
) -> anyhow::Result<Task> {
    let task = |kind, labels: Vec<String>, train, eval, split: &str| {
        if let Some(want) = eval_split.filter(|w| *w != split) {
            bail!("task `{name}` is evaluated on its `{split}` split (the one labelled split here besides train); `eval_split` `{want}` does not exist for it");
        }
        Ok(Task {
            name: name.into(),
            kind,
            labels,
            train,
            eval,
            eval_split: split.into(),
            metric: metric(name, kind).into(),
        })
    };
    let glue_name = if name == "glue-sst2" {
        Some("sst2")
    } else {
        name.strip_prefix("glue/")
    };
    if let Some(t) = glue_name {
        let Some(g) = GLUE_TASKS.iter().find(|g| g.name == t) else {
            let known: Vec<&str> = GLUE_TASKS.iter().map(|g| g.name).collect();
            bail!(
                "GLUE task `{t}`: {} and {} are supported",
                known[..known.len() - 1].join(", "),
                known[known.len() - 1]
            );
        };
        let dir = data.join("glue").join(g.name);
        let train = g.train.0.read(&dir.join(g.train.1), g.labels)?;
        let eval = g.eval.0.read(&dir.join(g.eval.1), g.labels)?;
        return task(g.kind, strings(g.labels), train, eval, g.split);
    }
    if let Some(t) = name.strip_prefix("superglue/") {
        let Some((key, _, labels)) = SUPERGLUE_TASKS.iter().find(|(n, _, _)| *n == t) else {
            bail!("SuperGLUE task `{t}`: boolq, cb, copa, multirc, rte, wic and wsc are supported");
        };
        let folder = if *key == "rte" { "rte_superglue" } else { key };
        let dir = data.join("superglue").join(folder);
        let read = |file: &str| {
            let path = dir.join(file);
            if *key == "multirc" {
                read_multirc(&path)
            } else {
                read_superglue(&path, key, labels)
            }
        };
        // FewGLUE's 32-example `dev32` file is the few-shot dev split (model selection); the
        // official validation set (`val`) is the default evaluation.
        let (split, eval_file) = match eval_split {
            None | Some("val") => ("val", "fewglue_val.jsonl"),
            Some("dev32") => ("dev32", "fewglue_dev32.jsonl"),
            Some(other) => bail!(
                "task `{name}`: SuperGLUE's evaluation splits are `val` (the default) and FewGLUE's `dev32`; `eval_split` `{other}` is neither"
            ),
        };
        let (train, eval) = (read("fewglue_train.jsonl")?, read(eval_file)?);
        return task(
            kind_of(&[&train, &eval]),
            strings(labels),
            train,
            eval,
            split,
        );
    }
    read_crossfit_task(data, name, eval_split, split_seed, task)
}

/// A CrossFit task (`crossfit/<task>` or a bare name): train on the `_train` split of
/// `split_seed`, evaluate on `_test`, or `_dev` where there is no test file or it is asked for.
fn read_crossfit_task(
    data: &Path,
    name: &str,
    eval_split: Option<&str>,
    split_seed: u64,
    task: impl Fn(TaskKind, Vec<String>, Vec<Example>, Vec<Example>, &str) -> anyhow::Result<Task>,
) -> anyhow::Result<Task> {
    let short = name.strip_prefix("crossfit/").unwrap_or(name);
    let dir = data.join("crossfit").join(short);
    if !dir.is_dir() {
        bail!("unknown task `{name}`: no folder {}", dir.display());
    }
    let mut labels = Vec::new();
    let train = read_crossfit(
        &dir.join(format!("{short}_16_{split_seed}_train.jsonl")),
        &mut labels,
    )?;
    let test = dir.join(format!("{short}_test.jsonl"));
    let dev = dir.join(format!("{short}_16_{split_seed}_dev.jsonl"));
    let (eval_path, split) = match eval_split {
        Some("dev") => (dev, "dev"),
        Some("test") | None if test.exists() => (test, "test"),
        Some("test") => bail!(
            "task `{name}` has no test file ({}); use \"eval_split\": \"dev\"",
            test.display()
        ),
        None => (dev, "dev"),
        Some(other) => bail!("task `{name}`: eval_split `{other}` is not `dev` or `test`"),
    };
    let (mut train, mut eval) = (train, read_crossfit(&eval_path, &mut labels)?);
    let kind = kind_of(&[&train, &eval]);
    if kind == TaskKind::MultipleChoice {
        // No fixed label set: the rows that matched the first row's options get them too.
        for e in train.iter_mut().chain(eval.iter_mut()) {
            if e.options.is_empty() {
                e.options = labels.clone();
            }
        }
        labels.clear();
    }
    task(kind, labels, train, eval, split)
}
