//! Reptile priming (Nichol et al., 2018): per sampled task, `inner_steps` SGD steps on fresh
//! batches over the upstream and downstream groups together (as substituted parameters), then
//! the upstream parameters move towards the adapted ones: `φ ← φ + ε·mean(φ̃ − φ)`, an SGD step
//! of rate ε on the "gradient" `φ − φ̃`. The downstream-only parameters keep their values.
use peft_api::{
    sdk::{batch_size, MethodConfig, Services, Vector},
    tensor::Ctx,
    ApiError, PluginKind, Priming, Result, Trainer,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Reptile settings.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReptileConfig {
    #[serde(default = "default_inner_steps")]
    #[schemars(range(min = 1))]
    pub inner_steps: usize,
    #[serde(default = "default_inner_lr")]
    pub inner_lr: f64,
    /// The interpolation rate ε.
    #[serde(default = "default_outer_lr")]
    pub outer_lr: f64,
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub tasks_per_step: usize,
    /// Batch size of each inner step (0: the run's `training.batch_size`).
    #[serde(default)]
    pub batch_size: usize,
}

fn default_inner_steps() -> usize {
    3
}
fn default_inner_lr() -> f64 {
    5e-4
}
fn default_outer_lr() -> f64 {
    0.1
}
fn one() -> usize {
    1
}

pub struct Reptile {
    pub cfg: ReptileConfig,
}

impl Priming for Reptile {
    fn run(&mut self, ctx: &Ctx<'_>, trainer: &Trainer<'_>) -> Result<Value> {
        let s = Services { ctx, trainer };
        let info = s.info()?;
        let up = s.params(&info["upstream_groups"])?;
        let mut all = up.clone();
        for n in s.params(&info["downstream_groups"])? {
            if !all.contains(&n) {
                all.push(n);
            }
        }
        let bs = batch_size(&info, self.cfg.batch_size);
        let (alpha, k_inner) = (self.cfg.inner_lr, self.cfg.inner_steps);
        let mut last: Option<f64> = None;
        let mut steps = 0;
        while s.next_step(last)?.is_some() {
            let tasks = s.sample_tasks(self.cfg.tasks_per_step)?;
            let mut delta: Option<Vector<'_>> = None;
            let mut loss_sum = 0.0;
            for t in &tasks {
                let ids = s.batches(t, &vec![bs; k_inner])?;
                let start: Vector<'_> = all
                    .iter()
                    .map(|n| ctx.param(n)?.detach())
                    .collect::<Result<_>>()?;
                let mut theta: Vector<'_> = start
                    .iter()
                    .map(|t| t.clone().require_grad())
                    .collect::<Result<_>>()?;
                for id in &ids {
                    let l = s.loss(*id, &all, &theta)?;
                    loss_sum += l.to_vec()?[0] as f64 / ids.len() as f64;
                    let g = ctx.grad(l, theta.clone())?;
                    theta = theta
                        .into_iter()
                        .zip(g)
                        .map(|(p, g)| p.sub(g.mul_scalar(alpha)?)?.require_grad())
                        .collect::<Result<_>>()?;
                }
                // φ − φ̃ for the upstream names (the first |up| entries of `all`).
                let d: Vector<'_> = start
                    .into_iter()
                    .zip(theta)
                    .take(up.len())
                    .map(|(a, b)| a.sub(b.detach()?))
                    .collect::<Result<_>>()?;
                delta = Some(match delta {
                    None => d,
                    Some(acc) => acc
                        .into_iter()
                        .zip(d)
                        .map(|(a, b)| a.add(b))
                        .collect::<Result<_>>()?,
                });
            }
            let k = tasks.len() as f64;
            let grads: Vector<'_> = delta
                .ok_or_else(|| ApiError::internal("no task sampled"))?
                .into_iter()
                .map(|t| t.mul_scalar(1.0 / k))
                .collect::<Result<_>>()?;
            s.call(
                "step",
                json!({ "groups": info["upstream_groups"], "names": up, "lr": self.cfg.outer_lr, "optimizer": "sgd" }),
                grads,
            )?;
            last = Some(loss_sum / k);
            steps += 1;
        }
        Ok(json!({ "algorithm": "reptile", "steps": steps, "last_loss": last }))
    }
}

impl MethodConfig for ReptileConfig {
    const NAME: &'static str = "reptile";
    const DESCRIPTION: &'static str =
        "Reptile priming: inner SGD per task, move the upstream groups towards the adapted weights";
    const GROUPS: &'static [&'static str] = &[];
    const KIND: PluginKind = PluginKind::Priming;
}

peft_api::priming_plugin!(reptile, ReptilePlugin, ReptileConfig => |cfg| Reptile { cfg });
