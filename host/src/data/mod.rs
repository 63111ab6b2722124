//! Task data read from the real files as they are: GLUE TSV and CrossFit/MetaICL JSONL.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

/// One labelled example of a classification task.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub text_a: String,
    pub text_b: Option<String>,
    pub label: usize,
}

/// A classification task with a fixed label set.
#[derive(Clone, Debug)]
pub struct Task {
    pub name: String,
    pub labels: Vec<String>,
    pub train: Vec<Example>,
    pub eval: Vec<Example>,
    /// Which split the evaluation examples come from.
    pub eval_split: String,
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

/// Reads a CrossFit JSONL file of a classification task; labels are indices into `labels`
/// (taken from the first row's options when empty).
pub fn read_crossfit(path: &Path, labels: &mut Vec<String>) -> anyhow::Result<Vec<Example>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let row: CrossFitRow =
            serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), i + 1))?;
        if labels.is_empty() {
            *labels = row.options.clone();
        }
        let Some(label) = labels.iter().position(|o| o == &row.output) else {
            bail!(
                "{}:{}: output `{}` is not one of the task's options {:?}",
                path.display(),
                i + 1,
                row.output,
                labels
            );
        };
        let (a, b) = match row.input.split_once(" [SEP] ") {
            Some((a, b)) => (a.to_string(), Some(b.to_string())),
            None => (row.input.clone(), None),
        };
        out.push(Example {
            text_a: a,
            text_b: b,
            label,
        });
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
struct PpftRow {
    text_a: String,
    #[serde(default)]
    text_b: Option<String>,
    label: serde_json::Value,
}

/// Reads a `ppft_train.json` / `ppft_dev.json` file (`{"0": {"text_a", "text_b", "label"}}`).
pub fn read_ppft(path: &Path, labels: &[&str]) -> anyhow::Result<Vec<Example>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let rows: std::collections::BTreeMap<String, PpftRow> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a ppft JSON file", path.display()))?;
    let mut keyed: Vec<(usize, PpftRow)> = rows
        .into_iter()
        .map(|(k, v)| (k.parse().unwrap_or(usize::MAX), v))
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    keyed
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
            })
        })
        .collect()
}

/// Reads a SuperGLUE JSONL file of BoolQ, CB, RTE or WiC (FewGLUE's files): the text pair
/// each task uses and the label as an index into `labels`.
pub fn read_superglue(path: &Path, task: &str, labels: &[&str]) -> anyhow::Result<Vec<Example>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let field = |row: &serde_json::Value, k: &str, i: usize| -> anyhow::Result<String> {
        row.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .with_context(|| format!("{}:{}: no string field `{k}`", path.display(), i + 1))
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let row: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}", path.display(), i + 1))?;
            let (a, b) = match task {
                "boolq" => (field(&row, "passage", i)?, field(&row, "question", i)?),
                "cb" | "rte" => (field(&row, "premise", i)?, field(&row, "hypothesis", i)?),
                "wic" => (
                    format!(
                        "{}: {}",
                        field(&row, "word", i)?,
                        field(&row, "sentence1", i)?
                    ),
                    field(&row, "sentence2", i)?,
                ),
                other => bail!(
                    "SuperGLUE task `{other}` needs option scoring, which is not implemented yet"
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
            })
        })
        .collect()
}

