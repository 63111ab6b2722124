//! What the tracked kernels share: they run on burn's CPU autodiff backend only, read their
//! inputs' storage in place, and register their gradients as CPU tensors.
use std::any::{Any, TypeId};

use burn::{
    backend::{Autodiff, Flex},
    tensor::{
        backend::{AutodiffBackend, BackendTypes},
        Tensor, TensorData, TensorPrimitive,
    },
};
use peft_api::ApiError;

/// What every tracked kernel uses from burn's autodiff, in one place.
pub(crate) use burn::backend::autodiff::{
    checkpoint::{base::Checkpointer, strategy::NoCheckpointing},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};

/// Records the tracked op `op` (a [`Backward`]) over the parent nodes `nodes` with its output
/// primitive `out`, keeping `state` for the backward only when a parent is tracked: how every
/// tracked kernel ends (a macro, as burn's node type is not nameable outside its crate).
/// Evaluates to the CPU-autodiff result; [`into_b`] turns it into a tensor of `B`.
macro_rules! record {
    ($op:expr, $nodes:expr, $state:expr, $out:expr) => {{
        use $crate::nn::autodiff::{Backward as _, NoCheckpointing, OpsKind};
        let out = $out;
        match $op
            .prepare::<NoCheckpointing>($nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish($state, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }};
}
pub(crate) use record;

pub(crate) type Ad = Autodiff<Flex>;
/// The CPU autodiff backend's float primitive (burn-autodiff's `AutodiffTensor<Flex>`).
pub(crate) type AdTensor = <Ad as BackendTypes>::FloatTensorPrimitive;
pub(crate) type FlexTensor = <Flex as BackendTypes>::FloatTensorPrimitive;

/// Whether `B` is the CPU autodiff backend (and the kernels are not turned off).
pub fn enabled<B: AutodiffBackend>() -> bool {
    super::cpu::enabled::<B>() && TypeId::of::<B>() == TypeId::of::<Ad>()
}

/// Whether a gradient flows into `x` (a trainable parameter or anything computed from one);
/// false on another backend.
pub fn tracks_grad<B: AutodiffBackend, const D: usize>(x: &Tensor<B, D>) -> bool {
    ad(x.clone()).is_ok_and(|a| !a.node.requirement.is_none())
}

/// A tensor of `B` as the CPU autodiff backend's primitive; an error on another backend.
pub(crate) fn ad<B: AutodiffBackend, const D: usize>(
    x: Tensor<B, D>,
) -> Result<AdTensor, ApiError> {
    cast(x.into_primitive().tensor())
}

/// A CPU-autodiff result as a tensor of `B` (which is that backend: `ad` succeeded on its
/// inputs).
pub(crate) fn into_b<B: AutodiffBackend, const D: usize>(
    t: AdTensor,
) -> Result<Tensor<B, D>, ApiError> {
    let p = cast::<AdTensor, <B as BackendTypes>::FloatTensorPrimitive>(t)?;
    Ok(Tensor::from_primitive(TensorPrimitive::Float(p)))
}

fn cast<T: 'static, U: 'static>(t: T) -> Result<U, ApiError> {
    (Box::new(t) as Box<dyn Any>)
        .downcast::<U>()
        .map(|b| *b)
        .map_err(|_| {
            ApiError::internal(format!(
                "a tracked CPU kernel was used on another backend ({})",
                std::any::type_name::<U>()
            ))
        })
}

/// A float tensor's storage, borrowed where it lies (copied only when strided or not f32):
/// the inputs the kernels read and the backward keeps. Derefs to its `len` elements.
#[derive(Clone, Debug)]
pub(crate) struct Buf(FlexTensor, usize);

/// `p` with a contiguous layout: itself when it already is one; an f32 view whose last dim
/// is adjacent (head splits, broadcast batches, narrowed blocks) copied a whole last-dim run
/// at a time, where burn-flex walks layouts of more than two dims that do not collapse
/// element by element; anything else through burn-flex.
pub(crate) fn contiguous(p: FlexTensor) -> FlexTensor {
    let l = p.layout();
    if l.is_contiguous() && l.start_offset() == 0 {
        return p;
    }
    let (shape, strides) = (l.shape().to_vec(), l.strides().to_vec());
    let rank = shape.len();
    let runs = p.dtype() == burn::tensor::DType::F32
        && rank >= 2
        && strides[rank - 1] == 1
        && strides.iter().all(|&s| s >= 0);
    if !runs {
        return p.to_contiguous();
    }
    let src: &[f32] = p.storage();
    let inner = shape[rank - 1];
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    if n > 0 {
        let mut idx = vec![0usize; rank - 1];
        let mut off = l.start_offset();
        for _ in 0..n / inner {
            // In bounds: the layout addresses only elements of its storage (slicing panics
            // rather than read past it).
            out.extend_from_slice(&src[off..off + inner]);
            // The next outer index, last dim fastest; `off` follows it.
            for d in (0..rank - 1).rev() {
                idx[d] += 1;
                off += strides[d] as usize;
                if idx[d] < shape[d] {
                    break;
                }
                off -= strides[d] as usize * shape[d];
                idx[d] = 0;
            }
        }
    }
    FlexTensor::from_data(TensorData::new(out, shape))
}

/// `x` with its CPU storage made [`contiguous`] (same values, same place in the autodiff
/// graph: only the primitive's layout changes), so that burn's ops after it copy whole runs
/// instead of walking a strided view; unchanged on another backend.
pub fn contiguous_tensor<B: AutodiffBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if !enabled::<B>() {
        return x;
    }
    let Ok(mut a) = ad(x.clone()) else {
        return x;
    };
    a.primitive = contiguous(a.primitive);
    into_b(a).unwrap_or(x)
}

impl Buf {
    pub(crate) fn new(p: FlexTensor) -> Self {
        let f32 = p.dtype() == burn::tensor::DType::F32;
        let p = if f32 {
            contiguous(p)
        } else {
            FlexTensor::from_data(p.into_data().convert::<f32>())
        };
        let n = p.layout().num_elements();
        Buf(p, n)
    }

    /// `[b, heads, s, dh]` keys or values that are the head split (a `swap_dims` view) of a
    /// `[b, s, heads·dh]` projection: that projection's buffer, read as `[b, s, h]` without a
    /// copy. `None` for any other layout.
    pub(crate) fn split_heads_source(p: &FlexTensor) -> Option<Self> {
        let l = p.layout();
        let &[b, heads, s, dh] = l.shape().as_slice() else {
            return None;
        };
        let h = heads * dh;
        let want = [(s * h) as isize, dh as isize, h as isize, 1];
        let fits = p.dtype() == burn::tensor::DType::F32
            && l.start_offset() == 0
            && l.strides() == want
            && p.storage::<f32>().len() == b * s * h;
        fits.then(|| Buf(p.clone(), b * s * h))
    }

    /// A `[rows, cols]` f32 view that is the transpose (`swap_dims`) of a contiguous
    /// `[cols, rows]` buffer: that buffer, read without a copy (element `(r, c)` at
    /// `c·rows + r`). `None` for any other layout. A frozen projection weight is held this way
    /// ([`super::linear::column_major`]).
    pub(crate) fn transposed_source(p: &FlexTensor) -> Option<Self> {
        let n = transposed_len(p)?;
        (p.dtype() == burn::tensor::DType::F32 && p.storage::<f32>().len() == n)
            .then(|| Buf(p.clone(), n))
    }
}

/// The element count of a `[rows, cols]` view that is the transpose of a contiguous
/// `[cols, rows]` buffer starting at offset 0 (any dtype); `None` for another layout. The
/// caller checks that the storage holds exactly that many elements of its dtype.
pub(crate) fn transposed_len(p: &FlexTensor) -> Option<usize> {
    let l = p.layout();
    let &[rows, cols] = l.shape().as_slice() else {
        return None;
    };
    (rows > 1 && cols > 1 && l.start_offset() == 0 && l.strides() == [1, rows as isize])
        .then_some(rows * cols)
}

impl std::ops::Deref for Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // `new` made the storage contiguous f32 from offset 0; `split_heads_source` and
        // `transposed_source` checked that the storage is exactly the buffer they read.
        &self.0.storage::<f32>()[..self.1]
    }
}

/// A gradient's values, row-major, owned: moved out of the tensor without a copy when it is
/// the only owner of a contiguous buffer (what a backward that works in place wants; one that
/// only reads uses [`Buf`]).
pub(crate) fn owned(p: FlexTensor) -> Vec<f32> {
    Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(p))
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 data")
}

/// A CPU tensor from row-major values.
pub(crate) fn primitive<const D: usize>(v: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    Tensor::<Flex, D>::from_data(TensorData::new(v, shape), &Default::default())
        .into_primitive()
        .tensor()
}

#[cfg(test)]
#[path = "tests/contiguous.rs"]
mod tests;
