//! BART encoder-decoders (HF `BartForConditionalGeneration`), HF key names without the
//! `model.` prefix (checkpoints with it load too).
//!
//! Learned positions with HF's offset of 2, `layernorm_embedding`, post-LayerNorm layers,
//! scores scaled by `head_dim^-0.5`, LM head tied to `shared.weight` (unless
//! `tie_word_embeddings` is false) plus `final_logits_bias`.
use burn::tensor::{backend::AutodiffBackend, Int, Tensor};
use peft_api::{ApiError, BackboneInfo};

mod config;

pub use super::seq2seq::{KvCache, Seq2Seq};
use super::{
    arch::Architecture,
    attend::{attend, Spec, Visible},
    layers::{activation_fn, check_activation, dropout, prefix_len, split_heads},
    seq2seq::LayerCache,
    Backbone, Hooks, TextBatch,
};
use crate::nn::value::{fp, ft};
pub use config::BartConfig;
use config::{LN_EPS, POSITION_OFFSET};

pub struct Bart {
    pub config: BartConfig,
    info: BackboneInfo,
}

impl Bart {
    pub fn new(name: &str, config: BartConfig) -> Result<Self, ApiError> {
        for (stack, _, heads, _) in config.stacks() {
            if heads == 0 || !config.d_model.is_multiple_of(heads) {
                return Err(ApiError::config(format!(
                    "d_model {} is not a multiple of {stack}_attention_heads {heads}",
                    config.d_model
                )));
            }
        }
        check_activation(&config.activation_function)?;
        let info = config.info(name);
        Ok(Bart { config, info })
    }

    fn lin<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        x: &Tensor<B, 3>,
        key: &str,
    ) -> Result<Tensor<B, 3>, ApiError> {
        hooks.linear(key, x)
    }

    fn ln<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        x: Tensor<B, 3>,
        key: &str,
    ) -> Result<Tensor<B, 3>, ApiError> {
        hooks.layer_norm(key, x, LN_EPS, true)
    }

    /// Token embeddings (scaled when `scale_embedding`) + learned positions from `start`,
    /// `layernorm_embedding`, dropout.
    fn embed<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        stack: &str,
        ids: &Tensor<B, 2, Int>,
        start: usize,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let c = &self.config;
        let [b, t] = ids.dims();
        if start + t > c.max_position_embeddings {
            return Err(ApiError::shape(format!(
                "{stack}: position {} exceeds max_position_embeddings {}",
                start + t,
                c.max_position_embeddings
            )));
        }
        let shared = hooks.weight::<2>("shared.weight")?;
        let mut e = shared
            .select(0, ids.clone().reshape([b * t]))
            .reshape([b, t, c.d_model]);
        if c.scale_embedding {
            e = e * (c.d_model as f64).sqrt();
        }
        let pos = hooks.weight::<2>(&format!("{stack}.embed_positions.weight"))?;
        let pos = pos.narrow(0, start + POSITION_OFFSET, t);
        let e = e + pos.unsqueeze_dim::<3>(0);
        let e = self.ln(hooks, e, &format!("{stack}.layernorm_embedding"))?;
        dropout(hooks, e, c.dropout)
    }

    /// One attention layer: output of `out_proj` (before dropout).
    fn attention<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        key: &str,
        heads: usize,
        x: &Tensor<B, 3>,
        kind: Attn<'_, B>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let c = &self.config;
        let d = x.dims()[2];
        let q = self.lin(hooks, x, &format!("{key}.q_proj"))?;
        let kv_site = format!("{key}.kv");
        let cached = match (&kind, cache.as_deref()) {
            (Attn::Cross(..), Some(lc)) => lc.cross_kv.clone(),
            _ => None,
        };
        let mut cache = cache;
        let (k, v, n) = match cached {
            Some(kv) => kv,
            None => {
                let (src, is_cross) = match kind {
                    Attn::Cross(enc, _) => (enc, true),
                    _ => (x, false),
                };
                let mut k = split_heads(self.lin(hooks, src, &format!("{key}.k_proj"))?, heads);
                let mut v = split_heads(self.lin(hooks, src, &format!("{key}.v_proj"))?, heads);
                if !is_cross {
                    if let Some(c) = cache.as_deref_mut() {
                        if let Some((pk, pv)) = c.self_kv.take() {
                            k = Tensor::cat(vec![pk, k], 2);
                            v = Tensor::cat(vec![pv, v], 2);
                        }
                        c.self_kv = Some((k.clone(), v.clone()));
                    }
                }
                let n = k.dims()[2];
                let (k, v) = hooks.kv(&kv_site, k, v)?;
                if is_cross {
                    if let Some(c) = cache {
                        c.cross_kv = Some((k.clone(), v.clone(), n));
                    }
                }
                (k, v, n)
            }
        };
        let prefix = prefix_len(&kv_site, k.dims()[2], n)?;
        let visible = match kind {
            Attn::Padded(m) | Attn::Cross(_, m) => Visible::Padding(m),
            Attn::Causal { q_start } => Visible::Causal { q_start },
        };
        let spec = Spec {
            heads,
            scale: ((d / heads) as f32).powf(-0.5),
            dropout: c.attention_dropout,
            bias: None,
            visible,
            prefix,
        };
        let ctx = attend(hooks, q, k, v, spec)?;
        self.lin(hooks, &ctx, &format!("{key}.out_proj"))
    }
}

