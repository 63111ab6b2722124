pub use peft_api::blocks::{Activation, Stack};
use peft_api::sdk::MethodConfig;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Meta-Adapters settings (Bansal et al., 2022), on Houlsby's positions. Defaults follow the
/// thesis (bottleneck 8 for every adapter, ReLU, after attention and after the FFN).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetaAdaptersConfig {
    /// Bottleneck of the task adapter `A`.
    #[serde(default = "default_bottleneck")]
    #[schemars(range(min = 1))]
    pub bottleneck: usize,
    /// Bottleneck of the two meta-adapters `M1`, `M2`.
    #[serde(default = "default_bottleneck")]
    #[schemars(range(min = 1))]
    pub meta_bottleneck: usize,
    #[serde(default)]
    pub activation: Activation,
    /// Adapters after the attention blocks.
    #[serde(default = "peft_api::sdk::yes")]
    pub attention: bool,
    /// Adapters after the feed-forward block.
    #[serde(default = "peft_api::sdk::yes")]
    pub ffn: bool,
    /// Layers to adapt (all when absent).
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// Which stack of an encoder-decoder model.
    #[serde(default)]
    pub stack: Stack,
    /// Standard deviation of the down projections' normal init.
    #[serde(default = "default_init_std")]
    pub init_std: f64,
    /// Standard deviation of the up projections' init; 0 makes every adapter start as the
    /// identity.
    #[serde(default)]
    pub up_init_std: f64,
    /// Parameter group of the task adapter `A` (trained downstream and in the inner loop).
    #[serde(default = "default_adapter_group")]
    pub adapter_group: String,
    /// Parameter group of the meta-adapters (trained upstream, in the outer loop).
    #[serde(default = "default_meta_group")]
    pub meta_group: String,
}

fn default_bottleneck() -> usize {
    8
}
fn default_init_std() -> f64 {
    1e-2
}
fn default_adapter_group() -> String {
    "adapter".into()
}
fn default_meta_group() -> String {
    "meta_adapter".into()
}

impl MethodConfig for MetaAdaptersConfig {
    const NAME: &'static str = "meta-adapters";
    const DESCRIPTION: &'static str =
        "Serial adapters sandwiched by two meta-adapters, M2(A(M1(y))) (Bansal et al., 2022)";
    const GROUPS: &'static [&'static str] = &["adapter", "meta_adapter"];
}
