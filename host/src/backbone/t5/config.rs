//! T5's `config.json` fields, its weights (HF keys and shapes) and the sites it declares.
use peft_api::{BackboneInfo, SiteInfo, SiteKind};
use serde::{Deserialize, Serialize};

/// The fields of an HF T5 `config.json` that T5ForConditionalGeneration uses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    /// Defaults to `num_layers`.
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    pub num_heads: usize,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_dropout")]
    pub dropout_rate: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `relu`, `gated-gelu`, `gated-silu`, ... (`ACT` or `gated-ACT`).
    #[serde(default = "default_ff")]
    pub feed_forward_proj: String,
    /// Overrides the activation derived from `feed_forward_proj` when given (as HF does).
    #[serde(default)]
    pub dense_act_fn: Option<String>,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    /// Scale the decoder output by `d_model^-0.5` before the LM head; defaults to
    /// `tie_word_embeddings`.
    #[serde(default)]
    pub scale_decoder_outputs: Option<bool>,
    #[serde(default)]
    pub decoder_start_token_id: i64,
    #[serde(default = "default_eos")]
    pub eos_token_id: Option<i64>,
    #[serde(default)]
    pub pad_token_id: i64,
}

fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ff() -> String {
    "relu".into()
}
fn yes() -> bool {
    true
}
fn default_eos() -> Option<i64> {
    Some(1)
}

impl T5Config {
    pub fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// Whether the FFN is gated (`wi_0`, `wi_1`).
    pub fn is_gated(&self) -> bool {
        self.feed_forward_proj.starts_with("gated-")
    }

    /// The FFN activation, as HF's T5Config derives it.
    pub fn activation(&self) -> String {
        if let Some(a) = &self.dense_act_fn {
            return a.clone();
        }
        if self.feed_forward_proj == "gated-gelu" {
            return "gelu_new".into();
        }
        self.feed_forward_proj
            .rsplit('-')
            .next()
            .unwrap_or("relu")
            .to_string()
    }

    pub fn scales_decoder_outputs(&self) -> bool {
        self.scale_decoder_outputs
            .unwrap_or(self.tie_word_embeddings)
    }

    fn ffn_inputs(&self) -> &'static [&'static str] {
        if self.is_gated() {
            &["wi_0", "wi_1"]
        } else {
            &["wi"]
        }
    }

    /// Every weight T5ForConditionalGeneration has, with its shape (HF keys, PyTorch layouts).
    pub fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, inner, ff) = (self.d_model, self.inner_dim(), self.d_ff);
        let mut v = vec![("shared.weight".to_string(), vec![self.vocab_size, d])];
        for (stack, layers) in [
            ("encoder", self.num_layers),
            ("decoder", self.decoder_layers()),
        ] {
            let attns: &[&str] = if stack == "encoder" {
                &["layer.0.SelfAttention"]
            } else {
                &["layer.0.SelfAttention", "layer.1.EncDecAttention"]
            };
            let ffn_layer = attns.len();
            for l in 0..layers {
                let p = format!("{stack}.block.{l}");
                for (i, a) in attns.iter().enumerate() {
                    for m in ["q", "k", "v"] {
                        v.push((format!("{p}.{a}.{m}.weight"), vec![inner, d]));
                    }
                    v.push((format!("{p}.{a}.o.weight"), vec![d, inner]));
                    if l == 0 && i == 0 {
                        v.push((
                            format!("{p}.{a}.relative_attention_bias.weight"),
                            vec![self.relative_attention_num_buckets, self.num_heads],
                        ));
                    }
                    v.push((format!("{p}.layer.{i}.layer_norm.weight"), vec![d]));
                }
                for wi in self.ffn_inputs() {
                    v.push((
                        format!("{p}.layer.{ffn_layer}.DenseReluDense.{wi}.weight"),
                        vec![ff, d],
                    ));
                }
                v.push((
                    format!("{p}.layer.{ffn_layer}.DenseReluDense.wo.weight"),
                    vec![d, ff],
                ));
                v.push((format!("{p}.layer.{ffn_layer}.layer_norm.weight"), vec![d]));
            }
            v.push((format!("{stack}.final_layer_norm.weight"), vec![d]));
        }
        if !self.tie_word_embeddings {
            v.push(("lm_head.weight".to_string(), vec![self.vocab_size, d]));
        }
        v
    }

    pub fn info(&self, name: &str) -> BackboneInfo {
        let (d, inner, ff) = (self.d_model, self.inner_dim(), self.d_ff);
        let mut sites = Vec::new();
        let mut norms = std::collections::BTreeMap::new();
        for (stack, layers) in [
            ("encoder", self.num_layers),
            ("decoder", self.decoder_layers()),
        ] {
            let mut site = |name: String, kind, layer, role: &str, a, b| {
                sites.push(SiteInfo {
                    name,
                    kind,
                    stack: stack.into(),
                    layer: Some(layer),
                    role: role.into(),
                    in_features: a,
                    out_features: b,
                })
            };
            let attns: &[(&str, &str, &str)] = if stack == "encoder" {
                &[("layer.0.SelfAttention", "self_attention", "attention")]
            } else {
                &[
                    ("layer.0.SelfAttention", "self_attention", "attention"),
                    (
                        "layer.1.EncDecAttention",
                        "cross_attention",
                        "cross_attention",
                    ),
                ]
            };
            for l in 0..layers {
                let p = format!("{stack}.block.{l}");
                for (a, kv_role, sub) in attns {
                    for m in ["q", "k", "v"] {
                        site(format!("{p}.{a}.{m}"), SiteKind::Projection, l, m, d, inner);
                    }
                    site(
                        format!("{p}.{a}.kv"),
                        SiteKind::AttentionKv,
                        l,
                        kv_role,
                        d,
                        inner,
                    );
                    site(format!("{p}.{a}.o"), SiteKind::Projection, l, "o", inner, d);
                    site(format!("{p}.{sub}"), SiteKind::Sublayer, l, sub, d, d);
                }
                // Pre-norm: each sublayer's own RMS norm (bias-free).
                for (i, (_, _, sub)) in attns.iter().enumerate() {
                    let key = format!("{p}.layer.{i}.layer_norm.weight");
                    norms.insert(format!("{p}.{sub}"), vec![key]);
                }
                let key = format!("{p}.layer.{}.layer_norm.weight", attns.len());
                norms.insert(format!("{p}.ffn"), vec![key]);
                let f = format!("{p}.layer.{}.DenseReluDense", attns.len());
                for wi in self.ffn_inputs() {
                    site(format!("{f}.{wi}"), SiteKind::Projection, l, wi, d, ff);
                }
                site(
                    format!("{f}.intermediate"),
                    SiteKind::Hidden,
                    l,
                    "ffn_intermediate",
                    ff,
                    ff,
                );
                site(format!("{f}.wo"), SiteKind::Projection, l, "wo", ff, d);
                site(format!("{p}.ffn"), SiteKind::Sublayer, l, "ffn", d, d);
                site(
                    format!("{p}.output"),
                    SiteKind::Hidden,
                    l,
                    "layer_output",
                    d,
                    d,
                );
            }
        }
        BackboneInfo {
            name: name.to_string(),
            architecture: "t5".into(),
            hidden_size: d,
            num_layers: self.num_layers,
            num_decoder_layers: self.decoder_layers(),
            num_heads: self.num_heads,
            head_dim: self.d_kv,
            intermediate_size: ff,
            vocab_size: self.vocab_size,
            sites,
            norms,
        }
    }
}
