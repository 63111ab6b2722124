//! `x Wᵀ + b` (nn.Linear's layout): the functional op on rank-erased tensors that the
//! backbones and the `LINEAR` opcode call, and on the CPU autodiff backend one GEMM reading W
//! transposed in place, tracked with its own backward (dW only when W trains).
use burn::{
    backend::Flex,
    tensor::{backend::AutodiffBackend, Shape, Tensor, TensorMetadata},
};
use peft_api::ApiError;

use super::{
    autodiff::{ad, into_b, primitive, record, Backward, Buf, Checkpointer, Gradients, Ops},
    bf16::WeightBuf,
    gemm::{product, Mat, Parallelism},
    low_rank::{rows_axpy, LOW_RANK},
    math::{dot, simd_dispatch},
    value::{fp, ft, FloatPrim},
};
use rayon::prelude::*;
use std::borrow::Cow;

/// `x @ w^T + b` with `w: [out, in]`, flattening leading dims into one matmul.
pub fn linear<B: AutodiffBackend>(
    x: FloatPrim<B>,
    w: FloatPrim<B>,
    b: Option<FloatPrim<B>>,
) -> Result<FloatPrim<B>, ApiError> {
    let (sx, sw) = (x.shape().to_vec(), w.shape().to_vec());
    if sw.len() != 2 || sx.last() != Some(&sw[1]) {
        return Err(ApiError::shape(format!(
            "LINEAR: input {sx:?} does not fit weight {sw:?} (expected [out, in])"
        )));
    }
    let n: usize = sx[..sx.len() - 1].iter().product();
    let x2 = ft::<B, 2>(B::float_reshape(x, Shape::from(vec![n, sw[1]])));
    if let Some(b) = &b {
        let sb = b.shape().to_vec();
        if sb != [sw[0]] {
            return Err(ApiError::shape(format!(
                "LINEAR: bias {sb:?} does not fit weight {sw:?}"
            )));
        }
    }
    let y = if super::autodiff::enabled::<B>() {
        tracked(x2, ft::<B, 2>(w), b.map(ft::<B, 1>))?
    } else {
        use burn::tensor::{DType, FloatDType};
        let w = ft::<B, 2>(w);
        let medium = super::bf16::terms() == super::amx::Terms::One;
        // `matmul_precision: medium` as on the CPU kernels (`tracked`): an f32 weight whose
        // product is GEMM-sized rounded to bf16 — its values only: `w + (bf16(w) − w)` with
        // the difference detached is exactly bf16(w) and passes the f32 gradient straight
        // through, where a tracked cast would round the gradient too — and the activations of
        // every product with a bf16 weight.
        let round_w = medium && gemm_sized([n, sw[0], sw[1]]) && w.dtype() == DType::F32;
        let w = if round_w {
            let r = super::bf16::to_f32(w.clone().detach().cast(FloatDType::BF16));
            w.clone() + (r - w.detach())
        } else {
            w
        };
        let x2 = if medium && (round_w || w.dtype() == DType::BF16) {
            super::bf16::to_f32(x2.cast(FloatDType::BF16))
        } else {
            x2
        };
        // burn's matmul wants one dtype: a bf16 weight is widened first.
        let w = super::bf16::to_f32(w);
        let y = x2.matmul(w.transpose());
        match b {
            Some(b) => y + ft::<B, 1>(b).unsqueeze::<2>(),
            None => y,
        }
    };
    let mut out = sx;
    if let Some(last) = out.last_mut() {
        *last = sw[0];
    }
    Ok(B::float_reshape(fp(y), Shape::from(out)))
}

/// Whether a product over `n` rows with a weight `[out, in]` runs on a GEMM, past the few-rows
/// ([`SKINNY_ROWS`]) and low-rank ([`LOW_RANK`]) kernels: what `medium` rounds a trained f32
/// weight for (the low-rank products of LoRA and the adapters keep f32; bf16 would save them
/// nothing).
fn gemm_sized([n, o, i]: [usize; 3]) -> bool {
    n > SKINNY_ROWS && o > LOW_RANK && i > LOW_RANK
}

