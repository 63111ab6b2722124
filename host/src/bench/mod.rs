//! `peft-host bench`: measurements that are product features (never timed unit tests).
use std::{cell::RefCell, path::Path, time::Instant};

use anyhow::Context;
use burn::tensor::{activation, backend::AutodiffBackend, Distribution, Tensor};
use peft_api::{BackboneInfo, SiteInfo, SiteKind};
use peft_registry::Registry;
use serde::Serialize;

mod model;
pub mod seq2seq;

pub use model::{model_bench, ModelBench, Shape};

use crate::{
    backbone::SiteModules,
    bridge::{
        value::{fp, ft},
        HostGraph, Value,
    },
    modules::{Composition, ModuleRequest},
    params::ParamStore,
};

#[derive(Serialize, Debug)]
pub struct Timing {
    pub name: String,
    pub runs: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

pub fn summarise(name: &str, mut ms: Vec<f64>) -> Timing {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = ms.len();
    let median = if n % 2 == 1 {
        ms[n / 2]
    } else {
        (ms[n / 2 - 1] + ms[n / 2]) / 2.0
    };
    Timing {
        name: name.into(),
        runs: n,
        median_ms: median,
        min_ms: ms[0],
        max_ms: ms[n - 1],
    }
}

#[derive(Serialize, Debug)]
pub struct OverheadReport {
    pub shape: [usize; 3],
    pub plugin: String,
    pub plugin_origin: String,
    pub native: Timing,
    pub plugin_path: Timing,
    /// plugin median / native median - 1.
    pub overhead: f64,
}

/// One Houlsby adapter forward + backward on `[batch, time, hidden]` activations, through a
/// dynamically loaded plugin and natively in burn, interleaved, `runs` times each.
pub fn op_overhead<B: AutodiffBackend>(
    plugin_lib: &Path,
    shape: [usize; 3],
    runs: usize,
    device: &B::Device,
) -> anyhow::Result<OverheadReport> {
    let mut registry = Registry::new();
    registry
        .load_file(plugin_lib)
        .with_context(|| format!("loading {}", plugin_lib.display()))?;
    let entry = registry.get("houlsby")?;
    let origin = entry.origin.to_string();
    let [b, t, d] = shape;
    let info = BackboneInfo {
        name: "bench".into(),
        architecture: "bench".into(),
        hidden_size: d,
        num_layers: 1,
        num_heads: 1,
        head_dim: d,
        intermediate_size: d,
        vocab_size: 1,
        sites: vec![SiteInfo {
            name: "encoder.layer.0.ffn".into(),
            kind: SiteKind::Sublayer,
            stack: "encoder".into(),
            layer: Some(0),
            role: "ffn".into(),
            in_features: d,
            out_features: d,
        }],
        ..Default::default()
    };
    let params = RefCell::new(ParamStore::<B>::new(device.clone(), 0));
    let req = ModuleRequest {
        plugin: "houlsby".into(),
        name: "houlsby".into(),
        config: serde_json::json!({"up_init_std": 0.01}),
    };
    let comp = Composition::attach(&registry, &[req], &info, &params)?;
    params
        .borrow_mut()
        .set_trainable(&["adapter".into()], &[])?;
    let x = Tensor::<B, 3>::random([b, t, d], Distribution::Normal(0.0, 1.0), device);
    let y =
        Tensor::<B, 3>::random([b, t, d], Distribution::Normal(0.0, 1.0), device).require_grad();
    let site = "encoder.layer.0.ffn";
    let p = |g: &HostGraph<'_, B>, n: &str| g.param_value(&format!("houlsby.{site}.{n}")).unwrap();

    let plugin_step = || -> anyhow::Result<f64> {
        let start = Instant::now();
        let g = HostGraph::new(&params, true);
        let out = SiteModules::call(
            &comp,
            &g,
            site,
            vec![Value::Float(fp(x.clone())), Value::Float(fp(y.clone()))],
        )?;
        let Value::Float(o) = out.into_iter().next().unwrap() else {
            anyhow::bail!("int output")
        };
        let grads = ft::<B, 3>(o).sum().backward();
        let gw = ft::<B, 2>(p(&g, "down.weight"))
            .grad(&grads)
            .context("no gradient")?;
        let _ = gw.into_data();
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };
    let native_step = || -> anyhow::Result<f64> {
        let start = Instant::now();
        let g = HostGraph::new(&params, true);
        let y2 = y.clone().reshape([b * t, d]);
        let h = activation::relu(
            y2.matmul(ft::<B, 2>(p(&g, "down.weight")).transpose())
                + ft::<B, 1>(p(&g, "down.bias")).unsqueeze::<2>(),
        );
        let up = h.matmul(ft::<B, 2>(p(&g, "up.weight")).transpose())
            + ft::<B, 1>(p(&g, "up.bias")).unsqueeze::<2>();
        let o = y.clone() + up.reshape([b, t, d]);
        let grads = o.sum().backward();
        let gw = ft::<B, 2>(p(&g, "down.weight"))
            .grad(&grads)
            .context("no gradient")?;
        let _ = gw.into_data();
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };
    for _ in 0..3 {
        plugin_step()?;
        native_step()?;
    }
    let (mut a, mut n) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for i in 0..runs {
        // Alternate the order so that neither path always runs on a warmer cache.
        if i % 2 == 0 {
            a.push(plugin_step()?);
            n.push(native_step()?);
        } else {
            n.push(native_step()?);
            a.push(plugin_step()?);
        }
    }
    let native = summarise("native burn", n);
    let plugin_path = summarise("dynamic plugin via op API", a);
    let overhead = plugin_path.median_ms / native.median_ms - 1.0;
    Ok(OverheadReport {
        shape,
        plugin: "houlsby".into(),
        plugin_origin: origin,
        native,
        plugin_path,
        overhead,
    })
}

/// One phase's (inference, train step) wall time per run and the part of it each kernel took.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PhaseOps {
    pub phase: String,
    pub wall_ms: f64,
    /// `(op, calls per run, ms per run)`, longest first.
    pub ops: Vec<(String, f64, f64)>,
}

