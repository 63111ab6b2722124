//! Focal priming: a third-party priming algorithm, built against `peft-api` only and loaded
//! from a plugin folder. Each step samples K upstream tasks and takes one step on the upstream
//! groups with the task losses weighted by `softmax(loss / temperature)` (the weights are
//! constants): tasks the model finds hard get more of the step.
use peft_api::{
    tensor::Ctx, ApiError, Manifest, Plugin, PluginKind, Priming, Result, Trainer,
};
use serde_json::{json, Value};

struct Focal {
    tasks_per_step: usize,
    temperature: f64,
    learning_rate: f64,
}

impl Priming for Focal {
    fn run(&mut self, ctx: &Ctx<'_>, trainer: &Trainer<'_>) -> Result<Value> {
        let (_, info) = trainer.service(ctx, "info", &json!({}), vec![])?;
        let k = self.tasks_per_step.min(info["tasks"].as_array().map_or(1, |a| a.len()));
        let mut last = json!({});
        let mut steps = 0;
        loop {
            let (_, next) = trainer.service(ctx, "next_step", &last, vec![])?;
            if next["done"] != json!(false) {
                break;
            }
            let (_, tasks) = trainer.service(ctx, "sample_task", &json!({ "k": k }), vec![])?;
            let mut losses = Vec::new();
            for t in tasks["tasks"].as_array().into_iter().flatten() {
                let (_, b) = trainer.service(ctx, "batch", &json!({ "task": t }), vec![])?;
                let (mut l, v) = trainer.service(ctx, "loss", &json!({ "batch": b["batches"][0] }), vec![])?;
                let l = l.pop().ok_or_else(|| ApiError::internal("no loss"))?;
                losses.push((l, v["loss"].as_f64().unwrap_or(0.0)));
            }
            let max = losses.iter().map(|x| x.1).fold(f64::MIN, f64::max);
            let w: Vec<f64> = losses.iter().map(|x| ((x.1 - max) / self.temperature).exp()).collect();
            let z: f64 = w.iter().sum();
            let mut total = None;
            let mut mean = 0.0;
            for ((l, v), w) in losses.into_iter().zip(&w) {
                mean += v * w / z;
                let term = l.mul_scalar(w / z)?;
                total = Some(match total {
                    None => term,
                    Some(acc) => term.add(acc)?,
                });
            }
            let total = total.ok_or_else(|| ApiError::internal("no task"))?;
            trainer.service(
                ctx,
                "step",
                &json!({ "groups": info["upstream_groups"], "from_loss": true, "lr": self.learning_rate }),
                vec![total],
            )?;
            last = json!({ "loss": mean });
            steps += 1;
        }
        Ok(json!({ "algorithm": "focal", "steps": steps }))
    }
}

struct FocalPlugin;

impl Plugin for FocalPlugin {
    fn manifest() -> Manifest {
        Manifest {
            name: "focal-priming".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Priming,
            api_version: String::new(),
            description: "Multi-task priming with tasks weighted by softmax(loss / T)".into(),
            config_schema: json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "tasks_per_step": { "type": "integer", "minimum": 1 },
                    "temperature": { "type": "number", "exclusiveMinimum": 0 },
                    "learning_rate": { "type": "number", "minimum": 0 }
                }
            }),
            groups: vec![],
        }
    }

    fn create_priming(config: &Value) -> Result<Box<dyn Priming>> {
        let get = |k: &str, d: f64| config.get(k).and_then(Value::as_f64).unwrap_or(d);
        Ok(Box::new(Focal {
            tasks_per_step: get("tasks_per_step", 2.0) as usize,
            temperature: get("temperature", 1.0),
            learning_rate: get("learning_rate", 1e-3),
        }))
    }
}

peft_api::export_plugin!(focal_priming, FocalPlugin);
