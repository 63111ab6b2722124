pub use peft_api::blocks::{Activation, Stack};
use peft_api::sdk::MethodConfig;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Houlsby adapter settings; defaults follow the thesis (bottleneck 8, ReLU, both positions).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HoulsbyConfig {
    /// Bottleneck size `b`.
    #[serde(default = "default_bottleneck")]
    #[schemars(range(min = 1))]
    pub bottleneck: usize,
    #[serde(default)]
    pub activation: Activation,
    /// Adapter after the attention block.
    #[serde(default = "peft_api::sdk::yes")]
    pub attention: bool,
    /// Adapter after the feed-forward block.
    #[serde(default = "peft_api::sdk::yes")]
    pub ffn: bool,
    /// Layers to adapt (all when absent).
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// Which stack of an encoder-decoder model.
    #[serde(default)]
    pub stack: Stack,
    /// Standard deviation of the down projection's normal init.
    #[serde(default = "default_init_std")]
    pub init_std: f64,
    /// Standard deviation of the up projection's init; 0 makes the adapter start as the identity.
    #[serde(default)]
    pub up_init_std: f64,
    /// Parameter group of the adapter weights.
    #[serde(default = "peft_api::sdk::adapter_group")]
    pub group: String,
}

fn default_bottleneck() -> usize {
    8
}
fn default_init_std() -> f64 {
    1e-2
}

impl MethodConfig for HoulsbyConfig {
    const NAME: &'static str = "houlsby";
    const DESCRIPTION: &'static str =
        "Serial bottleneck adapters after attention and FFN (Houlsby et al., 2019)";
    const GROUPS: &'static [&'static str] = &["adapter"];
}
