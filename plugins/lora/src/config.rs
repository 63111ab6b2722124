pub use peft_api::blocks::Stack;
use peft_api::{sdk::MethodConfig, ApiError, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// LoRA settings. Defaults are HF peft's `LoraConfig`: `r = 8`, `lora_alpha = 8`,
/// `lora_dropout = 0`, and the query and value projections (Hu et al., 2021).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank `r` (HF peft: `r`).
    #[serde(default = "default_rank")]
    #[schemars(range(min = 1))]
    pub rank: usize,
    /// The update is scaled by `alpha / r` (HF peft: `lora_alpha`).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout on the LoRA path, training only (HF peft: `lora_dropout`).
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub dropout: f64,
    /// Projections to adapt, HF peft style (`target_modules`): an entry matches a projection
    /// site whose role equals it, whose name equals it, or whose name ends in `.<entry>`.
    /// BERT roles: query, key, value, attention_output, intermediate, output; T5: q, k, v, o,
    /// wi, wo; BART: q_proj, k_proj, v_proj, out_proj, fc1, fc2. When absent, HF peft's
    /// default for the architecture: the query and value projections (BERT `["query",
    /// "value"]`, T5 `["q", "v"]`, BART `["q_proj", "v_proj"]`).
    #[serde(default)]
    pub targets: Option<Vec<String>>,
    /// Layers to adapt, all when absent (HF peft: `layers_to_transform`).
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// Which stack of an encoder-decoder model.
    #[serde(default)]
    pub stack: Stack,
    /// Rank-stabilised scaling `alpha / sqrt(r)` (HF peft: `use_rslora`).
    #[serde(default)]
    pub use_rslora: bool,
    /// Initialise `B` with this normal standard deviation instead of zeros (tests; 0 = zeros,
    /// the method's start as the unchanged backbone).
    #[serde(default)]
    pub b_init_std: f64,
    /// Parameter group of A and B.
    #[serde(default = "peft_api::sdk::adapter_group")]
    pub group: String,
}

fn default_rank() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}
/// HF peft's default `target_modules` per architecture (query and value projections).
pub fn default_targets(architecture: &str) -> Vec<String> {
    let t: &[&str] = match architecture {
        "t5" | "mt5" => &["q", "v"],
        "bart" | "mbart" | "opt" => &["q_proj", "v_proj"],
        _ => &["query", "value"],
    };
    t.iter().map(|s| s.to_string()).collect()
}

impl MethodConfig for LoraConfig {
    const NAME: &'static str = "lora";
    const DESCRIPTION: &'static str =
        "Low-rank updates (alpha/r) B A on chosen projections, mergeable, HF peft files (Hu et al., 2021)";
    const GROUPS: &'static [&'static str] = &["adapter"];

    fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(ApiError::config("lora: rank must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ApiError::config(format!(
                "lora: dropout {} is not in [0, 1)",
                self.dropout
            )));
        }
        Ok(())
    }
}
