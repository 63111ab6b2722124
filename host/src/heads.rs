//! Task heads: what turns the backbone's states into a task's answer. A classification head per
//! task, one option-scoring head shared by every task (it ranks (input, option) pairs, so it
//! answers multiple-choice and unseen tasks), a regression head per task, a siamese head for
//! sentence pairs, or text-to-text through an encoder-decoder's own LM head. Their parameters
//! are in group `head`.
use anyhow::Context;
use burn::tensor::{backend::AutodiffBackend, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

pub use crate::data::target_text;
use crate::{
    bridge::HostGraph,
    config::{HeadKind, TaskSpec},
    data::{Example, Task, TaskKind},
    model::Model,
    params::ParamStore,
};

/// The parameter prefix of the option-scoring head every task shares.
pub const OPTION_HEAD: &str = "option_head";

/// A task's resolved head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Head {
    /// `{prefix}.weight [classes, hidden]`, `{prefix}.bias [classes]`.
    Classification { prefix: String, classes: usize },
    /// `option_head.weight [1, hidden]`, `option_head.bias [1]`, shared.
    OptionScoring,
    /// `{prefix}.weight [1, hidden]`, `{prefix}.bias [1]`.
    Regression { prefix: String },
    /// The backbone's own LM head: the answer's text, generated.
    TextToText { max_new_tokens: usize },
    /// Sentence pairs encoded one sentence at a time, classified from `[u, v, |u − v|, u ∗ v]`
    /// (Sentence-BERT's NLI head): `{prefix}.weight [classes, 4 · hidden]`.
    Siamese { prefix: String, classes: usize },
    /// BERT's sequence classifier as transformers' `BertForSequenceClassification` computes it:
    /// `{prefix}.weight [classes, hidden]` over `tanh({prefix}.pooler · h_[CLS])`, the pooler
    /// `{prefix}.pooler.weight [hidden, hidden]` taken from the checkpoint. Made when an HF peft
    /// `SEQ_CLS` adapter is read (`serve::foreign`); runs do not train it.
    ClsPooler { prefix: String, classes: usize },
}

/// What a head computes for a batch.
pub enum Output<B: AutodiffBackend> {
    /// Scores `[batch, options]`; `valid` is 1 where an option exists (examples of a
    /// multiple-choice batch may have fewer options than the widest) and 0 where padded.
    Scores {
        logits: Tensor<B, 2>,
        valid: Tensor<B, 2>,
    },
    /// Predictions `[batch]`.
    Values(Tensor<B, 1>),
    /// The per-example loss itself `[batch]` (text-to-text: the answer's mean token NLL).
    Loss(Tensor<B, 1>),
}

/// Large enough to vanish under softmax, small enough to stay finite in f32 sums.
const PADDED: f32 = -1e9;

impl Head {
    /// Picks the head `spec` asks for (or suits the task); `prefix` names a per-task head's
    /// parameters.
    pub fn resolve(spec: &TaskSpec, task: &Task, prefix: &str) -> anyhow::Result<Head> {
        let head = match (spec.head, task.kind) {
            (HeadKind::TextToText, _) => Head::TextToText {
                max_new_tokens: spec.max_new_tokens,
            },
            (HeadKind::Siamese, TaskKind::Classification) => Head::Siamese {
                prefix: prefix.into(),
                classes: task.labels.len(),
            },
            (HeadKind::Auto | HeadKind::Classification, TaskKind::Classification) => {
                Head::Classification {
                    prefix: prefix.into(),
                    classes: task.labels.len(),
                }
            }
            (HeadKind::Auto | HeadKind::OptionScoring, TaskKind::MultipleChoice)
            | (HeadKind::OptionScoring, TaskKind::Classification) => Head::OptionScoring,
            (HeadKind::Auto | HeadKind::Regression, TaskKind::Regression) => Head::Regression {
                prefix: prefix.into(),
            },
            (kind, task_kind) => anyhow::bail!(
                "task `{}` is {task_kind:?}: a {kind:?} head cannot answer it ({})",
                task.name,
                match task_kind {
                    TaskKind::MultipleChoice =>
                        "its options differ per example: use `option_scoring`",
                    TaskKind::Regression => "its target is a number: use `regression`",
                    TaskKind::Classification => "use `classification` or `option_scoring`",
                }
            ),
        };
        if let Head::Classification { classes, .. } | Head::Siamese { classes, .. } = head {
            anyhow::ensure!(
                classes >= 2,
                "task `{}` has {classes} label(s); a classifier needs at least two",
                task.name
            );
        }
        Ok(head)
    }

