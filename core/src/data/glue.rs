//! GLUE: the official TSVs (SST-2, CoLA, dev pairs) and the `ppft_*.json` re-splits.
use std::path::Path;

use anyhow::{bail, Context};

use super::Example;

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