/// What an attention layer attends to.
enum Attn<'a, B: AutodiffBackend> {
    /// Itself, except padding (`[batch, time]` 0/1 mask).
    Padded(&'a Tensor<B, 2, Int>),
    /// Itself, causally; queries start at position `q_start`.
    Causal { q_start: usize },
    /// Encoder states and their mask.
    Cross(&'a Tensor<B, 3>, &'a Tensor<B, 2, Int>),
}

impl Bart {
    /// Post-norm residual sublayer: `ln(x + site(x, dropout(f(x))))`.
    fn residual<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        x: Tensor<B, 3>,
        norm_key: &str,
        site: &str,
        f: impl FnOnce(&Tensor<B, 3>) -> Result<Tensor<B, 3>, ApiError>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let y = f(&x)?;
        hooks.dropout_add_layer_norm(norm_key, site, y, x, (self.config.dropout, LN_EPS))
    }

    fn ffn<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        p: &str,
        x: &Tensor<B, 3>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let c = &self.config;
        let fc1 = format!("{p}.fc1");
        let h = if c.activation_function == "gelu" {
            // Exact GELU: without gradients applied with the bias, in one pass.
            hooks.linear_gelu(&fc1, x)?
        } else {
            activation_fn(hooks, &c.activation_function, self.lin(hooks, x, &fc1)?)?
        };
        let h = dropout(hooks, h, c.activation_dropout)?;
        // The activation as the output projection reads it: where (IA)³ scales.
        let h = hooks.hidden(&format!("{p}.intermediate"), h)?;
        self.lin(hooks, &h, &format!("{p}.fc2"))
    }

    fn encoder_layer<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        l: usize,
        x: Tensor<B, 3>,
        mask: &Tensor<B, 2, Int>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let p = format!("encoder.layers.{l}");
        let heads = self.config.encoder_attention_heads;
        let x = self.residual(
            hooks,
            x,
            &format!("{p}.self_attn_layer_norm"),
            &format!("{p}.attention"),
            |x| {
                let key = format!("{p}.self_attn");
                self.attention(hooks, &key, heads, x, Attn::Padded(mask), None)
            },
        )?;
        let x = self.residual(
            hooks,
            x,
            &format!("{p}.final_layer_norm"),
            &format!("{p}.ffn"),
            |x| self.ffn(hooks, &p, x),
        )?;
        hooks.hidden(&format!("{p}.output"), x)
    }

    #[allow(clippy::too_many_arguments)]
    fn decoder_layer<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        l: usize,
        x: Tensor<B, 3>,
        enc: &Tensor<B, 3>,
        enc_mask: &Tensor<B, 2, Int>,
        q_start: usize,
        mut cache: Option<&mut LayerCache<B>>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let p = format!("decoder.layers.{l}");
        let heads = self.config.decoder_attention_heads;
        let x = self.residual(
            hooks,
            x,
            &format!("{p}.self_attn_layer_norm"),
            &format!("{p}.attention"),
            |x| {
                let key = format!("{p}.self_attn");
                let kind = Attn::Causal { q_start };
                self.attention(hooks, &key, heads, x, kind, cache.as_deref_mut())
            },
        )?;
        let x = self.residual(
            hooks,
            x,
            &format!("{p}.encoder_attn_layer_norm"),
            &format!("{p}.cross_attention"),
            |x| {
                let key = format!("{p}.encoder_attn");
                let kind = Attn::Cross(enc, enc_mask);
                self.attention(hooks, &key, heads, x, kind, cache)
            },
        )?;
        let x = self.residual(
            hooks,
            x,
            &format!("{p}.final_layer_norm"),
            &format!("{p}.ffn"),
            |x| self.ffn(hooks, &p, x),
        )?;
        hooks.hidden(&format!("{p}.output"), x)
    }
}

