//! Token cross-entropy over a vocabulary, fused: `lse(x) − (1−ε)·x_y − ε·mean(x)` per row in
//! one pass, and `g · (softmax(x) − (1−ε)·onehot(y) − ε/c)` back in one more. burn's
//! `log_softmax` + `gather` records six ops over the whole `[rows, vocab]` logits, each a new
//! buffer forward and again backward — at BART's 50,265 ids and 256 target tokens that is a
//! dozen 51 MB passes, each served as fresh pages (above malloc's largest heap block).
use burn::{
    backend::Flex,
    tensor::{activation, backend::AutodiffBackend, Int, Tensor},
};
use peft_api::ApiError;
use rayon::prelude::*;

use super::{
    autodiff::{ad, into_b, primitive, record, Backward, Buf, Checkpointer, Gradients, Ops},
    math::{exp, simd_dispatch, sum},
};

simd_dispatch! {
    /// `(log Σ_j e^{x_j}, Σ_j x_j)` of one row.
    fn row_stats(x: &[f32], out: &mut [f32]) {
        let mut mx = [f32::NEG_INFINITY; 16];
        let xc = x.chunks_exact(16);
        let mut m = xc.remainder().iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for xs in xc.clone() {
            for i in 0..16 {
                mx[i] = if xs[i] > mx[i] { xs[i] } else { mx[i] };
            }
        }
        m = mx.iter().fold(m, |a, &b| a.max(b));
        let m = if m.is_finite() { m } else { 0.0 };
        let mut acc = [0f32; 16];
        let mut r = 0f32;
        for &v in xc.remainder() {
            r += exp(v - m);
        }
        for xs in xc {
            for i in 0..16 {
                acc[i] += exp(xs[i] - m);
            }
        }
        out[0] = m + (acc.iter().sum::<f32>() + r).ln();
        out[1] = sum(x);
    }
}

simd_dispatch! {
    /// One row's gradient: `g · (e^{x − lse} − ε/c)`; the caller subtracts `g·(1−ε)` at `y`.
    fn row_grad(out: &mut [f32], x: &[f32], lse: f32, g: f32, eps_c: f32) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = g * (exp(v - lse) - eps_c);
        }
    }
}

/// Per-row statistics of `x` (`[rows, c]`): `lse` and `Σx` interleaved.
fn stats(x: &[f32], c: usize) -> Vec<f32> {
    let rows = x.len() / c;
    let mut st = vec![0f32; 2 * rows];
    st.par_chunks_mut(2)
        .zip(x.par_chunks(c))
        .for_each(|(s, row)| row_stats(row, s));
    st
}

/// The per-row loss from the statistics.
fn losses(x: &[f32], c: usize, st: &[f32], y: &[usize], eps: f32) -> Vec<f32> {
    y.iter()
        .enumerate()
        .map(|(r, &t)| st[2 * r] - (1.0 - eps) * x[r * c + t] - eps * st[2 * r + 1] / c as f32)
        .collect()
}

#[derive(Debug)]
struct CrossEntropyBackward;

impl Backward<Flex, 1> for CrossEntropyBackward {
    /// Logits, per-row statistics, targets, ε, `[rows, c]`.
    type State = (Buf, Vec<f32>, Vec<usize>, f32, [usize; 2]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let _t = super::timing::span("cross entropy backward");
        let g = Buf::new(grads.consume::<Flex>(&ops.node));
        let (x, st, y, eps, [rows, c]) = ops.state;
        let Some(node) = &ops.parents[0] else {
            return;
        };
        let mut out = vec![0f32; rows * c];
        out.par_chunks_mut(c)
            .zip(x.par_chunks(c))
            .enumerate()
            .for_each(|(r, (o, row))| {
                row_grad(o, row, st[2 * r], g[r], eps / c as f32);
                o[y[r]] -= g[r] * (1.0 - eps);
            });
        grads.register::<Flex>(node.id, primitive(out, [rows, c]));
    }
}

/// Each row's cross-entropy against its target class, `−log softmax(x)_y`, smoothed towards
/// the uniform distribution over all `c` classes by `smoothing` (ε):
/// `(1−ε)·(−log p_y) + ε·mean_j(−log p_j)`. `logits` `[rows, c]`, `targets` `[rows]` in
/// `0..c` (an error names the first one outside), result `[rows]`. One tracked kernel on the
/// CPU backend; burn's `log_softmax` and `gather` elsewhere.
pub fn cross_entropy<B: AutodiffBackend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    smoothing: f32,
) -> Result<Tensor<B, 1>, ApiError> {
    let [rows, c] = logits.dims();
    if c == 0 || targets.dims() != [rows] {
        return Err(ApiError::shape(format!(
            "cross entropy needs targets [{rows}] for logits [{rows}, {c}], got {:?}",
            targets.dims()
        )));
    }
    let y: Vec<i64> = targets
        .clone()
        .into_data()
        .convert::<i64>()
        .into_vec()
        .map_err(|e| ApiError::internal(format!("target ids: {e:?}")))?;
    if let Some((r, t)) = y
        .iter()
        .enumerate()
        .find(|(_, &t)| t < 0 || t as usize >= c)
    {
        return Err(ApiError::shape(format!(
            "cross entropy target {t} at row {r} is outside the {c} classes"
        )));
    }
    if !super::tracked::enabled::<B>() {
        let logp = activation::log_softmax(logits, 1);
        let nll = logp
            .clone()
            .gather(1, targets.unsqueeze_dim::<2>(1))
            .neg()
            .reshape([rows]);
        return Ok(if smoothing > 0.0 {
            let uniform = logp.mean_dim(1).neg().reshape([rows]);
            nll * (1.0 - smoothing) + uniform * smoothing
        } else {
            nll
        });
    }
    let _t = super::timing::span("cross entropy");
    let y: Vec<usize> = y.into_iter().map(|t| t as usize).collect();
    let xa = ad(logits)?;
    let x = Buf::new(xa.primitive.clone());
    let st = stats(&x, c);
    let out = primitive(losses(&x, c, &st, &y, smoothing), [rows]);
    let result = record!(
        CrossEntropyBackward,
        [xa.node.clone()],
        (x, st, y, smoothing, [rows, c]),
        out
    );
    into_b(result)
}

#[cfg(test)]
#[path = "tests/cross_entropy.rs"]
mod tests;
