//! Reptile priming (Nichol et al., 2018): per sampled task, `inner_steps` SGD steps on fresh
//! batches over the upstream and downstream groups together (as substituted parameters), then
//! the upstream parameters move towards the adapted ones: `φ ← φ + ε·mean(φ̃ − φ)`, an SGD step
//! of rate ε on the "gradient" `φ − φ̃`. The downstream-only parameters keep their values.
use peft_api::{
    sdk::MethodConfig,
    tensor::{Ctx, Tensor},
    ApiError, Manifest, Plugin, PluginKind, Priming, Result, Trainer,
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

type Vector<'c> = Vec<Tensor<'c>>;

fn call<'c>(
    ctx: &'c Ctx<'_>,
    trainer: &Trainer<'_>,
    name: &str,
    args: Value,
    inputs: Vector<'c>,
) -> Result<(Vector<'c>, Value)> {
    trainer.service(ctx, name, &args, inputs)
}

fn names(ctx: &Ctx<'_>, trainer: &Trainer<'_>, groups: &Value) -> Result<Vec<String>> {
    let v = call(ctx, trainer, "params", json!({ "groups": groups }), vec![])?.1;
    serde_json::from_value(v["names"].clone()).map_err(|e| ApiError::internal(e.to_string()))
}

impl Priming for Reptile {
    fn run(&mut self, ctx: &Ctx<'_>, trainer: &Trainer<'_>) -> Result<Value> {
        let info = call(ctx, trainer, "info", json!({}), vec![])?.1;
        let up = names(ctx, trainer, &info["upstream_groups"])?;
        let mut all = up.clone();
        for n in names(ctx, trainer, &info["downstream_groups"])? {
            if !all.contains(&n) {
                all.push(n);
            }
        }
        let bs = match self.cfg.batch_size {
            0 => info["batch_size"].as_u64().unwrap_or(16) as usize,
            n => n,
        };
        let (alpha, k_inner) = (self.cfg.inner_lr, self.cfg.inner_steps);
        let mut last: Option<f64> = None;
        let mut steps = 0;
        loop {
            let args = match last {
                Some(l) if l.is_finite() => json!({ "loss": l }),
                _ => json!({}),
            };
            let next = call(ctx, trainer, "next_step", args, vec![])?.1;
            if next["done"].as_bool() != Some(false) {
                break;
            }
            let tasks = call(
                ctx,
                trainer,
                "sample_task",
                json!({ "k": self.cfg.tasks_per_step }),
                vec![],
            )?
            .1;
            let tasks: Vec<String> = serde_json::from_value(tasks["tasks"].clone())
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let mut delta: Option<Vector<'_>> = None;
            let mut loss_sum = 0.0;
            for t in &tasks {
                let b = call(
                    ctx,
                    trainer,
                    "batch",
                    json!({ "task": t, "sizes": vec![bs; k_inner] }),
                    vec![],
                )?
                .1;
                let ids: Vec<u64> = b["batches"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_u64)
                    .collect();
                let start: Vector<'_> = all
                    .iter()
                    .map(|n| ctx.param(n)?.detach())
                    .collect::<Result<_>>()?;
                let mut theta: Vector<'_> = start
                    .iter()
                    .map(|t| t.clone().require_grad())
                    .collect::<Result<_>>()?;
                for id in &ids {
                    let (mut l, _) = call(
                        ctx,
                        trainer,
                        "loss",
                        json!({ "batch": id, "overrides": all }),
                        theta.clone(),
                    )?;
                    let l = l
                        .pop()
                        .ok_or_else(|| ApiError::internal("`loss` returned no tensor"))?;
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
            call(
                ctx,
                trainer,
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

pub struct ReptilePlugin;

impl Plugin for ReptilePlugin {
    fn manifest() -> Manifest {
        <ReptileConfig as MethodConfig>::manifest(env!("CARGO_PKG_VERSION"))
    }

    fn create_priming(config: &Value) -> Result<Box<dyn Priming>> {
        Ok(Box::new(Reptile {
            cfg: peft_api::blocks::parse_config("reptile", config)?,
        }))
    }
}

peft_api::export_plugin!(reptile, ReptilePlugin);
