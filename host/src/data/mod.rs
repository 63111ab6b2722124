//! Task data read from the real files as they are: GLUE TSV and CrossFit/MetaICL JSONL.
use std::path::{Path, PathBuf};

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

fn subsample(mut v: Vec<Example>, n: usize, seed: u64) -> Vec<Example> {
    if n > 0 && v.len() > n {
        v.shuffle(&mut StdRng::seed_from_u64(seed));
        v.truncate(n);
    }
    v
}

/// Reads GLUE SST-2 (`sentence<TAB>label` with a header).
pub fn read_sst2(path: &Path) -> anyhow::Result<Vec<Example>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let mut cols = line.split('\t');
        let (Some(s), Some(l)) = (cols.next(), cols.next()) else {
            bail!(
                "{}:{}: expected `sentence<TAB>label`",
                path.display(),
                i + 1
            );
        };
        let label: usize = l
            .trim()
            .parse()
            .with_context(|| format!("{}:{}: label `{l}` is not 0 or 1", path.display(), i + 1))?;
        out.push(Example {
            text_a: s.trim().to_string(),
            text_b: None,
            label,
            ..Default::default()
        });
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
struct CrossFitRow {
    input: String,
    output: String,
    options: Vec<String>,
}

/// The rows of a JSONL file with their 0-based line numbers, blank lines skipped; a row that
/// does not parse names the file and line.
fn jsonl_rows<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<(usize, T)>> {
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

/// Reads a CrossFit/MetaICL JSONL file. `labels` is the task's label set (taken from the first
/// row's options when empty); a row whose options differ from it keeps its own `options`
/// (a multiple-choice row), and its label indexes those.
pub fn read_crossfit(path: &Path, labels: &mut Vec<String>) -> anyhow::Result<Vec<Example>> {
    let mut out = Vec::new();
    for (i, row) in jsonl_rows::<CrossFitRow>(path)? {
        if labels.is_empty() {
            *labels = row.options.clone();
        }
        let Some(label) = row.options.iter().position(|o| o == &row.output) else {
            bail!(
                "{}:{}: output `{}` is not one of the row's options {:?}",
                path.display(),
                i + 1,
                row.output,
                row.options
            );
        };
        let options = if &row.options == labels {
            Vec::new()
        } else {
            row.options
        };
        let (a, b) = match row.input.split_once(" [SEP] ") {
            Some((a, b)) => (a.to_string(), Some(b.to_string())),
            None => (row.input.clone(), None),
        };
        out.push(Example {
            text_a: a,
            text_b: b,
            label,
            options,
            value: 0.0,
        });
    }
    Ok(out)
}

/// Multiple choice when any example brings its own options.
fn kind_of(examples: &[&[Example]]) -> TaskKind {
    if examples
        .iter()
        .any(|v| v.iter().any(|e| !e.options.is_empty()))
    {
        TaskKind::MultipleChoice
    } else {
        TaskKind::Classification
    }
}

#[derive(serde::Deserialize)]
struct PpftRow {
    text_a: String,
    #[serde(default)]
    text_b: Option<String>,
    label: serde_json::Value,
}

/// The rows of a `ppft_*.json` file (`{"0": {"text_a", "text_b", "label"}}`) in key order.
fn read_ppft_rows(path: &Path) -> anyhow::Result<Vec<(usize, PpftRow)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let rows: std::collections::BTreeMap<String, PpftRow> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a ppft JSON file", path.display()))?;
    let mut keyed: Vec<(usize, PpftRow)> = rows
        .into_iter()
        .map(|(k, v)| (k.parse().unwrap_or(usize::MAX), v))
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    Ok(keyed)
}

/// Reads a `ppft_train.json` / `ppft_dev.json` file of a classification task.
pub fn read_ppft(path: &Path, labels: &[&str]) -> anyhow::Result<Vec<Example>> {
    read_ppft_rows(path)?
        .into_iter()
        .map(|(k, r)| {
            let l = match &r.label {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let label = labels.iter().position(|x| *x == l).with_context(|| {
                format!(
                    "{}: row {k}: label `{l}` is not one of {labels:?}",
                    path.display()
                )
            })?;
            Ok(Example {
                text_a: r.text_a,
                text_b: r.text_b,
                label,
                ..Default::default()
            })
        })
        .collect()
}

/// Reads STS-B's `ppft_*.json` re-split: sentence pairs with a similarity score in [0, 5].
pub fn read_ppft_scores(path: &Path) -> anyhow::Result<Vec<Example>> {
    read_ppft_rows(path)?
        .into_iter()
        .map(|(k, r)| {
            let value = match &r.label {
                serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
                serde_json::Value::Number(n) => n.as_f64(),
                _ => None,
            }
            .with_context(|| {
                format!(
                    "{}: row \"{k}\": label {} is not a number",
                    path.display(),
                    r.label
                )
            })?;
            Ok(Example {
                text_a: r.text_a,
                text_b: r.text_b,
                value,
                ..Default::default()
            })
        })
        .collect()
}

/// Reads an official GLUE dev TSV with `sentence1`, `sentence2` and `label` columns.
pub fn read_glue_pairs(path: &Path, labels: &[&str]) -> anyhow::Result<Vec<Example>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let col = |n: &str| {
        header
            .iter()
            .position(|h| *h == n)
            .with_context(|| format!("{}: no `{n}` column", path.display()))
    };
    let (a, b, l) = (col("sentence1")?, col("sentence2")?, col("label")?);
    lines
        .enumerate()
        .map(|(i, line)| {
            let cols: Vec<&str> = line.split('\t').collect();
            let get = |c: usize| {
                cols.get(c)
                    .copied()
                    .with_context(|| format!("{}:{}: too few columns", path.display(), i + 2))
            };
            let lab = get(l)?;
            let label = labels.iter().position(|x| *x == lab).with_context(|| {
                format!(
                    "{}:{}: label `{lab}` is not one of {labels:?}",
                    path.display(),
                    i + 2
                )
            })?;
            Ok(Example {
                text_a: get(a)?.to_string(),
                text_b: Some(get(b)?.to_string()),
                label,
                ..Default::default()
            })
        })
        .collect()
}

