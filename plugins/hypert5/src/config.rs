use peft_api::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// HyperT5 settings (Phang et al., 2022; `../shared/design/METHODS.md`). The hypermodel reads
/// `k` few-shot examples of a task and generates a prefix and/or LoRA A/B per layer, which the
/// `prefix` / `lora` modules configured with `from_context` read instead of their own leaves.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HyperT5Config {
    /// What to generate: `prefix`, `lora` or both.
    #[serde(default = "default_generate")]
    pub generate: Vec<Generated>,
    /// Prefix positions `P` per layer (key and value each).
    #[serde(default = "default_prefix_length")]
    #[schemars(range(min = 1))]
    pub prefix_length: usize,
    /// Rank of the generated LoRA A `[r, H]` and B `[H, r]` for query and value.
    #[serde(default = "default_rank")]
    #[schemars(range(min = 1))]
    pub lora_rank: usize,
    /// Backbone layers copied into the hypermodel's encoder (all when absent).
    #[serde(default)]
    pub encoder_layers: Option<usize>,
    /// Decoder layers copied into the hypermodel's decoder (T5; all when absent).
    #[serde(default)]
    pub decoder_layers: Option<usize>,
    /// Hidden size of the MLP heads.
    #[serde(default = "default_head_hidden")]
    #[schemars(range(min = 1))]
    pub head_hidden: usize,
    /// Normal std of the heads' output layers: small, so that generated LoRA starts near the
    /// unchanged backbone and generated prefixes near neutral keys.
    #[serde(default = "default_out_std")]
    pub out_init_std: f64,
    /// Start the LoRA heads' `B` outputs at exactly zero, as LoRA itself starts `B`: the
    /// generated `ΔW = B·A` is then 0 before training (the backbone unchanged) while `A`'s
    /// outputs keep `out_init_std`, so the first gradients reach `B` through a nonzero `A`.
    /// Off by default (earlier runs' behaviour): both start at `out_init_std`, which through
    /// a 256-wide head already gives `A` and `B` entries of ~0.1.
    #[serde(default)]
    pub lora_zero_b: bool,
    /// Normal std of the learned pooling queries (BERT-family hypermodel; BERT's 0.02 by
    /// default). Small queries make the pooling attention near uniform at the start.
    #[serde(default = "default_query_std")]
    pub query_init_std: f64,
    /// Number of few-shot examples handed to the hypermodel per pass (host side).
    #[serde(default = "default_k")]
    #[schemars(range(min = 1, max = 64))]
    pub k: usize,
    /// Tokens per example (`input [SEP] answer`), longer ones are truncated (host side,
    /// longest-first like the tokenizer's own truncation).
    #[serde(default = "default_max_length")]
    #[schemars(range(min = 8, max = 512))]
    pub max_length: usize,
    /// Module instances that read the generated parameters (`from_context`); the host checks
    /// that they exist and read every output.
    #[serde(default)]
    pub consumers: Vec<String>,
    /// Context name prefix of the outputs: `<name>.prefix`, `<name>.lora_A`, `<name>.lora_B`.
    #[serde(default = "default_name")]
    pub context_name: String,
    /// Parameter group of the hypermodel.
    #[serde(default = "default_group")]
    pub group: String,
    /// Parameter group of the weights copied from the backbone (the encoder, and on T5 the
    /// decoder); `group` when absent. Its own group lets `training.train_groups` freeze the
    /// copy or `training.group_learning_rates` give it a smaller rate than the new heads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_group: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Generated {
    Prefix,
    Lora,
}

fn default_generate() -> Vec<Generated> {
    vec![Generated::Prefix]
}
fn default_prefix_length() -> usize {
    8
}
fn default_rank() -> usize {
    4
}
fn default_head_hidden() -> usize {
    128
}
fn default_out_std() -> f64 {
    0.01
}
fn default_query_std() -> f64 {
    0.02
}
fn default_k() -> usize {
    16
}
fn default_max_length() -> usize {
    64
}
fn default_name() -> String {
    "hypert5".into()
}
fn default_group() -> String {
    "hyper".into()
}

impl Default for HyperT5Config {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults")
    }
}

pub fn parse(v: &serde_json::Value) -> Result<HyperT5Config> {
    peft_api::blocks::parse_config("hypert5", v)
}
