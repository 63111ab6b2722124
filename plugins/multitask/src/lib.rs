//! Multi-task priming: each step samples `tasks_per_step` upstream tasks, averages the loss of
//! one batch of each, and takes an optimiser step on the upstream groups (Multi_M_A is this
//! with upstream group `backbone`). Everything goes through the host's trainer services.
use peft_api::{
    sdk::{batch_size, MethodConfig, Services},
    tensor::{Ctx, Tensor},
    ApiError, PluginKind, Priming, Result, Trainer,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Multi-task priming settings.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MultitaskConfig {
    /// Tasks whose batch losses are averaged into one step.
    #[serde(default = "default_tasks")]
    #[schemars(range(min = 1))]
    pub tasks_per_step: usize,
    /// Batch size per task (0: the run's `training.batch_size`).
    #[serde(default)]
    pub batch_size: usize,
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    /// `adam` or `sgd`.
    #[serde(default = "default_optimizer")]
    pub optimizer: String,
}

fn default_tasks() -> usize {
    4
}
fn default_lr() -> f64 {
    1e-5
}
fn default_optimizer() -> String {
    "adam".into()
}

pub struct Multitask {
    pub cfg: MultitaskConfig,
}

impl Priming for Multitask {
    fn run(&mut self, ctx: &Ctx<'_>, trainer: &Trainer<'_>) -> Result<Value> {
        let s = Services { ctx, trainer };
        let info = s.info()?;
        let bs = batch_size(&info, self.cfg.batch_size);
        let mut last: Option<f64> = None;
        let mut steps = 0;
        while s.next_step(last)?.is_some() {
            let tasks = s.sample_tasks(self.cfg.tasks_per_step)?;
            let mut total: Option<Tensor<'_>> = None;
            for t in &tasks {
                let id = s.batches(t, &[bs])?[0];
                let l = s.loss(id, &[], &[])?;
                total = Some(match total {
                    None => l,
                    Some(acc) => acc.add(l)?,
                });
            }
            let mean = total
                .ok_or_else(|| ApiError::internal("no task sampled"))?
                .mul_scalar(1.0 / tasks.len() as f64)?;
            last = Some(mean.to_vec()?[0] as f64);
            s.call(
                "step",
                json!({ "groups": info["upstream_groups"], "from_loss": true, "lr": self.cfg.learning_rate, "optimizer": self.cfg.optimizer }),
                vec![mean],
            )?;
            steps += 1;
        }
        Ok(json!({ "algorithm": "multitask", "steps": steps, "last_loss": last }))
    }
}

impl MethodConfig for MultitaskConfig {
    const NAME: &'static str = "multitask";
    const DESCRIPTION: &'static str = "Multi-task priming: average the losses of K sampled upstream tasks, step the upstream groups";
    const GROUPS: &'static [&'static str] = &[];
    const KIND: PluginKind = PluginKind::Priming;

    fn validate(&self) -> Result<()> {
        if !matches!(self.optimizer.as_str(), "adam" | "sgd") {
            return Err(ApiError::config(format!(
                "multitask: optimizer `{}` is not adam or sgd",
                self.optimizer
            )));
        }
        Ok(())
    }
}

peft_api::priming_plugin!(multitask, MultitaskPlugin, MultitaskConfig => |cfg| Multitask { cfg });
