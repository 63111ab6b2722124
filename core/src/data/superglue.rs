//! SuperGLUE as FewGLUE ships it: one JSONL file per split.
use std::path::Path;

use anyhow::{bail, Context};

use super::{jsonl_rows, Example};

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
