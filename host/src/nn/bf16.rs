//! bf16 storage for frozen weights: rounding f32 to bf16 once when the backbone is loaded, and
//! multiplying with f32 activations, which are not rounded to bf16 themselves unless the user
//! asks for it ([`set_matmul_precision`]).
//!
//! Two ways to multiply. Where the CPU has AMX (Sapphire Rapids and later Xeons), the products
//! run on the tile unit with each activation split in two bf16 terms (16 significant bits, see
//! [`super::amx`]): about twice the f32 GEMM's rate. Everywhere else the weight is widened back
//! to f32 right before the product and the f32 GEMM multiplies and accumulates: widening costs
//! `out · in` shifts against `n · out · in` multiply-adds, so the product runs at the f32 rate
//! and the weights take half the memory. Under `matmul_precision: medium` (activations rounded
//! to one bf16 term) a CPU with AVX512-BF16 but no AMX multiplies with `vdpbf16ps`, two
//! multiply-adds per f32 lane ([`super::dpbf16`]); under `high` that instruction would do one
//! useful multiply-add per lane, no more than `vfmadd231ps`, so the f32 GEMM stays.
use std::borrow::Cow;

use burn::tensor::{
    backend::{AutodiffBackend, Backend},
    DType, FloatDType, Tensor, TensorData,
};
use half::{bf16, slice::HalfFloatSliceExt};
use rayon::prelude::*;

use std::sync::atomic::{AtomicBool, Ordering};

use super::{
    amx::{Bf16Mat, Terms},
    autodiff::FlexTensor,
    gemm::Mat,
};
use crate::config::MatmulPrecision;

/// `medium` set: see [`set_matmul_precision`].
static MEDIUM: AtomicBool = AtomicBool::new(false);

/// How every product with a bf16-held weight in this process reads its f32 activations
/// (`backbone.matmul_precision`; process-wide, as PyTorch's `set_float32_matmul_precision`):
/// `high` keeps them f32 (two bf16 terms on AMX), `medium` rounds them to bf16 first — one
/// tile product on AMX, and the same rounded values on the f32 path elsewhere, so that the
/// results do not depend on the CPU beyond summation order.
pub fn set_matmul_precision(p: MatmulPrecision) {
    MEDIUM.store(p == MatmulPrecision::Medium, Ordering::Relaxed);
}

pub fn matmul_precision() -> MatmulPrecision {
    if MEDIUM.load(Ordering::Relaxed) {
        MatmulPrecision::Medium
    } else {
        MatmulPrecision::High
    }
}

/// The activations' terms on AMX under the current precision.
pub(crate) fn terms() -> Terms {
    match matmul_precision() {
        MatmulPrecision::High => Terms::Two,
        MatmulPrecision::Medium => Terms::One,
    }
}

/// Which kernel multiplies by a bf16 weight on this CPU under the current precision: AMX
/// (either precision), else `vdpbf16ps` under `medium` ([`super::dpbf16`]), else the f32 GEMM
/// over the widened weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProductPath {
    Amx,
    Vdpbf16ps,
    F32Gemm,
}

impl ProductPath {
    /// The path this process takes now.
    pub fn current() -> Self {
        if super::amx::available() {
            ProductPath::Amx
        } else if terms() == Terms::One && super::dpbf16::available() {
            ProductPath::Vdpbf16ps
        } else {
            ProductPath::F32Gemm
        }
    }

    /// The name reports use: `amx`, `vdpbf16ps`, `f32 gemm`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProductPath::Amx => "amx",
            ProductPath::Vdpbf16ps => "vdpbf16ps",
            ProductPath::F32Gemm => "f32 gemm",
        }
    }
}

/// `bias + x · b` with a bf16 weight on [`ProductPath::current`]; `None` on the f32 path or
/// for an empty product (the caller widens the weight and runs the f32 GEMM).
pub(crate) fn product_vec(
    x: &[f32],
    b: Bf16Mat<'_>,
    bias: Option<&[f32]>,
    m: usize,
) -> Option<Vec<f32>> {
    match ProductPath::current() {
        ProductPath::Amx => super::amx::linear_vec(x, b, bias, m, terms()),
        ProductPath::Vdpbf16ps => super::dpbf16::linear_vec(x, b, bias, m),
        ProductPath::F32Gemm => None,
    }
}

