//! T5 encoder-decoders (HF `T5ForConditionalGeneration`, v1.0 and v1.1), HF key names; the
//! config, weights and sites in [`config`].
//!
//! Pre-norm blocks with T5's RMS LayerNorm, relative position buckets (bidirectional in the
//! encoder, causal in the decoder; computed from block 0's table and shared by all blocks), no
//! `1/sqrt(d)` scaling of attention scores. The LM head is tied to `shared.weight` when
//! `tie_word_embeddings`; the decoder output is scaled by `d_model^-0.5` before it when
//! `scale_decoder_outputs` (transformers 5; defaults to `tie_word_embeddings` as in 4.x).
use burn::tensor::{backend::AutodiffBackend, Int, Tensor, TensorData};
use peft_api::{ApiError, BackboneInfo};

// The encoder-decoder interface, re-exported where it first lived.
pub use super::seq2seq::{KvCache, Seq2Seq};
use super::{
    arch::Architecture,
    attend::{attend, Spec, Visible},
    layers::{activation_fn, check_activation, dropout, prefix_len, split_heads},
    seq2seq::LayerCache,
    Backbone, Hooks, TextBatch,
};
use crate::nn::value::{fp, ft};

mod config;

pub use config::T5Config;

/// HF's `T5Attention._relative_position_bucket` (shared with plugins through the SDK's blocks,
/// so HyperT5's T5 hypermodel buckets positions exactly as the backbone does).
pub use peft_api::blocks::t5_relative_position_bucket as relative_position_bucket;

pub struct T5 {
    pub config: T5Config,
    info: BackboneInfo,
}

impl T5 {
    pub fn new(name: &str, config: T5Config) -> Result<Self, ApiError> {
        let c = &config;
        if c.num_heads == 0 || c.d_kv == 0 || c.d_model == 0 {
            return Err(ApiError::config(
                "d_model, d_kv and num_heads must be positive",
            ));
        }
        if c.relative_attention_num_buckets < 4 || c.relative_attention_max_distance < 2 {
            return Err(ApiError::config(format!(
                "relative_attention_num_buckets {} / relative_attention_max_distance {} are too small",
                c.relative_attention_num_buckets, c.relative_attention_max_distance
            )));
        }
        let parts: Vec<&str> = c.feed_forward_proj.split('-').collect();
        if parts.len() > 2 || (parts.len() == 2 && parts[0] != "gated") {
            return Err(ApiError::config(format!(
                "feed_forward_proj `{}` is not `ACT` or `gated-ACT`",
                c.feed_forward_proj
            )));
        }
        check_activation(&c.activation())?;
        let info = config.info(name);
        Ok(T5 { config, info })
    }

