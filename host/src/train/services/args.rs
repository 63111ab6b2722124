//! The JSON arguments of each service, parsed strictly (unknown fields are refused).
use peft_api::ApiError;
use serde::Deserialize;

pub(super) fn bad(service: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(format!("trainer service `{service}`: {msg}"))
}

pub(super) fn args<T: for<'de> Deserialize<'de>>(service: &str, json: &str) -> Result<T, ApiError> {
    let text = if json.trim().is_empty() { "{}" } else { json };
    serde_json::from_str(text).map_err(|e| bad(service, format!("bad arguments {json}: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupsArgs {
    pub(super) groups: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct NextStepArgs {
    #[serde(default)]
    pub(super) loss: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct SampleArgs {
    #[serde(default)]
    pub(super) k: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchArgs {
    pub(super) task: String,
    #[serde(default)]
    pub(super) size: Option<usize>,
    #[serde(default)]
    pub(super) sizes: Option<Vec<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LossArgs {
    pub(super) batch: u64,
    #[serde(default)]
    pub(super) overrides: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StepArgs {
    pub(super) groups: Vec<String>,
    pub(super) lr: f64,
    #[serde(default = "default_optimizer")]
    pub(super) optimizer: String,
    /// The parameters the given gradients belong to (default: every parameter of `groups`).
    #[serde(default)]
    pub(super) names: Option<Vec<String>>,
    /// The one input is a loss: gradients come from its backward pass.
    #[serde(default)]
    pub(super) from_loss: bool,
    #[serde(default)]
    pub(super) weight_decay: f64,
}

fn default_optimizer() -> String {
    "adam".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EvalArgs {
    pub(super) task: String,
}
