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

use super::{
    autodiff::{ad, into_b, primitive, record, Backward, Buf, Checkpointer, Gradients, Ops},
    dropout::Mask,
    math::{dot, simd_dispatch, sum},
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

/// The gradients of the normalised input (`dx`), the weight and the bias from `dy`.
fn ln_grads(dy: &[f32], (xhat, rstd, w, shape): &LnState) -> [Vec<f32>; 3] {
    let w: &[f32] = w;
    let d = shape[2];
    let mut dx = vec![0f32; dy.len()];
    // dx = (1/σ)·(g − mean(g) − x̂·mean(g·x̂)) with g = dy·w, row by row; dw, db summed.
    let sums = rows_backward(&mut dx, dy, xhat, rstd, d, 2, |dx, dy, xh, r, sums| {
        let [s0, s1] = sums else {
            unreachable!("two sums asked for")
        };
        ln_backward_row(dx, dy, xh, w, r, s0, s1);
    });
    let [dw, db]: [Vec<f32>; 2] = sums.try_into().expect("two sums");
    [dx, dw, db]
}

impl Backward<Flex, 3> for LayerNormBackward {
    type State = LnState;

    fn backward(self, ops: Ops<LnState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let _t = super::timing::span("layer norm backward");
        // The incoming gradient, read where it lies.
        let dy = Buf::new(grads.consume::<Flex>(&ops.node));
        let [dx, dw, db] = ln_grads(&dy, &ops.state);
        let (shape, d) = (ops.state.3, ops.state.3[2]);
        let [px, pw, pb] = &ops.parents;
        for (node, g) in [
            (px, primitive(dx, shape)),
            (pw, primitive(dw, [d])),
            (pb, primitive(db, [d])),
        ] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, g);
            }
        }
    }
}

#[derive(Debug)]
struct AddLayerNormBackward;

/// `LN(a + r)`'s state: layer norm's, and the dropout mask `a` went through (if any).
type AddLnState = (LnState, Option<Mask>);

/// `LN(drop(a) + r)`: `r` receives the normalised input's gradient, `a` the same through the
/// dropout mask (redrawn from its seed, not kept).
impl Backward<Flex, 4> for AddLayerNormBackward {
    type State = AddLnState;

    fn backward(self, ops: Ops<AddLnState, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let _t = super::timing::span("layer norm backward");
        let dy = Buf::new(grads.consume::<Flex>(&ops.node));
        let (state, mask) = ops.state;
        let [dx, dw, db] = ln_grads(&dy, &state);
        let (shape, d) = (state.3, state.3[2]);
        let da = mask.map(|m| {
            let mut da = vec![0f32; dx.len()];
            da.par_chunks_mut(1 << 14)
                .zip(dx.par_chunks(1 << 14))
                .enumerate()
                .for_each(|(i, (da, dx))| m.apply(da, dx, (i << 14) as u64));
            primitive(da, shape)
        });
        let dx = primitive(dx, shape);
        let [pa, pr, pw, pb] = &ops.parents;
        for (node, g) in [
            (pa, da.unwrap_or_else(|| dx.clone())),
            (pr, dx),
            (pw, primitive(dw, [d])),
            (pb, primitive(db, [d])),
        ] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, g);
            }
        }
    }
}

simd_dispatch! {
    /// One row of layer norm's backward: `dx = r·(g − mean(g) − x̂·mean(g·x̂))`, `g = dy·w`,
    /// and the row's terms of `dw` (`s0 += dy·x̂`) and `db` (`s1 += dy`). The means are
    /// 16-lane reductions ([`sum`], [`dot`]): a sequential float sum does not vectorise.
    fn ln_backward_row(dx: &mut [f32], dy: &[f32], xh: &[f32], w: &[f32], r: f32, s0: &mut [f32], s1: &mut [f32]) {
        let n = dx.len() as f32;
        for ((g, &dy), &w) in dx.iter_mut().zip(dy).zip(w) {
            *g = dy * w;
        }
        let (mg, mgx) = (sum(dx) / n, dot(dx, xh) / n);
        for (((dx, &x), s0), (s1, &dy)) in dx.iter_mut().zip(xh).zip(s0.iter_mut()).zip(s1.iter_mut().zip(dy)) {
            *dx = r * (*dx - mg - x * mgx);
            *s0 += dy * x;
            *s1 += dy;
        }
    }
}

