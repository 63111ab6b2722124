//! A batched `a @ b` (equal leading dims) on the CPU autodiff backend as one tracked
//! operation: a GEMM per batch item (or `nn::low_rank`'s row kernel when the inner width is at
//! most 16), with its own backward (`dA = dY Bᵀ`, `dB = Aᵀ dY`, each only when needed).
//!
//! Why: the op API's `MATMUL` went to burn-flex's matmul, which ran PHA's per-example adapters
//! (`[32, 128, 384] @ [32, 384, 8]`, then back up) at ~9 GFLOP/s, forward and backward. Shapes
//! whose leading dims broadcast keep burn's op (`None`).
use burn::{
    backend::Flex,
    tensor::{backend::AutodiffBackend, DType, Tensor},
};
use peft_api::ApiError;
use rayon::prelude::*;

use super::{
    autodiff::{ad, into_b, primitive, record, Backward, Buf, Checkpointer, Gradients, Ops},
    gemm::{matmul, Mat, MatMut, Parallelism},
    low_rank::{rows_axpy_batched, LOW_RANK},
};

/// `[batch, m, k, n]` of a product whose leading dims (flattened into `batch`) agree.
type Dims = [usize; 4];

/// `a @ b` when both are f32 with the same leading dims, as a tracked op; `Ok(None)` (nothing
/// done) when the kernels are off, the leading dims differ (broadcasting) or a dtype is not f32.
pub fn tracked<B: AutodiffBackend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
) -> Result<Option<Tensor<B, D>>, ApiError> {
    if !super::autodiff::enabled::<B>() || D < 2 {
        return Ok(None);
    }
    let (sa, sb) = (a.dims(), b.dims());
    let same_batch = sa[..D - 2] == sb[..D - 2];
    if !same_batch || sa[D - 1] != sb[D - 2] || a.dtype() != DType::F32 || b.dtype() != DType::F32 {
        return Ok(None);
    }
    let _t = super::timing::span("matmul");
    let batch: usize = sa[..D - 2].iter().product();
    let dims = [batch, sa[D - 2], sa[D - 1], sb[D - 1]];
    let (aa, ba) = (ad(a)?, ad(b)?);
    let (av, bv) = (
        Buf::new(aa.primitive.clone()),
        Buf::new(ba.primitive.clone()),
    );
    let y = forward(&av, &bv, dims);
    let mut out = sa;
    out[D - 1] = sb[D - 1];
    let y = primitive(y, out);
    let need_a = !aa.node.requirement.is_none();
    let need_b = !ba.node.requirement.is_none();
    let state = MatmulState {
        a: need_b.then_some(av),
        b: need_a.then_some(bv),
        dims,
        shape_a: sa.to_vec(),
        shape_b: sb.to_vec(),
    };
    let result = record!(MatmulBackward, [aa.node.clone(), ba.node.clone()], state, y);
    into_b(result).map(Some)
}

/// `y[i] = a[i] · b[i]` for each batch item, row-major.
fn forward(a: &[f32], b: &[f32], [batch, m, k, n]: Dims) -> Vec<f32> {
    if k <= LOW_RANK {
        // Each output row summed in registers from its k input values (`nn::low_rank`).
        return rows_axpy_batched(a, b, None, [batch, m, k, n]);
    }
    let mut y = vec![0f32; batch * m * n];
    per_item(&mut y, m * n, batch, |i, out, par| {
        let am = Mat::rows(a, i * m * k, m, k, k);
        let bm = Mat::rows(b, i * k * n, k, n, n);
        matmul(&mut MatMut::dense(out, m, n), 0.0, am, bm, 1.0, par);
    });
    y
}

/// Runs `f(item, its output, parallelism)` over `batch` items of `len` outputs each: the
/// items across threads when there are several, else the one GEMM on all of them.
fn per_item(
    out: &mut [f32],
    len: usize,
    batch: usize,
    f: impl Fn(usize, &mut [f32], Parallelism) + Sync,
) {
    if batch == 1 {
        f(0, out, Parallelism::Rayon(0));
    } else if len > 0 {
        out.par_chunks_mut(len)
            .enumerate()
            .for_each(|(i, o)| f(i, o, Parallelism::None));
    }
}

#[derive(Debug)]
struct MatmulBackward;

/// The operands each gradient needs (`a` for `dB`, `b` for `dA`), the dims and the shapes.
#[derive(Clone, Debug)]
struct MatmulState {
    a: Option<Buf>,
    b: Option<Buf>,
    dims: Dims,
    shape_a: Vec<usize>,
    shape_b: Vec<usize>,
}

impl Backward<Flex, 2> for MatmulBackward {
    type State = MatmulState;

    fn backward(self, ops: Ops<MatmulState, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let _t = super::timing::span("matmul backward");
        let dy = Buf::new(grads.consume::<Flex>(&ops.node));
        let s = ops.state;
        let [batch, m, k, n] = s.dims;
        let [pa, pb] = &ops.parents;
        if let (Some(node), Some(b)) = (pa, &s.b) {
            // dA[i] = dY[i] · B[i]ᵀ
            let mut da = vec![0f32; batch * m * k];
            per_item(&mut da, m * k, batch, |i, out, par| {
                let dym = Mat::rows(&dy, i * m * n, m, n, n);
                let bt = Mat::rows(b, i * k * n, k, n, n).t();
                matmul(&mut MatMut::dense(out, m, k), 0.0, dym, bt, 1.0, par);
            });
            grads.register::<Flex>(node.id, primitive_of(da, &s.shape_a));
        }
        if let (Some(node), Some(a)) = (pb, &s.a) {
            // dB[i] = A[i]ᵀ · dY[i]
            let mut db = vec![0f32; batch * k * n];
            per_item(&mut db, k * n, batch, |i, out, par| {
                let at = Mat::rows(a, i * m * k, m, k, k).t();
                let dym = Mat::rows(&dy, i * m * n, m, n, n);
                matmul(&mut MatMut::dense(out, k, n), 0.0, at, dym, 1.0, par);
            });
            grads.register::<Flex>(node.id, primitive_of(db, &s.shape_b));
        }
    }
}

/// A CPU tensor of `shape` (any rank) from row-major values.
fn primitive_of(v: Vec<f32>, shape: &[usize]) -> super::autodiff::FlexTensor {
    super::autodiff::FlexTensor::from_data(burn::tensor::TensorData::new(v, shape.to_vec()))
}

#[cfg(test)]
#[path = "tests/matmul.rs"]
mod tests;