    fn lin<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        x: &Tensor<B, 3>,
        key: &str,
    ) -> Result<Tensor<B, 3>, ApiError> {
        hooks.linear_no_bias(key, x)
    }

    fn norm<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        x: Tensor<B, 3>,
        key: &str,
    ) -> Result<Tensor<B, 3>, ApiError> {
        hooks.rms_norm(key, x, self.config.layer_norm_epsilon)
    }

    fn embed<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        ids: &Tensor<B, 2, Int>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let [b, t] = ids.dims();
        let shared = hooks.weight::<2>("shared.weight")?;
        let e = shared
            .select(0, ids.clone().reshape([b * t]))
            .reshape([b, t, self.config.d_model]);
        dropout(hooks, e, self.config.dropout_rate)
    }

    /// Relative position bias `[1, heads, tq, keys]` of `stack`'s block 0 for queries at
    /// `q_start..q_start + tq` and keys at `0..keys`.
    fn position_bias<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        stack: &str,
        q_start: usize,
        tq: usize,
        keys: usize,
    ) -> Result<Tensor<B, 4>, ApiError> {
        let c = &self.config;
        let table = hooks.weight::<2>(&format!(
            "{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        ))?;
        let bidirectional = stack == "encoder";
        let mut idx = Vec::with_capacity(tq * keys);
        for i in 0..tq {
            for j in 0..keys {
                idx.push(relative_position_bucket(
                    j as i64 - (q_start + i) as i64,
                    bidirectional,
                    c.relative_attention_num_buckets,
                    c.relative_attention_max_distance,
                ) as i64);
            }
        }
        let idx =
            Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [tq * keys]), &table.device());
        Ok(table
            .select(0, idx)
            .reshape([tq, keys, c.num_heads])
            .permute([2, 0, 1])
            .unsqueeze_dim::<4>(0))
    }

    /// Self-attention keys/values `[batch, heads, keys, d_kv]` (site applied) and the number
    /// of keys before the site, extending the cache when given.
    fn self_kv<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        key: &str,
        x: &Tensor<B, 3>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>, usize), ApiError> {
        let h = self.config.num_heads;
        let mut k = split_heads(self.lin(hooks, x, &format!("{key}.k"))?, h);
        let mut v = split_heads(self.lin(hooks, x, &format!("{key}.v"))?, h);
        if let Some(c) = cache {
            if let Some((pk, pv)) = c.self_kv.take() {
                k = Tensor::cat(vec![pk, k], 2);
                v = Tensor::cat(vec![pv, v], 2);
            }
            c.self_kv = Some((k.clone(), v.clone()));
        }
        let n = k.dims()[2];
        let (k, v) = hooks.kv(&format!("{key}.kv"), k, v)?;
        Ok((k, v, n))
    }

    /// Cross-attention keys/values from the encoder states (computed once per cache).
    fn cross_kv<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        key: &str,
        enc: &Tensor<B, 3>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>, usize), ApiError> {
        if let Some(Some(kv)) = cache.as_ref().map(|c| &c.cross_kv) {
            return Ok(kv.clone());
        }
        let h = self.config.num_heads;
        let k = split_heads(self.lin(hooks, enc, &format!("{key}.k"))?, h);
        let v = split_heads(self.lin(hooks, enc, &format!("{key}.v"))?, h);
        let n = k.dims()[2];
        let (k, v) = hooks.kv(&format!("{key}.kv"), k, v)?;
        if let Some(c) = cache {
            c.cross_kv = Some((k.clone(), v.clone(), n));
        }
        Ok((k, v, n))
    }

    /// One attention layer from its normalised input `x`: output of `o` (before dropout).
    #[allow(clippy::too_many_arguments)]
    fn attention<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        key: &str,
        x: &Tensor<B, 3>,
        kv_source: Option<&Tensor<B, 3>>,
        bias: Option<&Tensor<B, 4>>,
        visible: Visible<'_, B>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let c = &self.config;
        let q = self.lin(hooks, x, &format!("{key}.q"))?;
        let (k, v, n) = match kv_source {
            None => self.self_kv(hooks, key, x, cache)?,
            Some(enc) => self.cross_kv(hooks, key, enc, cache)?,
        };
        let prefix = prefix_len(&format!("{key}.kv"), k.dims()[2], n)?;
        let spec = Spec {
            heads: c.num_heads,
            // T5 does not scale the scores (its initialisation absorbs `1/sqrt(d_kv)`).
            scale: 1.0,
            dropout: c.dropout_rate,
            bias,
            visible,
            prefix,
        };
        let ctx = attend(hooks, q, k, v, spec)?;
        self.lin(hooks, &ctx, &format!("{key}.o"))
    }

    fn ffn<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        key: &str,
        x: &Tensor<B, 3>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let c = &self.config;
        let act = c.activation();
        let h = if c.is_gated() {
            let g = activation_fn(hooks, &act, self.lin(hooks, x, &format!("{key}.wi_0"))?)?;
            g * self.lin(hooks, x, &format!("{key}.wi_1"))?
        } else {
            activation_fn(hooks, &act, self.lin(hooks, x, &format!("{key}.wi"))?)?
        };
        let h = dropout(hooks, h, c.dropout_rate)?;
        // The activation as the output projection reads it: where (IA)³ scales.
        let h = hooks.hidden(&format!("{key}.intermediate"), h)?;
        self.lin(hooks, &h, &format!("{key}.wo"))
    }

    /// Pre-norm residual sublayer: `x + site(norm(x), dropout(f(norm(x))))`.
    fn residual<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        x: Tensor<B, 3>,
        norm_key: &str,
        site: &str,
        f: impl FnOnce(&Tensor<B, 3>) -> Result<Tensor<B, 3>, ApiError>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let normed = self.norm(hooks, x.clone(), norm_key)?;
        let y = dropout(hooks, f(&normed)?, self.config.dropout_rate)?;
        let y = hooks.pair(site, &normed, y)?;
        Ok(x + y)
    }

    fn encoder_block<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        l: usize,
        x: Tensor<B, 3>,
        mask: &Tensor<B, 2, Int>,
        bias: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let p = format!("encoder.block.{l}");
        let x = self.residual(
            hooks,
            x,
            &format!("{p}.layer.0.layer_norm"),
            &format!("{p}.attention"),
            |n| {
                self.attention(
                    hooks,
                    &format!("{p}.layer.0.SelfAttention"),
                    n,
                    None,
                    Some(bias),
                    Visible::Padding(mask),
                    None,
                )
            },
        )?;
        let x = self.residual(
            hooks,
            x,
            &format!("{p}.layer.1.layer_norm"),
            &format!("{p}.ffn"),
            |n| self.ffn(hooks, &format!("{p}.layer.1.DenseReluDense"), n),
        )?;
        hooks.hidden(&format!("{p}.output"), x)
    }

    #[allow(clippy::too_many_arguments)]
    fn decoder_block<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        l: usize,
        x: Tensor<B, 3>,
        enc: &Tensor<B, 3>,
        enc_mask: &Tensor<B, 2, Int>,
        bias: &Tensor<B, 4>,
        q_start: usize,
        mut cache: Option<&mut LayerCache<B>>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let p = format!("decoder.block.{l}");
        let x = self.residual(
            hooks,
            x,
            &format!("{p}.layer.0.layer_norm"),
            &format!("{p}.attention"),
            |n| {
                self.attention(
                    hooks,
                    &format!("{p}.layer.0.SelfAttention"),
                    n,
                    None,
                    Some(bias),
                    Visible::Causal { q_start },
                    cache.as_deref_mut(),
                )
            },
        )?;
        let x = self.residual(
            hooks,
            x,
            &format!("{p}.layer.1.layer_norm"),
            &format!("{p}.cross_attention"),
            |n| {
                self.attention(
                    hooks,
                    &format!("{p}.layer.1.EncDecAttention"),
                    n,
                    Some(enc),
                    None,
                    Visible::Padding(enc_mask),
                    cache,
                )
            },
        )?;
        let x = self.residual(
            hooks,
            x,
            &format!("{p}.layer.2.layer_norm"),
            &format!("{p}.ffn"),
            |n| self.ffn(hooks, &format!("{p}.layer.2.DenseReluDense"), n),
        )?;
        hooks.hidden(&format!("{p}.output"), x)
    }

    fn run_encoder<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        batch: &TextBatch<B>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let [_, t] = batch.input_ids.dims();
        let mut x = self.embed(hooks, &batch.input_ids)?;
        let bias = self.position_bias(hooks, "encoder", 0, t, t)?;
        for l in 0..self.config.num_layers {
            x = self.encoder_block(hooks, l, x, &batch.attention_mask, &bias)?;
        }
        let x = self.norm(hooks, x, "encoder.final_layer_norm")?;
        dropout(hooks, x, self.config.dropout_rate)
    }
}

