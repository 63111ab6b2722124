//! The T5 layout of the hypermodel (HyperT5 as Phang et al. build it): a trainable copy of the
//! backbone's encoder reads the `k` examples, a trainable copy of its decoder is fed learned
//! query tokens — one per generated layer and attention kind, attending to each other without a
//! causal mask and across to every token of every example — and an MLP head per attention kind
//! turns each query's output into that layer's parameters: prefix keys and values, and/or LoRA
//! A and B for the query and value projections.
//!
//! Outputs, per attention kind `<att>` = `encoder` (encoder self-attention), `decoder` (decoder
//! self-attention), `cross` (decoder cross-attention), with `L` the layers of that stack:
//! - `generate: ["prefix"]`: `<name>.prefix_<att>` `[L, 2, P, inner]` (key, value), for three
//!   `prefix` modules selected by `stack` / `roles`, with `from_context`;
//! - `generate: ["lora"]`: `<name>.lora_<att>_A` `[L, 2, r, d_model]` and `<name>.lora_<att>_B`
//!   `[L, 2, inner, r]` (slot 0 the query projection `q`, 1 the value projection `v`), for three
//!   `lora` modules selected by `stack` / `targets` with `from_context: "<name>.lora_<att>"`;
//! - both: all six, the prefix queries first.
//!
//! Also `<name>.summary` (the decoder's outputs) and `<name>.examples` (the examples' encoder
//! states) for tests. Relative positions use T5's maximum distance of 128 (every released
//! checkpoint's).
use peft_api::{
    blocks::t5_relative_position_bucket, ApiError, BackboneInfo, Ctx, Init, OpCode, Result, Tensor,
};

use crate::{has, Generated, HyperT5};

/// T5's RMS norm epsilon (HF default).
const EPS: f64 = 1e-6;
/// Additive mask on padding (T5 uses the dtype's minimum; this is as good under a softmax).
const MASKED: f32 = -1e9;

/// What one T5 attention adds to its scores. On a host with the fused ops the keys' 0/1 mask
/// `[b, t]` and the position bias `[heads, s, t]` go to `ATTENTION` (API 1.2, no bias) or
/// `ATTENTION_BIAS` (API 1.3; the bias trainable, its gradient summed over the batch);
/// otherwise one additive tensor broadcast to `[b, heads, s, t]` for the composed ops.
enum Scores<'c> {
    Fused {
        pos: Option<Tensor<'c>>,
        keep: Option<Tensor<'c>>,
    },
    Additive(Tensor<'c>),
}

/// The three attention kinds of T5: context-name part and stack.
pub(crate) const ATTENTIONS: [(&str, &str); 3] = [
    ("encoder", "encoder"),
    ("decoder", "decoder"),
    ("cross", "decoder"),
];

/// The head (and context-name stem) of one generated kind on one attention kind:
/// `prefix_encoder`, `lora_cross`, ...
fn stem(g: Generated, att: &str) -> String {
    format!("{}_{att}", crate::kind_name(g))
}

impl HyperT5 {
    /// The context names this hypermodel sets on T5, in the order of its queries.
    pub(crate) fn t5_outputs(&self) -> Vec<String> {
        let mut v = Vec::new();
        for g in self.kinds() {
            for (att, _) in ATTENTIONS {
                match g {
                    Generated::Prefix => v.push(self.name(&stem(g, att))),
                    Generated::Lora => {
                        v.push(self.name(&format!("{}_A", stem(g, att))));
                        v.push(self.name(&format!("{}_B", stem(g, att))));
                    }
                }
            }
        }
        v
    }