/// The SuperGLUE tasks with a fixed label set: folder, reader key, labels.
const SUPERGLUE_TASKS: &[(&str, &str, &[&str])] = &[
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

/// Loads a task by name: `glue-sst2` (or `glue/sst2`) and `glue/rte` from the full GLUE data,
/// anything else from CrossFit's k-shot splits (train on `_train`, evaluate on `_test` or
/// `_dev`).
pub fn load_task(
    data: &Path,
    name: &str,
    train_n: usize,
    eval_n: usize,
    split_seed: u64,
    seed: u64,
) -> anyhow::Result<Task> {
    if name == "glue/rte" {
        let dir = data.join("glue/rte");
        let labels = ["entailment", "not_entailment"];
        let train = subsample(
            read_ppft(&dir.join("ppft_train.json"), &labels)?,
            train_n,
            seed,
        );
        let eval = subsample(
            read_glue_pairs(&dir.join("glue_dev_official.tsv"), &labels)?,
            eval_n,
            seed,
        );
        return Ok(Task {
            name: name.into(),
            labels: labels.map(String::from).to_vec(),
            train,
            eval,
            eval_split: "dev".into(),
        });
    }
    if name == "glue/cola" {
        let dir = data.join("glue/cola");
        let train = subsample(read_cola(&dir.join("in_domain_train.tsv"))?, train_n, seed);
        let eval = subsample(read_cola(&dir.join("in_domain_dev.tsv"))?, eval_n, seed);
        let labels = vec!["unacceptable".to_string(), "acceptable".to_string()];
        return Ok(Task {
            name: name.into(),
            labels,
            train,
            eval,
            eval_split: "dev".into(),
        });
    }
    if let Some((t, labels)) = name
        .strip_prefix("glue/")
        .and_then(|t| PPFT_TASKS.iter().find(|(n, _)| *n == t))
    {
        let dir = data.join("glue").join(t);
        let train = subsample(
            read_ppft(&dir.join("ppft_train.json"), labels)?,
            train_n,
            seed,
        );
        let eval = subsample(read_ppft(&dir.join("ppft_dev.json"), labels)?, eval_n, seed);
        let labels = labels.iter().map(|l| l.to_string()).collect();
        return Ok(Task {
            name: name.into(),
            labels,
            train,
            eval,
            eval_split: "ppft dev".into(),
        });
    }
    if let Some(t) = name.strip_prefix("superglue/") {
        let Some((key, _, labels)) = SUPERGLUE_TASKS.iter().find(|(n, _, _)| *n == t) else {
            bail!("SuperGLUE task `{t}`: only boolq, cb, rte and wic are supported (the others need option scoring)");
        };
        let folder = if *key == "rte" { "rte_superglue" } else { key };
        let dir = data.join("superglue").join(folder);
        let train = subsample(
            read_superglue(&dir.join("fewglue_train.jsonl"), key, labels)?,
            train_n,
            seed,
        );
        let eval = subsample(
            read_superglue(&dir.join("fewglue_val.jsonl"), key, labels)?,
            eval_n,
            seed,
        );
        let labels = labels.iter().map(|l| l.to_string()).collect();
        return Ok(Task {
            name: name.into(),
            labels,
            train,
            eval,
            eval_split: "val".into(),
        });
    }
    if name == "glue/stsb" {
        bail!("glue/stsb is a regression task; regression heads are not implemented yet");
    }
    if name == "glue-sst2" || name == "glue/sst2" {
        let dir = data.join("glue/sst2");
        let train = subsample(read_sst2(&dir.join("train.tsv"))?, train_n, seed);
        let eval = subsample(read_sst2(&dir.join("dev.tsv"))?, eval_n, seed);
        return Ok(Task {
            name: name.into(),
            labels: vec!["negative".into(), "positive".into()],
            train,
            eval,
            eval_split: "dev".into(),
        });
    }
    let dir = data.join("crossfit").join(name);
    if !dir.is_dir() {
        bail!("unknown task `{name}`: no folder {}", dir.display());
    }
    let mut labels = Vec::new();
    let train = read_crossfit(
        &dir.join(format!("{name}_16_{split_seed}_train.jsonl")),
        &mut labels,
    )?;
    let test = dir.join(format!("{name}_test.jsonl"));
    let (eval_path, split) = if test.exists() {
        (test, "test")
    } else {
        (dir.join(format!("{name}_16_{split_seed}_dev.jsonl")), "dev")
    };
    let eval = subsample(read_crossfit(&eval_path, &mut labels)?, eval_n, seed);
    Ok(Task {
        name: name.into(),
        labels,
        train: subsample(train, train_n, seed),
        eval,
        eval_split: split.into(),
    })
}
