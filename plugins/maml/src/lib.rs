//! MAML priming (Finn et al., 2017) over the host's trainer services: per task, `inner_steps`
//! SGD steps on a support batch over the *downstream* groups (as substituted parameters, the
//! stored ones untouched), the query loss under the adapted parameters, and an outer step on
//! the *upstream* groups with the meta-gradient.
//!
//! `first_order: true` is FOMAML. The full second-order meta-gradient needs Hessian-vector
//! products, and burn has no double backward, so they come from central finite differences of
//! gradients: `H·v ≈ |v| (∇L(θ + εu) − ∇L(θ − εu)) / 2ε` with `u = v/|v|`, two extra support
//! passes per inner step. With `θ_{k+1} = θ_k − α∇_θ L_s(φ, θ_k)`, `v_K = ∂L_q/∂θ_K` and
//! `g_φ = ∂L_q/∂φ`, going back from `k = K−1` to 0:
//!
//! ```text
//! g_φ  -= α · ∂²L_s/∂φ∂θ (φ, θ_k) · v_{k+1}
//! v_k   = v_{k+1} − α · ∂²L_s/∂θ² (φ, θ_k) · v_{k+1}
//! ```
//!
//! A parameter in both the upstream and the downstream groups gets `v_0` (FOMAML: `v_K`).
//! The error of the approximation against an exact second-order gradient is measured in
//! `tests/priming_numerics.rs` (and tabulated in docs/plugin-authoring.md).
pub use peft_api::sdk::{Services, Vector};
use peft_api::{
    sdk::{batch_size, MethodConfig},
    tensor::{Ctx, Tensor},
    ApiError, PluginKind, Priming, Result, Trainer,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// MAML settings; defaults follow the thesis (inner lr 5e-4, outer lr 1e-5 with Adam).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MamlConfig {
    /// Inner SGD steps on the support batch.
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub inner_steps: usize,
    /// Inner SGD learning rate α.
    #[serde(default = "default_inner_lr")]
    pub inner_lr: f64,
    /// Outer learning rate (Adam unless `outer_optimizer` says otherwise).
    #[serde(default = "default_outer_lr")]
    pub outer_lr: f64,
    /// `adam` or `sgd`.
    #[serde(default = "default_optimizer")]
    pub outer_optimizer: String,
    /// FOMAML: drop the second-order terms.
    #[serde(default)]
    pub first_order: bool,
    /// Tasks per outer step (their meta-gradients are averaged).
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub tasks_per_step: usize,
    /// Support and query batch sizes (0: the run's `training.batch_size`).
    #[serde(default)]
    pub support_size: usize,
    #[serde(default)]
    pub query_size: usize,
    /// Step ε of the finite-difference Hessian-vector products (along a unit direction).
    #[serde(default = "default_eps")]
    pub fd_epsilon: f64,
}

fn one() -> usize {
    1
}
fn default_inner_lr() -> f64 {
    5e-4
}
fn default_outer_lr() -> f64 {
    1e-5
}
fn default_optimizer() -> String {
    "adam".into()
}
fn default_eps() -> f64 {
    1e-2
}

/// Scalar value of a one-element tensor.
pub fn scalar(t: &Tensor<'_>) -> Result<f64> {
    Ok(t.to_vec()?.first().copied().unwrap_or(f32::NAN) as f64)
}

/// Σ ⟨a_i, b_i⟩.
pub fn dot<'c>(a: &[Tensor<'c>], b: &[Tensor<'c>]) -> Result<f64> {
    let mut s = 0.0;
    for (x, y) in a.iter().zip(b) {
        s += scalar(&x.clone().mul(y.clone())?.sum()?)?;
    }
    Ok(s)
}

/// `a + s·b`, elementwise over the list.
pub fn axpy<'c>(a: &[Tensor<'c>], s: f64, b: &[Tensor<'c>]) -> Result<Vector<'c>> {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.clone().add(y.clone().mul_scalar(s)?))
        .collect()
}

fn leaves<'c>(v: Vector<'c>) -> Result<Vector<'c>> {
    v.into_iter().map(|t| t.require_grad()).collect()
}

/// The meta-gradient of one task, per upstream parameter name.
pub struct TaskGrad<'c> {
    pub grads: Vector<'c>,
    pub query_loss: f64,
}