    /// Layers of each stack in the hypermodel and whether the FFN is gated (T5 v1.1).
    pub(crate) fn attach_t5(&mut self, ctx: &Ctx<'_>, backbone: &BackboneInfo) -> Result<()> {
        let (le, ld) = (backbone.num_layers, backbone.num_decoder_layers);
        self.layers = self.config.encoder_layers.unwrap_or(le);
        self.decoder_layers = self.config.decoder_layers.unwrap_or(ld);
        if self.layers > le || self.decoder_layers > ld {
            return Err(ApiError::config(format!(
                "hypert5: encoder_layers = {} / decoder_layers = {} but backbone `{}` has {le} / {ld}",
                self.layers, self.decoder_layers, backbone.name
            )));
        }
        self.gated = ctx
            .param("backbone:encoder.block.0.layer.1.DenseReluDense.wi_0.weight")
            .is_ok();
        let ffn: &[&str] = if self.gated {
            &["wi_0", "wi_1", "wo"]
        } else {
            &["wi", "wo"]
        };
        for (stack, n, attns) in [
            ("encoder", self.layers, &["SelfAttention"][..]),
            (
                "decoder",
                self.decoder_layers,
                &["SelfAttention", "EncDecAttention"][..],
            ),
        ] {
            self.copy(
                ctx,
                &format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
            )?;
            for l in 0..n {
                let p = format!("{stack}.block.{l}");
                for (i, a) in attns.iter().enumerate() {
                    for m in ["q", "k", "v", "o"] {
                        self.copy(ctx, &format!("{p}.layer.{i}.{a}.{m}.weight"))?;
                    }
                    self.copy(ctx, &format!("{p}.layer.{i}.layer_norm.weight"))?;
                }
                let f = attns.len();
                for w in ffn {
                    self.copy(ctx, &format!("{p}.layer.{f}.DenseReluDense.{w}.weight"))?;
                }
                self.copy(ctx, &format!("{p}.layer.{f}.layer_norm.weight"))?;
            }
            self.copy(ctx, &format!("{stack}.final_layer_norm.weight"))?;
        }
        let h = backbone.hidden_size;
        // One query per generated kind, attention kind and layer.
        let queries = self.kinds().len() * (le + 2 * ld);
        // T5's embeddings are of unit scale (unlike BERT's 0.02).
        let std = 1.0;
        self.create(
            ctx,
            "queries",
            &[queries, h],
            Init::Normal { mean: 0.0, std },
        )?;
        for g in self.kinds() {
            let out = self.out_width(g);
            for (att, _) in ATTENTIONS {
                self.create_head(ctx, &stem(g, att), g == Generated::Lora, h, out)?;
            }
        }
        Ok(())
    }

