//! BERT family encoders (HF `BertModel`: BERT, MiniLM, ...), post-LayerNorm, HF key names.
use burn::tensor::{activation, backend::AutodiffBackend, Int, Tensor};
use peft_api::{ApiError, BackboneInfo, SiteInfo, SiteKind};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::arch::Architecture;
use super::{additive_mask, layers::prefixed_keep, Backbone, Hooks, TextBatch};
use crate::nn::{self, softmax};

/// The fields of an HF `config.json` that BertModel uses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_positions() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
    /// Every weight BertModel has, with its shape (HF keys, PyTorch layouts).
    pub fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let mut v = vec![
            (
                "embeddings.word_embeddings.weight".to_string(),
                vec![self.vocab_size, h],
            ),
            (
                "embeddings.position_embeddings.weight".to_string(),
                vec![self.max_position_embeddings, h],
            ),
            (
                "embeddings.token_type_embeddings.weight".to_string(),
                vec![self.type_vocab_size, h],
            ),
            ("embeddings.LayerNorm.weight".to_string(), vec![h]),
            ("embeddings.LayerNorm.bias".to_string(), vec![h]),
        ];
        for l in 0..self.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            for (name, shape) in [
                ("attention.self.query.weight", vec![h, h]),
                ("attention.self.query.bias", vec![h]),
                ("attention.self.key.weight", vec![h, h]),
                ("attention.self.key.bias", vec![h]),
                ("attention.self.value.weight", vec![h, h]),
                ("attention.self.value.bias", vec![h]),
                ("attention.output.dense.weight", vec![h, h]),
                ("attention.output.dense.bias", vec![h]),
                ("attention.output.LayerNorm.weight", vec![h]),
                ("attention.output.LayerNorm.bias", vec![h]),
                ("intermediate.dense.weight", vec![i, h]),
                ("intermediate.dense.bias", vec![i]),
                ("output.dense.weight", vec![h, i]),
                ("output.dense.bias", vec![h]),
                ("output.LayerNorm.weight", vec![h]),
                ("output.LayerNorm.bias", vec![h]),
            ] {
                v.push((format!("{p}.{name}"), shape));
            }
        }
        v
    }

    pub fn info(&self, name: &str) -> BackboneInfo {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let mut sites = Vec::new();
        let site = |name: String, kind, layer, role: &str, a, b| SiteInfo {
            name,
            kind,
            stack: "encoder".into(),
            layer: Some(layer),
            role: role.into(),
            in_features: a,
            out_features: b,
        };
        for l in 0..self.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            for r in ["query", "key", "value"] {
                sites.push(site(
                    format!("{p}.attention.self.{r}"),
                    SiteKind::Projection,
                    l,
                    r,
                    h,
                    h,
                ));
            }
            sites.push(site(
                format!("{p}.attention.self.kv"),
                SiteKind::AttentionKv,
                l,
                "self_attention",
                h,
                h,
            ));
            sites.push(site(
                format!("{p}.attention.output.dense"),
                SiteKind::Projection,
                l,
                "attention_output",
                h,
                h,
            ));
            sites.push(site(
                format!("{p}.attention"),
                SiteKind::Sublayer,
                l,
                "attention",
                h,
                h,
            ));
            sites.push(site(
                format!("{p}.intermediate.dense"),
                SiteKind::Projection,
                l,
                "intermediate",
                h,
                i,
            ));
            sites.push(site(
                format!("{p}.intermediate"),
                SiteKind::Hidden,
                l,
                "ffn_intermediate",
                i,
                i,
            ));
            sites.push(site(
                format!("{p}.output.dense"),
                SiteKind::Projection,
                l,
                "output",
                i,
                h,
            ));
            sites.push(site(format!("{p}.ffn"), SiteKind::Sublayer, l, "ffn", h, h));
            sites.push(site(
                format!("{p}.output"),
                SiteKind::Hidden,
                l,
                "layer_output",
                h,
                h,
            ));
        }
        let mut norms = std::collections::BTreeMap::new();
        for l in 0..self.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            for (site, ln) in [
                ("attention", "attention.output.LayerNorm"),
                ("ffn", "output.LayerNorm"),
            ] {
                let keys = ["weight", "bias"].map(|w| format!("{p}.{ln}.{w}"));
                norms.insert(format!("{p}.{site}"), keys.to_vec());
            }
        }
        BackboneInfo {
            name: name.to_string(),
            architecture: "bert".into(),
            hidden_size: h,
            num_layers: self.num_hidden_layers,
            num_decoder_layers: 0,
            num_heads: self.num_attention_heads,
            head_dim: h / self.num_attention_heads,
            intermediate_size: i,
            vocab_size: self.vocab_size,
            sites,
            norms,
        }
    }
}

pub struct Bert {
    pub config: BertConfig,
    info: BackboneInfo,
}

