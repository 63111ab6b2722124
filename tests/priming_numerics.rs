//! The MAML plugin's meta-gradient against an exact one, on a problem with a closed form.
//!
//! A test trainer (implementing the host's `TrainerAbi`) offers one task whose loss is a
//! logistic regression with weights `w = φ + θ` (φ in group `up`, θ in group `down`):
//! `L_s = mean softplus(−y·Xw) + λ/2·|θ|²` on the support set, `L_q = mean softplus(−y·Xw)` on
//! the query set. Its gradient and Hessian are analytic (`H = mean s(1−s) x xᵀ`), so the
//! second-order MAML gradient is computed exactly in f64 by the chain rule, and checked once
//! more by finite differences of the whole meta-objective in f64. The plugin runs the same
//! code it runs on MiniLM, through the op API in f32, with finite-difference Hessian-vector
//! products.
use std::cell::RefCell;

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RResult, RStr, RVec},
};
use burn::tensor::{Tensor, TensorData};
use peft_api::{
    tensor::Ctx, ApiError, GraphRef, Init, OpOutput, TensorHandle, Trainer, TrainerAbi,
    TrainerAbi_TO, Values,
};
use peft_host::{
    bridge::{value::ft, HostGraph, Value},
    params::ParamStore,
};
use peft_tests::B;
use serde_json::{json, Value as Json};

const M: usize = 4;
const LAMBDA: f64 = 0.1;

struct Problem {
    /// (X rows, y) of the support and the query set.
    support: (Vec<[f64; M]>, Vec<f64>),
    query: (Vec<[f64; M]>, Vec<f64>),
    phi: [f64; M],
    theta: [f64; M],
}

