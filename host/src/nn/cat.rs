//! Concatenation as one tracked operation of the CPU autodiff backend: each input copied once,
//! straight from its own layout into its place in the output, by rayon's threads.
//!
//! Why: prefix tuning prepends a broadcast prefix (`[b, heads, P, dh]`, an `expand` of a
//! permuted parameter) to each layer's keys and values (a head split, a strided view of the
//! projection); burn's `cat` walks strided inputs element by element, and copying them
//! contiguous first ([`super::tracked::contiguous`]) then concatenating moved everything
//! twice on one core: 18 ms of a 515 ms MiniLM inference. The backward hands each input its
//! slice of the gradient as a view (no copy), as burn's `cat` does.
use burn::{
    backend::Flex,
    tensor::{backend::AutodiffBackend, DType, Tensor},
};
use peft_api::ApiError;
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::autodiff::{
    ad, into_b, record, AdTensor, Backward, Checkpointer, FlexTensor, Gradients, Ops,
};

/// Where each input's slice lies along the concatenated dim.
#[derive(Clone, Debug)]
struct State {
    dim: usize,
    /// `(start, len)` per input, in order.
    spans: Vec<(usize, usize)>,
}

#[derive(Debug)]
struct CatBackward;

impl<const N: usize> Backward<Flex, N> for CatBackward {
    type State = State;

    fn backward(self, ops: Ops<State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let _t = super::timing::span("cat backward");
        let g = grads.consume::<Flex>(&ops.node);
        let State { dim, spans } = ops.state;
        for (node, (start, len)) in ops.parents.iter().zip(spans) {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, g.narrow(dim, start, len));
            }
        }
    }
}

/// The concatenation of `xs` (rank `D`, equal except along `dim`, which the caller checked)
/// along `dim`, tracked: `None` (nothing done) on another backend, for inputs other than f32,
/// or for other than 2 to 4 inputs — the caller then runs burn's `cat`.
pub fn tracked<B: AutodiffBackend, const D: usize>(
    xs: &[Tensor<B, D>],
    dim: usize,
) -> Result<Option<Tensor<B, D>>, ApiError> {
    if !super::autodiff::enabled::<B>() || !(2..=4).contains(&xs.len()) || dim >= D {
        return Ok(None);
    }
    let ads = xs
        .iter()
        .map(|x| ad(x.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    if ads.iter().any(|a| a.primitive.dtype() != DType::F32) {
        return Ok(None);
    }
    let _t = super::timing::span("cat");
    let prims: Vec<&FlexTensor> = ads.iter().map(|a| &a.primitive).collect();
    let (out, spans) = concatenate(&prims, dim);
    let state = State { dim, spans };
    let result = match ads.len() {
        2 => finish::<2>(ads, state, out),
        3 => finish::<3>(ads, state, out),
        _ => finish::<4>(ads, state, out),
    };
    into_b(result).map(Some)
}

/// Records the op over the `N` inputs.
fn finish<const N: usize>(ads: Vec<AdTensor>, state: State, out: FlexTensor) -> AdTensor {
    let nodes: [_; N] = std::array::from_fn(|k| ads[k].node.clone());
    record!(CatBackward, nodes, state, out)
}

/// The contiguous concatenation of the f32 tensors `xs` along `dim`, and each one's span
/// along it. Output row `o` (an index over the dims before `dim`) holds each input's
/// elements for `o` in turn; rows are filled in parallel.
fn concatenate(xs: &[&FlexTensor], dim: usize) -> (FlexTensor, Vec<(usize, usize)>) {
    let shape0 = xs[0].layout().shape().to_vec();
    let outer: usize = shape0[..dim].iter().product();
    let inner: usize = shape0[dim + 1..].iter().product();
    let mut spans = Vec::with_capacity(xs.len());
    let mut at = 0;
    for x in xs {
        let len = x.layout().shape()[dim];
        spans.push((at, len));
        at += len;
    }
    let row = at * inner;
    let total = outer * row;
    // Written once, by the copies below: not zeroed first (a single-threaded pass as long as
    // the copies themselves).
    let mut out = Vec::with_capacity(total);
    if total > 0 {
        out.spare_capacity_mut()[..total]
            .par_chunks_mut(row)
            .enumerate()
            .for_each(|(o, dst)| {
                let mut pos = 0;
                for (x, &(_, len)) in xs.iter().zip(&spans) {
                    let n = len * inner;
                    gather(&mut dst[pos..pos + n], x, dim, o);
                    pos += n;
                }
            });
        // SAFETY: the `total` elements of spare capacity (asked for above) were all written:
        // the rows cover `..total` exactly, each row is the inputs' `len · inner` elements
        // end to end (`at · inner` in all), and `gather` writes every element of its slice.
        unsafe { out.set_len(total) };
    }
    let mut shape = shape0;
    shape[dim] = at;
    let t = FlexTensor::from_data(burn::tensor::TensorData::new(out, shape));
    (t, spans)
}

/// The elements of `x` whose indices over the dims before `dim` are outer index `o` (row-major)
/// into `dst` (every element written), in row-major order: runs of the last dim copied whole
/// where its stride is 1, element by element otherwise. Every offset is read through a
/// bounds-checked slice.
fn gather(dst: &mut [MaybeUninit<f32>], x: &FlexTensor, dim: usize, o: usize) {
    let l = x.layout();
    let (shape, strides) = (l.shape(), l.strides());
    let src: &[f32] = x.storage();
    let rank = shape.len();
    // The offset of the row's first element.
    let mut base = l.start_offset() as isize;
    let mut rest = o;
    for d in (0..dim).rev() {
        base += (rest % shape[d]) as isize * strides[d];
        rest /= shape[d];
    }
    if dst.is_empty() {
        return;
    }
    // Whole runs of the last dim where its stride is 1; the dims walked one index at a time
    // are those from `dim` on, less a run's.
    let (run, walk) = if strides[rank - 1] == 1 {
        (shape[rank - 1], rank - 1)
    } else {
        (1, rank)
    };
    // `dst` holds whole runs: it is `len · inner` long, and a run is the last dim (a factor of
    // `inner`, or `len` itself when `dim` is the last) or one element.
    assert_eq!(dst.len() % run, 0, "cat: a slice of whole runs");
    let mut idx = vec![0usize; walk - dim];
    let mut off = base;
    for chunk in dst.chunks_exact_mut(run) {
        let at = off as usize;
        for (d, &v) in chunk.iter_mut().zip(&src[at..at + run]) {
            d.write(v);
        }
        // The next index, last walked dim fastest; `off` follows it.
        for k in (0..walk - dim).rev() {
            let d = dim + k;
            idx[k] += 1;
            off += strides[d];
            if idx[k] < shape[d] {
                break;
            }
            off -= strides[d] * shape[d] as isize;
            idx[k] = 0;
        }
    }
}

#[cfg(test)]
#[path = "tests/cat.rs"]
mod tests;