/// `gelu(x Wᵀ + b)` without gradients (a BERT intermediate layer), the activation applied
/// where the product's output is still being written or read once: on `vdpbf16ps` (a bf16
/// weight under `matmul_precision: medium`, no AMX) in the microkernel's epilogue
/// (`nn::dpbf16`), each block of rows while in cache; on the f32 GEMM the product is written
/// once and one pass adds the bias and applies GELU ([`super::gelu::bias_gelu`]), where
/// [`linear`] then [`super::gelu()`] read and wrote the whole `[tokens, 4·hidden]` output
/// twice more. The same values as those two (bit for bit on the f32 path). `None` (nothing
/// computed) where neither applies (AMX, few rows, a narrow inner width): the caller runs the
/// two apart.
pub fn gelu_product<B: AutodiffBackend>(
    x: &Tensor<B, 3>,
    w: FloatPrim<B>,
    b: FloatPrim<B>,
) -> Result<Option<Tensor<B, 3>>, ApiError> {
    use super::bf16::ProductPath;
    if !super::autodiff::enabled::<B>() {
        return Ok(None);
    }
    let (w, b) = (ft::<B, 2>(w), ft::<B, 1>(b));
    let [bs, t, i] = x.dims();
    let (n, o) = (bs * t, w.dims()[0]);
    if w.dims()[1] != i || b.dims() != [o] || n <= SKINNY_ROWS {
        return Ok(None);
    }
    let path = ProductPath::current();
    let bf16 = w.dtype() == burn::tensor::DType::BF16;
    if bf16 && path == ProductPath::Amx {
        return Ok(None);
    }
    let _t = super::timing::span("linear gelu");
    let wv = WeightBuf::new(ad(w)?.primitive);
    let xv = Buf::new(ad(x.clone().reshape([n, i]))?.primitive);
    let bv = Buf::new(ad(b)?.primitive);
    let y = if bf16 && path == ProductPath::Vdpbf16ps {
        let Some(view) = wv.bf16_view(o, i, true) else {
            return Ok(None);
        };
        let epilogue = super::dpbf16::Epilogue::Gelu;
        let Some(y) = super::dpbf16::linear_vec_then(&xv, view, Some(&bv), n, epilogue) else {
            return Ok(None);
        };
        y
    } else {
        // The f32 GEMM, as `tracked` runs it for these shapes (a bf16 weight widened).
        if i <= LOW_RANK {
            return Ok(None);
        }
        let (wf, xs) = (wv.f32(), wv.product_input(&xv));
        let mut y = gemm_forward(&wv, &wf, &xs, [n, o, i]);
        super::gelu::bias_gelu(&mut y, &bv);
        y
    };
    Ok(Some(super::from_vec(y, [bs, t, o], &x.device())))
}

/// `w` `[out, in]` with the same values and dtype (f32 or bf16) stored column-major (the
/// contiguous `[in, out]` buffer, seen through a transposed view), on the CPU backend;
/// unchanged elsewhere.
///
/// Why: the `gemm` crate packs a row-major `W` for `x Wᵀ` one element at a time with strided
/// loads (`gemm_common`'s `pack_lhs` for a non-unit row stride), which cost 10 % of a t5-small
/// forward and made a `[1024, 512] × [512, 512]` product run at half the rate of the same
/// product over a column-major `W` (`examples/gemm_layouts.rs`); a column-major weight is read
/// in place. The backward's `dy · W` prefers the row-major layout, by less. Frozen projection
/// weights are held this way ([`crate::backbone::precision::hold`]).
pub fn column_major<B: AutodiffBackend>(w: Tensor<B, 2>) -> Tensor<B, 2> {
    use burn::tensor::DType;
    let dtype = w.dtype();
    if !super::autodiff::enabled::<B>() || !matches!(dtype, DType::F32 | DType::BF16) {
        return w;
    }
    let [o, i] = w.dims();
    // bf16 values widen to f32 exactly, so rounding them back is exact too.
    let values = match super::to_vec(w.clone()) {
        Ok(v) => v,
        Err(_) => return w,
    };
    let t = transposed(&values, o, i);
    let held = if dtype == DType::BF16 {
        super::bf16::tensor::<B, 2>(&t, [i, o], &w.device())
    } else {
        super::from_vec::<B, 2>(t, [i, o], &w.device())
    }
    .transpose();
    if w.is_require_grad() {
        held.require_grad()
    } else {
        held
    }
}

