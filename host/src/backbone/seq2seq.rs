//! What encoder-decoders share: the [`Seq2Seq`] interface with teacher-forced logits and greedy
//! decoding, and the key/value cache [`KvCache`] incremental decoding keeps.
use burn::tensor::{backend::AutodiffBackend, Int, Tensor, TensorData};
use peft_api::ApiError;

use super::{Backbone, Hooks, TextBatch};

/// Keys and values of a decoder's attention layers kept between incremental decoding steps.
///
/// Self-attention keys/values are kept as the projections produced them (before the key/value
/// site) and grow by one step's positions per call; the site is applied to the whole history
/// each step, so that a cached pass computes what a full pass computes. Cross-attention
/// keys/values are computed (site applied) on the first call and reused. A cache belongs to
/// one batch of encoder states: make a new one ([`Seq2Seq::new_cache`]) per generation.
pub struct KvCache<B: AutodiffBackend> {
    /// Decoder positions processed so far.
    pub len: usize,
    pub(crate) layers: Vec<LayerCache<B>>,
}

pub(crate) struct LayerCache<B: AutodiffBackend> {
    pub(crate) self_kv: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    /// Keys, values (after the site) and the number of encoder positions among them.
    pub(crate) cross_kv: Option<(Tensor<B, 4>, Tensor<B, 4>, usize)>,
}

impl<B: AutodiffBackend> KvCache<B> {
    pub fn new(num_decoder_layers: usize) -> Self {
        KvCache {
            len: 0,
            layers: (0..num_decoder_layers)
                .map(|_| LayerCache {
                    self_kv: None,
                    cross_kv: None,
                })
                .collect(),
        }
    }

    pub(crate) fn check(&self, layers: usize) -> Result<(), ApiError> {
        if self.layers.len() != layers {
            return Err(ApiError::invalid(format!(
                "key/value cache has {} layers, the decoder has {layers}",
                self.layers.len()
            )));
        }
        Ok(())
    }
}

/// An encoder-decoder backbone: [`Backbone::encode`] runs the encoder.
pub trait Seq2Seq<B: AutodiffBackend>: Backbone<B> {
    fn num_decoder_layers(&self) -> usize;
    fn decoder_start_token_id(&self) -> i64;
    fn eos_token_id(&self) -> Option<i64>;
    fn pad_token_id(&self) -> i64;

    /// Decoder hidden states `[batch, time, hidden]` (after the final norm) for
    /// `decoder_input_ids`; with a cache, the ids are the positions after `cache.len` and the
    /// cache is extended.
    fn decode(
        &self,
        hooks: &Hooks<'_, '_, B>,
        encoder_states: &Tensor<B, 3>,
        encoder_mask: &Tensor<B, 2, Int>,
        decoder_input_ids: &Tensor<B, 2, Int>,
        cache: Option<&mut KvCache<B>>,
    ) -> Result<Tensor<B, 3>, ApiError>;

    /// LM logits `[batch, time, vocab]` from decoder hidden states.
    fn lm_logits(
        &self,
        hooks: &Hooks<'_, '_, B>,
        decoder_states: Tensor<B, 3>,
    ) -> Result<Tensor<B, 3>, ApiError>;

    /// A token generation must produce at new-token index `step` (BART's forced BOS/EOS).
    fn forced_token(&self, _step: usize, _max_new_tokens: usize) -> Option<i64> {
        None
    }

    fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.num_decoder_layers())
    }

    /// Encoder, decoder and LM head in one pass (teacher forcing): `[batch, time, vocab]`.
    fn logits(
        &self,
        hooks: &Hooks<'_, '_, B>,
        batch: &TextBatch<B>,
        decoder_input_ids: &Tensor<B, 2, Int>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let enc = self.encode(hooks, batch)?;
        let dec = self.decode(hooks, &enc, &batch.attention_mask, decoder_input_ids, None)?;
        self.lm_logits(hooks, dec)
    }

    /// Greedy decoding of exactly `max_new_tokens` tokens (EOS suppressed, as HF's `generate`
    /// with `min_new_tokens == max_new_tokens`). Each row starts with the decoder start token.
    fn greedy_generate(
        &self,
        hooks: &Hooks<'_, '_, B>,
        batch: &TextBatch<B>,
        max_new_tokens: usize,
    ) -> Result<Vec<Vec<i64>>, ApiError> {
        self.greedy_generate_with(hooks, batch, max_new_tokens, max_new_tokens)
    }

    /// Greedy decoding as HF's `generate(do_sample=False, num_beams=1)`: EOS is suppressed for
    /// the first `min_new_tokens` tokens; a row that produced EOS continues with padding;
    /// decoding stops when every row is done or after `max_new_tokens`. Uses the cache.
    fn greedy_generate_with(
        &self,
        hooks: &Hooks<'_, '_, B>,
        batch: &TextBatch<B>,
        min_new_tokens: usize,
        max_new_tokens: usize,
    ) -> Result<Vec<Vec<i64>>, ApiError> {
        let enc = self.encode(hooks, batch)?;
        let [b, _] = batch.input_ids.dims();
        let device = batch.input_ids.device();
        let start = self.decoder_start_token_id();
        let eos = self.eos_token_id();
        let mut out = vec![vec![start]; b];
        let mut done = vec![false; b];
        let mut cache = self.new_cache();
        for step in 0..max_new_tokens {
            let last: Vec<i64> = out.iter().map(|r| *r.last().unwrap()).collect();
            let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(last, [b, 1]), &device);
            let h = self.decode(hooks, &enc, &batch.attention_mask, &ids, Some(&mut cache))?;
            let logits = self.lm_logits(hooks, h)?;
            let v = logits.dims()[2];
            let values = logits
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| ApiError::internal(format!("reading logits: {e:?}")))?;
            for (i, row) in values.chunks_exact(v).enumerate() {
                if done[i] {
                    out[i].push(self.pad_token_id());
                    continue;
                }
                let tok = match self.forced_token(step, max_new_tokens) {
                    Some(t) => t,
                    None => {
                        let suppress = if step < min_new_tokens { eos } else { None };
                        argmax(row, suppress)
                    }
                };
                out[i].push(tok);
                if Some(tok) == eos {
                    done[i] = true;
                }
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        Ok(out)
    }
}

/// First index of the maximum (as `torch.argmax`), skipping `suppress`.
fn argmax(row: &[f32], suppress: Option<i64>) -> i64 {
    let mut best = (0usize, f32::NEG_INFINITY);
    let mut found = false;
    for (j, &x) in row.iter().enumerate() {
        if Some(j as i64) == suppress {
            continue;
        }
        if !found || x > best.1 {
            best = (j, x);
            found = true;
        }
    }
    best.0 as i64
}
