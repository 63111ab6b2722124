//! T5's RMS norm (`T5LayerNorm`: no mean subtraction, no bias) on the CPU: one pass per row
//! without gradients ([`rms_norm_rows`]) and one tracked operation with its own backward
//! ([`tracked`]) in place of the five ops burn records (square, mean, add, rsqrt, two products);
//! its weight gradient sums rows in layer norm's fixed blocks (deterministic).
use std::sync::Arc;

use burn::{
    backend::Flex,
    tensor::{backend::AutodiffBackend, Tensor},
};
use peft_api::ApiError;
use rayon::prelude::*;

use super::{
    autodiff::{ad, into_b, primitive, record, Backward, Buf, Checkpointer, Gradients, Ops},
    layer_norm::rows_backward,
};

/// `x̂ = x / sqrt(mean(x²) + eps)` row by row into `xhat` (which holds `x` on entry); each row's
/// reciprocal RMS into `rinv`.
fn normalise(xhat: &mut [f32], rinv: &mut [f32], d: usize, eps: f32) {
    xhat.par_chunks_mut(d)
        .zip(rinv.par_iter_mut())
        .for_each(|(row, r)| {
            let ms = row.iter().map(|x| x * x).sum::<f32>() / d as f32;
            *r = 1.0 / (ms + eps).sqrt();
            row.iter_mut().for_each(|x| *x *= *r);
        });
}

/// `w ∘ x / rms(x)` over rows of `d` values, in place, without gradients.
pub fn rms_norm_rows(x: &mut [f32], w: &[f32], eps: f64) {
    let _t = super::timing::span("rms norm");
    let d = w.len();
    if d == 0 {
        return;
    }
    let mut rinv = vec![0f32; x.len() / d];
    normalise(x, &mut rinv, d, eps as f32);
    x.par_chunks_mut(d)
        .for_each(|row| row.iter_mut().zip(w).for_each(|(y, w)| *y *= w));
}

#[derive(Debug)]
struct RmsNormBackward;

/// The normalised input, each row's 1/rms, the weight, and the input's shape.
type RmsState = (Arc<Vec<f32>>, Arc<Vec<f32>>, Buf, [usize; 3]);

impl Backward<Flex, 2> for RmsNormBackward {
    type State = RmsState;

    fn backward(self, ops: Ops<RmsState, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let _t = super::timing::span("rms norm backward");
        // The incoming gradient, read where it lies.
        let dy = Buf::new(grads.consume::<Flex>(&ops.node));
        let (xhat, rinv, w, shape) = ops.state;
        let w: &[f32] = &w;
        let d = shape[2];
        let mut dx = vec![0f32; dy.len()];
        // dx = (1/rms)·(g − x̂·mean(g·x̂)) with g = dy·w; dw = Σ dy·x̂.
        let sums = rows_backward(&mut dx, &dy, &xhat, &rinv, d, 1, |dx, dy, xh, r, sums| {
            let mut mgx = 0f32;
            for j in 0..d {
                mgx += dy[j] * w[j] * xh[j];
                sums[0][j] += dy[j] * xh[j];
            }
            let mgx = mgx / d as f32;
            for j in 0..d {
                dx[j] = r * (dy[j] * w[j] - xh[j] * mgx);
            }
        });
        let dw = sums.into_iter().next().expect("one sum");
        let [px, pw] = &ops.parents;
        if let Some(node) = px {
            grads.register::<Flex>(node.id, primitive(dx, shape));
        }
        if let Some(node) = pw {
            grads.register::<Flex>(node.id, primitive(dw, [d]));
        }
    }
}

/// RMS norm over the last dim with weight `[d]` as one tracked operation of the CPU autodiff
/// backend, with its own backward.
pub fn tracked<B: AutodiffBackend>(
    x: Tensor<B, 3>,
    w: Tensor<B, 1>,
    eps: f64,
) -> Result<Tensor<B, 3>, ApiError> {
    let _t = super::timing::span("rms norm");
    let shape = x.dims();
    let d = shape[2];
    if w.dims() != [d] || d == 0 {
        return Err(ApiError::shape(format!(
            "RMS norm of {shape:?}: weight {:?} must be [{d}]",
            w.dims()
        )));
    }
    let (xa, wa) = (ad(x)?, ad(w)?);
    let wv = Buf::new(wa.primitive.clone());
    let mut xhat = Buf::new(xa.primitive.clone()).to_vec();
    let mut rinv = vec![0f32; xhat.len() / d];
    normalise(&mut xhat, &mut rinv, d, eps as f32);
    let mut out = xhat.clone();
    out.par_chunks_mut(d)
        .for_each(|row| row.iter_mut().zip(wv.iter()).for_each(|(y, w)| *y *= w));
    let out = primitive(out, shape);
    let nodes = [xa.node.clone(), wa.node.clone()];
    let result = record!(
        RmsNormBackward,
        nodes,
        (Arc::new(xhat), Arc::new(rinv), wv, shape),
        out
    );
    into_b(result)
}

#[cfg(test)]
#[path = "tests/rms_norm.rs"]
mod tests;