    /// The parameter prefix and output width of a head of its own; none for text-to-text.
    fn linear(&self) -> Option<(&str, usize)> {
        match self {
            Head::Classification { prefix, classes }
            | Head::Siamese { prefix, classes }
            | Head::ClsPooler { prefix, classes } => Some((prefix, *classes)),
            Head::Regression { prefix } => Some((prefix, 1)),
            Head::OptionScoring => Some((OPTION_HEAD, 1)),
            Head::TextToText { .. } => None,
        }
    }

    /// Creates the head's parameters (group `head`); a head that already exists with the
    /// same shape (the shared option head, a head built with the model) is kept.
    pub fn create<B: AutodiffBackend>(
        &self,
        store: &mut ParamStore<B>,
        hidden: usize,
    ) -> anyhow::Result<()> {
        let Some((prefix, outputs)) = self.linear() else {
            return Ok(());
        };
        let features = match self {
            Head::Siamese { .. } => 4 * hidden,
            _ => hidden,
        };
        if let Head::ClsPooler { .. } = self {
            store.create_head_linear(&format!("{prefix}.pooler"), hidden, hidden)?;
        }
        store.create_head_linear(prefix, outputs, features)
    }

    /// Runs the backbone (with its modules) and this head on a batch of `task`'s examples.
    pub fn forward<B: AutodiffBackend>(
        &self,
        model: &Model<B>,
        graph: &HostGraph<'_, B>,
        task: &Task,
        batch: &[&Example],
        max_len: usize,
        device: &B::Device,
    ) -> anyhow::Result<Output<B>> {
        crate::model::mark_task(model, graph, &task.name);
        let project = |texts: &[(String, Option<String>)]| -> anyhow::Result<Tensor<B, 2>> {
            let (prefix, _) = self.linear().context("this head has no projection")?;
            let tb = model.tokenize(texts, max_len, device)?;
            let pooled = model.pooled(graph, &tb)?;
            Ok(model.head_linear(graph, pooled, prefix)?)
        };
        let n = batch.len();
        Ok(match self {
            Head::Classification { classes, .. } => {
                let logits = project(&pairs(batch))?;
                Output::Scores {
                    logits,
                    valid: Tensor::ones([n, *classes], device),
                }
            }
            Head::Regression { .. } => Output::Values(project(&pairs(batch))?.reshape([n])),
            Head::ClsPooler { prefix, classes } => {
                let tb = model.tokenize(&pairs(batch), max_len, device)?;
                let h = model.encode(graph, &tb)?;
                Output::Scores {
                    logits: cls_pooler_logits(model, graph, h, prefix)?,
                    valid: Tensor::ones([n, *classes], device),
                }
            }
            Head::Siamese { prefix, classes } => {
                let mut sides = [Vec::with_capacity(n), Vec::with_capacity(n)];
                for e in batch {
                    let b = e.text_b.clone().with_context(|| {
                        format!(
                            "task `{}`: the siamese head needs sentence pairs; an example has one sentence",
                            task.name
                        )
                    })?;
                    sides[0].push((e.text_a.clone(), None));
                    sides[1].push((b, None));
                }
                let mut pooled = Vec::with_capacity(2);
                for side in &sides {
                    let tb = model.tokenize(side, max_len, device)?;
                    pooled.push(model.pooled(graph, &tb)?);
                }
                let (u, v) = (pooled[0].clone(), pooled[1].clone());
                let features = Tensor::cat(
                    vec![u.clone(), v.clone(), (u.clone() - v.clone()).abs(), u * v],
                    1,
                );
                Output::Scores {
                    logits: model.head_linear(graph, features, prefix)?,
                    valid: Tensor::ones([n, *classes], device),
                }
            }
            Head::OptionScoring => {
                // One row per (example, option): the input first, the option as the second
                // segment (kept whole by longest-first truncation).
                let widest = batch
                    .iter()
                    .map(|e| e.candidates(&task.labels).len())
                    .max()
                    .unwrap_or(0);
                anyhow::ensure!(
                    widest > 0,
                    "task `{}` has an example without options",
                    task.name
                );
                let mut rows = Vec::new();
                let mut index = vec![0i64; n * widest];
                let mut valid = vec![0f32; n * widest];
                let mut pad = vec![PADDED; n * widest];
                for (i, e) in batch.iter().enumerate() {
                    let input = joined_input(e);
                    for (j, option) in e.candidates(&task.labels).iter().enumerate() {
                        index[i * widest + j] = rows.len() as i64;
                        valid[i * widest + j] = 1.0;
                        pad[i * widest + j] = 0.0;
                        rows.push((input.clone(), Some(option.clone())));
                    }
                }
                let scores = project(&rows)?.reshape([rows.len()]);
                let index =
                    Tensor::<B, 1, Int>::from_data(TensorData::new(index, [n * widest]), device);
                let float = |v: Vec<f32>| {
                    Tensor::<B, 2>::from_data(TensorData::new(v, [n, widest]), device)
                };
                Output::Scores {
                    logits: scores.select(0, index).reshape([n, widest]) + float(pad),
                    valid: float(valid),
                }
            }
            Head::TextToText { .. } => {
                // Teacher forcing: the decoder reads the answer shifted right by the start
                // token and predicts each of its tokens (EOS included, padding masked).
                let inputs: Vec<_> = batch.iter().map(|e| (joined_input(e), None)).collect();
                let targets: Vec<_> = batch.iter().map(|e| (target_text(e, task), None)).collect();
                let tb = model.tokenize(&inputs, max_len, device)?;
                let answers = model.tokenize(&targets, max_len, device)?;
                Output::Loss(teacher_forced_loss(model, graph, &tb, answers)?)
            }
        })
    }