    /// The relative position bias `[heads, s, t]` of `stack` for `s` queries and `t` keys.
    fn position_bias<'c>(
        &self,
        ctx: &'c Ctx<'_>,
        stack: &str,
        s: usize,
        t: usize,
    ) -> Result<Tensor<'c>> {
        let table = ctx.param(&format!(
            "{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        ))?;
        let buckets = table.shape()?[0];
        let bidirectional = stack == "encoder";
        let idx: Vec<i64> = (0..s)
            .flat_map(|i| {
                (0..t).map(move |j| {
                    t5_relative_position_bucket(j as i64 - i as i64, bidirectional, buckets, 128)
                        as i64
                })
            })
            .collect();
        let heads = self.info.num_heads as i64;
        table
            .index_select(0, ctx.from_ints(&[s * t], idx)?)?
            .reshape(&[s as i64, t as i64, heads])?
            .permute(&[2, 0, 1])
    }

    /// T5 attention (no biases, no score scaling) of `x [b, s, H]` over `kv [b, t, H]`.
    fn t5_attention<'c>(
        &self,
        ctx: &'c Ctx<'_>,
        x: Tensor<'c>,
        kv: Tensor<'c>,
        scores: &Scores<'c>,
        p: &str,
    ) -> Result<Tensor<'c>> {
        let (nh, dh) = (self.info.num_heads, self.info.head_dim);
        let w = |m: &str| ctx.param(&format!("{p}.{m}.weight"));
        let [b, s, _]: [usize; 3] = x
            .shape()?
            .try_into()
            .map_err(|_| ApiError::shape("hypert5: states must be [b, n, H]"))?;
        let q = x.linear(w("q")?, None)?;
        let k = kv.clone().linear(w("k")?, None)?;
        let v = kv.linear(w("v")?, None)?;
        let c = match scores {
            Scores::Fused { pos: None, keep } => q.attention(k, v, keep.clone(), nh, 1.0)?,
            Scores::Fused {
                pos: Some(pos),
                keep,
            } => q.attention_bias(k, v, pos.clone(), keep.clone(), nh, 1.0, None)?,
            Scores::Additive(bias) => {
                let split = |y: Tensor<'c>| -> Result<Tensor<'c>> {
                    let n = y.shape()?[1] as i64;
                    y.reshape(&[b as i64, n, nh as i64, dh as i64])?
                        .permute(&[0, 2, 1, 3])
                };
                split(q)?
                    .matmul(split(k)?.transpose(2, 3)?)?
                    .add(bias.clone())?
                    .softmax(-1)?
                    .matmul(split(v)?)?
                    .permute(&[0, 2, 1, 3])?
                    .reshape(&[b as i64, s as i64, (nh * dh) as i64])?
            }
        };
        c.linear(w("o")?, None)
    }

    fn t5_ffn<'c>(&self, ctx: &'c Ctx<'_>, x: Tensor<'c>, p: &str) -> Result<Tensor<'c>> {
        let w = |m: &str| ctx.param(&format!("{p}.DenseReluDense.{m}.weight"));
        let h = if self.gated {
            x.clone()
                .linear(w("wi_0")?, None)?
                .gelu_tanh()?
                .mul(x.linear(w("wi_1")?, None)?)?
        } else {
            x.linear(w("wi")?, None)?.activation("relu")?
        };
        h.linear(w("wo")?, None)
    }

    fn norm<'c>(&self, ctx: &'c Ctx<'_>, x: Tensor<'c>, key: &str) -> Result<Tensor<'c>> {
        x.rms_norm(Some(ctx.param(key)?), EPS)
    }

    /// `encode` on T5: examples `[k, T]` through the encoder copy, queries through the decoder
    /// copy, each generated kind's tensors per attention kind into the pass context.
    pub(crate) fn encode_t5<'c>(
        &self,
        ctx: &'c Ctx<'_>,
        ids: Tensor<'c>,
        mask: Vec<f32>,
    ) -> Result<()> {
        let [k, t]: [usize; 2] = ids
            .shape()?
            .try_into()
            .map_err(|_| ApiError::shape("hypert5: input_ids must be [k, T]"))?;
        let h = self.info.hidden_size as i64;
        let words = ctx.param("backbone:shared.weight")?;
        let mut x = words
            .index_select(0, ids.reshape(&[(k * t) as i64])?)?
            .reshape(&[k as i64, t as i64, h])?;
        // Encoder self-attention: the position bias and the examples' padding.
        let (with_bias, fused) = (
            has(ctx, OpCode::ATTENTION_BIAS),
            has(ctx, OpCode::ATTENTION),
        );
        let pad: Vec<f32> = mask.iter().map(|m| (1.0 - m) * MASKED).collect();
        let enc_pos = self.position_bias(ctx, "encoder", t, t)?;
        let enc = if with_bias {
            Scores::Fused {
                pos: Some(enc_pos),
                keep: Some(ctx.from_data(&[k, t], mask.clone())?),
            }
        } else {
            Scores::Additive(
                enc_pos
                    .unsqueeze(0)?
                    .add(ctx.from_data(&[k, 1, 1, t], pad.clone())?)?,
            )
        };
        for l in 0..self.layers {
            let p = format!("encoder.block.{l}.layer");
            let n = self.norm(ctx, x.clone(), &format!("{p}.0.layer_norm.weight"))?;
            let a = self.t5_attention(ctx, n.clone(), n, &enc, &format!("{p}.0.SelfAttention"))?;
            x = x.add(a)?;
            let n = self.norm(ctx, x.clone(), &format!("{p}.1.layer_norm.weight"))?;
            x = x.add(self.t5_ffn(ctx, n, &format!("{p}.1"))?)?;
        }
        let states = self.norm(ctx, x, "encoder.final_layer_norm.weight")?;
        // The examples' encoder states `[k, T, H]`, for tests (the copy starts as the backbone).
        ctx.set_context(&self.name("examples"), states.clone())?;
        let memory = states.reshape(&[1, (k * t) as i64, h])?;
        // Cross-attention sees every token of every example.
        let cross = if fused {
            Scores::Fused {
                pos: None,
                keep: Some(ctx.from_data(&[1, k * t], mask)?),
            }
        } else {
            Scores::Additive(ctx.from_data(&[1, 1, 1, k * t], pad)?)
        };
        let queries = ctx.param("queries")?;
        let nq = queries.shape()?[0];
        let mut y = queries.unsqueeze(0)?;
        // Non-causal: every query sees every other, through the decoder's own position bias.
        let dec_pos = self.position_bias(ctx, "decoder", nq, nq)?;
        let dec = if with_bias {
            Scores::Fused {
                pos: Some(dec_pos),
                keep: None,
            }
        } else {
            Scores::Additive(dec_pos.unsqueeze(0)?)
        };
        for l in 0..self.decoder_layers {
            let p = format!("decoder.block.{l}.layer");
            let n = self.norm(ctx, y.clone(), &format!("{p}.0.layer_norm.weight"))?;
            let a = self.t5_attention(ctx, n.clone(), n, &dec, &format!("{p}.0.SelfAttention"))?;
            y = y.add(a)?;
            let n = self.norm(ctx, y.clone(), &format!("{p}.1.layer_norm.weight"))?;
            let a = self.t5_attention(
                ctx,
                n,
                memory.clone(),
                &cross,
                &format!("{p}.1.EncDecAttention"),
            )?;
            y = y.add(a)?;
            let n = self.norm(ctx, y.clone(), &format!("{p}.2.layer_norm.weight"))?;
            y = y.add(self.t5_ffn(ctx, n, &format!("{p}.2"))?)?;
        }
        let out = self
            .norm(ctx, y, "decoder.final_layer_norm.weight")?
            .reshape(&[nq as i64, h])?;
        ctx.set_context(&self.name("summary"), out.clone())?;
        let (le, ld) = (self.info.num_layers, self.info.num_decoder_layers);
        let (p, r) = (
            self.config.prefix_length as i64,
            self.config.lora_rank as i64,
        );
        let (d, inner) = (h, (self.info.num_heads * self.info.head_dim) as i64);
        let mut start = 0;
        for g in self.kinds() {
            for (att, stack) in ATTENTIONS {
                let n = if stack == "encoder" { le } else { ld };
                let z = out.clone().slice(0, start, start + n)?;
                start += n;
                let kind = stem(g, att);
                let z = self.lin(ctx, z, &format!("head.{kind}.dense1"))?.gelu()?;
                let y = self.lin(ctx, z, &format!("head.{kind}.dense2"))?;
                let nl = n as i64;
                match g {
                    Generated::Prefix => {
                        ctx.set_context(&self.name(&kind), y.reshape(&[nl, 2, p, inner])?)?;
                    }
                    Generated::Lora => {
                        // Per layer and slot (q, v): A `[r, d]` then B `[inner, r]`.
                        let (na, nb) = ((r * d) as usize, (inner * r) as usize);
                        let y = y.reshape(&[nl, 2, (na + nb) as i64])?;
                        let a = y.clone().slice(2, 0, na)?.reshape(&[nl, 2, r, d])?;
                        let b = y.slice(2, na, na + nb)?.reshape(&[nl, 2, inner, r])?;
                        ctx.set_context(&self.name(&format!("{kind}_A")), a)?;
                        ctx.set_context(&self.name(&format!("{kind}_B")), b)?;
                    }
                }
            }
        }
        Ok(())
    }
}
