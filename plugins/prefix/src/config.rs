pub use peft_api::blocks::Stack;
use peft_api::sdk::MethodConfig;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Prefix-tuning settings (Li & Liang, 2021). Defaults: 10 virtual tokens (the paper's
/// table-to-text setting), no re-parameterisation (HF peft's `prefix_projection = false`);
/// with it, the paper's MLP of hidden size 512. Every attention layer gets a prefix: encoder
/// self-attention, decoder self-attention and decoder cross-attention.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrefixConfig {
    /// Number of prefix positions `P` (HF peft: `num_virtual_tokens`).
    #[serde(default = "default_length")]
    #[schemars(range(min = 1))]
    pub prefix_length: usize,
    /// Compute the prefixes through an MLP, `tanh` in between (HF peft: `prefix_projection`).
    #[serde(default)]
    pub reparameterize: bool,
    /// Hidden size of that MLP (HF peft: `encoder_hidden_size`).
    #[serde(default = "default_hidden")]
    #[schemars(range(min = 1))]
    pub reparam_hidden: usize,
    /// Standard deviation of the normal init of the prefixes (or of the MLP's input
    /// embedding); HF peft's `nn.Embedding` default is 1.
    #[serde(default = "default_init_std")]
    pub init_std: f64,
    /// Attention kinds to prefix, by kv-site role (all when absent); e.g. `self_attention`.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    /// Layers to prefix (all when absent).
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// Which stack of an encoder-decoder model.
    #[serde(default)]
    pub stack: Stack,
    /// Parameter group of the prefixes (and the MLP).
    #[serde(default = "peft_api::sdk::adapter_group")]
    pub group: String,
    /// Read the prefixes from this pass-context tensor `[L, 2, P, heads * head_dim]` (a
    /// context encoder's output, e.g. `hypert5.prefix`) instead of own parameters; none are
    /// created then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_context: Option<String>,
}

fn default_length() -> usize {
    10
}
fn default_hidden() -> usize {
    512
}
fn default_init_std() -> f64 {
    1.0
}

impl MethodConfig for PrefixConfig {
    const NAME: &'static str = "prefix";
    const DESCRIPTION: &'static str =
        "Learned key/value prefixes prepended in every attention layer, optional MLP re-parameterisation (Li & Liang, 2021)";
    const GROUPS: &'static [&'static str] = &["adapter"];
}