/// The row-major `[rows, cols]` values transposed (row-major `[cols, rows]`): element
/// `(r, c)` lands at `c·rows + r`. Each rayon task writes its own band of output rows, in
/// 8 × 8 tiles that the compiler transposes in registers.
pub fn transposed(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(values.len(), rows * cols, "transpose of {rows}x{cols}");
    let mut t = vec![0f32; rows * cols];
    if t.is_empty() {
        return t;
    }
    t.par_chunks_mut(BAND * rows)
        .enumerate()
        .for_each(|(band, out)| transpose_band(out, values, rows, cols, band * BAND));
    t
}

/// Output rows (source columns) per task of [`transposed`].
const BAND: usize = 32;
/// Tile side of [`transpose_band`].
const TILE: usize = 8;

simd_dispatch! {
    /// Output rows `c0 .. c0 + out.len() / rows` of [`transposed`] into `out`.
    fn transpose_band(out: &mut [f32], values: &[f32], rows: usize, cols: usize, c0: usize) {
        let band = out.len() / rows;
        let (full_r, full_c) = (rows / TILE * TILE, band / TILE * TILE);
        for r0 in (0..full_r).step_by(TILE) {
            for c in (0..full_c).step_by(TILE) {
                let mut tile = [[0f32; TILE]; TILE];
                for (k, row) in tile.iter_mut().enumerate() {
                    row.copy_from_slice(&values[(r0 + k) * cols + c0 + c..][..TILE]);
                }
                for j in 0..TILE {
                    let d = &mut out[(c + j) * rows + r0..][..TILE];
                    for (k, d) in d.iter_mut().enumerate() {
                        *d = tile[k][j];
                    }
                }
            }
        }
        // The edges: the last columns of the band, then the last rows.
        for r in 0..full_r {
            for c in full_c..band {
                out[c * rows + r] = values[r * cols + c0 + c];
            }
        }
        for r in full_r..rows {
            for c in 0..band {
                out[c * rows + r] = values[r * cols + c0 + c];
            }
        }
    }
}

/// Below this many rows of `x` (forward) or `dy` (backward), a product whose weight is held in
/// the layout the `gemm` crate reads slowly for it multiplies a transposed copy instead
/// (`out · in` values moved, in registers, against `n · out · in` multiply-adds). Slowly means
/// a row-major `W` in `x · Wᵀ` with `in ≥ out`, or a column-major `W` in `dy · W` with
/// `out ≥ in`: the crate then packs the long side with strided loads. `examples/gemm_layouts.rs`
/// (two cores, the copy's time included): at 256 rows `x · Wᵀ` over `[512, 2048]` 68 → 170
/// GFLOP/s, `dy · W` over `[2048, 512]` 74 → 165; at 1,024 rows 146–183 → 181–207 and
/// 144–182 → 190–211; the other aspect, the other layout, or 4,096 rows: no gain, so the
/// weight is read in place. Trainable weights are row-major (a hypermodel's, at a few hundred
/// rows per pass), frozen ones column-major (`column_major`; a decoder's backward runs at
/// batch × target rows).
const RELAYOUT_ROWS: usize = 2048;
/// Larger weights (a vocabulary head) are read in place: their copy costs more than it saves.
const RELAYOUT_MAX: usize = 1 << 22;