/// MAML's meta-gradient for one support/query pair. `up` are the upstream names, `down` the
/// downstream ones (they may overlap).
pub fn meta_gradient<'c>(
    s: &Services<'_, '_, 'c, '_>,
    cfg: &MamlConfig,
    up: &[String],
    down: &[String],
    support: u64,
    query: u64,
) -> Result<TaskGrad<'c>> {
    let ctx = s.ctx;
    let alpha = cfg.inner_lr;
    // The upstream parameters that are not substituted: their gradients flow from the stored
    // values; the shared ones get the downstream vector v.
    let up_only: Vec<String> = up.iter().filter(|n| !down.contains(n)).cloned().collect();
    let mut thetas: Vec<Vector<'c>> = vec![leaves(
        s.values(down)?
            .into_iter()
            .map(|t| t.detach())
            .collect::<Result<_>>()?,
    )?];
    for _ in 0..cfg.inner_steps {
        let cur = thetas.last().expect("θ_0");
        let l = s.loss(support, down, cur)?;
        let g = ctx.grad(l, cur.clone())?;
        let next = leaves(axpy(cur, -alpha, &g)?)?;
        thetas.push(next);
    }
    let theta_k = thetas.last().expect("θ_K");
    let lq = s.loss(query, down, theta_k)?;
    let query_loss = scalar(&lq)?;
    let mut wrt = s.values(&up_only)?;
    wrt.extend(theta_k.iter().cloned());
    let mut g = ctx.grad(lq, wrt)?;
    let mut v: Vector<'c> = g.split_off(up_only.len());
    let mut g_up: Vector<'c> = g;
    if !cfg.first_order {
        for k in (0..cfg.inner_steps).rev() {
            let norm = dot(&v, &v)?.sqrt();
            if norm == 0.0 || !norm.is_finite() {
                continue;
            }
            let eps = cfg.fd_epsilon;
            let side = |sign: f64| -> Result<Vector<'c>> {
                let shifted = leaves(axpy(&thetas[k], sign * eps / norm, &v)?)?;
                let l = s.loss(support, down, &shifted)?;
                let mut wrt = s.values(&up_only)?;
                wrt.extend(shifted);
                ctx.grad(l, wrt)
            };
            let plus = side(1.0)?;
            let minus = side(-1.0)?;
            // H·v ≈ |v| (g+ − g−) / 2ε, for the [upstream-only; downstream] blocks at once.
            let scale = norm / (2.0 * eps);
            let hv: Vector<'c> = plus
                .into_iter()
                .zip(minus)
                .map(|(p, m)| p.sub(m)?.mul_scalar(scale))
                .collect::<Result<_>>()?;
            let (h_up, h_down) = {
                let mut hv = hv;
                let h_down = hv.split_off(up_only.len());
                (hv, h_down)
            };
            g_up = axpy(&g_up, -alpha, &h_up)?;
            v = axpy(&v, -alpha, &h_down)?;
        }
    }
    // In the order of `up`: upstream-only from g_up, shared from v.
    let mut grads = Vec::with_capacity(up.len());
    let mut it_up = g_up.into_iter();
    for n in up {
        match down.iter().position(|d| d == n) {
            Some(i) => grads.push(v[i].clone()),
            None => grads.push(it_up.next().expect("one per upstream-only name")),
        }
    }
    Ok(TaskGrad { grads, query_loss })
}

pub struct Maml {
    pub cfg: MamlConfig,
}

impl Priming for Maml {
    fn run(&mut self, ctx: &Ctx<'_>, trainer: &Trainer<'_>) -> Result<Value> {
        let s = Services { ctx, trainer };
        let info = s.info()?;
        let up = s.params(&info["upstream_groups"])?;
        let down = s.params(&info["downstream_groups"])?;
        if up.is_empty() || down.is_empty() {
            return Err(ApiError::config(
                "maml needs parameters in both the upstream and the downstream groups",
            ));
        }
        let sizes = [
            batch_size(&info, self.cfg.support_size),
            batch_size(&info, self.cfg.query_size),
        ];
        let mut last = None;
        let mut steps = 0;
        while let Some(_step) = s.next_step(last)? {
            let tasks = s.sample_tasks(self.cfg.tasks_per_step)?;
            let mut sum: Option<Vector<'_>> = None;
            let mut loss = 0.0;
            for t in &tasks {
                let ids = s.batches(t, &sizes)?;
                let g = meta_gradient(&s, &self.cfg, &up, &down, ids[0], ids[1])?;
                loss += g.query_loss;
                sum = Some(match sum {
                    None => g.grads,
                    Some(acc) => axpy(&acc, 1.0, &g.grads)?,
                });
            }
            let k = tasks.len() as f64;
            let grads: Vector<'_> = sum
                .ok_or_else(|| ApiError::internal("no task sampled"))?
                .into_iter()
                .map(|t| t.mul_scalar(1.0 / k))
                .collect::<Result<_>>()?;
            s.call(
                "step",
                json!({ "groups": info["upstream_groups"], "names": up, "lr": self.cfg.outer_lr, "optimizer": self.cfg.outer_optimizer }),
                grads,
            )?;
            last = Some(loss / k);
            steps += 1;
        }
        Ok(
            json!({ "algorithm": if self.cfg.first_order { "fomaml" } else { "maml" }, "steps": steps, "last_query_loss": last }),
        )
    }
}

impl MethodConfig for MamlConfig {
    const NAME: &'static str = "maml";
    const DESCRIPTION: &'static str = "MAML priming: inner SGD on the downstream groups, outer step on the upstream groups; second order by finite-difference Hessian-vector products, or first order (FOMAML)";
    const GROUPS: &'static [&'static str] = &[];
    const KIND: PluginKind = PluginKind::Priming;

    fn validate(&self) -> Result<()> {
        if !(self.fd_epsilon > 0.0 && self.fd_epsilon.is_finite()) {
            return Err(ApiError::config(format!(
                "maml: fd_epsilon = {} must be positive",
                self.fd_epsilon
            )));
        }
        if !matches!(self.outer_optimizer.as_str(), "adam" | "sgd") {
            return Err(ApiError::config(format!(
                "maml: outer_optimizer `{}` is not adam or sgd",
                self.outer_optimizer
            )));
        }
        Ok(())
    }
}

peft_api::priming_plugin!(maml, MamlPlugin, MamlConfig => |cfg| Maml { cfg });
