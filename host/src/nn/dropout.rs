//! Inverted dropout (`x · mask / (1 - p)`) with its mask drawn by a fast generator from a
//! seed: burn's draws a float per element through ChaCha. The attention kernel draws its
//! probability dropout with the same generator.
use std::sync::Arc;

use burn::{
    backend::Flex,
    tensor::{backend::AutodiffBackend, Tensor, TensorData},
};
use peft_api::ApiError;
use rand::{rngs::SmallRng, RngCore, SeedableRng};
use rayon::prelude::*;

use super::autodiff::{
    ad, flat, into_b, Backward, Buf, Checkpointer, FlexTensor, Gradients, NoCheckpointing, Ops,
    OpsKind,
};

/// Fills `kept` with "keep" draws of probability `1 - p` from a fast generator seeded by
/// `(seed, stream)`: the same on every run and thread schedule.
pub(crate) fn draw_keep(kept: &mut [bool], p: f64, seed: u64, stream: u64) {
    let mut rng = SmallRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let threshold = (p * 4_294_967_296.0).min(4_294_967_295.0) as u32;
    for m in kept.iter_mut() {
        *m = rng.next_u32() >= threshold;
    }
}

#[derive(Debug)]
struct DropoutBackward;

impl Backward<Flex, 1> for DropoutBackward {
    /// The kept elements, 1/(1 - p), the shape.
    type State = (Arc<Vec<bool>>, f32, Vec<usize>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (kept, inv, shape) = ops.state;
        let mut g = flat(grads.consume::<Flex>(&ops.node));
        g.par_iter_mut().zip(kept.par_iter()).for_each(|(g, &k)| {
            *g = if k { *g * inv } else { 0.0 };
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
    if !(0.0..1.0).contains(&p) {
        return Err(ApiError::invalid(format!(
            "dropout: p = {p} is not in [0, 1)"
        )));
    }
    let shape = x.dims().to_vec();
    let xa = ad(x)?;
    let input = Buf::new(xa.primitive.clone());
    let mut kept = vec![true; input.len()];
    const CHUNK: usize = 1 << 16;
    kept.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, c)| draw_keep(c, p, seed, i as u64));
    let inv = 1.0 / (1.0 - p as f32);
    let out: Vec<f32> = input
        .par_iter()
        .zip(kept.par_iter())
        .map(|(x, &k)| if k { x * inv } else { 0.0 })
        .collect();
    let out = FlexTensor::from_data(TensorData::new(out, shape.clone()));
    let result = match DropoutBackward
        .prepare::<NoCheckpointing>([xa.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((Arc::new(kept), inv, shape), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    into_b(result)
}

#[cfg(test)]
#[path = "tests/dropout.rs"]
mod tests;