    /// Text-to-text: the decoded answer of each example (greedy, special tokens dropped).
    pub fn generate<B: AutodiffBackend>(
        &self,
        model: &Model<B>,
        graph: &HostGraph<'_, B>,
        batch: &[&Example],
        max_len: usize,
        device: &B::Device,
    ) -> anyhow::Result<Vec<String>> {
        let Head::TextToText { max_new_tokens } = self else {
            anyhow::bail!("only a text-to-text head generates text");
        };
        let inputs: Vec<_> = batch.iter().map(|e| (joined_input(e), None)).collect();
        let tb = model.tokenize(&inputs, max_len, device)?;
        let rows = model.generate(graph, &tb, *max_new_tokens)?;
        let tok = model
            .tokenizer
            .as_ref()
            .context("this backbone has no tokenizer.json")?;
        rows.iter()
            .map(|r| {
                // Drop the start token; the tokenizer drops EOS and padding as special tokens.
                let ids: Vec<u32> = r.iter().skip(1).map(|&i| i as u32).collect();
                tok.decode(&ids, true)
                    .map(|s| s.trim().to_string())
                    .map_err(|e| anyhow::anyhow!(e))
                    .with_context(|| format!("decoding {ids:?}"))
            })
            .collect()
    }
}

/// The input text: a pair joined with CrossFit's ` [SEP] `.
/// [`Head::ClsPooler`]'s logits from the last hidden state `[batch, time, hidden]`.
pub fn cls_pooler_logits<B: AutodiffBackend>(
    model: &Model<B>,
    graph: &HostGraph<'_, B>,
    h: Tensor<B, 3>,
    prefix: &str,
) -> anyhow::Result<Tensor<B, 2>> {
    let [n, _, d] = h.dims();
    let cls = h.slice([0..n, 0..1]).reshape([n, d]);
    let pooled = model
        .head_linear(graph, cls, &format!("{prefix}.pooler"))?
        .tanh();
    Ok(model.head_linear(graph, pooled, prefix)?)
}