/// `x` rounded to the nearest bf16 (ties to even; NaN stays NaN, infinities stay infinite).
pub fn round(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

/// Writes `src` widened to f32 into `dst` (exact: a bf16 is the top half of an f32).
///
/// Panics when the lengths differ. A plain shift per element, which the compiler vectorises
/// (16 lanes with AVX-512); no CPU feature check is needed.
pub fn widen_into(src: &[bf16], dst: &mut [f32]) {
    assert_eq!(
        src.len(),
        dst.len(),
        "widen: {} into {}",
        src.len(),
        dst.len()
    );
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits(u32::from(s.to_bits()) << 16);
    }
}

/// `src` widened to f32.
pub fn widen(src: &[bf16]) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
    widen_into(src, &mut out);
    out
}

/// The values a bf16-held weight would have: `x` rounded to bf16 and widened back (what the
/// tests compare a bf16 backbone against, to separate the rounding from the kernel).
pub fn rounded(x: &[f32]) -> Vec<f32> {
    widen(&round(x))
}

/// A tensor of `B` holding `values` rounded to bf16 (a frozen weight in bf16 storage).
pub fn tensor<B: Backend, const D: usize>(
    values: &[f32],
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(round(values), shape), (device, DType::BF16))
}

/// `t` (f32) rounded to a bf16 tensor of the same shape. On the CPU kernels the values are read
/// in place, so converting a weight never holds a second f32 copy of it (the word embeddings
/// are half of MiniLM's weights).
pub fn from_f32<B: AutodiffBackend, const D: usize>(
    t: Tensor<B, D>,
) -> anyhow::Result<Tensor<B, D>> {
    let (shape, device) = (t.dims(), t.device());
    if let Ok(a) = super::autodiff::ad(t.clone()) {
        if a.primitive.dtype() == DType::F32 {
            let buf = super::autodiff::Buf::new(a.primitive);
            return Ok(tensor::<B, D>(&buf, shape, &device));
        }
    }
    Ok(tensor::<B, D>(&super::to_vec(t)?, shape, &device))
}

/// `t` as f32: itself when it already is, else cast (a bf16 weight read by code that computes
/// in f32 elementwise: embedding rows, a plugin's `PARAM`).
pub fn to_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    if t.dtype() == DType::F32 {
        t
    } else {
        t.cast(FloatDType::F32)
    }
}

/// A weight's storage as the kernels read it: f32 in place (row-major, or column-major when
/// the backbone holds it so: [`super::linear::column_major`]), or bf16 kept as is and widened
/// only for the product that needs it (the backward keeps this, not an f32 copy, so a bf16
/// backbone holds no f32 copy of its weights between the forward and the backward).
#[derive(Clone, Debug)]
pub(crate) enum WeightBuf {
    F32(super::autodiff::Buf),
    /// `[out, in]` values stored as the contiguous `[in, out]` buffer.
    F32ColMajor(super::autodiff::Buf),
    Bf16(FlexTensor),
    /// bf16 `[out, in]` values stored as the contiguous `[in, out]` buffer.
    Bf16ColMajor(FlexTensor),
}

impl WeightBuf {
    pub(crate) fn new(p: FlexTensor) -> Self {
        if p.dtype() != DType::BF16 {
            if let Some(b) = super::autodiff::Buf::transposed_source(&p) {
                return WeightBuf::F32ColMajor(b);
            }
            return WeightBuf::F32(super::autodiff::Buf::new(p));
        }
        if super::autodiff::transposed_len(&p) == Some(p.storage::<bf16>().len()) {
            WeightBuf::Bf16ColMajor(p)
        } else if p.as_slice::<bf16>().is_some() {
            WeightBuf::Bf16(p)
        } else {
            WeightBuf::Bf16(p.to_contiguous())
        }
    }