/// HF `T5ForConditionalGeneration`: the embeddings may be stored as the encoder's or the
/// decoder's `embed_tokens` instead of `shared.weight`.
impl Architecture for T5 {
    type Config = T5Config;
    const MODEL_TYPE: &'static str = "t5";
    const DISPLAY: &'static str = "T5";
    const TIES: &'static [(&'static str, &'static str)] = &[
        ("shared.weight", "encoder.embed_tokens.weight"),
        ("shared.weight", "decoder.embed_tokens.weight"),
    ];

    fn new(name: &str, config: T5Config) -> Result<Self, ApiError> {
        T5::new(name, config)
    }

    fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.config.weight_shapes()
    }
}

impl<B: AutodiffBackend> Backbone<B> for T5 {
    fn info(&self) -> &BackboneInfo {
        &self.info
    }

    fn encode(
        &self,
        hooks: &Hooks<'_, '_, B>,
        batch: &TextBatch<B>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        self.run_encoder(hooks, batch)
    }
}

impl<B: AutodiffBackend> Seq2Seq<B> for T5 {
    fn num_decoder_layers(&self) -> usize {
        self.config.decoder_layers()
    }
    fn decoder_start_token_id(&self) -> i64 {
        self.config.decoder_start_token_id
    }
    fn eos_token_id(&self) -> Option<i64> {
        self.config.eos_token_id
    }
    fn pad_token_id(&self) -> i64 {
        self.config.pad_token_id
    }

    fn decode(
        &self,
        hooks: &Hooks<'_, '_, B>,
        encoder_states: &Tensor<B, 3>,
        encoder_mask: &Tensor<B, 2, Int>,
        decoder_input_ids: &Tensor<B, 2, Int>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let layers = self.config.decoder_layers();
        if let Some(c) = &cache {
            c.check(layers)?;
        }
        let q_start = cache.as_ref().map_or(0, |c| c.len);
        let [_, t] = decoder_input_ids.dims();
        let mut x = self.embed(hooks, decoder_input_ids)?;
        let bias = self.position_bias(hooks, "decoder", q_start, t, q_start + t)?;
        for l in 0..layers {
            let lc = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            x = self.decoder_block(
                hooks,
                l,
                x,
                encoder_states,
                encoder_mask,
                &bias,
                q_start,
                lc,
            )?;
        }
        if let Some(c) = cache {
            c.len += t;
        }
        let x = self.norm(hooks, x, "decoder.final_layer_norm")?;
        dropout(hooks, x, self.config.dropout_rate)
    }

    fn lm_logits(
        &self,
        hooks: &Hooks<'_, '_, B>,
        decoder_states: Tensor<B, 3>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let c = &self.config;
        let h = if c.scales_decoder_outputs() {
            decoder_states * (c.d_model as f64).powf(-0.5)
        } else {
            decoder_states
        };
        let key = if c.tie_word_embeddings {
            "shared.weight"
        } else {
            "lm_head.weight"
        };
        let w = hooks.graph.param_value(key)?;
        Ok(ft::<B, 3>(crate::nn::linear::<B>(fp(h), w, None)?))
    }
}
