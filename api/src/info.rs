//! Control-plane descriptions exchanged as JSON: they run once per model, so JSON costs nothing
//! and lets fields be added in minor versions (unknown fields are ignored, new ones default).
use serde::{Deserialize, Serialize};

/// What a hook site hands to the modules attached there, and what it expects back.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum SiteKind {
    /// An attention or feed-forward block. Inputs `[x, y]`: the block's input and its output
    /// before the residual connection; returns `[y']`. Serial adapters transform `y`, parallel
    /// adapters return `y + f(x)`.
    Sublayer,
    /// A linear projection `y = W x + b`. Inputs `[x, y]`; returns `[y']` (LoRA: `y + s B A x`).
    Projection,
    /// Keys and values of an attention layer, `[batch, heads, time, head_dim]` each. Inputs
    /// `[k, v]`; returns `[k', v']`, possibly longer along time (prefix tuning); the host extends
    /// the attention mask with ones for the added positions.
    AttentionKv,
    /// A layer's output hidden states `[batch, time, hidden]`. Inputs `[h]`; returns `[h']`.
    Hidden,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SiteInfo {
    pub name: String,
    pub kind: SiteKind,
    /// `encoder` or `decoder`.
    pub stack: String,
    /// Layer index within the stack.
    #[serde(default)]
    pub layer: Option<usize>,
    /// For sublayers: `attention`, `cross_attention` or `ffn`; for projections: the HF module
    /// name (`query`, `value`, `q`, `v`, ...); for kv sites: the attention kind.
    pub role: String,
    /// Feature sizes of the site's input and output.
    pub in_features: usize,
    pub out_features: usize,
}

/// The backbone as a module sees it when attaching.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct BackboneInfo {
    pub name: String,
    /// `bert`, `t5` or `bart` for the built-in backbones.
    pub architecture: String,
    pub hidden_size: usize,
    pub num_layers: usize,
    #[serde(default)]
    pub num_decoder_layers: usize,
    pub num_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub sites: Vec<SiteInfo>,
    /// HF keys of the norm parameters that go with each sublayer site, by site name: the
    /// LayerNorm after it (post-norm: BERT, BART) or the norm of its input (pre-norm: T5). What a
    /// module adapting the sublayer may train too (AdapterBias). Empty from older hosts.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub norms: std::collections::BTreeMap<String, Vec<String>>,
}

impl BackboneInfo {
    pub fn sites_of_kind(&self, kind: SiteKind) -> impl Iterator<Item = &SiteInfo> {
        self.sites.iter().filter(move |s| s.kind == kind)
    }
}

/// Where a module attaches; the index of an entry is passed back as `SiteCall::attachment`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct AttachPlan {
    pub attachments: Vec<Attachment>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Attachment {
    pub site: String,
    /// What the module does there, for `plan` output (e.g. `serial adapter`).
    pub role: String,
    /// Backbone weights (HF keys) this module makes trainable, e.g. AdapterBias's LayerNorms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unfreeze: Vec<String>,
}

/// How a new parameter is initialised.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Init {
    Zeros,
    Ones,
    Constant {
        value: f64,
    },
    Normal {
        mean: f64,
        std: f64,
    },
    Uniform {
        low: f64,
        high: f64,
    },
    /// PyTorch's `nn.Linear` default for a weight of shape `[out, in]`: U(-1/sqrt(in), 1/sqrt(in)).
    KaimingUniform,
    XavierUniform,
    /// Values given in full (row-major).
    Data {
        values: Vec<f32>,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// Local name; the host prefixes it with the module instance's name.
    pub name: String,
    pub shape: Vec<usize>,
    /// Parameter group (`adapter`, `meta_adapter`, `head`, `hyper`, `prototype`, ...).
    pub group: String,
    pub init: Init,
}

/// What a plugin provides.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    Module,
    ContextEncoder,
    Priming,
    Backbone,
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PluginKind::Module => "module",
            PluginKind::ContextEncoder => "context_encoder",
            PluginKind::Priming => "priming",
            PluginKind::Backbone => "backbone",
        })
    }
}

/// A plugin's self-description, shipped in its root module.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub kind: PluginKind,
    /// The `peft-api` version the plugin was built against, `major.minor`.
    pub api_version: String,
    pub description: String,
    /// JSON Schema of the plugin's config section.
    pub config_schema: serde_json::Value,
    /// Parameter groups the plugin creates.
    #[serde(default)]
    pub groups: Vec<String>,
}
