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
    /// Read A and B from the pass-context tensors `<name>_A` `[L, 2, r, in]` and `<name>_B`
    /// `[L, 2, out, r]` (a context encoder's output, e.g. `hypert5.lora`; index 0 of the
    /// second dim is the query projection, 1 the value projection) instead of own parameters;
    /// none are created then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_context: Option<String>,
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

/// The module section (`{"plugin": "lora", "config": ...}`) that rebuilds the LoRA module an
/// HF peft `adapter_config.json` describes; `Ok(None)` when it is not a LoRA config (another
/// plugin may read it). The plugin reads its own foreign formats, so the host needs no
/// knowledge of HF peft's fields.
pub fn from_hf_peft(cfg: &serde_json::Value) -> Result<Option<serde_json::Value>> {
    use serde_json::{json, Value};
    match cfg.get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        _ => return Ok(None),
    }
    let bad = |what: String| {
        Err(ApiError::config(format!(
            "lora: adapter_config.json {what}"
        )))
    };
    let targets = match cfg.get("target_modules") {
        Some(Value::Array(a)) => a.clone(),
        Some(Value::String(s)) => {
            return bad(format!(
            "has target_modules as the regular expression {s:?}; only a list of names is supported"
        ))
        }
        other => {
            return bad(format!(
                "has target_modules {other:?}, expected a list of names"
            ))
        }
    };
    let Some(r) = cfg.get("r").and_then(Value::as_u64) else {
        return bad(format!(
            "has r = {:?}, expected a positive integer",
            cfg.get("r")
        ));
    };
    let Some(alpha) = cfg.get("lora_alpha").and_then(Value::as_f64) else {
        return bad(format!(
            "has lora_alpha = {:?}, expected a number",
            cfg.get("lora_alpha")
        ));
    };
    let mut c = json!({
        "rank": r,
        "alpha": alpha,
        "dropout": cfg.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
        "targets": targets,
        "use_rslora": cfg.get("use_rslora").and_then(Value::as_bool).unwrap_or(false),
    });
    match cfg.get("layers_to_transform") {
        Some(Value::Array(a)) => c["layers"] = Value::Array(a.clone()),
        Some(Value::Number(n)) => c["layers"] = json!([n]),
        _ => {}
    }
    // What this plugin would refuse is refused here, with HF peft's field names.
    <LoraConfig as MethodConfig>::parse(&c)?;
    Ok(Some(json!({ "plugin": "lora", "config": c })))
}
