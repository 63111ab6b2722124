//! AdamW with PyTorch's semantics (decoupled weight decay, bias correction), per parameter.
use std::collections::HashMap;

use burn::tensor::{backend::AutodiffBackend, Tensor, TensorPrimitive};
use peft_api::ApiError;

use crate::{bridge::value::ft, by_rank, params::Param};

pub use crate::params::InnerPrim;

/// An optimiser's state for a checkpoint: named tensors and per-parameter step counts.
pub type OptimState<B> = (Vec<(String, InnerPrim<B>)>, Vec<(String, usize)>);

/// The optimiser a run uses, over per-parameter updates.
pub enum Optim<B: AutodiffBackend> {
    AdamW(AdamW<B>),
    Sgd(Sgd<B>),
}

impl<B: AutodiffBackend> Optim<B> {
    pub fn new(spec: &crate::config::TrainingSpec) -> Self {
        match spec.optimizer {
            crate::config::Optimizer::Adamw => {
                Optim::AdamW(AdamW::new(spec.learning_rate, spec.weight_decay))
            }
            crate::config::Optimizer::Sgd => Optim::Sgd(Sgd::new(
                spec.learning_rate,
                spec.momentum,
                spec.weight_decay,
            )),
        }
    }

    pub fn set_lr(&mut self, lr: f64) {
        match self {
            Optim::AdamW(o) => o.lr = lr,
            Optim::Sgd(o) => o.lr = lr,
        }
    }

    /// The optimiser's state as named tensors (`<param>/m`, `<param>/v`, `<param>/buf`) and
    /// per-parameter step counts, for checkpoints.
    pub fn export(&self) -> OptimState<B> {
        let mut tensors = Vec::new();
        let mut steps = Vec::new();
        match self {
            Optim::AdamW(o) => {
                for (name, (t, m, v)) in &o.state {
                    tensors.push((format!("{name}/m"), m.clone()));
                    tensors.push((format!("{name}/v"), v.clone()));
                    steps.push((name.clone(), *t));
                }
            }
            Optim::Sgd(o) => {
                for (name, buf) in &o.state {
                    tensors.push((format!("{name}/buf"), buf.clone()));
                }
            }
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        steps.sort();
        (tensors, steps)
    }

    /// Restores what [`Optim::export`] produced.
    pub fn import(
        &mut self,
        mut tensors: HashMap<String, InnerPrim<B>>,
        steps: &[(String, usize)],
    ) -> Result<(), ApiError> {
        let missing =
            |k: &str| ApiError::invalid(format!("checkpoint: optimiser state `{k}` is missing"));
        match self {
            Optim::AdamW(o) => {
                for (name, t) in steps {
                    let m = tensors
                        .remove(&format!("{name}/m"))
                        .ok_or_else(|| missing(name))?;
                    let v = tensors
                        .remove(&format!("{name}/v"))
                        .ok_or_else(|| missing(name))?;
                    o.state.insert(name.clone(), (*t, m, v));
                }
            }
            Optim::Sgd(o) => {
                for (k, buf) in tensors {
                    if let Some(name) = k.strip_suffix("/buf") {
                        o.state.insert(name.to_string(), buf);
                    }
                }
            }
        }
        Ok(())
    }

    pub fn step(&mut self, p: &mut Param<B>, grad: InnerPrim<B>) -> Result<(), ApiError> {
        match self {
            Optim::AdamW(o) => o.step(p, grad),
            Optim::Sgd(o) => o.step(p, grad),
        }
    }
}

/// SGD with PyTorch's semantics: `g += wd * w; buf = momentum * buf + g; w -= lr * buf`.
pub struct Sgd<B: AutodiffBackend> {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    state: HashMap<String, InnerPrim<B>>,
}

impl<B: AutodiffBackend> Sgd<B> {
    pub fn new(lr: f64, momentum: f64, weight_decay: f64) -> Self {
        Sgd {
            lr,
            momentum,
            weight_decay,
            state: HashMap::new(),
        }
    }

    pub fn step(&mut self, p: &mut Param<B>, grad: InnerPrim<B>) -> Result<(), ApiError> {
        let rank = p.shape.len();
        let (lr, momentum, wd) = (self.lr, self.momentum, self.weight_decay);
        let buf = self.state.remove(&p.name);
        let (value, buf) = by_rank!(rank, |D| {
            let w = ft::<B, D>(p.value.clone()).inner();
            let mut g = Tensor::<B::InnerBackend, D>::from_primitive(TensorPrimitive::Float(grad));
            if wd > 0.0 {
                g = g + w.clone() * wd;
            }
            let step = match (momentum > 0.0, buf) {
                (true, Some(b)) => {
                    Tensor::<B::InnerBackend, D>::from_primitive(TensorPrimitive::Float(b))
                        * momentum
                        + g
                }
                _ => g,
            };
            let w = w - step.clone() * lr;
            Ok((
                Tensor::<B, D>::from_inner(w)
                    .require_grad()
                    .into_primitive()
                    .tensor(),
                step.into_primitive().tensor(),
            ))
        })?;
        p.value = value;
        if momentum > 0.0 {
            self.state.insert(p.name.clone(), buf);
        }
        Ok(())
    }
}

pub struct AdamW<B: AutodiffBackend> {
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    state: HashMap<String, (usize, InnerPrim<B>, InnerPrim<B>)>,
}

impl<B: AutodiffBackend> AdamW<B> {
    pub fn new(lr: f64, weight_decay: f64) -> Self {
        AdamW {
            lr,
            weight_decay,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            state: HashMap::new(),
        }
    }

