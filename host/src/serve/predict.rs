//! Predictions of a saved adapter on new text: plain lines (one input each; a TAB separates a
//! sentence pair) or JSONL objects with the task's fields, read whole and checked before
//! anything is written, then scored in batches.
use std::{io::Write, path::Path, time::Instant};

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value as Json};

use super::folder::{Loaded, TaskRecord};
use crate::{
    bridge::HostGraph,
    data::{Example, TaskKind},
    heads::{Head, Output},
};

/// Field names read as the first text of a JSONL input, in order of preference.
pub const FIRST_FIELDS: [&str; 7] = [
    "text_a",
    "text",
    "sentence",
    "sentence1",
    "input",
    "premise",
    "question",
];
/// Field names read as the second text (sentence pairs).
pub const SECOND_FIELDS: [&str; 4] = ["text_b", "sentence2", "hypothesis", "passage"];

/// How input lines are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// JSONL when a line starts with `{`, plain text otherwise.
    Auto,
    /// One input per line; a TAB separates the two sentences of a pair.
    Text,
    /// One JSON object per line with the task's fields.
    Jsonl,
}

fn field(obj: &Map<String, Json>, names: &[&str], source: &str) -> anyhow::Result<Option<String>> {
    for n in names {
        match obj.get(*n) {
            Some(Json::String(s)) => return Ok(Some(s.clone())),
            Some(Json::Null) | None => {}
            Some(other) => bail!("{source}: field `{n}` is {other}, expected a string"),
        }
    }
    Ok(None)
}

/// Parses input text (`source` names it in errors: a file or `stdin`) into examples; empty
/// lines are skipped. Errors name the source and line.
pub fn parse_inputs(text: &str, format: InputFormat, source: &str) -> anyhow::Result<Vec<Example>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("{source}:{}", i + 1);
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let json = match format {
            InputFormat::Jsonl => true,
            InputFormat::Text => false,
            InputFormat::Auto => line.trim_start().starts_with('{'),
        };
        if !json {
            let mut cols = line.splitn(2, '\t');
            let a = cols.next().unwrap_or_default().trim().to_string();
            let b = cols.next().map(|s| s.trim().to_string());
            out.push(Example {
                text_a: a,
                text_b: b,
                ..Default::default()
            });
            continue;
        }
        let v: Json =
            serde_json::from_str(line).with_context(|| format!("{at}: not a JSON object"))?;
        let Json::Object(obj) = v else {
            bail!("{at}: expected a JSON object, found {v}");
        };
        let Some(a) = field(&obj, &FIRST_FIELDS, &at)? else {
            bail!(
                "{at}: no input text: give one of the fields {}",
                FIRST_FIELDS.join(", ")
            );
        };
        let b = field(&obj, &SECOND_FIELDS, &at)?;
        let options = match obj.get("options") {
            None | Some(Json::Null) => Vec::new(),
            Some(Json::Array(a)) => a
                .iter()
                .map(|o| {
                    o.as_str()
                        .map(String::from)
                        .with_context(|| format!("{at}: option {o} is not a string"))
                })
                .collect::<anyhow::Result<_>>()?,
            Some(other) => bail!("{at}: `options` is {other}, expected a list of strings"),
        };
        out.push(Example {
            text_a: a,
            text_b: b,
            options,
            ..Default::default()
        });
    }
    Ok(out)
}

/// Reads inputs from a file, or stdin for `-`.
pub fn read_inputs(path: &Path, format: InputFormat) -> anyhow::Result<Vec<Example>> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading stdin")?;
        parse_inputs(&s, format, "stdin")
    } else {
        let s =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        parse_inputs(&s, format, &path.display().to_string())
    }
}