    /// The values as f32, in storage order: borrowed when stored so, widened into a fresh
    /// buffer when bf16. Read them through [`WeightBuf::mat`].
    pub(crate) fn f32(&self) -> Cow<'_, [f32]> {
        match self {
            WeightBuf::F32(b) | WeightBuf::F32ColMajor(b) => Cow::Borrowed(b),
            WeightBuf::Bf16(p) => {
                // `new` kept bf16 storage only in a contiguous layout, which has a slice.
                let s = p.as_slice::<bf16>().expect("contiguous bf16 storage");
                Cow::Owned(widen(s))
            }
            // `new` checked that the storage is exactly the `[in, out]` buffer.
            WeightBuf::Bf16ColMajor(p) => Cow::Owned(widen(p.storage::<bf16>())),
        }
    }

    /// The `[out, in]` weight over `values` (what [`WeightBuf::f32`] returned).
    pub(crate) fn mat<'a>(&self, values: &'a [f32], out: usize, inp: usize) -> Mat<'a> {
        match self {
            WeightBuf::F32ColMajor(_) | WeightBuf::Bf16ColMajor(_) => {
                Mat::new(values, 0, out, inp, 1, out)
            }
            _ => Mat::rows(values, 0, out, inp, inp),
        }
    }

    /// A bf16 weight `[out, in]` as the matrix a product multiplies by: `Wᵀ` `[in, out]` (the
    /// forward's `x Wᵀ`) or `W` itself (the backward's `dy · W`), read in place; `None` for an
    /// f32 weight.
    pub(crate) fn bf16_view(
        &self,
        out: usize,
        inp: usize,
        transposed: bool,
    ) -> Option<Bf16Mat<'_>> {
        let (data, rs, cs) = match self {
            WeightBuf::F32(_) | WeightBuf::F32ColMajor(_) => return None,
            // `new` kept bf16 storage only in a contiguous layout, which has a slice.
            WeightBuf::Bf16(p) => (p.as_slice::<bf16>()?, inp, 1),
            // `new` checked that the storage is exactly the `[in, out]` buffer.
            WeightBuf::Bf16ColMajor(p) => (p.storage::<bf16>(), 1, out),
        };
        // (rs, cs) read W `[out, in]`; the transpose swaps them.
        Some(if transposed {
            Bf16Mat {
                data,
                rows: inp,
                cols: out,
                rs: cs,
                cs: rs,
            }
        } else {
            Bf16Mat {
                data,
                rows: out,
                cols: inp,
                rs,
                cs,
            }
        })
    }

    /// What a product with this weight multiplies on the f32 path: `x` itself, or under
    /// `medium` with a bf16 weight `x` rounded to bf16 (the values AMX's one-term product
    /// reads, so that both paths compute the same).
    pub(crate) fn product_input<'a>(&self, x: &'a [f32]) -> Cow<'a, [f32]> {
        let bf16 = matches!(self, WeightBuf::Bf16(_) | WeightBuf::Bf16ColMajor(_));
        if bf16 && terms() == Terms::One {
            Cow::Owned(rounded(x))
        } else {
            Cow::Borrowed(x)
        }
    }

    /// Whether the weight is stored column-major (its rows are not slices).
    pub(crate) fn col_major(&self) -> bool {
        matches!(self, WeightBuf::F32ColMajor(_) | WeightBuf::Bf16ColMajor(_))
    }

    /// A row-major f32 weight `[out, in]` rounded to a bf16 copy under `medium` (`None`
    /// otherwise): `torch.autocast` casts every weight to bf16 in each forward, and PyTorch's
    /// `medium` lets any f32 product run on bf16 operands; with the copy a trainable weight's
    /// products take the path a bf16-held weight's do (`vdpbf16ps` or AMX, or the same rounded
    /// values on the f32 GEMM elsewhere). Rounded on both cores; the backward's `dy · W` reads
    /// the same copy.
    pub(crate) fn medium_copy(&self, shape: [usize; 2]) -> Option<WeightBuf> {
        let WeightBuf::F32(values) = self else {
            return None;
        };
        if terms() != Terms::One {
            return None;
        }
        let mut out = vec![bf16::ZERO; values.len()];
        out.par_chunks_mut(1 << 14)
            .zip(values.par_chunks(1 << 14))
            .for_each(|(o, v)| super::round::round_into(v, o.reinterpret_cast_mut()));
        Some(WeightBuf::Bf16(FlexTensor::from_data(TensorData::new(
            out,
            shape.to_vec(),
        ))))
    }
}

#[cfg(test)]
#[path = "tests/bf16.rs"]
mod tests;