simd_dispatch! {
    /// One row normalised in place, `x̂ = (x − mean)·r` with `r = 1/sqrt(var + eps)` (the
    /// variance about the mean, as torch computes it), `r` into `rstd`.
    fn normalise_row(row: &mut [f32], rstd: &mut f32, eps: f32) {
        let n = row.len() as f32;
        let mean = sum(row) / n;
        for x in row.iter_mut() {
            *x -= mean;
        }
        let r = 1.0 / (dot(row, row) / n + eps).sqrt();
        for x in row.iter_mut() {
            *x *= r;
        }
        *rstd = r;
    }
}

simd_dispatch! {
    /// One row of the no-grad layer norm in place: `r` (when not empty) added first, then
    /// normalised and `∘ w + b` — the operations of [`normalise_row`] and the tracked
    /// [`forward`]'s affine in the same order, so the same values — in one visit of the row
    /// while it is in L1 (a zeroed sum buffer, then separate passes for the sum, the
    /// normalisation and the affine, cost several times the arithmetic).
    fn ln_row(row: &mut [f32], r: &[f32], w: &[f32], b: &[f32], eps: f32) {
        if !r.is_empty() {
            for (x, r) in row.iter_mut().zip(r) {
                *x += r;
            }
        }
        let n = row.len() as f32;
        let mean = sum(row) / n;
        for x in row.iter_mut() {
            *x -= mean;
        }
        let rstd = 1.0 / (dot(row, row) / n + eps).sqrt();
        for ((x, w), b) in row.iter_mut().zip(w).zip(b) {
            let xhat = *x * rstd;
            *x = xhat * w + b;
        }
    }
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
    x.par_chunks_mut(d)
        .for_each(|row| ln_row(row, &[], w, b, eps as f32));
}

/// Checks that `w` and `b` are `[d]` for input `shape`.
fn check(shape: [usize; 3], w: [usize; 1], b: [usize; 1]) -> Result<(), ApiError> {
    let d = shape[2];
    if w != [d] || b != [d] || d == 0 {
        return Err(ApiError::shape(format!(
            "layer norm of {shape:?}: weight {w:?} and bias {b:?} must be [{d}]"
        )));
    }
    Ok(())
}

/// Rows per parallel task of the tracked forward.
const FORWARD_ROWS: usize = 16;

/// `x = drop(a) + r` (`drop` and `r` when given) normalised row by row, each row visited once
/// while it is in L1: summed into `x̂`, normalised there ([`normalise_row`]), then `x̂·w + b`
/// into the output — the operations of dropout, the sum and layer norm as separate passes, in
/// the same order, so the same values. Returns the backward's state and the output.
fn forward(
    a: &[f32],
    r: Option<&[f32]>,
    drop: Option<Mask>,
    shape: [usize; 3],
    w: Buf,
    b: &[f32],
    eps: f64,
) -> (LnState, Vec<f32>) {
    let d = shape[2];
    let (n, rows) = (a.len(), a.len() / d);
    let (mut xhat, mut rstd, mut out) = (vec![0f32; n], vec![0f32; rows], vec![0f32; n]);
    let block = FORWARD_ROWS * d;
    xhat.par_chunks_mut(block)
        .zip(out.par_chunks_mut(block))
        .zip(rstd.par_chunks_mut(FORWARD_ROWS))
        .enumerate()
        .for_each(|(i, ((xh, out), rs))| {
            let first = i * block;
            let a = &a[first..first + xh.len()];
            match drop {
                Some(m) => m.apply(xh, a, first as u64),
                None => xh.copy_from_slice(a),
            }
            if let Some(r) = r {
                add_into(xh, &r[first..first + xh.len()]);
            }
            for ((x, o), rs) in xh.chunks_mut(d).zip(out.chunks_mut(d)).zip(rs) {
                normalise_row(x, rs, eps as f32);
                affine_row(o, x, &w, b);
            }
        });
    ((Arc::new(xhat), Arc::new(rstd), w, shape), out)
}

simd_dispatch! {
    /// `x += r`.
    fn add_into(x: &mut [f32], r: &[f32]) {
        for (x, r) in x.iter_mut().zip(r) {
            *x += r;
        }
    }
}