/// HF `BartForConditionalGeneration` or `BartModel` keys (`model.` prefix), embeddings tied as
/// in T5; a checkpoint without `final_logits_bias` gets zeros, as HF does.
impl Architecture for Bart {
    type Config = BartConfig;
    const MODEL_TYPE: &'static str = "bart";
    const DISPLAY: &'static str = "BART";
    const PREFIXES: &'static [&'static str] = &["model."];
    const TIES: &'static [(&'static str, &'static str)] = &[
        ("shared.weight", "encoder.embed_tokens.weight"),
        ("shared.weight", "decoder.embed_tokens.weight"),
    ];
    const ZERO_IF_MISSING: &'static [&'static str] = &["final_logits_bias"];

    fn new(name: &str, config: BartConfig) -> Result<Self, ApiError> {
        Bart::new(name, config)
    }

    fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.config.weight_shapes()
    }
}

impl<B: AutodiffBackend> Backbone<B> for Bart {
    fn info(&self) -> &BackboneInfo {
        &self.info
    }

    fn encode(
        &self,
        hooks: &Hooks<'_, '_, B>,
        batch: &TextBatch<B>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let mut x = self.embed(hooks, "encoder", &batch.input_ids, 0)?;
        for l in 0..self.config.encoder_layers {
            x = self.encoder_layer(hooks, l, x, &batch.attention_mask)?;
        }
        Ok(x)
    }
}

impl<B: AutodiffBackend> Seq2Seq<B> for Bart {
    fn num_decoder_layers(&self) -> usize {
        self.config.decoder_layers
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

    /// HF's `ForcedBOSTokenLogitsProcessor` / `ForcedEOSTokenLogitsProcessor`.
    fn forced_token(&self, step: usize, max_new_tokens: usize) -> Option<i64> {
        if step == 0 && self.config.forced_bos_token_id.is_some() {
            return self.config.forced_bos_token_id;
        }
        if step + 1 == max_new_tokens {
            return self.config.forced_eos_token_id;
        }
        None
    }

    fn decode(
        &self,
        hooks: &Hooks<'_, '_, B>,
        encoder_states: &Tensor<B, 3>,
        encoder_mask: &Tensor<B, 2, Int>,
        decoder_input_ids: &Tensor<B, 2, Int>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let layers = self.config.decoder_layers;
        if let Some(c) = &cache {
            c.check(layers)?;
        }
        let q_start = cache.as_ref().map_or(0, |c| c.len);
        let [_, t] = decoder_input_ids.dims();
        let mut x = self.embed(hooks, "decoder", decoder_input_ids, q_start)?;
        for l in 0..layers {
            let lc = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            x = self.decoder_layer(hooks, l, x, encoder_states, encoder_mask, q_start, lc)?;
        }
        if let Some(c) = cache {
            c.len += t;
        }
        Ok(x)
    }

    fn lm_logits(
        &self,
        hooks: &Hooks<'_, '_, B>,
        decoder_states: Tensor<B, 3>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let key = if self.config.tie_word_embeddings {
            "shared.weight"
        } else {
            "lm_head.weight"
        };
        let w = hooks.graph.param_value(key)?;
        let logits = ft::<B, 3>(crate::nn::linear::<B>(fp(decoder_states), w, None)?);
        let bias = hooks.weight::<2>("final_logits_bias")?;
        Ok(logits + bias.unsqueeze_dim::<3>(0))
    }
}