impl PhaseOps {
    /// What [`crate::nn::timing`] collected over `runs` runs taking `wall_ms` in all.
    pub(crate) fn collect(phase: &str, wall_ms: f64, runs: usize) -> Self {
        let r = runs.max(1) as f64;
        PhaseOps {
            phase: phase.to_string(),
            wall_ms: wall_ms / r,
            ops: crate::nn::timing::take()
                .into_iter()
                .map(|(op, n, d)| (op.to_string(), n as f64 / r, d.as_secs_f64() * 1e3 / r))
                .collect(),
        }
    }

    /// A markdown table: each kernel's ms per run and share of the phase, and what no kernel
    /// covers (burn's element-wise ops, autodiff bookkeeping, allocation).
    pub fn table(&self) -> String {
        let mut s = format!(
            "{}: {:.1} ms per run\n\n| op | calls | ms | share |\n| --- | ---: | ---: | ---: |\n",
            self.phase, self.wall_ms
        );
        let pct = |ms: f64| 100.0 * ms / self.wall_ms.max(f64::MIN_POSITIVE);
        for (op, calls, ms) in &self.ops {
            s += &format!("| {op} | {calls:.0} | {ms:.1} | {:.1} % |\n", pct(*ms));
        }
        let rest = self.wall_ms - self.ops.iter().map(|o| o.2).sum::<f64>();
        s += &format!("| not in a kernel | | {rest:.1} | {:.1} % |\n", pct(rest));
        s
    }
}