/// The weight `[out, in]` over its f32 `values` (`WeightBuf::f32`) as a product over `n` rows
/// reads it: in place, or from a transposed copy kept in `copy` (see [`RELAYOUT_ROWS`]), laid
/// out column-major for the forward `x · Wᵀ` (`col_major`) or row-major for the backward's
/// `dy · W`.
fn weight_mat<'a>(
    w: &WeightBuf,
    values: &'a [f32],
    copy: &'a mut Option<Vec<f32>>,
    [n, o, i]: [usize; 3],
    col_major: bool,
) -> Mat<'a> {
    let slow = w.col_major() != col_major && if col_major { i >= o } else { o >= i };
    if !slow || n >= RELAYOUT_ROWS || o * i > RELAYOUT_MAX {
        return w.mat(values, o, i);
    }
    let _t = super::timing::span("weight relayout");
    if col_major {
        Mat::new(copy.insert(transposed(values, o, i)), 0, o, i, 1, o)
    } else {
        Mat::rows(copy.insert(transposed(values, i, o)), 0, o, i, i)
    }
}

/// `x Wᵀ` without a bias on the f32 GEMM, written once into a fresh buffer, for `xs` `[n, in]`
/// as the weight's products read it (`WeightBuf::product_input`) and the weight's f32 `values`
/// (what [`linear`]'s tracked op and [`gelu_product`] both run for more than a few rows).
fn gemm_forward(w: &WeightBuf, values: &[f32], xs: &[f32], [n, o, i]: [usize; 3]) -> Vec<f32> {
    let mut copy = None;
    let wm = weight_mat(w, values, &mut copy, [n, o, i], true);
    product(
        Mat::rows(xs, 0, n, i, i),
        wm.t(),
        1.0,
        Parallelism::Rayon(0),
    )
}

/// Rows per parallel task of [`repeat_rows`].
const FILL_ROWS: usize = 64;

/// `n` copies of `row`, one after another (a linear's output starts as its bias rows), written
/// by rayon's threads straight into fresh memory: one pass over the output instead of a
/// zeroing pass and a copy, on every thread instead of one.
fn repeat_rows(row: &[f32], n: usize) -> Vec<f32> {
    let o = row.len();
    let len = n * o;
    if len == 0 {
        return Vec::new();
    }
    let mut y = Vec::with_capacity(len);
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(o * FILL_ROWS)
        .for_each(|chunk| {
            for r in chunk.chunks_exact_mut(o) {
                for (d, &s) in r.iter_mut().zip(row) {
                    d.write(s);
                }
            }
        });
    // SAFETY: the `len` elements of spare capacity (asked for above) were all written: the
    // chunks cover `..len` exactly and each is a whole number of `o`-long rows.
    unsafe { y.set_len(len) };
    y
}

/// `y[r] += bias` for every `bias`-long row of `y`, rows split across rayon's threads.
fn add_rows(y: &mut [f32], bias: &[f32]) {
    let o = bias.len();
    y.par_chunks_mut(o * FILL_ROWS)
        .for_each(|rows| add_row_chunk(rows, bias));
}

simd_dispatch! {
    /// [`add_rows`] on one chunk of whole rows.
    fn add_row_chunk(rows: &mut [f32], bias: &[f32]) {
        for r in rows.chunks_exact_mut(bias.len()) {
            for (y, &b) in r.iter_mut().zip(bias) {
                *y += b;
            }
        }
    }
}

/// Up to this many input rows (a decoding step's batch), [`skinny`] replaces the GEMM.
pub(crate) const SKINNY_ROWS: usize = 16;
/// Output features per parallel task of [`skinny`].
const SKINNY_CHUNK: usize = 256;

