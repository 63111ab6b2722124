//! Layer norm over the last dim (`torch.nn.LayerNorm`) and T5's RMS norm: the generic
//! versions on any backend, and layer norm with weight and bias as one tracked operation of
//! the CPU autodiff backend (burn's records seven ops and their backward).
use std::sync::Arc;

use burn::{
    backend::Flex,
    tensor::{
        backend::{AutodiffBackend, Backend},
        Tensor,
    },
};
use peft_api::ApiError;
use rayon::prelude::*;

use super::autodiff::{
    ad, into_b, primitive, Backward, Buf, Checkpointer, Gradients, NoCheckpointing, Ops, OpsKind,
};

/// Layer norm over the last dim with optional affine weights (`[d]`), as `torch.nn.LayerNorm`.
pub fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    w: Option<Tensor<B, 1>>,
    b: Option<Tensor<B, 1>>,
    eps: f64,
) -> Tensor<B, D> {
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    let mut y = (x - mean) / (var + eps).sqrt();
    if let Some(w) = w {
        y = y * w.unsqueeze::<D>();
    }
    if let Some(b) = b {
        y = y + b.unsqueeze::<D>();
    }
    y
}

/// Layer norm as [`layer_norm`], on the inner backend (burn's fused kernels, nothing
/// recorded) when `no_grad`.
pub fn layer_norm_in<B: AutodiffBackend, const D: usize>(
    no_grad: bool,
    x: Tensor<B, D>,
    w: Option<Tensor<B, 1>>,
    b: Option<Tensor<B, 1>>,
    eps: f64,
) -> Tensor<B, D> {
    if no_grad {
        let y = layer_norm(x.inner(), w.map(Tensor::inner), b.map(Tensor::inner), eps);
        return Tensor::from_inner(y);
    }
    layer_norm(x, w, b, eps)
}

/// T5's LayerNorm: no mean subtraction, no bias.
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    w: Option<Tensor<B, 1>>,
    eps: f64,
) -> Tensor<B, D> {
    let var = x.clone().powf_scalar(2.0).mean_dim(D - 1);
    let mut y = x * (var + eps).sqrt().recip();
    if let Some(w) = w {
        y = y * w.unsqueeze::<D>();
    }
    y
}

/// Rows per block of the backward's weight/bias sums: a constant, so their rounding does not
/// depend on the thread count or on scheduling.
const LN_BLOCK_ROWS: usize = 64;

/// The backward of a per-row norm: `row(dx, dy, x̂, 1/σ, sums)` for every row of `d` values,
/// in parallel over fixed blocks of [`LN_BLOCK_ROWS`] rows, each block adding into its own
/// `k` sums of width `d` (the weight's and bias's gradients), which are then added in block
/// order. rayon's adaptive fold/reduce would split by work stealing, and the rounding of the
/// sums would then change from run to run (it did: resumed priming differed from an
/// uninterrupted run).
pub(crate) fn rows_backward(
    dx: &mut [f32],
    dy: &[f32],
    xhat: &[f32],
    rinv: &[f32],
    d: usize,
    k: usize,
    row: impl Fn(&mut [f32], &[f32], &[f32], f32, &mut [Vec<f32>]) + Sync + Send,
) -> Vec<Vec<f32>> {
    let block = LN_BLOCK_ROWS.min(rinv.len().max(1));
    let partials: Vec<Vec<Vec<f32>>> = dx
        .par_chunks_mut(d * block)
        .zip(dy.par_chunks(d * block))
        .zip(xhat.par_chunks(d * block))
        .zip(rinv.par_chunks(block))
        .map(|(((dx, dy), xh), rs)| {
            let mut sums = vec![vec![0f32; d]; k];
            for (((dx, dy), xh), &r) in dx.chunks_mut(d).zip(dy.chunks(d)).zip(xh.chunks(d)).zip(rs)
            {
                row(dx, dy, xh, r, &mut sums);
            }
            sums
        })
        .collect();
    let mut total = vec![vec![0f32; d]; k];
    for p in partials {
        for (t, p) in total.iter_mut().zip(p) {
            t.iter_mut().zip(p).for_each(|(x, y)| *x += y);
        }
    }
    total
}

#[derive(Debug)]
struct LayerNormBackward;

/// The normalised input, each row's 1/σ, the weight, and the input's shape.
type LnState = (Arc<Vec<f32>>, Arc<Vec<f32>>, Buf, [usize; 3]);

impl Backward<Flex, 3> for LayerNormBackward {
    type State = LnState;

