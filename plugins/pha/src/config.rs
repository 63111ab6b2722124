pub use peft_api::blocks::Activation;
use peft_api::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// PHA settings. Defaults follow the paper and METHODS.md: retrieval vectors, prototypes and
/// layer embeddings of 64, hypernetwork hidden 128, generated and shared adapters of
/// bottleneck 64, temperature 0.1, λ = 0.1. The retriever's hidden width is not given by the
/// paper; 128 matches the hypernetwork's.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PhaConfig {
    /// Number of training tasks (one prototype each). The host fills it in from the run's tasks
    /// when absent.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub num_tasks: Option<usize>,
    /// The training tasks' names, by prototype (reports say which task's prototype a new task
    /// retrieved). The host fills it in from the run's tasks when absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_names: Vec<String>,
    /// Encoder-only backbones: layers `0..split_layer` carry shared adapters, the retriever reads
    /// the output of layer `split_layer - 1`, layers `split_layer..L` carry generated adapters.
    /// Default `L / 2`. Ignored on encoder-decoder backbones (shared in the encoder, retriever on
    /// the encoder output, generated in the decoder).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub split_layer: Option<usize>,
    /// Size of the retrieval vector `z` and of the prototypes `k_i`.
    #[serde(default = "d64")]
    #[schemars(range(min = 1))]
    pub z_dim: usize,
    /// Hidden width of the retriever MLP `G`.
    #[serde(default = "d128")]
    #[schemars(range(min = 1))]
    pub retriever_hidden: usize,
    /// Size of the layer embeddings `e_m`.
    #[serde(default = "d64")]
    #[schemars(range(min = 1))]
    pub layer_embedding_dim: usize,
    /// Output size of the projector `C` over `[k_i; e_m]` (the mixed embedding `I_m`).
    #[serde(default = "d64")]
    #[schemars(range(min = 1))]
    pub projector_dim: usize,
    /// Hidden width of the hypernetwork `H`.
    #[serde(default = "d128")]
    #[schemars(range(min = 1))]
    pub hyper_hidden: usize,
    /// Bottleneck of the generated parallel adapters.
    #[serde(default = "d64")]
    #[schemars(range(min = 1))]
    pub bottleneck: usize,
    /// Bottleneck of the plain shared parallel adapters below the split.
    #[serde(default = "d64")]
    #[schemars(range(min = 1))]
    pub shared_bottleneck: usize,
    #[serde(default)]
    pub activation: Activation,
    /// Temperature τ of the cosine similarities in `L_IR` and `L_Pro`.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Weight λ of `L_IR + L_Pro` in the training loss.
    #[serde(default = "default_lambda")]
    pub lambda: f64,
    /// Train with the instance retrieval loss `L_IR` (ablation: false).
    #[serde(default = "yes")]
    pub retrieval_loss: bool,
    /// Train with the prototype loss `L_Pro` (ablation: false, the prototypes become plain task
    /// embeddings learned through the task loss only).
    #[serde(default = "yes")]
    pub prototype_loss: bool,
    /// Standard deviation of the shared adapters' down projection and of the generated down
    /// matrices' bias; the up side starts at zero, so every adapter starts as a no-op.
    #[serde(default = "default_init_std")]
    pub init_std: f64,
}

fn d64() -> usize {
    64
}
fn d128() -> usize {
    128
}
fn default_temperature() -> f64 {
    0.1
}
fn default_lambda() -> f64 {
    0.1
}
fn default_init_std() -> f64 {
    1e-2
}
fn yes() -> bool {
    true
}

impl Default for PhaConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults")
    }
}

/// Parses a config section; `null` means all defaults.
pub fn parse(v: &serde_json::Value) -> Result<PhaConfig> {
    let c: PhaConfig = peft_api::blocks::parse_config("pha", v)?;
    if c.temperature.is_nan() || c.temperature <= 0.0 {
        return Err(peft_api::ApiError::config(format!(
            "pha: /temperature must be > 0, got {}",
            c.temperature
        )));
    }
    Ok(c)
}
