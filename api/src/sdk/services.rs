//! A typed client of the host's trainer services for priming plugins: what multi-task, MAML
//! and Reptile would otherwise each write again (service calls, parameter names, task and batch
//! draws, the step loop's `next_step`). Plugin side; the services themselves are the ABI.
use serde_json::{json, Value};

use crate::{
    tensor::{Ctx, Tensor},
    ApiError, Result, Trainer,
};

/// A list of tensors treated as one vector.
pub type Vector<'c> = Vec<Tensor<'c>>;

/// The trainer services of one `run`, over the graph `ctx`.
pub struct Services<'t, 'u, 'c, 'g> {
    pub ctx: &'c Ctx<'g>,
    pub trainer: &'t Trainer<'u>,
}

fn field<T: serde::de::DeserializeOwned>(v: &Value, service: &str, key: &str) -> Result<T> {
    serde_json::from_value(v[key].clone()).map_err(|e| {
        ApiError::internal(format!(
            "trainer service `{service}` answered without a valid `{key}`: {e}"
        ))
    })
}

impl<'c> Services<'_, '_, 'c, '_> {
    /// Runs a service: its tensors and JSON answer.
    pub fn call(&self, name: &str, args: Value, inputs: Vector<'c>) -> Result<(Vector<'c>, Value)> {
        self.trainer.service(self.ctx, name, &args, inputs)
    }

    /// Runs a service that takes and returns no tensors.
    pub fn json(&self, name: &str, args: Value) -> Result<Value> {
        Ok(self.call(name, args, vec![])?.1)
    }

    /// `info`: groups, tasks, steps, batch size.
    pub fn info(&self) -> Result<Value> {
        self.json("info", json!({}))
    }

    /// Parameter names of groups.
    pub fn params(&self, groups: &Value) -> Result<Vec<String>> {
        field(
            &self.json("params", json!({ "groups": groups }))?,
            "params",
            "names",
        )
    }

    /// The stored values of parameters (tracked, when they train).
    pub fn values(&self, names: &[String]) -> Result<Vector<'c>> {
        names.iter().map(|n| self.ctx.param(n)).collect()
    }

    /// A batch's loss with `names` substituted by `values` (cloned, the caller keeps them);
    /// no names: the stored parameters.
    pub fn loss(&self, batch: u64, names: &[String], values: &[Tensor<'c>]) -> Result<Tensor<'c>> {
        let (mut t, _) = self.call(
            "loss",
            json!({ "batch": batch, "overrides": names }),
            values.to_vec(),
        )?;
        t.pop()
            .ok_or_else(|| ApiError::internal("`loss` returned no tensor"))
    }

    /// Ends the step whose loss is `loss` and begins the next: its number, or none when done.
    pub fn next_step(&self, loss: Option<f64>) -> Result<Option<usize>> {
        let args = match loss {
            Some(l) if l.is_finite() => json!({ "loss": l }),
            _ => json!({}),
        };
        let v = self.json("next_step", args)?;
        Ok(if v["done"].as_bool() == Some(false) {
            v["step"].as_u64().map(|s| s as usize)
        } else {
            None
        })
    }

    /// `k` distinct upstream task names, drawn for this step.
    pub fn sample_tasks(&self, k: usize) -> Result<Vec<String>> {
        let v = self.json("sample_task", json!({ "k": k }))?;
        let tasks: Vec<String> = field(&v, "sample_task", "tasks")?;
        if tasks.is_empty() {
            return Err(ApiError::internal("`sample_task` drew no task"));
        }
        Ok(tasks)
    }

    /// Ids of disjoint batches of `task`, one per size.
    pub fn batches(&self, task: &str, sizes: &[usize]) -> Result<Vec<u64>> {
        let v = self.json("batch", json!({ "task": task, "sizes": sizes }))?;
        let ids: Vec<u64> = field(&v, "batch", "batches")?;
        if ids.len() != sizes.len() {
            return Err(ApiError::internal(format!(
                "`batch` returned {} batches for {} sizes",
                ids.len(),
                sizes.len()
            )));
        }
        Ok(ids)
    }
}

/// A configured batch size, or the run's `training.batch_size` from `info` when it is 0.
pub fn batch_size(info: &Value, configured: usize) -> usize {
    match configured {
        0 => info["batch_size"].as_u64().unwrap_or(16) as usize,
        n => n,
    }
}
