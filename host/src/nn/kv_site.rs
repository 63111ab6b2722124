//! The keys and values a key/value site (prefix tuning) receives are the head split
//! (`[b, heads, s, dh]`, a `swap_dims` view) of `[b, s, h]` projections. The site returns new
//! tensors (the prefix prepended), so the gradient that comes back for the view is a
//! contiguous or narrowed `[b, heads, s, dh]` buffer, and burn's backward of the split —
//! `swap_dims`, then `reshape` of a non-contiguous tensor — walks it element by element into
//! `[b, s, h]` (~40 % of prefix's time outside the kernels). This identity op hands the site
//! the same view and writes that gradient in the split's own layout instead: `[b, s, h]`
//! storage read as `[b, heads, s, dh]`, which both backward steps pass through without a copy.
use burn::{
    backend::Flex,
    tensor::{backend::AutodiffBackend, Tensor},
};
use peft_api::ApiError;
use rayon::prelude::*;

use super::autodiff::{ad, into_b, primitive, record, Backward, Buf, Checkpointer, Gradients, Ops};

#[derive(Debug)]
struct KvSiteBackward;

impl Backward<Flex, 1> for KvSiteBackward {
    /// `[b, heads, s, dh]`.
    type State = [usize; 4];

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let _t = super::timing::span("kv site backward");
        let [b, heads, s, dh] = ops.state;
        let g = Buf::new(grads.consume::<Flex>(&ops.node));
        let Some(node) = &ops.parents[0] else {
            return;
        };
        let h = heads * dh;
        let mut out = vec![0f32; b * s * h];
        // Row (bi, si) of `[b, s, h]` gathers head hi's row si of batch bi, for every hi.
        out.par_chunks_mut(h).enumerate().for_each(|(row, o)| {
            let (bi, si) = (row / s, row % s);
            for (hi, o) in o.chunks_exact_mut(dh).enumerate() {
                let at = ((bi * heads + hi) * s + si) * dh;
                o.copy_from_slice(&g[at..at + dh]);
            }
        });
        grads.register::<Flex>(node.id, primitive(out, [b, s, heads, dh]).transpose(1, 2));
    }
}

/// `x` unchanged, tracked so that its gradient arrives in the head-split layout (see the
/// module doc). Only for a split view of a `[b, s, h]` buffer (the CPU kernels' projections);
/// anything else, or another backend, comes back as it is.
pub fn tracked<B: AutodiffBackend>(x: Tensor<B, 4>) -> Result<Tensor<B, 4>, ApiError> {
    if !super::tracked::enabled::<B>() {
        return Ok(x);
    }
    let xa = ad(x.clone())?;
    if Buf::split_heads_source(&xa.primitive).is_none() {
        return Ok(x);
    }
    let dims = x.dims();
    let out = xa.primitive.clone();
    let result = record!(KvSiteBackward, [xa.node.clone()], dims, out);
    into_b(result)
}

#[cfg(test)]
#[path = "tests/kv_site.rs"]
mod tests;