    /// Updates `p` in place from its gradient (an inner-backend primitive).
    pub fn step(&mut self, p: &mut Param<B>, grad: InnerPrim<B>) -> Result<(), ApiError> {
        let _t = crate::nn::timing::span("adamw");
        let rank = p.shape.len();
        let (lr, wd, b1, b2, eps) = (self.lr, self.weight_decay, self.beta1, self.beta2, self.eps);
        let entry = self.state.remove(&p.name);
        let t = entry.as_ref().map_or(1, |e| e.0 + 1);
        let h = crate::nn::adamw::Hyper {
            lr,
            weight_decay: wd,
            beta1: b1,
            beta2: b2,
            eps,
            t,
        };
        // One pass on the CPU backend; the composed ops below elsewhere (the same values).
        let (grad, entry) = match crate::nn::adamw::adamw_step::<B>(
            &p.value,
            grad,
            entry.map(|(_, m, v)| (m, v)),
            h,
        ) {
            Ok((value, m, v)) => {
                p.value = value;
                self.state.insert(p.name.clone(), (t, m, v));
                return Ok(());
            }
            Err(back) => back,
        };
        let (m, v, value) = by_rank!(rank, |D| {
            let w = ft::<B, D>(p.value.clone()).inner();
            let g = Tensor::<B::InnerBackend, D>::from_primitive(TensorPrimitive::Float(grad));
            let (m, v) = match entry {
                Some((m, v)) => (
                    Tensor::<B::InnerBackend, D>::from_primitive(TensorPrimitive::Float(m)),
                    Tensor::<B::InnerBackend, D>::from_primitive(TensorPrimitive::Float(v)),
                ),
                None => (g.zeros_like(), g.zeros_like()),
            };
            let m = m * b1 + g.clone() * (1.0 - b1);
            let v = v * b2 + g.powf_scalar(2.0) * (1.0 - b2);
            let mhat = m.clone() / (1.0 - b1.powi(t as i32));
            let vhat = v.clone() / (1.0 - b2.powi(t as i32));
            let w = if wd > 0.0 {
                w.clone() - w * (lr * wd)
            } else {
                w
            };
            let w = w - mhat / (vhat.sqrt() + eps) * lr;
            let value = Tensor::<B, D>::from_inner(w)
                .require_grad()
                .into_primitive()
                .tensor();
            Ok((
                m.into_primitive().tensor(),
                v.into_primitive().tensor(),
                value,
            ))
        })?;
        p.value = value;
        self.state.insert(p.name.clone(), (t, m, v));
        Ok(())
    }
}

/// Adds one micro-batch's gradients to the running sums, per trainable parameter (both the
/// per-task and the mixed-batch loops).
pub(super) fn accumulate<B: AutodiffBackend>(
    model: &crate::model::Model<B>,
    grads: &B::Gradients,
    summed: &mut [Option<InnerPrim<B>>],
) -> anyhow::Result<()> {
    let store = model.params.borrow();
    for (slot, p) in summed.iter_mut().zip(store.trainable()) {
        let rank = p.shape.len();
        let g = by_rank!(rank, |D| Ok(ft::<B, D>(p.value.clone())
            .grad(grads)
            .map(|g| g.into_primitive().tensor())))?;
        if let Some(g) = g {
            *slot = Some(match slot.take() {
                Some(prev) => add_inner::<B>(prev, g, rank)?,
                None => g,
            });
        }
    }
    Ok(())
}

fn add_inner<B: AutodiffBackend>(
    a: InnerPrim<B>,
    b: InnerPrim<B>,
    rank: usize,
) -> anyhow::Result<InnerPrim<B>> {
    use burn::tensor::TensorPrimitive;
    type I<B> = <B as AutodiffBackend>::InnerBackend;
    Ok(by_rank!(rank, |D| Ok((Tensor::<I<B>, D>::from_primitive(
        TensorPrimitive::Float(a)
    )
        + Tensor::<I<B>, D>::from_primitive(
            TensorPrimitive::Float(b)
        ))
    .into_primitive()
    .tensor()))?)
}

/// Scales all gradients so that their global L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`, with its 1e-6 in the denominator).
pub(super) fn clip_global_norm<B: AutodiffBackend>(
    grads: &mut [Option<InnerPrim<B>>],
    max_norm: f64,
) -> anyhow::Result<()> {
    use burn::tensor::{TensorMetadata, TensorPrimitive};
    type I<B> = <B as AutodiffBackend>::InnerBackend;
    let mut sq = 0.0f64;
    for g in grads.iter().flatten() {
        let n = g.shape().num_elements();
        let flat =
            Tensor::<I<B>, 1>::from_primitive(TensorPrimitive::Float(g.clone())).reshape([n]);
        sq +=
            burn::tensor::ElementConversion::elem::<f64>(flat.powf_scalar(2.0).sum().into_scalar());
    }
    let scale = max_norm / (sq.sqrt() + 1e-6);
    if scale < 1.0 {
        for g in grads.iter_mut() {
            if let Some(x) = g.take() {
                let rank = x.shape().num_dims();
                *g = Some(by_rank!(rank, |D| Ok((Tensor::<I<B>, D>::from_primitive(
                    TensorPrimitive::Float(x)
                ) * scale)
                    .into_primitive()
                    .tensor()))?);
            }
        }
    }
    Ok(())
}

/// Linear warmup to `lr`, then linear decay to zero at `total`.
pub fn schedule(lr: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if warmup > 0 && step <= warmup {
        return lr * step as f64 / warmup as f64;
    }
    if total <= warmup {
        return lr;
    }
    lr * (total - step) as f64 / (total - warmup) as f64
}

#[cfg(test)]
#[path = "tests/optim.rs"]
mod tests;