fn softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = row.iter().map(|&x| (x as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

/// What `predict` measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PredictStats {
    pub examples: usize,
    pub seconds: f64,
    pub examples_per_second: f64,
}

/// Predicts every example with `task`'s head and writes one JSON line per example to `out`:
/// `{"index", "label", "scores": {label: probability}}` (classification, multiple choice),
/// `{"index", "value"}` (regression) or `{"index", "label"}` (text-to-text, the generated
/// answer).
pub fn predict<B: AutodiffBackend>(
    loaded: &Loaded<B>,
    task: &TaskRecord,
    examples: &[Example],
    batch_size: usize,
    progress: bool,
    out: &mut dyn Write,
    device: &B::Device,
) -> anyhow::Result<PredictStats> {
    let model = &loaded.model;
    let t = task.task()?;
    let max_len = loaded.manifest.config.training.max_length;
    if t.kind == TaskKind::MultipleChoice {
        if let Some(i) = examples.iter().position(|e| e.options.is_empty()) {
            bail!(
                "input {}: task `{}` is multiple choice; each input needs its `options`",
                i + 1,
                t.name
            );
        }
    }
    let bar = if progress && examples.len() > batch_size {
        let b = ProgressBar::new(examples.len() as u64);
        b.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} examples {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let start = Instant::now();
    let mut index = 0usize;
    for chunk in examples.chunks(batch_size.max(1)) {
        let batch: Vec<&Example> = chunk.iter().collect();
        let graph = HostGraph::inference(&model.params);
        let mut rows: Vec<Json> = Vec::with_capacity(batch.len());
        if let Head::TextToText { .. } = task.head {
            let texts = task.head.generate(model, &graph, &batch, max_len, device)?;
            rows.extend(texts.into_iter().map(|s| json!({ "label": s })));
        } else {
            match task
                .head
                .forward(model, &graph, &t, &batch, max_len, device)?
            {
                Output::Scores { logits, .. } => {
                    let width = logits.dims()[1];
                    let v = super::floats(logits.detach())?;
                    for (i, e) in batch.iter().enumerate() {
                        let names = e.candidates(&t.labels);
                        let p = softmax(&v[i * width..i * width + names.len()]);
                        let best = (0..p.len()).fold(0, |b, j| if p[j] > p[b] { j } else { b });
                        let scores: Map<String, Json> = names
                            .iter()
                            .zip(&p)
                            .map(|(n, s)| (n.clone(), json!(s)))
                            .collect();
                        rows.push(json!({ "label": names[best], "scores": scores }));
                    }
                }
                Output::Values(v) => {
                    for x in super::floats(v.detach())? {
                        rows.push(json!({ "value": x }));
                    }
                }
                Output::Loss(_) => bail!("head {:?} gives no predictions", task.head),
            }
        }
        for mut r in rows {
            r["index"] = json!(index);
            index += 1;
            writeln!(out, "{r}")?;
        }
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    out.flush()?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(PredictStats {
        examples: examples.len(),
        seconds,
        examples_per_second: examples.len() as f64 / seconds.max(1e-9),
    })
}

/// Hidden states and head scores of `texts`, for cross-checks against other implementations
/// (HF transformers / peft): token ids, mask, last hidden state `[batch, time, hidden]`, the
/// mean-pooled state and, with a classification head, its logits.
pub fn dump<B: AutodiffBackend>(
    loaded: &Loaded<B>,
    task: Option<&TaskRecord>,
    texts: &[(String, Option<String>)],
    device: &B::Device,
) -> anyhow::Result<Json> {
    let model = &loaded.model;
    let max_len = loaded.manifest.config.training.max_length;
    let tb = model.tokenize(texts, max_len, device)?;
    let graph = HostGraph::inference(&model.params);
    let h = model.encode(&graph, &tb)?.detach();
    let [n, t, d] = h.dims();
    let ids: Vec<i64> = tb
        .input_ids
        .clone()
        .into_data()
        .convert::<i64>()
        .into_vec()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mask: Vec<i64> = tb
        .attention_mask
        .clone()
        .into_data()
        .convert::<i64>()
        .into_vec()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let types: Option<Vec<i64>> = match &tb.token_type_ids {
        Some(t) => Some(
            t.clone()
                .into_data()
                .convert::<i64>()
                .into_vec()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        ),
        None => None,
    };
    let hv = super::floats(h.clone())?;
    let rows = |v: &[i64]| -> Json { json!(v.chunks(t).collect::<Vec<_>>()) };
    let hidden: Vec<Vec<&[f32]>> = hv.chunks(t * d).map(|s| s.chunks(d).collect()).collect();
    let pooled = crate::model::mean_pool(h.clone(), &tb.attention_mask);
    let pv = super::floats(pooled.clone())?;
    let mut out = json!({
        "texts": texts,
        "input_ids": rows(&ids),
        "attention_mask": rows(&mask),
        "last_hidden_state": hidden,
        "pooled": pv.chunks(d).collect::<Vec<_>>(),
        "shape": [n, t, d],
    });
    if let Some(t) = &types {
        out["token_type_ids"] = rows(t);
    }
    let logits = match task.map(|t| &t.head) {
        Some(Head::Classification { prefix, classes }) => Some((
            model.head_linear(&graph, pooled, prefix)?.detach(),
            prefix,
            classes,
        )),
        Some(Head::ClsPooler { prefix, classes }) => Some((
            crate::heads::cls_pooler_logits(model, &graph, h, prefix)?.detach(),
            prefix,
            classes,
        )),
        _ => None,
    };
    if let (Some((logits, prefix, classes)), Some(TaskRecord { name, labels, .. })) = (logits, task)
    {
        let lv = super::floats(logits)?;
        out["task"] = json!(name);
        out["labels"] = json!(labels);
        out["head_prefix"] = json!(prefix);
        out["logits"] = json!(lv.chunks(*classes).collect::<Vec<_>>());
    }
    Ok(out)
}
