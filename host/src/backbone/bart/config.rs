//! BART's `config.json` fields, its weights (HF keys and shapes) and the sites it declares.
use peft_api::{BackboneInfo, SiteInfo, SiteKind};
use serde::{Deserialize, Serialize};

/// The fields of an HF BART `config.json` that BartForConditionalGeneration uses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct BartConfig {
    pub vocab_size: usize,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub decoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    pub decoder_ffn_dim: usize,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub scale_embedding: bool,
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub activation_dropout: f64,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default = "one")]
    pub pad_token_id: i64,
    #[serde(default)]
    pub bos_token_id: Option<i64>,
    #[serde(default = "two")]
    pub eos_token_id: Option<i64>,
    #[serde(default = "two_i64")]
    pub decoder_start_token_id: i64,
    #[serde(default)]
    pub forced_bos_token_id: Option<i64>,
    #[serde(default)]
    pub forced_eos_token_id: Option<i64>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_positions() -> usize {
    1024
}
fn default_dropout() -> f64 {
    0.1
}
fn yes() -> bool {
    true
}
fn one() -> i64 {
    1
}
fn two() -> Option<i64> {
    Some(2)
}
fn two_i64() -> i64 {
    2
}

/// HF's `BartLearnedPositionalEmbedding` offset.
pub(super) const POSITION_OFFSET: usize = 2;
/// `nn.LayerNorm`'s default epsilon, which BART uses.
pub(super) const LN_EPS: f64 = 1e-5;

impl BartConfig {
    pub(super) fn stacks(&self) -> [(&'static str, usize, usize, usize); 2] {
        [
            (
                "encoder",
                self.encoder_layers,
                self.encoder_attention_heads,
                self.encoder_ffn_dim,
            ),
            (
                "decoder",
                self.decoder_layers,
                self.decoder_attention_heads,
                self.decoder_ffn_dim,
            ),
        ]
    }

    fn attentions(stack: &str) -> &'static [(&'static str, &'static str, &'static str)] {
        if stack == "encoder" {
            &[("self_attn", "self_attention", "attention")]
        } else {
            &[
                ("self_attn", "self_attention", "attention"),
                ("encoder_attn", "cross_attention", "cross_attention"),
            ]
        }
    }

    /// Every weight BartForConditionalGeneration has, with its shape (HF keys without
    /// `model.`, PyTorch layouts).
    pub fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let d = self.d_model;
        let mut v = vec![("shared.weight".to_string(), vec![self.vocab_size, d])];
        for (stack, layers, _, ffn) in self.stacks() {
            v.push((
                format!("{stack}.embed_positions.weight"),
                vec![self.max_position_embeddings + POSITION_OFFSET, d],
            ));
            v.push((format!("{stack}.layernorm_embedding.weight"), vec![d]));
            v.push((format!("{stack}.layernorm_embedding.bias"), vec![d]));
            for l in 0..layers {
                let p = format!("{stack}.layers.{l}");
                for (a, _, _) in Self::attentions(stack) {
                    for m in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                        v.push((format!("{p}.{a}.{m}.weight"), vec![d, d]));
                        v.push((format!("{p}.{a}.{m}.bias"), vec![d]));
                    }
                    v.push((format!("{p}.{a}_layer_norm.weight"), vec![d]));
                    v.push((format!("{p}.{a}_layer_norm.bias"), vec![d]));
                }
                v.push((format!("{p}.fc1.weight"), vec![ffn, d]));
                v.push((format!("{p}.fc1.bias"), vec![ffn]));
                v.push((format!("{p}.fc2.weight"), vec![d, ffn]));
                v.push((format!("{p}.fc2.bias"), vec![d]));
                v.push((format!("{p}.final_layer_norm.weight"), vec![d]));
                v.push((format!("{p}.final_layer_norm.bias"), vec![d]));
            }
        }
        v.push(("final_logits_bias".to_string(), vec![1, self.vocab_size]));
        if !self.tie_word_embeddings {
            v.push(("lm_head.weight".to_string(), vec![self.vocab_size, d]));
        }
        v
    }

    pub fn info(&self, name: &str) -> BackboneInfo {
        let d = self.d_model;
        let mut sites = Vec::new();
        let mut norms = std::collections::BTreeMap::new();
        for (stack, layers, _, ffn) in self.stacks() {
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
            for l in 0..layers {
                let p = format!("{stack}.layers.{l}");
                // Post-norm: the LayerNorm after each sublayer.
                let ln = |name: &str| {
                    ["weight", "bias"]
                        .map(|w| format!("{p}.{name}.{w}"))
                        .to_vec()
                };
                for (a, _, sub) in Self::attentions(stack) {
                    norms.insert(format!("{p}.{sub}"), ln(&format!("{a}_layer_norm")));
                }
                norms.insert(format!("{p}.ffn"), ln("final_layer_norm"));
                for (a, kv_role, sub) in Self::attentions(stack) {
                    for m in ["q_proj", "k_proj", "v_proj"] {
                        site(format!("{p}.{a}.{m}"), SiteKind::Projection, l, m, d, d);
                    }
                    site(
                        format!("{p}.{a}.kv"),
                        SiteKind::AttentionKv,
                        l,
                        kv_role,
                        d,
                        d,
                    );
                    site(
                        format!("{p}.{a}.out_proj"),
                        SiteKind::Projection,
                        l,
                        "out_proj",
                        d,
                        d,
                    );
                    site(format!("{p}.{sub}"), SiteKind::Sublayer, l, sub, d, d);
                }
                site(format!("{p}.fc1"), SiteKind::Projection, l, "fc1", d, ffn);
                site(
                    format!("{p}.intermediate"),
                    SiteKind::Hidden,
                    l,
                    "ffn_intermediate",
                    ffn,
                    ffn,
                );
                site(format!("{p}.fc2"), SiteKind::Projection, l, "fc2", ffn, d);
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
            architecture: "bart".into(),
            hidden_size: d,
            num_layers: self.encoder_layers,
            num_decoder_layers: self.decoder_layers,
            num_heads: self.encoder_attention_heads,
            head_dim: d / self.encoder_attention_heads.max(1),
            intermediate_size: self.encoder_ffn_dim,
            vocab_size: self.vocab_size,
            sites,
            norms,
        }
    }
}
