//! Softmax: burn's on the inner backend in a no-grad pass, and the kernels' masked row
//! softmax over raw scores.
use burn::tensor::{activation, backend::AutodiffBackend, Tensor};

use super::math::{exp, max_plus, simd_dispatch, sum};

/// Softmax along `dim`; when `no_grad`, on the inner backend, whose fused kernel burn's
/// autodiff wrapper does not use (it records five ops even when nothing is tracked).
pub fn softmax<B: AutodiffBackend, const D: usize>(
    no_grad: bool,
    x: Tensor<B, D>,
    dim: usize,
) -> Tensor<B, D> {
    if no_grad {
        Tensor::from_inner(activation::softmax(x.inner(), dim))
    } else {
        activation::softmax(x, dim)
    }
}

simd_dispatch! {
    /// Softmax of each row of `x` (rows of `s`) over the kept columns; dropped columns get 0.
    /// A row with no kept column is uniform, as a row of equal `finfo.min` scores is in HF.
    pub(crate) fn softmax_rows(x: &mut [f32], s: usize, keep: &[bool]) {
        let any = keep.iter().any(|&k| k);
        let bias: Vec<f32> = keep
            .iter()
            .map(|&k| if k || !any { 0.0 } else { f32::NEG_INFINITY })
            .collect();
        for row in x.chunks_exact_mut(s) {
            let max = max_plus(row, &bias);
            for (x, &k) in row.iter_mut().zip(keep) {
                let e = exp(*x - max);
                *x = if k || !any { e } else { 0.0 };
            }
            let inv = 1.0 / sum(row);
            for x in row.iter_mut() {
                *x *= inv;
            }
        }
    }
}