/// Reads CoLA's TSV (no header: source, label, original label, sentence).
pub fn read_cola(path: &Path) -> anyhow::Result<Vec<Example>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let cols: Vec<&str> = line.split('\t').collect();
            let (Some(label), Some(sentence)) = (cols.get(1), cols.get(3)) else {
                bail!(
                    "{}:{}: expected `source<TAB>label<TAB>original<TAB>sentence`",
                    path.display(),
                    i + 1
                );
            };
            let label = label
                .trim()
                .parse()
                .with_context(|| format!("{}:{}: label `{label}`", path.display(), i + 1))?;
            Ok(Example {
                text_a: sentence.trim().to_string(),
                text_b: None,
                label,
                ..Default::default()
            })
        })
        .collect()
}

/// Reads a SuperGLUE JSONL file of BoolQ, CB, RTE or WiC (FewGLUE's files): the text pair
/// each task uses and the label as an index into `labels`.
pub fn read_superglue(path: &Path, task: &str, labels: &[&str]) -> anyhow::Result<Vec<Example>> {
    let field = |row: &serde_json::Value, k: &str, i: usize| -> anyhow::Result<String> {
        row.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .with_context(|| format!("{}:{}: no string field `{k}`", path.display(), i + 1))
    };
    jsonl_rows::<serde_json::Value>(path)?
        .into_iter()
        .map(|(i, row)| {
            if task == "copa" {
                // Multiple choice: which alternative is the cause (effect) of the premise.
                let label = row
                    .get("label")
                    .and_then(|v| v.as_u64())
                    .filter(|l| *l < 2)
                    .with_context(|| {
                        format!("{}:{}: label is not 0 or 1", path.display(), i + 1)
                    })?;
                return Ok(Example {
                    text_a: field(&row, "premise", i)?,
                    text_b: Some(format!("What was the {}?", field(&row, "question", i)?)),
                    label: label as usize,
                    options: vec![field(&row, "choice1", i)?, field(&row, "choice2", i)?],
                    value: 0.0,
                });
            }
            let (a, b) = match task {
                "boolq" => (field(&row, "passage", i)?, field(&row, "question", i)?),
                "cb" | "rte" => (field(&row, "premise", i)?, field(&row, "hypothesis", i)?),
                "wsc" => {
                    let target = row
                        .get("target")
                        .with_context(|| format!("{}:{}: no `target`", path.display(), i + 1))?;
                    (
                        field(&row, "text", i)?,
                        format!(
                            "Does \"{}\" refer to \"{}\"?",
                            field(target, "span2_text", i)?,
                            field(target, "span1_text", i)?
                        ),
                    )
                }
                "wic" => (
                    format!(
                        "{}: {}",
                        field(&row, "word", i)?,
                        field(&row, "sentence1", i)?
                    ),
                    field(&row, "sentence2", i)?,
                ),
                other => bail!(
                    "SuperGLUE task `{other}` has no reader yet (boolq, cb, copa, rte, wic do)"
                ),
            };
            let l = match row.get("label") {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Bool(b)) => b.to_string(),
                other => bail!(
                    "{}:{}: label {other:?} is not a string or boolean",
                    path.display(),
                    i + 1
                ),
            };
            let label = labels.iter().position(|x| *x == l).with_context(|| {
                format!(
                    "{}:{}: label `{l}` is not one of {labels:?}",
                    path.display(),
                    i + 1
                )
            })?;
            Ok(Example {
                text_a: a,
                text_b: Some(b),
                label,
                ..Default::default()
            })
        })
        .collect()
}

