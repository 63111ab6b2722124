pub use peft_api::blocks::Stack;
use peft_api::sdk::MethodConfig;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// AdapterBias settings (Fu et al., 2022). Defaults follow the paper and the authors' code: one
/// shift vector `v` (initialised to ones) and one linear `L_alpha: d -> 1` (PyTorch's default
/// `nn.Linear` init) per layer after the FFN block, with the layer's LayerNorm trainable.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdapterBiasConfig {
    /// Shift after the feed-forward block (the paper's position).
    #[serde(default = "peft_api::sdk::yes")]
    pub ffn: bool,
    /// Shift after the attention blocks as well.
    #[serde(default)]
    pub attention: bool,
    /// Initial value of every element of `v` (the authors' code: 1). 0 makes the module start
    /// as the identity.
    #[serde(default = "default_vector_init")]
    pub vector_init: f64,
    /// Make the LayerNorm that follows each adapted block trainable (the paper does).
    #[serde(default = "peft_api::sdk::yes")]
    pub train_layer_norm: bool,
    /// HF keys of that LayerNorm's weights, as templates with `{stack}` and `{layer}`. When
    /// absent, the norms the backbone publishes for the site (`BackboneInfo::norms`).
    #[serde(default)]
    pub layer_norm_keys: Option<Vec<String>>,
    /// Layers to adapt (all when absent).
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// Which stack of an encoder-decoder model.
    #[serde(default)]
    pub stack: Stack,
    /// Parameter group of `v` and `L_alpha`.
    #[serde(default = "peft_api::sdk::adapter_group")]
    pub group: String,
}

fn default_vector_init() -> f64 {
    1.0
}

impl MethodConfig for AdapterBiasConfig {
    const NAME: &'static str = "adapter-bias";
    const DESCRIPTION: &'static str =
        "Token-dependent representation shift alpha(y) * v after the FFN, LayerNorm trainable (Fu et al., 2022)";
    const GROUPS: &'static [&'static str] = &["adapter"];
}