    fn backward(self, ops: Ops<LnState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let _t = super::timing::span("layer norm backward");
        // The incoming gradient, read where it lies.
        let dy = Buf::new(grads.consume::<Flex>(&ops.node));
        let (xhat, rstd, w, shape) = ops.state;
        let w: &[f32] = &w;
        let d = shape[2];
        let mut dx = vec![0f32; dy.len()];
        // dx = (1/σ)·(g − mean(g) − x̂·mean(g·x̂)) with g = dy·w, row by row; dw, db summed.
        let sums = rows_backward(&mut dx, &dy, &xhat, &rstd, d, 2, |dx, dy, xh, r, sums| {
            let (mut mg, mut mgx) = (0f32, 0f32);
            for j in 0..d {
                let g = dy[j] * w[j];
                mg += g;
                mgx += g * xh[j];
                sums[0][j] += dy[j] * xh[j];
                sums[1][j] += dy[j];
            }
            let (mg, mgx) = (mg / d as f32, mgx / d as f32);
            for j in 0..d {
                dx[j] = r * (dy[j] * w[j] - mg - xh[j] * mgx);
            }
        });
        let [dw, db]: [Vec<f32>; 2] = sums.try_into().expect("two sums");
        let [px, pw, pb] = &ops.parents;
        if let Some(node) = px {
            grads.register::<Flex>(node.id, primitive(dx, shape));
        }
        if let Some(node) = pw {
            grads.register::<Flex>(node.id, primitive(dw, [d]));
        }
        if let Some(node) = pb {
            grads.register::<Flex>(node.id, primitive(db, [d]));
        }
    }
}

/// `x̂ = (x − mean) / sqrt(var + eps)` row by row into `xhat` (which holds `x` on entry); each
/// row's 1/σ into `rstd`.
fn normalise(xhat: &mut [f32], rstd: &mut [f32], d: usize, eps: f32) {
    xhat.par_chunks_mut(d)
        .zip(rstd.par_iter_mut())
        .for_each(|(row, r)| {
            let mean = row.iter().sum::<f32>() / d as f32;
            let var = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / d as f32;
            *r = 1.0 / (var + eps).sqrt();
            for x in row.iter_mut() {
                *x = (*x - mean) * *r;
            }
        });
}

/// `y = y ∘ w + b` over rows of `w.len()` values.
fn affine(y: &mut [f32], w: &[f32], b: &[f32]) {
    y.par_chunks_mut(w.len()).for_each(|row| {
        for ((y, w), b) in row.iter_mut().zip(w).zip(b) {
            *y = *y * w + b;
        }
    });
}

/// Layer norm with weight and bias over rows of `w.len()` values, in place, without
/// gradients: the no-grad pass's kernel (burn's generic version makes five full-size
/// temporaries: centred input, square, variance broadcast, quotient, affine).
pub fn layer_norm_rows(x: &mut [f32], w: &[f32], b: &[f32], eps: f64) {
    let _t = super::timing::span("layer norm");
    let d = w.len();
    if d == 0 {
        return;
    }
    let mut rstd = vec![0f32; x.len() / d];
    normalise(x, &mut rstd, d, eps as f32);
    affine(x, w, b);
}

/// Layer norm over the last dim with weight and bias `[d]` as one tracked operation of the
/// CPU autodiff backend, with its own backward.
pub fn tracked<B: AutodiffBackend>(
    x: Tensor<B, 3>,
    w: Tensor<B, 1>,
    b: Tensor<B, 1>,
    eps: f64,
) -> Result<Tensor<B, 3>, ApiError> {
    let _t = super::timing::span("layer norm");
    let shape = x.dims();
    let d = shape[2];
    if w.dims() != [d] || b.dims() != [d] || d == 0 {
        return Err(ApiError::shape(format!(
            "layer norm of {shape:?}: weight {:?} and bias {:?} must be [{d}]",
            w.dims(),
            b.dims()
        )));
    }
    let (xa, wa, ba) = (ad(x)?, ad(w)?, ad(b)?);
    let (wv, bv) = (
        Buf::new(wa.primitive.clone()),
        Buf::new(ba.primitive.clone()),
    );
    let mut xhat = Buf::new(xa.primitive.clone()).to_vec();
    let mut rstd = vec![0f32; xhat.len() / d];
    normalise(&mut xhat, &mut rstd, d, eps as f32);
    let mut out = xhat.clone();
    affine(&mut out, &wv, &bv);
    let out = primitive(out, shape);
    let nodes = [xa.node.clone(), wa.node.clone(), ba.node.clone()];
    let result = match LayerNormBackward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((Arc::new(xhat), Arc::new(rstd), wv, shape), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    into_b(result)
}

#[cfg(test)]
#[path = "tests/layer_norm.rs"]
mod tests;