/// `y += x Wᵀ` for few rows `x` `[n, in]` (`n ≤` [`SKINNY_ROWS`]), `W` `[out, in]`, `y`
/// `[n, out]`: each weight row is read once and dotted with every row of `x`, which stays in
/// L1. A decoding step's products have this shape (a handful of rows against a
/// vocabulary-sized W): the packed GEMM would copy the whole of W on every call, and copying
/// dominated greedy decoding's profile.
pub(crate) fn skinny(y: &mut [f32], x: &[f32], w: &[f32], [n, i, o]: [usize; 3]) {
    if n == 0 || o == 0 {
        return;
    }
    // Output features as `[out, n]` so that each task owns a contiguous piece.
    let mut yt = vec![0f32; o * n];
    yt.par_chunks_mut(SKINNY_CHUNK * n)
        .enumerate()
        .for_each(|(c, out)| {
            let j0 = c * SKINNY_CHUNK;
            let rows = out.len() / n;
            skinny_rows(out, x, &w[j0 * i..(j0 + rows) * i], n, i);
        });
    for (r, yr) in y.chunks_exact_mut(o).enumerate() {
        for (j, v) in yr.iter_mut().enumerate() {
            *v += yt[j * n + r];
        }
    }
}

simd_dispatch! {
    /// `out[j·n + r] = x_r · w_j` for the weight rows `w` (each `i` long).
    fn skinny_rows(out: &mut [f32], x: &[f32], w: &[f32], n: usize, i: usize) {
        for (o, wr) in out.chunks_exact_mut(n).zip(w.chunks_exact(i)) {
            for (r, v) in o.iter_mut().enumerate() {
                *v = dot(&x[r * i..(r + 1) * i], wr);
            }
        }
    }
}

/// A weight `[out, in]` as the f32 rows of `W` (`row_major`) or of `Wᵀ`: borrowed where an
/// f32 weight is stored so, else copied (bf16 widened exactly); callers ask only for
/// low-rank weights, whose copies are small.
fn weight_rows(w: &WeightBuf, o: usize, i: usize, row_major: bool) -> Cow<'_, [f32]> {
    let stored = w.f32();
    match (w.col_major(), row_major) {
        (false, true) | (true, false) => stored,
        (false, false) => Cow::Owned(transposed(&stored, o, i)),
        (true, true) => Cow::Owned(transposed(&stored, i, o)),
    }
}

#[derive(Debug)]
struct LinearBackward;

/// The input (kept only when the weight needs its gradient), the weight (bf16 stays bf16),
/// and `[n, in, out]`.
type LinearState = (Option<Buf>, WeightBuf, [usize; 3]);

impl Backward<Flex, 3> for LinearBackward {
    type State = LinearState;

    fn backward(self, ops: Ops<LinearState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let _t = super::timing::span("linear backward");
        // The incoming gradient, read where it lies.
        let dy = Buf::new(grads.consume::<Flex>(&ops.node));
        let (x, w, [n, i, o]) = ops.state;
        let [px, pw, pb] = &ops.parents;
        let dym = Mat::rows(&dy, 0, n, o, o);
        if let Some(node) = px {
            // dx = dy · W (a bf16 W on AMX or AVX512-BF16 when the CPU has it)
            let on_amx = (n > SKINNY_ROWS)
                .then(|| w.bf16_view(o, i, false))
                .flatten()
                .and_then(|b| super::bf16::product_vec(&dy, b, None, n));
            // A down-projection's input gradient (inner width `o` small): `nn::low_rank`.
            let low = || {
                (o <= LOW_RANK).then(|| {
                    let m = weight_rows(&w, o, i, true);
                    rows_axpy(&w.product_input(&dy), &m, None, [n, o, i])
                })
            };
            let dx = on_amx.or_else(low).unwrap_or_else(|| {
                let wf = w.f32();
                let mut copy = None;
                let w_mat = weight_mat(&w, &wf, &mut copy, [n, o, i], false);
                let dyp = w.product_input(&dy);
                let dyp = Mat::rows(&dyp, 0, n, o, o);
                product(dyp, w_mat, 1.0, Parallelism::Rayon(0))
            });
            grads.register::<Flex>(node.id, primitive(dx, [n, i]));
        }
        if let (Some(node), Some(x)) = (pw, x) {
            // dW = dyᵀ · x
            let dw = product(
                dym.t(),
                Mat::rows(&x, 0, n, i, i),
                1.0,
                Parallelism::Rayon(0),
            );
            grads.register::<Flex>(node.id, primitive(dw, [o, i]));
        }
        if let Some(node) = pb {
            let mut db = vec![0f32; o];
            for row in dy.chunks_exact(o) {
                db.iter_mut().zip(row).for_each(|(a, b)| *a += b);
            }
            grads.register::<Flex>(node.id, primitive(db, [o]));
        }
    }
}

