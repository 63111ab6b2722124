//! Exact GELU, `x · Φ(x) = x/2 · (1 + erf(x/√2))`, whose `erf` burn's CPU backend evaluates
//! per element in both directions: a vectorised loop here, and a tracked operation with its
//! own backward.
use burn::{
    backend::Flex,
    tensor::{backend::AutodiffBackend, Tensor},
};
use peft_api::ApiError;
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::{
    autodiff::{ad, into_b, owned, primitive, record, Backward, Buf, Checkpointer, Gradients, Ops},
    math::{erf, exp, simd_dispatch},
};

const CHUNK: usize = 1 << 14;

/// Exact GELU of one value.
#[inline(always)]
fn gelu_of(v: f32) -> f32 {
    0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))
}

simd_dispatch! {
    /// Exact GELU in place, on one chunk.
    fn gelu_chunk(c: &mut [f32]) {
        for v in c {
            *v = gelu_of(*v);
        }
    }
}

simd_dispatch! {
    /// Exact GELU of `x` into `out` (the same length), on one chunk: the tracked op keeps its
    /// input for the backward, so it writes a new, unzeroed buffer in one pass instead of
    /// copying (or zeroing) first.
    fn gelu_chunk_from(out: &mut [MaybeUninit<f32>], x: &[f32]) {
        assert_eq!(out.len(), x.len());
        for (o, &v) in out.iter_mut().zip(x) {
            o.write(gelu_of(v));
        }
    }
}

simd_dispatch! {
    /// `y ← gelu(y + bias)` for each `bias`-long row of one chunk.
    fn bias_gelu_chunk(rows: &mut [f32], bias: &[f32]) {
        for r in rows.chunks_exact_mut(bias.len()) {
            for (y, &b) in r.iter_mut().zip(bias) {
                *y = gelu_of(*y + b);
            }
        }
    }
}

/// Rows per parallel task of [`bias_gelu`].
const BIAS_ROWS: usize = 16;

/// `y ← gelu(y + bias)` for every `bias`-long row of `y`: a linear's bias and its activation
/// in one pass over the output (the same values as adding the bias, then [`gelu`]).
pub(crate) fn bias_gelu(y: &mut [f32], bias: &[f32]) {
    let _t = super::timing::span("gelu");
    if bias.is_empty() {
        return;
    }
    y.par_chunks_mut(bias.len() * BIAS_ROWS)
        .for_each(|rows| bias_gelu_chunk(rows, bias));
}

/// [`gelu`] on the calling thread (a kernel's epilogue, inside its own parallel task).
pub(crate) fn gelu_serial(x: &mut [f32]) {
    gelu_chunk(x);
}

/// Exact GELU, `x · Φ(x) = x/2 · (1 + erf(x/√2))`, in place.
pub fn gelu(x: &mut [f32]) {
    let _t = super::timing::span("gelu");
    x.par_chunks_mut(CHUNK).for_each(gelu_chunk);
}

simd_dispatch! {
    /// GELU's backward on one chunk, in place: `g · (Φ(x) + x·φ(x))`.
    fn gelu_backward_chunk(g: &mut [f32], x: &[f32]) {
        for (g, &x) in g.iter_mut().zip(x) {
            let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = exp(-0.5 * x * x) * 0.398_942_3;
            *g *= cdf + x * pdf;
        }
    }
}

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    type State = (Buf, [usize; 3]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let _t = super::timing::span("gelu backward");
        let mut grad = owned(grads.consume::<Flex>(&ops.node));
        let (x, shape) = ops.state;
        // d/dx x·Φ(x) = Φ(x) + x·φ(x).
        grad.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(g, x)| gelu_backward_chunk(g, x));
        if let Some(node) = &ops.parents[0] {
            grads.register::<Flex>(node.id, primitive(grad, shape));
        }
    }
}

/// Exact GELU as one tracked operation of the CPU autodiff backend, with its own backward.
pub fn tracked<B: AutodiffBackend>(x: Tensor<B, 3>) -> Result<Tensor<B, 3>, ApiError> {
    let _t = super::timing::span("gelu");
    let shape = x.dims();
    let xa = ad(x)?;
    let input = Buf::new(xa.primitive.clone());
    let len = input.len();
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(CHUNK)
        .zip(input.par_chunks(CHUNK))
        .for_each(|(o, x)| gelu_chunk_from(o, x));
    // SAFETY: the chunks cover the `len` elements of spare capacity exactly, and
    // `gelu_chunk_from` writes every element of its chunk (its input chunk has the same length).
    unsafe { out.set_len(len) };
    let out = primitive(out, shape);
    let result = record!(GeluBackward, [xa.node.clone()], (input, shape), out);
    into_b(result)
}

#[cfg(test)]
#[path = "tests/gelu.rs"]
mod tests;