simd_dispatch! {
    /// `out = x̂·w + b` for one row.
    fn affine_row(out: &mut [f32], xhat: &[f32], w: &[f32], b: &[f32]) {
        for (((o, x), w), b) in out.iter_mut().zip(xhat).zip(w).zip(b) {
            *o = x * w + b;
        }
    }
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
    check(shape, w.dims(), b.dims())?;
    let (xa, wa, ba) = (ad(x)?, ad(w)?, ad(b)?);
    let x = Buf::new(xa.primitive.clone());
    let (wv, bv) = (
        Buf::new(wa.primitive.clone()),
        Buf::new(ba.primitive.clone()),
    );
    let (state, out) = forward(&x, None, None, shape, wv, &bv, eps);
    let nodes = [xa.node.clone(), wa.node.clone(), ba.node.clone()];
    into_b(record!(
        LayerNormBackward,
        nodes,
        state,
        primitive(out, shape)
    ))
}

/// `LN(a + r)` (a post-norm transformer's residual and layer norm) as one tracked operation:
/// the sum is formed inside the kernel, so it never exists as a tensor of its own.
pub fn tracked_add<B: AutodiffBackend>(
    a: Tensor<B, 3>,
    r: Tensor<B, 3>,
    w: Tensor<B, 1>,
    b: Tensor<B, 1>,
    eps: f64,
) -> Result<Tensor<B, 3>, ApiError> {
    add_dropped(a, None, r, w, b, eps)
}

/// `LN(dropout(a) + r)` — a post-norm layer's sublayer output `a` through inverted dropout
/// with probability `p` (the mask [`super::dropout::tracked`] draws from `seed`), plus the
/// residual `r`, then layer norm — as one tracked operation: neither the dropped output nor
/// its mask is stored (the backward redraws the mask from the seed).
pub fn tracked_dropout_add<B: AutodiffBackend>(
    a: Tensor<B, 3>,
    r: Tensor<B, 3>,
    w: Tensor<B, 1>,
    b: Tensor<B, 1>,
    (p, seed): (f64, u64),
    eps: f64,
) -> Result<Tensor<B, 3>, ApiError> {
    if !(0.0..1.0).contains(&p) {
        return Err(ApiError::invalid(format!(
            "dropout: p = {p} is not in [0, 1)"
        )));
    }
    let mask = (p > 0.0).then(|| Mask::new(p, seed));
    add_dropped(a, mask, r, w, b, eps)
}

fn add_dropped<B: AutodiffBackend>(
    a: Tensor<B, 3>,
    mask: Option<Mask>,
    r: Tensor<B, 3>,
    w: Tensor<B, 1>,
    b: Tensor<B, 1>,
    eps: f64,
) -> Result<Tensor<B, 3>, ApiError> {
    let _t = super::timing::span("layer norm");
    let shape = a.dims();
    if r.dims() != shape {
        return Err(ApiError::shape(format!(
            "layer norm of a sum: {shape:?} + {:?}",
            r.dims()
        )));
    }
    check(shape, w.dims(), b.dims())?;
    let (aa, ra, wa, ba) = (ad(a)?, ad(r)?, ad(w)?, ad(b)?);
    let (av, rv) = (
        Buf::new(aa.primitive.clone()),
        Buf::new(ra.primitive.clone()),
    );
    let (wv, bv) = (
        Buf::new(wa.primitive.clone()),
        Buf::new(ba.primitive.clone()),
    );
    let (state, out) = forward(&av, Some(&rv), mask, shape, wv, &bv, eps);
    let nodes = [
        aa.node.clone(),
        ra.node.clone(),
        wa.node.clone(),
        ba.node.clone(),
    ];
    into_b(record!(
        AddLayerNormBackward,
        nodes,
        (state, mask),
        primitive(out, shape)
    ))
}

/// `LN(a + r)` without gradients, in `a`'s buffer: each row summed, normalised and scaled in
/// one visit (`a` is the sublayer's output, owned here; `r` the residual stream).
pub fn add_layer_norm_rows(mut a: Vec<f32>, r: &[f32], w: &[f32], b: &[f32], eps: f64) -> Vec<f32> {
    let _t = super::timing::span("layer norm");
    let d = w.len();
    assert_eq!(
        a.len(),
        r.len(),
        "layer norm of a sum: summands of different lengths"
    );
    if d == 0 {
        return a;
    }
    a.par_chunks_mut(d)
        .zip(r.par_chunks(d))
        .for_each(|(row, r)| ln_row(row, r, w, b, eps as f32));
    a
}

#[cfg(test)]
#[path = "tests/layer_norm.rs"]
mod tests;