impl Bert {
    pub fn new(name: &str, config: BertConfig) -> Result<Self, ApiError> {
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(ApiError::config(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
            )));
        }
        if !matches!(
            config.hidden_act.as_str(),
            "gelu" | "relu" | "gelu_new" | "silu" | "swish" | "tanh"
        ) {
            return Err(ApiError::config(format!(
                "unsupported hidden_act `{}`",
                config.hidden_act
            )));
        }
        let info = config.info(name);
        Ok(Bert { config, info })
    }

    fn dropout<B: AutodiffBackend, const D: usize>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        x: Tensor<B, D>,
        p: f64,
    ) -> Result<Tensor<B, D>, ApiError> {
        super::layers::dropout(hooks, x, p)
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
        hooks.layer_norm(key, x, self.config.layer_norm_eps, true)
    }

    fn layer<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        l: usize,
        x: Tensor<B, 3>,
        mask: &Tensor<B, 2, Int>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let c = &self.config;
        let p = format!("encoder.layer.{l}");
        let [b, t, h] = x.dims();
        let heads = c.num_attention_heads;
        let dh = h / heads;
        let split = |y: Tensor<B, 3>| y.reshape([b, t, heads, dh]).swap_dims(1, 2);
        let q = self.lin(hooks, &x, &format!("{p}.attention.self.query"))?;
        let k = self.lin(hooks, &x, &format!("{p}.attention.self.key"))?;
        let v = self.lin(hooks, &x, &format!("{p}.attention.self.value"))?;
        let kv_site = format!("{p}.attention.self.kv");
        let scale = 1.0 / (dh as f32).sqrt();
        let fused = !hooks.attached(&kv_site);
        let kernels = if hooks.graph.no_grad {
            nn::enabled::<B>()
        } else {
            nn::tracked::enabled::<B>()
        };
        let ctx = if kernels {
            // The blocked kernel reads the heads where they lie: the projections `[b, t, h]`,
            // or what a key/value site (prefix tuning) returns, `[b, heads, s, dh]`.
            let p = if hooks.training() {
                c.attention_probs_dropout_prob
            } else {
                0.0
            };
            let seed = if p > 0.0 && !hooks.graph.no_grad {
                nn::draw_seed::<B>(&x.device())
            } else {
                0
            };
            let mut keep = nn::keep_mask(mask)?;
            let terms = nn::ScoreTerms {
                bf16: hooks.bf16_attention(),
                ..Default::default()
            };
            if fused {
                if hooks.graph.no_grad {
                    // The head split of the projections is read in place.
                    nn::nograd_split(q, split(k), split(v), &keep, scale, terms)?
                } else {
                    nn::tracked::attention(q, k, v, &keep, heads, scale, p, seed)?
                }
            } else {
                let (k, v) = hooks.kv(&kv_site, split(k), split(v))?;
                let s = k.dims()[2];
                // Positions a site prepends (prefix tuning) are visible to every query.
                keep = prefixed_keep(&keep, b, t, s);
                if hooks.graph.no_grad {
                    nn::nograd_split(q, k, v, &keep, scale, terms)?
                } else {
                    nn::tracked::attention_split(q, k, v, &keep, scale, p, seed)?
                }
            }
        } else {
            let (k, v) = hooks.kv(&kv_site, split(k), split(v))?;
            let prefix = k.dims()[2] - t;
            let scores = split(q).matmul(k.swap_dims(2, 3)) / (dh as f64).sqrt()
                + additive_mask(mask, prefix);
            let probs = self.dropout(
                hooks,
                softmax(hooks.graph.no_grad, scores, 3),
                c.attention_probs_dropout_prob,
            )?;
            probs.matmul(v).swap_dims(1, 2).reshape([b, t, h])
        };
        let attn = self.lin(hooks, &ctx, &format!("{p}.attention.output.dense"))?;
        let h1 = hooks.dropout_add_layer_norm(
            &format!("{p}.attention.output.LayerNorm"),
            &format!("{p}.attention"),
            attn,
            x,
            (c.hidden_dropout_prob, c.layer_norm_eps),
        )?;
        let dense = format!("{p}.intermediate.dense");
        let inter = match c.hidden_act.as_str() {
            "gelu" => hooks.linear_gelu(&dense, &h1)?,
            _ => {
                let inter = self.lin(hooks, &h1, &dense)?;
                match hooks.graph.no_grad {
                    true => Tensor::from_inner(act(&c.hidden_act, inter.inner())),
                    false => act(&c.hidden_act, inter),
                }
            }
        };
        // HF's `BertIntermediate` output (after the activation): where (IA)³ scales.
        let inter = hooks.hidden(&format!("{p}.intermediate"), inter)?;
        let out = self.lin(hooks, &inter, &format!("{p}.output.dense"))?;
        let h2 = hooks.dropout_add_layer_norm(
            &format!("{p}.output.LayerNorm"),
            &format!("{p}.ffn"),
            out,
            h1,
            (c.hidden_dropout_prob, c.layer_norm_eps),
        )?;
        hooks.hidden(&format!("{p}.output"), h2)
    }

    /// Embeddings: word + position + token type, LayerNorm, dropout.
    fn embed<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        batch: &TextBatch<B>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let c = &self.config;
        let [b, t] = batch.input_ids.dims();
        if t > c.max_position_embeddings {
            return Err(ApiError::shape(format!(
                "sequence length {t} exceeds max_position_embeddings {}",
                c.max_position_embeddings
            )));
        }
        let device = batch.input_ids.device();
        let words = hooks.weight::<2>("embeddings.word_embeddings.weight")?;
        let pos = hooks.weight::<2>("embeddings.position_embeddings.weight")?;
        let types = hooks.weight::<2>("embeddings.token_type_embeddings.weight")?;
        let h = c.hidden_size;
        let ids = batch.input_ids.clone().reshape([b * t]);
        if hooks.graph.no_grad && nn::enabled::<B>() {
            let e = embed_sum(
                words,
                pos,
                types,
                ids,
                batch.token_type_ids.as_ref(),
                [b, t, h],
            )?;
            let e = self.ln(hooks, e, "embeddings.LayerNorm")?;
            return self.dropout(hooks, e, c.hidden_dropout_prob);
        }
        // A bf16 backbone holds the tables in bf16: only the gathered rows are widened.
        let mut e = nn::bf16::to_f32(words.select(0, ids)).reshape([b, t, h]);
        e = e + nn::bf16::to_f32(pos.narrow(0, 0, t)).unsqueeze_dim::<3>(0);
        let tt = match &batch.token_type_ids {
            Some(tt) => tt.clone(),
            None => Tensor::<B, 2, Int>::zeros([b, t], &device),
        };
        e = e + nn::bf16::to_f32(types.select(0, tt.reshape([b * t]))).reshape([b, t, h]);
        let e = self.ln(hooks, e, "embeddings.LayerNorm")?;
        self.dropout(hooks, e, c.hidden_dropout_prob)
    }

    /// Hidden states after the embeddings and after each layer (HF's `output_hidden_states`).
    pub fn encode_all<B: AutodiffBackend>(
        &self,
        hooks: &Hooks<'_, '_, B>,
        batch: &TextBatch<B>,
    ) -> Result<Vec<Tensor<B, 3>>, ApiError> {
        let mut x = self.embed(hooks, batch)?;
        let mut all = vec![x.clone()];
        for l in 0..self.config.num_hidden_layers {
            x = self.layer(hooks, l, x, &batch.attention_mask)?;
            all.push(x.clone());
        }
        Ok(all)
    }
}

