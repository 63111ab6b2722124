//! `peft-host bench seq2seq`: an encoder-decoder (T5, BART) on the shapes and token ids of
//! `scripts/pytorch_seq2seq_reference.py`, so the two sides time the same work: a
//! teacher-forced forward to the LM logits, greedy decoding through the key/value cache, and
//! (with modules) a training step on the mean token cross-entropy.

use burn::tensor::{backend::AutodiffBackend, ElementConversion, Int, Tensor, TensorData};
use peft_registry::Registry;
use serde::Serialize;

use super::{adamw_step, rayon_threads, summarise, Timing};
use crate::{backbone::TextBatch, bridge::HostGraph, train::optim::AdamW};

#[derive(Serialize, Debug)]
pub struct Seq2SeqBench {
    pub backbone: String,
    pub model_type: String,
    pub modules: Vec<String>,
    pub batch: usize,
    pub src: usize,
    pub tgt: usize,
    pub new_tokens: usize,
    pub threads: usize,
    /// `backbone.dtype` (`f32`, `bf16`) and `backbone.matmul_precision` (`high`, `medium`).
    pub backbone_dtype: String,
    pub matmul_precision: String,
    /// Encoder + teacher-forced decoder + LM head, no gradients.
    pub inference: Timing,
    /// Encoder once, then `new_tokens` cached decoding steps (EOS suppressed).
    pub generate: Timing,
    pub train_step: Option<Timing>,
    pub trainable_parameters: usize,
    /// The first training step's loss (the same random weights give PyTorch's).
    pub first_loss: Option<f32>,
    /// Time per kernel in each phase, when op times are collected (`--op-times`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub op_times: Vec<super::PhaseOps>,
}

/// Deterministic ids without padding: element `k` of `[rows, len]` is
/// `1000 + (k · mul) mod (vocab − 1000)` (the reference script's formula).
fn ids<B: AutodiffBackend>(
    rows: usize,
    len: usize,
    vocab: usize,
    mul: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let v: Vec<i64> = (0..rows * len)
        .map(|k| 1000 + ((k * mul) % (vocab - 1000)) as i64)
        .collect();
    Tensor::from_data(TensorData::new(v, [rows, len]), device)
}

/// Times inference, greedy decoding and (when `train`) a training step of the model `cfg`
/// describes, `runs` times each after one warm-up.
#[allow(clippy::too_many_arguments)]
pub fn seq2seq_bench<B: AutodiffBackend>(
    cfg: &crate::config::RunConfig,
    registry: &Registry,
    [batch, src, tgt, new_tokens]: [usize; 4],
    runs: usize,
    train: bool,
    device: &B::Device,
) -> anyhow::Result<Seq2SeqBench> {
    let model = crate::model::Model::<B>::build(cfg, registry, device, 2)?;
    let s2s = model.seq2seq()?;
    let vocab = model.info().vocab_size;
    anyhow::ensure!(
        vocab > 1000,
        "bench seq2seq needs a vocabulary over 1000 ids"
    );
    let tb = TextBatch {
        input_ids: ids::<B>(batch, src, vocab, 7919, device),
        attention_mask: Tensor::ones([batch, src], device),
        token_type_ids: None,
    };
    let labels = ids::<B>(batch, tgt, vocab, 104_729, device);
    // Labels shifted right behind the decoder start token (what HF does with `labels=`).
    let start = Tensor::<B, 2, Int>::full([batch, 1], s2s.decoder_start_token_id(), device);
    let dec_in = Tensor::cat(vec![start, labels.clone().slice([0..batch, 0..tgt - 1])], 1);

    model.set_trainable(&[])?;
    let mut op_times = Vec::new();
    let mut time = |phase: &str, f: &mut dyn FnMut() -> anyhow::Result<()>| {
        super::time_phase(phase, runs, &mut op_times, f)
    };
    let inference = summarise(
        "inference",
        time("inference", &mut || {
            let g = HostGraph::inference(&model.params);
            let _ = model.seq2seq_logits(&g, &tb, &dec_in)?.into_data();
            Ok(())
        })?,
    );
    let generate = summarise(
        "generate",
        time("generate", &mut || {
            let g = HostGraph::inference(&model.params);
            let hooks = model.hooks(&g, &tb);
            let out = s2s.greedy_generate(&hooks, &tb, new_tokens)?;
            anyhow::ensure!(out.iter().all(|r| r.len() == new_tokens + 1));
            Ok(())
        })?,
    );

    let (mut train_step, mut trainable_parameters, mut first_loss) = (None, 0, None);
    if train {
        model.set_trainable(&cfg.training.train_groups)?;
        let mut opt = AdamW::<B>::new(1e-4, 0.0);
        let flat = labels.reshape([batch * tgt]);
        let ms = time("train step", &mut || {
            let g = HostGraph::new(&model.params, true);
            let logits = model.seq2seq_logits(&g, &tb, &dec_in)?;
            let loss =
                crate::nn::cross_entropy(logits.reshape([batch * tgt, vocab]), flat.clone(), 0.0)?
                    .mean();
            if first_loss.is_none() {
                first_loss = Some(loss.clone().into_scalar().elem::<f32>());
            }
            let grads = loss.backward();
            drop(g);
            // Counted as what receives a gradient: the classifier head `build` adds is
            // trainable but not on the LM loss's path.
            let reached = adamw_step(&model, &grads, &mut opt)?;
            trainable_parameters = reached;
            Ok(())
        })?;
        train_step = Some(summarise("train step", ms));
    }
    Ok(Seq2SeqBench {
        backbone: model.info().name.clone(),
        model_type: model.info().architecture.clone(),
        modules: cfg.modules.iter().map(|m| m.instance_name()).collect(),
        batch,
        src,
        tgt,
        new_tokens,
        threads: rayon_threads(),
        backbone_dtype: cfg.backbone.dtype().as_str().into(),
        matmul_precision: cfg.backbone.matmul_precision().as_str().into(),
        inference,
        generate,
        train_step,
        trainable_parameters,
        first_loss,
        op_times,
    })
}
