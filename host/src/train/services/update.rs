//! The `loss` and `step` services: one batch's loss under parameter overrides (what MAML's
//! inner steps and Reptile's copies need), and an optimiser update from gradients the plugin
//! passes or from a loss it hands back for the host to backpropagate.
use std::collections::HashMap;

use burn::tensor::{backend::AutodiffBackend, Tensor};
use peft_api::ApiError;
use serde_json::{json, Value as Json};

use super::{args::*, step_seed, Services};
use crate::{
    bridge::{
        value::{ft, FloatPrim},
        Value,
    },
    by_rank,
    data::Example,
    heads::per_example_loss,
    train::{
        optim::{AdamW, InnerPrim, Optim, Sgd},
        TaskRun,
    },
};

impl<B: AutodiffBackend> Services<'_, '_, B> {
    pub(super) fn loss(
        &self,
        a: LossArgs,
        inputs: Vec<Value<B>>,
    ) -> Result<(Value<B>, Json), ApiError> {
        let (ti, idx) = self
            .state
            .borrow()
            .batches
            .get(&a.batch)
            .cloned()
            .ok_or_else(|| {
                bad(
                    "loss",
                    format!(
                        "batch #{} is not live (batches expire at `next_step`)",
                        a.batch
                    ),
                )
            })?;
        if a.overrides.len() != inputs.len() {
            return Err(bad(
                "loss",
                format!(
                    "{} override names but {} tensors",
                    a.overrides.len(),
                    inputs.len()
                ),
            ));
        }
        let mut overrides = HashMap::new();
        {
            let store = self.model.params.borrow();
            for (name, v) in a.overrides.iter().zip(inputs) {
                let p = store.get(name).ok_or_else(|| {
                    bad("loss", format!("override of unknown parameter `{name}`"))
                })?;
                let Value::Float(v) = v else {
                    return Err(bad(
                        "loss",
                        format!("override of `{name}` is an int tensor"),
                    ));
                };
                let shape = shape_of::<B>(&v);
                if shape != p.shape {
                    return Err(ApiError::shape(format!(
                        "trainer service `loss`: override of `{name}` has shape {shape:?}, the parameter {:?}",
                        p.shape
                    )));
                }
                overrides.insert(name.clone(), v);
            }
        }
        let run = &self.tasks[ti];
        let batch: Vec<&Example> = idx.iter().map(|&i| &run.task.train[i]).collect();
        // The same batch draws the same dropout masks every time it is evaluated within a step
        // (inner steps, the finite-difference pair of a second-order step).
        let step = self.state.borrow().done + 1;
        B::seed(
            &self.device,
            step_seed(self.cfg.seed, step).wrapping_add(a.batch.wrapping_mul(0x2545_F491)),
        );
        let old = std::mem::replace(&mut *self.graph.overrides.borrow_mut(), overrides);
        let result = self.forward_loss(run, &batch);
        *self.graph.overrides.borrow_mut() = old;
        let loss = result.map_err(|e| {
            ApiError::invalid(format!(
                "trainer service `loss` on task `{}`: {e:#}",
                run.task.name
            ))
        })?;
        let value = loss
            .clone()
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| ApiError::internal(format!("{e:?}")))?[0];
        Ok((
            Value::Float(loss.into_primitive().tensor()),
            json!({ "loss": value, "task": run.task.name, "examples": batch.len() }),
        ))
    }

    fn forward_loss(&self, run: &TaskRun<'_>, batch: &[&Example]) -> anyhow::Result<Tensor<B, 1>> {
        let t = &self.cfg.training;
        self.graph.aux_losses.borrow_mut().clear();
        let out = run.head.forward(
            self.model,
            self.graph,
            run.task,
            batch,
            t.max_length,
            &self.device,
        )?;
        let loss = per_example_loss(out, batch, t.label_smoothing, &self.device).mean();
        Ok(self.graph.with_aux_losses(loss))
    }

    pub(super) fn step(&self, a: StepArgs, inputs: Vec<Value<B>>) -> Result<Json, ApiError> {
        if !(a.lr.is_finite() && a.lr >= 0.0) {
            return Err(bad(
                "step",
                format!("lr = {} is not a finite, non-negative number", a.lr),
            ));
        }
        let group_names = self.group_names("step", &a.groups)?;
        let names = match a.names {
            Some(n) => {
                for x in &n {
                    if !group_names.contains(x) {
                        return Err(bad(
                            "step",
                            format!("parameter `{x}` is not in groups {:?}", a.groups),
                        ));
                    }
                }
                n
            }
            None => group_names,
        };
        let grads: Vec<Option<InnerPrim<B>>> = if a.from_loss {
            if inputs.len() != 1 {
                return Err(bad(
                    "step",
                    format!("`from_loss` takes one loss tensor, got {}", inputs.len()),
                ));
            }
            let Some(Value::Float(loss)) = inputs.into_iter().next() else {
                return Err(bad("step", "the loss is an int tensor"));
            };
            let shape = shape_of::<B>(&loss);
            if shape.iter().product::<usize>() != 1 {
                return Err(bad(
                    "step",
                    format!("the loss has shape {shape:?}, not one element"),
                ));
            }
            let loss: Tensor<B, 1> = by_rank!(shape.len(), |D| Ok(ft::<B, D>(loss).reshape([1])))?;
            let grads = loss.backward();
            let store = self.model.params.borrow();
            names
                .iter()
                .map(|n| {
                    let p = store.get(n).ok_or_else(|| gone(n))?;
                    by_rank!(p.shape.len(), |D| Ok(ft::<B, D>(p.value.clone())
                        .grad(&grads)
                        .map(|g| g.into_primitive().tensor())))
                })
                .collect::<Result<_, ApiError>>()?
        } else {
            if inputs.len() != names.len() {
                return Err(bad(
                    "step",
                    format!("{} gradients for {} parameters", inputs.len(), names.len()),
                ));
            }
            let store = self.model.params.borrow();
            names
                .iter()
                .zip(inputs)
                .map(|(n, v)| {
                    let Value::Float(g) = v else {
                        return Err(bad("step", format!("gradient of `{n}` is an int tensor")));
                    };
                    let shape = shape_of::<B>(&g);
                    let want = &store.get(n).ok_or_else(|| gone(n))?.shape;
                    if &shape != want {
                        return Err(ApiError::shape(format!(
                            "trainer service `step`: gradient of `{n}` has shape {shape:?}, the parameter {want:?}"
                        )));
                    }
                    Ok(Some(inner_of::<B>(g)?))
                })
                .collect::<Result<_, ApiError>>()?
        };
        let key = format!("{}:{}", a.optimizer, a.groups.join("+"));
        let mut st = self.state.borrow_mut();
        let opt = match st.optims.get_mut(&key) {
            Some(o) => o,
            None => {
                let o = match a.optimizer.as_str() {
                    "adam" | "adamw" => Optim::AdamW(AdamW::new(a.lr, a.weight_decay)),
                    "sgd" => Optim::Sgd(Sgd::new(a.lr, 0.0, a.weight_decay)),
                    other => {
                        return Err(bad(
                            "step",
                            format!("unknown optimizer `{other}` (adam, sgd)"),
                        ))
                    }
                };
                st.optims.entry(key.clone()).or_insert(o)
            }
        };
        opt.set_lr(a.lr);
        let by_name: HashMap<&str, InnerPrim<B>> = names
            .iter()
            .map(String::as_str)
            .zip(grads)
            .filter_map(|(n, g)| g.map(|g| (n, g)))
            .collect();
        let mut updated = 0;
        let mut by_name = by_name;
        let mut store = self.model.params.borrow_mut();
        for p in store.trainable_mut() {
            if let Some(g) = by_name.remove(p.name.as_str()) {
                opt.step(p, g)?;
                updated += 1;
            }
        }
        if let Some(n) = by_name.keys().next() {
            return Err(bad(
                "step",
                format!("parameter `{n}` is not trainable in this run (set the priming groups)"),
            ));
        }
        Ok(json!({ "updated": updated, "optimizer": key }))
    }
}

/// A parameter listed by `group_names` that the store no longer has (a bug, not bad input).
fn gone(name: &str) -> ApiError {
    ApiError::internal(format!(
        "parameter `{name}` left the store during a trainer service"
    ))
}

pub(super) fn shape_of<B: AutodiffBackend>(p: &FloatPrim<B>) -> Vec<usize> {
    use burn::tensor::TensorMetadata;
    p.shape().to_vec()
}

fn inner_of<B: AutodiffBackend>(g: FloatPrim<B>) -> Result<InnerPrim<B>, ApiError> {
    let rank = shape_of::<B>(&g).len();
    by_rank!(rank, |D| Ok(ft::<B, D>(g)
        .inner()
        .into_primitive()
        .tensor()))
}
