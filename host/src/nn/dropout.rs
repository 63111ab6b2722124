//! Inverted dropout (`x · mask / (1 - p)`) with its mask drawn from a seed by a counter-based
//! hash of each element's index (two keyed rounds of a 32-bit finaliser, [`draw`], as the
//! attention kernel draws its probability dropout): burn's draws a float per element through
//! ChaCha, and a sequential generator cannot be vectorised.
use std::sync::Arc;

use burn::{
    backend::Flex,
    tensor::{backend::AutodiffBackend, Tensor, TensorData},
};
use peft_api::ApiError;
use rayon::prelude::*;

use super::{
    autodiff::{ad, into_b, record, Backward, Buf, Checkpointer, FlexTensor, Gradients, Ops},
    math::{draw, draw_runs, mix, simd_dispatch},
};

/// Elements per parallel task.
const CHUNK: usize = 1 << 16;

/// The hash stream of a seed (apart from the attention kernel's streams of the same seed).
fn stream(seed: u64) -> u64 {
    mix(seed ^ 0x5851_F42D_4C95_7F2D)
}

simd_dispatch! {
    /// Dropout of one chunk whose first element is `first`: `out` the scaled kept values,
    /// `kept` the decisions (what the backward applies).
    fn apply_chunk(out: &mut [f32], kept: &mut [bool], x: &[f32], first: u64, stream: u64, threshold: u32, inv: f32) {
        draw_runs(stream, first, out.len(), |at, n, keys, lo| {
            let (out, kept, x) = (&mut out[at..at + n], &mut kept[at..at + n], &x[at..at + n]);
            for (j, ((o, k), &x)) in out.iter_mut().zip(kept.iter_mut()).zip(x).enumerate() {
                // Kept when the draw clears `threshold = p · 2³²`.
                let kj = draw(keys, lo.wrapping_add(j as u32)) >= threshold;
                *k = kj;
                *o = if kj { x * inv } else { 0.0 };
            }
        });
    }
}

/// A dropout mask as a function of the element's flat index: what [`tracked`] draws for a
/// `(p, seed)`, for kernels that apply it inside their own pass over the rows (layer norm of
/// a dropped sublayer output plus the residual) and redraw it in their backward instead of
/// keeping it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mask {
    stream: u64,
    threshold: u32,
    inv: f32,
}

impl Mask {
    /// The mask of `(p, seed)`, `p` in `[0, 1)` (checked by the caller).
    pub(crate) fn new(p: f64, seed: u64) -> Self {
        Mask {
            stream: stream(seed),
            threshold: (p * 4_294_967_296.0).min(4_294_967_295.0) as u32,
            inv: 1.0 / (1.0 - p as f32),
        }
    }

    /// `out[j] = x[j]·1/(1 − p)` where element `first + j` is kept, else 0 (as [`tracked`]'s
    /// forward computes it); the backward's `dx` from `dy` is the same map.
    pub(crate) fn apply(&self, out: &mut [f32], x: &[f32], first: u64) {
        mask_chunk(out, x, first, self.stream, self.threshold, self.inv);
    }
}

simd_dispatch! {
    /// [`Mask::apply`] on one run of elements.
    fn mask_chunk(out: &mut [f32], x: &[f32], first: u64, stream: u64, threshold: u32, inv: f32) {
        draw_runs(stream, first, out.len(), |at, n, keys, lo| {
            let (out, x) = (&mut out[at..at + n], &x[at..at + n]);
            for (j, (o, &x)) in out.iter_mut().zip(x).enumerate() {
                *o = if draw(keys, lo.wrapping_add(j as u32)) >= threshold { x * inv } else { 0.0 };
            }
        });
    }
}

#[derive(Debug)]
struct DropoutBackward;

impl Backward<Flex, 1> for DropoutBackward {
    /// The kept elements, 1/(1 - p), the shape.
    type State = (Arc<Vec<bool>>, f32, Vec<usize>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let _t = super::timing::span("dropout backward");
        let (kept, inv, shape) = ops.state;
        // The incoming gradient is read where it lies and the result written to a new buffer:
        // it usually comes from a residual sum whose gradient the other branch shares, so
        // taking it over to work in place would copy it first.
        let dy = Buf::new(grads.consume::<Flex>(&ops.node));
        let mut g = vec![0f32; dy.len()];
        g.par_chunks_mut(CHUNK)
            .zip(dy.par_chunks(CHUNK))
            .zip(kept.par_chunks(CHUNK))
            .for_each(|((g, dy), k)| {
                for ((g, &dy), &k) in g.iter_mut().zip(dy).zip(k) {
                    *g = if k { dy * inv } else { 0.0 };
                }
            });
        if let Some(node) = &ops.parents[0] {
            let data = TensorData::new(g, shape);
            grads.register::<Flex>(node.id, FlexTensor::from_data(data));
        }
    }
}

/// Inverted dropout with probability `p` in `[0, 1)` as one tracked operation of the CPU
/// autodiff backend, its mask drawn from `seed`.
pub fn tracked<B: AutodiffBackend, const D: usize>(
    x: Tensor<B, D>,
    p: f64,
    seed: u64,
) -> Result<Tensor<B, D>, ApiError> {
    let _t = super::timing::span("dropout");
    if !(0.0..1.0).contains(&p) {
        return Err(ApiError::invalid(format!(
            "dropout: p = {p} is not in [0, 1)"
        )));
    }
    let shape = x.dims().to_vec();
    let xa = ad(x)?;
    let input = Buf::new(xa.primitive.clone());
    let inv = 1.0 / (1.0 - p as f32);
    let threshold = (p * 4_294_967_296.0).min(4_294_967_295.0) as u32;
    let s = stream(seed);
    let (mut kept, mut out) = (vec![true; input.len()], vec![0f32; input.len()]);
    kept.par_chunks_mut(CHUNK)
        .zip(out.par_chunks_mut(CHUNK))
        .zip(input.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(i, ((k, o), x))| {
            apply_chunk(o, k, x, (i * CHUNK) as u64, s, threshold, inv);
        });
    let out = FlexTensor::from_data(TensorData::new(out, shape.clone()));
    let result = record!(
        DropoutBackward,
        [xa.node.clone()],
        (Arc::new(kept), inv, shape),
        out
    );
    into_b(result)
}

#[cfg(test)]
#[path = "tests/dropout.rs"]
mod tests;