/// Word + position + token-type embeddings without gradients, summed in one pass over the
/// gathered rows (burn adds the broadcast position table element by element through a strided
/// iterator: about 2 % of a MiniLM forward). The same additions in the same order as the
/// tracked path: `(word + position) + type`.
fn embed_sum<B: AutodiffBackend>(
    words: Tensor<B, 2>,
    pos: Tensor<B, 2>,
    types: Tensor<B, 2>,
    ids: Tensor<B, 1, Int>,
    token_types: Option<&Tensor<B, 2, Int>>,
    [b, t, h]: [usize; 3],
) -> Result<Tensor<B, 3>, ApiError> {
    let device = ids.device();
    let mut e = nn::to_vec(nn::bf16::to_f32(words.select(0, ids)))?;
    let pos = nn::to_vec(nn::bf16::to_f32(pos.narrow(0, 0, t)))?;
    // Without token types every row adds type 0's embedding: one row, not a gather.
    let (types, per_row) = match token_types {
        Some(tt) => (
            nn::to_vec(nn::bf16::to_f32(
                types.select(0, tt.clone().reshape([b * t])),
            ))?,
            h,
        ),
        None => (nn::to_vec(nn::bf16::to_f32(types.narrow(0, 0, 1)))?, 0),
    };
    e.par_chunks_mut(h).enumerate().for_each(|(i, row)| {
        let p = &pos[(i % t) * h..][..h];
        let ty = &types[i * per_row..][..h];
        for ((x, p), ty) in row.iter_mut().zip(p).zip(ty) {
            *x = (*x + p) + ty;
        }
    });
    Ok(nn::from_vec(e, [b, t, h], &device))
}

pub fn act<B: burn::tensor::backend::Backend, const D: usize>(
    name: &str,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    match name {
        "relu" => activation::relu(x),
        "gelu_new" => activation::gelu_approximate(x),
        "silu" | "swish" => activation::silu(x),
        "tanh" => x.tanh(),
        _ => activation::gelu(x),
    }
}

/// HF `BertModel` keys; checkpoints of the task classes (`bert.` prefix) load too.
impl Architecture for Bert {
    type Config = BertConfig;
    const MODEL_TYPE: &'static str = "bert";
    const DISPLAY: &'static str = "BERT";
    const PREFIXES: &'static [&'static str] = &["bert."];

    fn new(name: &str, config: BertConfig) -> Result<Self, ApiError> {
        Bert::new(name, config)
    }

    fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.config.weight_shapes()
    }
}

impl<B: AutodiffBackend> Backbone<B> for Bert {
    fn info(&self) -> &BackboneInfo {
        &self.info
    }

    fn encode(
        &self,
        hooks: &Hooks<'_, '_, B>,
        batch: &TextBatch<B>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let mut x = self.embed(hooks, batch)?;
        for l in 0..self.config.num_hidden_layers {
            x = self.layer(hooks, l, x, &batch.attention_mask)?;
        }
        Ok(x)
    }
}