/// Reads MultiRC's JSONL: one example per (passage, question, candidate answer), labelled
/// whether the answer is right (`false`/`true`).
pub fn read_multirc(path: &Path) -> anyhow::Result<Vec<Example>> {
    #[derive(serde::Deserialize)]
    struct Answer {
        text: String,
        label: usize,
    }
    #[derive(serde::Deserialize)]
    struct Question {
        question: String,
        answers: Vec<Answer>,
    }
    #[derive(serde::Deserialize)]
    struct Passage {
        text: String,
        questions: Vec<Question>,
    }
    #[derive(serde::Deserialize)]
    struct Row {
        passage: Passage,
    }
    let mut out = Vec::new();
    for (i, row) in jsonl_rows::<Row>(path)? {
        for q in row.passage.questions {
            for a in q.answers {
                anyhow::ensure!(
                    a.label < 2,
                    "{}:{}: answer label {} is not 0 or 1",
                    path.display(),
                    i + 1,
                    a.label
                );
                out.push(Example {
                    text_a: row.passage.text.clone(),
                    text_b: Some(format!("{} {}", q.question, a.text)),
                    label: a.label,
                    ..Default::default()
                });
            }
        }
    }
    Ok(out)
}

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

/// The GLUE classification tasks read from the re-splits in `glue/<task>/ppft_{train,dev}.json`,
/// with their label sets in file order.
const PPFT_TASKS: &[(&str, &[&str])] = &[
    ("mrpc", &["0", "1"]),
    ("qqp", &["0", "1"]),
    ("mnli", &["entailment", "neutral", "contradiction"]),
    ("qnli", &["entailment", "not_entailment"]),
];

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
    let mut task = read_named(
        data,
        &spec.name,
        spec.eval_split.as_deref(),
        spec.split_seed,
    )?;
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

fn read_named(
    data: &Path,
    name: &str,
    eval_split: Option<&str>,
    split_seed: u64,
) -> anyhow::Result<Task> {
    let task = |kind, labels: Vec<String>, train, eval, split: &str| {
        if let Some(want) = eval_split.filter(|w| *w != split) {
            bail!("task `{name}` is evaluated on its `{split}` split (the one labelled split here besides train); `eval_split` `{want}` does not exist for it");
        }
        let crossfit =
            !(name.starts_with("glue/") || name.starts_with("superglue/") || name == "glue-sst2");
        let metric = match kind {
            TaskKind::Regression => "pearson",
            _ if name.ends_with("cola") => "matthews",
            TaskKind::Classification if crossfit => "macro_f1",
            _ => "accuracy",
        };
        Ok(Task {
            name: name.into(),
            kind,
            labels,
            train,
            eval,
            eval_split: split.into(),
            metric: metric.into(),
        })
    };
    let strings = |l: &[&str]| l.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    if name == "glue/rte" {
        let dir = data.join("glue/rte");
        let labels = ["entailment", "not_entailment"];
        return task(
            TaskKind::Classification,
            strings(&labels),
            read_ppft(&dir.join("ppft_train.json"), &labels)?,
            read_glue_pairs(&dir.join("glue_dev_official.tsv"), &labels)?,
            "dev",
        );
    }
    if name == "glue/cola" {
        let dir = data.join("glue/cola");
        return task(
            TaskKind::Classification,
            strings(&["unacceptable", "acceptable"]),
            read_cola(&dir.join("in_domain_train.tsv"))?,
            read_cola(&dir.join("in_domain_dev.tsv"))?,
            "dev",
        );
    }
    if name == "glue/stsb" {
        let dir = data.join("glue/stsb");
        return task(
            TaskKind::Regression,
            Vec::new(),
            read_ppft_scores(&dir.join("ppft_train.json"))?,
            read_ppft_scores(&dir.join("ppft_dev.json"))?,
            "ppft dev",
        );
    }
    if let Some((t, labels)) = name
        .strip_prefix("glue/")
        .and_then(|t| PPFT_TASKS.iter().find(|(n, _)| *n == t))
    {
        let dir = data.join("glue").join(t);
        return task(
            TaskKind::Classification,
            strings(labels),
            read_ppft(&dir.join("ppft_train.json"), labels)?,
            read_ppft(&dir.join("ppft_dev.json"), labels)?,
            "ppft dev",
        );
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
        let (train, eval) = (read("fewglue_train.jsonl")?, read("fewglue_val.jsonl")?);
        return task(
            kind_of(&[&train, &eval]),
            strings(labels),
            train,
            eval,
            "val",
        );
    }
    if name == "glue-sst2" || name == "glue/sst2" {
        let dir = data.join("glue/sst2");
        return task(
            TaskKind::Classification,
            strings(&["negative", "positive"]),
            read_sst2(&dir.join("train.tsv"))?,
            read_sst2(&dir.join("dev.tsv"))?,
            "dev",
        );
    }
    if let Some(t) = name.strip_prefix("glue/") {
        bail!("GLUE task `{t}`: sst2, cola, mrpc, qqp, stsb, mnli, qnli and rte are supported");
    }
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