fn problem() -> Problem {
    // A fixed, irregular data set (no RNG: the numbers are the test).
    let xs = |k: f64| -> Vec<[f64; M]> {
        (0..8)
            .map(|i| {
                let i = i as f64;
                [
                    (1.3 * i + k).sin(),
                    (0.7 * i - k).cos(),
                    0.5 * (i * 0.37 + k).sin() + 0.2,
                    ((i + 1.0) * 0.9 * k).cos() - 0.1,
                ]
            })
            .collect()
    };
    let ys = |k: f64| -> Vec<f64> {
        (0..8)
            .map(|i| {
                if ((i as f64) * 2.1 + k).sin() > 0.0 {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect()
    };
    Problem {
        support: (xs(0.3), ys(0.3)),
        query: (xs(1.7), ys(1.1)),
        phi: [0.4, -0.3, 0.8, 0.1],
        theta: [-0.2, 0.5, 0.05, -0.6],
    }
}

fn sigmoid(t: f64) -> f64 {
    1.0 / (1.0 + (-t).exp())
}

/// Gradient and Hessian of mean softplus(−y·x·w) at w.
fn logistic(data: &(Vec<[f64; M]>, Vec<f64>), w: &[f64; M]) -> (f64, [f64; M], [[f64; M]; M]) {
    let n = data.0.len() as f64;
    let (mut l, mut g, mut h) = (0.0, [0.0; M], [[0.0; M]; M]);
    for (x, &y) in data.0.iter().zip(&data.1) {
        let t: f64 = (0..M).map(|j| x[j] * w[j]).sum();
        let s = sigmoid(-y * t);
        l += (1.0 + (-y * t).exp()).ln() / n;
        for j in 0..M {
            g[j] += -y * s * x[j] / n;
            for k in 0..M {
                h[j][k] += s * (1.0 - s) * x[j] * x[k] / n;
            }
        }
    }
    (l, g, h)
}

fn add(a: &[f64; M], b: &[f64; M]) -> [f64; M] {
    std::array::from_fn(|j| a[j] + b[j])
}

fn matvec(h: &[[f64; M]; M], v: &[f64; M]) -> [f64; M] {
    std::array::from_fn(|j| (0..M).map(|k| h[j][k] * v[k]).sum())
}

/// The inner loop's iterates θ_0..θ_K.
fn inner(p: &Problem, phi: &[f64; M], theta: &[f64; M], alpha: f64, k: usize) -> Vec<[f64; M]> {
    let mut out = vec![*theta];
    for _ in 0..k {
        let th = *out.last().unwrap();
        let (_, g, _) = logistic(&p.support, &add(phi, &th));
        out.push(std::array::from_fn(|j| {
            th[j] - alpha * (g[j] + LAMBDA * th[j])
        }));
    }
    out
}

/// Exact meta-gradients (dL_q/dφ, dL_q/dθ_0), second order or first order.
fn exact(p: &Problem, alpha: f64, k: usize, first_order: bool) -> ([f64; M], [f64; M]) {
    let thetas = inner(p, &p.phi, &p.theta, alpha, k);
    let (_, gq, _) = logistic(&p.query, &add(&p.phi, &thetas[k]));
    let (mut g_phi, mut v) = (gq, gq);
    if !first_order {
        for th in thetas[..k].iter().rev() {
            let (_, _, h) = logistic(&p.support, &add(&p.phi, th));
            let hv = matvec(&h, &v);
            g_phi = std::array::from_fn(|j| g_phi[j] - alpha * hv[j]);
            v = std::array::from_fn(|j| v[j] - alpha * (hv[j] + LAMBDA * v[j]));
        }
    }
    (g_phi, v)
}

/// The meta-objective itself, for an f64 finite-difference check of `exact`.
fn meta_objective(p: &Problem, phi: &[f64; M], theta: &[f64; M], alpha: f64, k: usize) -> f64 {
    let thetas = inner(p, phi, theta, alpha, k);
    logistic(&p.query, &add(phi, &thetas[k])).0
}

/// A trainer offering the closed-form task; it records the gradients `step` receives.
struct TestTrainer<'g, 'p> {
    graph: &'g HostGraph<'p, B>,
    p: Problem,
    steps_left: RefCell<usize>,
    got: RefCell<Vec<(String, Vec<f32>)>>,
}

fn tensor2(rows: &[[f64; M]]) -> Tensor<B, 2> {
    let v: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, [rows.len(), M]), &Default::default())
}

impl TestTrainer<'_, '_> {
    fn loss(
        &self,
        batch: u64,
        names: Vec<String>,
        inputs: Vec<Value<B>>,
    ) -> Result<Value<B>, ApiError> {
        let mut phi = ft::<B, 1>(self.graph.param_value("phi")?);
        let mut theta = ft::<B, 1>(self.graph.param_value("theta")?);
        for (n, v) in names.iter().zip(inputs) {
            let Value::Float(v) = v else { panic!("int") };
            match n.as_str() {
                "theta" => theta = ft::<B, 1>(v),
                "phi" => phi = ft::<B, 1>(v),
                other => panic!("override {other}"),
            }
        }
        let (data, reg) = if batch == 1 {
            (&self.p.support, LAMBDA)
        } else {
            (&self.p.query, 0.0)
        };
        let x = tensor2(&data.0);
        let y = Tensor::<B, 1>::from_data(
            TensorData::new(
                data.1.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                [data.1.len()],
            ),
            &Default::default(),
        );
        let w = (phi + theta.clone()).reshape([M, 1]);
        let t = x.matmul(w).reshape([data.1.len()]);
        let z = -(y * t);
        let mut l = (z.exp() + 1.0).log().mean();
        if reg > 0.0 {
            l = l + theta.powf_scalar(2.0).sum() * (reg / 2.0);
        }
        Ok(Value::Float(l.into_primitive().tensor()))
    }

    fn serve(
        &self,
        name: &str,
        args: Json,
        inputs: Vec<TensorHandle>,
    ) -> Result<OpOutput, ApiError> {
        let inputs: Vec<Value<B>> = inputs
            .into_iter()
            .map(|h| self.graph.take(h))
            .collect::<Result<_, _>>()?;
        let mut tensors = vec![];
        let out = match name {
            "info" => {
                json!({ "upstream_groups": ["up", "down"], "downstream_groups": ["down"], "batch_size": 8 })
            }
            "params" => {
                let groups: Vec<String> = serde_json::from_value(args["groups"].clone()).unwrap();
                let names: Vec<&str> = groups
                    .iter()
                    .map(|g| if g == "up" { "phi" } else { "theta" })
                    .collect();
                json!({ "names": names })
            }
            "next_step" => {
                let mut left = self.steps_left.borrow_mut();
                if *left == 0 {
                    json!({ "done": true })
                } else {
                    *left -= 1;
                    json!({ "done": false, "step": 1 })
                }
            }
            "sample_task" => json!({ "tasks": ["closed-form"] }),
            "batch" => json!({ "batches": [1, 2] }),
            "loss" => {
                let names: Vec<String> =
                    serde_json::from_value(args["overrides"].clone()).unwrap_or_default();
                tensors.push(self.graph.insert(self.loss(
                    args["batch"].as_u64().unwrap(),
                    names,
                    inputs,
                )?));
                json!({})
            }
            "step" => {
                let names: Vec<String> = serde_json::from_value(args["names"].clone()).unwrap();
                for (n, v) in names.into_iter().zip(inputs) {
                    let Value::Float(v) = v else { panic!("int") };
                    let data = ft::<B, 1>(v)
                        .into_data()
                        .convert::<f32>()
                        .into_vec()
                        .unwrap();
                    self.got.borrow_mut().push((n, data));
                }
                json!({})
            }
            other => return Err(ApiError::unsupported(other.to_string())),
        };
        Ok(OpOutput {
            tensors: tensors.into(),
            values: Values {
                text: out.to_string().into(),
                ..Values::default()
            },
        })
    }
}

impl TrainerAbi for TestTrainer<'_, '_> {
    fn service(
        &self,
        _graph: GraphRef<'_>,
        name: RStr<'_>,
        json: RStr<'_>,
        inputs: RVec<TensorHandle>,
    ) -> RResult<OpOutput, ApiError> {
        let args: Json = serde_json::from_str(json.as_str()).unwrap_or(Json::Null);
        self.serve(name.as_str(), args, inputs.into_vec()).into()
    }
}

/// Runs the maml plugin for one outer step; returns the gradients it passed to `step`.
fn plugin_meta_gradient(alpha: f64, k: usize, first_order: bool, eps: f64) -> ([f64; M], [f64; M]) {
    let p = problem();
    let store = RefCell::new(ParamStore::<B>::new(Default::default(), 0));
    {
        let mut s = store.borrow_mut();
        let data = |v: &[f64; M]| Init::Data {
            values: v.iter().map(|&x| x as f32).collect(),
        };
        s.create("phi", "up", "test", &[M], &data(&p.phi)).unwrap();
        s.create("theta", "down", "test", &[M], &data(&p.theta))
            .unwrap();
        s.set_trainable(&["up".into(), "down".into()], &[]).unwrap();
    }
    let graph = HostGraph::new(&store, true);
    let trainer = TestTrainer {
        graph: &graph,
        p,
        steps_left: RefCell::new(1),
        got: RefCell::new(vec![]),
    };
    let cfg = json!({ "inner_steps": k, "inner_lr": alpha, "first_order": first_order, "fd_epsilon": eps });
    let mut plugin = <maml::MamlPlugin as peft_api::Plugin>::create_priming(&cfg).unwrap();
    {
        let ctx = Ctx::new(graph.as_abi());
        let t = Trainer::new(TrainerAbi_TO::from_ptr(&trainer, TD_Opaque));
        plugin.run(&ctx, &t).unwrap();
    }
    assert_eq!(graph.live_handles(), 0, "the plugin leaked handles");
    let got = trainer.got.into_inner();
    let find = |n: &str| -> [f64; M] {
        let v = &got
            .iter()
            .find(|(x, _)| x == n)
            .unwrap_or_else(|| panic!("no gradient for {n}"))
            .1;
        std::array::from_fn(|j| v[j] as f64)
    };
    (find("phi"), find("theta"))
}

fn max_err(a: &[f64; M], b: &[f64; M]) -> f64 {
    (0..M).map(|j| (a[j] - b[j]).abs()).fold(0.0, f64::max)
}

fn max_abs(a: &[f64; M]) -> f64 {
    a.iter().map(|x| x.abs()).fold(0.0, f64::max)
}

const ALPHA: f64 = 0.5;

#[test]
fn exact_reference_matches_finite_differences_of_the_meta_objective() {
    let p = problem();
    for k in [1, 3] {
        let (g_phi, g_theta) = exact(&p, ALPHA, k, false);
        let h = 1e-6;
        for j in 0..M {
            let mut a = p.phi;
            let mut b = p.phi;
            a[j] += h;
            b[j] -= h;
            let fd = (meta_objective(&p, &a, &p.theta, ALPHA, k)
                - meta_objective(&p, &b, &p.theta, ALPHA, k))
                / (2.0 * h);
            assert!(
                (fd - g_phi[j]).abs() < 1e-8,
                "dφ_{j}, K={k}: fd {fd} vs {}",
                g_phi[j]
            );
            let mut a = p.theta;
            let mut b = p.theta;
            a[j] += h;
            b[j] -= h;
            let fd = (meta_objective(&p, &p.phi, &a, ALPHA, k)
                - meta_objective(&p, &p.phi, &b, ALPHA, k))
                / (2.0 * h);
            assert!(
                (fd - g_theta[j]).abs() < 1e-8,
                "dθ_{j}, K={k}: fd {fd} vs {}",
                g_theta[j]
            );
        }
    }
}

/// Tolerance: the plugin's second-order gradient (f32, ε = 1e-2) is within 1e-5 of the exact
/// one (max abs error, gradients of size ~0.2; measured ~1e-7), which is under 0.1% of the
/// second-order correction itself (|exact − first-order| ~1e-2), for 1 and for 3 inner steps.
#[test]
fn second_order_meta_gradient_matches_the_exact_one() {
    let p = problem();
    for k in [1, 3] {
        let (e_phi, e_theta) = exact(&p, ALPHA, k, false);
        let (f_phi, f_theta) = exact(&p, ALPHA, k, true);
        let (g_phi, g_theta) = plugin_meta_gradient(ALPHA, k, false, 1e-2);
        let correction = max_err(&e_phi, &f_phi).max(max_err(&e_theta, &f_theta));
        let err = max_err(&g_phi, &e_phi).max(max_err(&g_theta, &e_theta));
        eprintln!("K={k}: |exact| {:.4}, |second-order correction| {correction:.3e}, plugin error {err:.3e}", max_abs(&e_phi));
        assert!(
            correction > 1e-2,
            "the problem must make second order matter ({correction})"
        );
        assert!(err < 1e-5, "K={k}: error {err:.3e}");
        assert!(
            err < 1e-3 * correction,
            "K={k}: error {err:.3e} vs correction {correction:.3e}"
        );
    }
}

#[test]
fn first_order_is_fomaml() {
    let p = problem();
    for k in [1, 3] {
        let (e_phi, e_theta) = exact(&p, ALPHA, k, true);
        let (g_phi, g_theta) = plugin_meta_gradient(ALPHA, k, true, 1e-2);
        let err = max_err(&g_phi, &e_phi).max(max_err(&g_theta, &e_theta));
        assert!(err < 1e-5, "K={k}: FOMAML error {err:.3e}");
    }
}

/// The finite-difference error as a function of ε (printed; `--nocapture` shows the table
/// that docs/plugin-authoring.md quotes). Truncation falls as ε², f32 rounding grows as 1/ε.
#[test]
fn fd_error_against_epsilon() {
    let p = problem();
    eprintln!("| ε | K=1 max abs error | K=3 max abs error |");
    eprintln!("|---|---|---|");
    let mut errs = vec![];
    for eps in [1e-4, 1e-3, 1e-2, 1e-1, 1.0] {
        let mut row = vec![];
        for k in [1, 3] {
            let (e_phi, e_theta) = exact(&p, ALPHA, k, false);
            let (g_phi, g_theta) = plugin_meta_gradient(ALPHA, k, false, eps);
            row.push(max_err(&g_phi, &e_phi).max(max_err(&g_theta, &e_theta)));
        }
        eprintln!("| {eps:e} | {:.2e} | {:.2e} |", row[0], row[1]);
        errs.push(row[1]);
    }
    // ε = 1 is dominated by truncation: worse than the default 1e-2.
    assert!(errs[4] > errs[2], "{errs:?}");
}