fn joined_input(e: &Example) -> String {
    match &e.text_b {
        Some(b) => format!("{} [SEP] {b}", e.text_a),
        None => e.text_a.clone(),
    }
}

fn pairs(batch: &[&Example]) -> Vec<(String, Option<String>)> {
    batch
        .iter()
        .map(|e| (e.text_a.clone(), e.text_b.clone()))
        .collect()
}

/// Per-example training loss `[batch]`: cross-entropy over the valid options (PyTorch's label
/// smoothing spread over them) or the squared error of a regression.
pub fn per_example_loss<B: AutodiffBackend>(
    out: Output<B>,
    batch: &[&Example],
    label_smoothing: f64,
    device: &B::Device,
) -> Tensor<B, 1> {
    let n = batch.len();
    match out {
        Output::Scores { logits, valid } => {
            let y: Vec<i64> = batch.iter().map(|e| e.label as i64).collect();
            let y = Tensor::<B, 1, Int>::from_data(TensorData::new(y, [n]), device);
            let logp = burn::tensor::activation::log_softmax(logits, 1);
            let nll = logp
                .clone()
                .gather(1, y.unsqueeze_dim::<2>(1))
                .neg()
                .reshape([n]);
            if label_smoothing > 0.0 {
                // (1 - e) * nll + e * mean over the valid options of -log p.
                let count = valid.clone().sum_dim(1).reshape([n]);
                let uniform = (logp * valid).sum_dim(1).reshape([n]).neg() / count;
                nll * (1.0 - label_smoothing) + uniform * label_smoothing
            } else {
                nll
            }
        }
        Output::Loss(l) => l,
        Output::Values(pred) => {
            let y: Vec<f32> = batch.iter().map(|e| e.value as f32).collect();
            let y = Tensor::<B, 1>::from_data(TensorData::new(y, [n]), device);
            (pred - y).powf_scalar(2.0)
        }
    }
}

/// Each example's mean token cross-entropy of `answers` under teacher forcing: the decoder
/// reads the answer shifted right behind the start token and predicts each of its tokens (EOS
/// included, padding masked). `[n]`.
pub(crate) fn teacher_forced_loss<B: AutodiffBackend>(
    model: &Model<B>,
    graph: &HostGraph<'_, B>,
    inputs: &crate::backbone::TextBatch<B>,
    answers: crate::backbone::TextBatch<B>,
) -> anyhow::Result<Tensor<B, 1>> {
    let [n, t] = answers.input_ids.dims();
    let device = answers.input_ids.device();
    let start = model.seq2seq()?.decoder_start_token_id();
    let decoder_input = Tensor::cat(
        vec![
            Tensor::<B, 2, Int>::full([n, 1], start, &device),
            answers.input_ids.clone().slice([0..n, 0..t - 1]),
        ],
        1,
    );
    let logits = model.seq2seq_logits(graph, inputs, &decoder_input)?;
    let vocab = logits.dims()[2];
    let nll = crate::nn::cross_entropy(
        logits.reshape([n * t, vocab]),
        answers.input_ids.reshape([n * t]),
        0.0,
    )?
    .reshape([n, t]);
    let mask = answers.attention_mask.float();
    let count = mask.clone().sum_dim(1).reshape([n]).clamp_min(1.0);
    Ok((nll * mask).sum_dim(1).reshape([n]) / count)
}
