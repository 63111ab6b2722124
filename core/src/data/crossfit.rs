//! CrossFit / MetaICL k-shot JSONL files.
use std::path::Path;

use anyhow::bail;

use super::{jsonl_rows, Example, TaskKind};

#[derive(serde::Deserialize)]
struct CrossFitRow {
    input: String,
    output: String,
    options: Vec<String>,
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
pub(super) fn kind_of(examples: &[&[Example]]) -> TaskKind {
    if examples
        .iter()
        .any(|v| v.iter().any(|e| !e.options.is_empty()))
    {
        TaskKind::MultipleChoice
    } else {
        TaskKind::Classification
    }
}