/// `x Wᵀ + b` for `x` `[n, in]`, `W` `[out, in]`, `b` `[out]` as one tracked operation of the
/// CPU autodiff backend.
pub fn tracked<B: AutodiffBackend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    b: Option<Tensor<B, 1>>,
) -> Result<Tensor<B, 2>, ApiError> {
    let _t = super::timing::span("linear");
    let [n, i] = x.dims();
    let o = w.dims()[0];
    if w.dims()[1] != i || b.as_ref().is_some_and(|b| b.dims() != [o]) {
        return Err(ApiError::shape(format!(
            "linear: x {:?}, weight {:?}, bias {:?} do not fit [n, in], [out, in], [out]",
            x.dims(),
            w.dims(),
            b.map(|b| b.dims())
        )));
    }
    let device = x.device();
    let has_bias = b.is_some();
    let b = b.unwrap_or_else(|| Tensor::zeros([o], &device));
    let (xa, wa, ba) = (ad(x)?, ad(w)?, ad(b)?);
    let (xv, wv, bv) = (
        Buf::new(xa.primitive.clone()),
        WeightBuf::new(wa.primitive.clone()),
        Buf::new(ba.primitive.clone()),
    );
    // Under `medium` an f32 weight whose product runs on the GEMM (past the skinny and
    // low-rank kernels, which stay f32: LoRA's and adapters' products) is rounded to bf16 for
    // this call, as autocast does; `dW` below still reads the f32 input.
    let wv = gemm_sized([n, o, i])
        .then(|| wv.medium_copy([o, i]))
        .flatten()
        .unwrap_or(wv);
    // A bf16 weight goes to AMX when the CPU has it (`nn::amx`: the activations split in two
    // bf16 terms, the bias rows the accumulators' start), or under `medium` to `vdpbf16ps`.
    let on_amx = (n > SKINNY_ROWS)
        .then(|| wv.bf16_view(o, i, true))
        .flatten()
        .and_then(|b| super::bf16::product_vec(&xv, b, Some(&bv), n));
    // An up-projection (inner width `i` small): `nn::low_rank`, each output row summed in
    // registers and written once.
    let low = || {
        (i <= LOW_RANK).then(|| {
            let m = weight_rows(&wv, o, i, false);
            rows_axpy(&wv.product_input(&xv), &m, Some(&bv), [n, i, o])
        })
    };
    let y = on_amx.or_else(low).unwrap_or_else(|| {
        let wf = wv.f32();
        let xs = wv.product_input(&xv);
        if n <= SKINNY_ROWS && !wv.col_major() {
            let mut y = repeat_rows(&bv, n);
            skinny(&mut y, &xs, &wf, [n, i, o]);
            y
        } else {
            // The product written once, then the bias added row by row (see `gemm::product`).
            // A column-major weight goes to the GEMM at any row count: it reads such a weight
            // in place, without packing it.
            let mut y = gemm_forward(&wv, &wf, &xs, [n, o, i]);
            if has_bias {
                add_rows(&mut y, &bv);
            }
            y
        }
    });
    let out = primitive(y, [n, o]);
    let keep_x = !wa.node.requirement.is_none();
    let nodes = [xa.node.clone(), wa.node.clone(), ba.node.clone()];
    let result = record!(
        LinearBackward,
        nodes,
        (keep_x.then_some(xv), wv, [n, i, o]),
        out
    );
    into_b(result)
}

#[cfg(test)]
#[path = "tests/linear.rs"]
mod tests;
