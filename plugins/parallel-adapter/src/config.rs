pub use peft_api::blocks::{Activation, Stack};
use peft_api::sdk::MethodConfig;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Parallel adapter settings (He et al., 2022; the generated adapters of PHA). Defaults: at the
/// FFN only, bottleneck 64 (PHA's adapter size), ReLU, scale 1, `W_up` zero so that the adapter
/// starts as a no-op.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParallelAdapterConfig {
    /// Bottleneck size `b`.
    #[serde(default = "default_bottleneck")]
    #[schemars(range(min = 1))]
    pub bottleneck: usize,
    #[serde(default)]
    pub activation: Activation,
    /// The adapter's output is multiplied by this (He et al.'s scaled PA uses 4).
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Adapter beside the feed-forward block (the method's position).
    #[serde(default = "peft_api::sdk::yes")]
    pub ffn: bool,
    /// Adapter beside the attention blocks as well.
    #[serde(default)]
    pub attention: bool,
    /// Layers to adapt (all when absent).
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// Which stack of an encoder-decoder model.
    #[serde(default)]
    pub stack: Stack,
    /// Standard deviation of the down projection's normal init.
    #[serde(default = "default_init_std")]
    pub init_std: f64,
    /// Standard deviation of the up projection's init; 0 makes the adapter start as a no-op.
    #[serde(default)]
    pub up_init_std: f64,
    /// Dropout on the adapter's input (training only).
    #[serde(default)]
    pub dropout: f64,
    /// Parameter group of the adapter weights.
    #[serde(default = "peft_api::sdk::adapter_group")]
    pub group: String,
}

fn default_bottleneck() -> usize {
    64
}
fn default_scale() -> f64 {
    1.0
}
fn default_init_std() -> f64 {
    1e-2
}

impl MethodConfig for ParallelAdapterConfig {
    const NAME: &'static str = "parallel-adapter";
    const DESCRIPTION: &'static str =
        "Bottleneck adapters parallel to the FFN block, fed with its input (He et al., 2022)";
    const GROUPS: &'static [&'static str] = &["adapter"];
}