/// One benchmark phase: a warm-up call of `f`, then `runs` timed calls (ms each); with op
/// times on, the kernels' share of them goes to `op_times` under `phase`.
pub(crate) fn time_phase(
    phase: &str,
    runs: usize,
    op_times: &mut Vec<PhaseOps>,
    f: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<f64>> {
    f()?;
    crate::nn::timing::take();
    let ms = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<anyhow::Result<Vec<f64>>>()?;
    if crate::nn::timing::enabled() {
        op_times.push(PhaseOps::collect(phase, ms.iter().sum(), runs));
    }
    Ok(ms)
}

/// One AdamW step on every trainable parameter that received a gradient; returns how many
/// elements did (what a benchmark's "trainable" counts: parameters off the loss's path are
/// left out).
pub(crate) fn adamw_step<B: AutodiffBackend>(
    model: &crate::model::Model<B>,
    grads: &<B as AutodiffBackend>::Gradients,
    opt: &mut crate::train::optim::AdamW<B>,
) -> anyhow::Result<usize> {
    let mut store = model.params.borrow_mut();
    let mut reached = 0;
    for p in store.trainable_mut() {
        let rank = p.shape.len();
        let grad = crate::by_rank!(rank, |D| Ok(ft::<B, D>(p.value.clone())
            .grad(grads)
            .map(|g| g.into_primitive().tensor())))?;
        if let Some(grad) = grad {
            reached += p.numel();
            opt.step(p, grad)?;
        }
    }
    Ok(reached)
}

pub(crate) fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

#[derive(Serialize, Debug)]
pub struct AttentionPoint {
    pub batch: usize,
    pub seq: usize,
    /// No-grad forward, the dense kernel (whole `[t, s]` scores) and the blocked one.
    pub dense_forward: Timing,
    pub blocked_forward: Timing,
    /// Forward keeping what the backward needs, then the backward (dropout 0.1).
    pub dense_train: Timing,
    pub blocked_train: Timing,
    /// Blocked median / dense median.
    pub forward_ratio: f64,
    pub train_ratio: f64,
}

/// The blocked attention kernel against the dense one it replaced, on MiniLM's attention
/// shapes (12 heads, width 384) at `tokens` per batch for each sequence length, interleaved
/// in one process (alternating which runs first), `runs` times each.
pub fn attention_bench(
    tokens: usize,
    seqs: &[usize],
    runs: usize,
) -> anyhow::Result<Vec<AttentionPoint>> {
    use crate::nn::{
        attention::{flash_backward, flash_forward, Dims, Masks},
        attention_dense,
    };
    let (heads, h) = (12, 384);
    let mut out = Vec::new();
    for &seq in seqs {
        anyhow::ensure!(
            seq > 0 && tokens.is_multiple_of(seq),
            "{tokens} tokens are not a whole number of sequences of {seq}"
        );
        let b = tokens / seq;
        let n = b * seq * h;
        let val = |m: f32| -> Vec<f32> { (0..n).map(|i| ((i as f32) * 0.618 + m).sin()).collect() };
        let (q, k, v, g) = (val(0.1), val(0.7), val(1.9), val(2.3));
        let keep = vec![true; b * seq];
        let scale = 1.0 / ((h / heads) as f32).sqrt();
        let d0 = Dims::check(n, n, n, b * seq, [b, seq, seq], heads, h, scale)?;
        let masks = Masks::new(&keep, &d0);
        let mut dt = d0;
        dt.drop = crate::nn::flash::Dropout::new(0.1, 7);
        let time = |f: &mut dyn FnMut()| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        };
        let mut dense_f = || {
            std::hint::black_box(attention_dense::forward(&q, &k, &v, &keep, d0, None));
        };
        let mut blocked_f = || {
            std::hint::black_box(flash_forward(&q, &k, &v, &masks, d0, None));
        };
        let mut dense_t = || {
            let mut probs = vec![0f32; b * heads * seq * seq];
            let _ = attention_dense::forward(&q, &k, &v, &keep, dt, Some(&mut probs));
            std::hint::black_box(attention_dense::backward(&q, &k, &v, &probs, &g, dt));
        };
        let mut blocked_t = || {
            let mut lse = vec![0f32; b * heads * seq];
            let o = flash_forward(&q, &k, &v, &masks, dt, Some(&mut lse));
            std::hint::black_box(flash_backward(&q, &k, &v, &o, &lse, &g, &masks, dt, false).dq);
        };
        // Warm-up, then alternate which of each pair runs first.
        for f in [
            &mut dense_f as &mut dyn FnMut(),
            &mut blocked_f,
            &mut dense_t,
            &mut blocked_t,
        ] {
            f();
        }
        let mut ms: [Vec<f64>; 4] = Default::default();
        for i in 0..runs {
            let order: [usize; 4] = if i % 2 == 0 {
                [0, 1, 2, 3]
            } else {
                [1, 0, 3, 2]
            };
            for j in order {
                let f: &mut dyn FnMut() = match j {
                    0 => &mut dense_f,
                    1 => &mut blocked_f,
                    2 => &mut dense_t,
                    _ => &mut blocked_t,
                };
                ms[j].push(time(f));
            }
        }
        let [a, b2, c, d] = ms;
        let (dense_forward, blocked_forward) = (
            summarise("dense forward", a),
            summarise("blocked forward", b2),
        );
        let (dense_train, blocked_train) = (
            summarise("dense forward+backward", c),
            summarise("blocked forward+backward", d),
        );
        out.push(AttentionPoint {
            batch: b,
            seq,
            forward_ratio: blocked_forward.median_ms / dense_forward.median_ms,
            train_ratio: blocked_train.median_ms / dense_train.median_ms,
            dense_forward,
            blocked_forward,
            dense_train,
            blocked_train,
        });
    }
    Ok(out)
}

/// Floating-point operations of one forward of a BERT-style encoder over `batch × seq`
/// tokens (multiply-adds count two; element-wise work left out): the four projections, the
/// feed-forward pair and attention's two products per layer.
pub fn encoder_flops(
    layers: usize,
    hidden: usize,
    intermediate: usize,
    batch: usize,
    seq: usize,
) -> f64 {
    let n = (batch * seq) as f64;
    let (h, i) = (hidden as f64, intermediate as f64);
    let per_layer = 2.0 * n * h * h * 4.0 + 2.0 * n * h * i * 2.0 + 2.0 * 2.0 * n * seq as f64 * h;
    layers as f64 * per_layer
}

/// The GEMM rate the kernels reach on this machine: `[m, k] × [k, n]` through the one GEMM
/// wrapper with all threads, median of `runs`, in GFLOP/s.
pub fn gemm_rate(m: usize, k: usize, n: usize, runs: usize) -> f64 {
    use crate::nn::gemm::{matmul, Mat, MatMut, Parallelism};
    let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.61).cos()).collect();
    let mut c = vec![0f32; m * n];
    let threads = rayon::current_num_threads();
    let mut one = || {
        let start = Instant::now();
        let mut cm = MatMut::dense(&mut c, m, n);
        matmul(
            &mut cm,
            0.0,
            Mat::rows(&a, 0, m, k, k),
            Mat::rows(&b, 0, k, n, n),
            1.0,
            Parallelism::Rayon(threads),
        );
        start.elapsed().as_secs_f64()
    };
    one();
    let t = summarise("gemm", (0..runs.max(1)).map(|_| one() * 1e3).collect());
    2.0 * (m * n * k) as f64 / (t.median_ms / 1e3) / 1e9
}
