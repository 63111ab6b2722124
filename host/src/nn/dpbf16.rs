//! Products with a bf16-held weight under `matmul_precision: medium` on CPUs that have
//! AVX512-BF16 but not AMX (AMD Zen 4 and later, Intel Cooper Lake): `vdpbf16ps`.
//!
//! Why only under `medium`: the instruction multiplies pairs of bf16 values and adds both
//! products into one f32 lane, so with the activations rounded to one bf16 term (what `medium`
//! asks for) it does two multiply-adds per lane where `vfmadd231ps` does one. Under `high` an
//! activation needs two terms, which leaves one useful multiply-add per lane — no gain over the
//! f32 GEMM, which keeps that case.
//!
//! Layout: the weight is packed once per product into 48-column strips of interleaved pairs
//! (for each pair of inner positions, 48 columns × 2 = 96 bf16 = three zmm registers, the pairs
//! as the instruction wants them); the activations are rounded to bf16 row-major, a block of
//! rows at a time (≤ 256 KiB, in L2). The microkernel keeps an 8 × 48 block of the output in 24
//! registers; per inner pair it loads three weight vectors and broadcasts one pair of each of
//! 8 rows: 24 instructions, 768 multiply-adds. The inner dimension is blocked so that a strip's
//! slice of the weight stays in L1 ([`run`]). Measured on a 2-core AMD EPYC (Zen 4) by `cargo
//! run --release -p peft-host --example bf16_products`: 1.8–1.9× the f32 GEMM's rate on one
//! core and 1.6–1.8× on two, on MiniLM's and t5-small's shapes (the instruction's peak is 2×;
//! the isolated microkernel reaches 99 % of it).
//!
//! The `unsafe` is the microkernel (`imp::kernel`, AVX-512 intrinsics) and the `set_len` of an
//! output it wrote whole; [`linear`] checks every extent first and [`available`] the CPU
//! (CPUID through `is_x86_feature_detected!`) and `PEFT_DPBF16=0` (which turns the path off).
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::amx::{round_into, Bf16Mat};

/// Output rows per microkernel (one activation panel).
const MR: usize = 8;
/// Output columns per microkernel (three 16-lane vectors).
const NR: usize = 48;
/// 16-lane vectors per microkernel row.
const NV: usize = NR / 16;
/// Inner pairs per block: one strip's slice of the weight is `KC · NR · 4` bytes = 24 KiB (L1).
const KC: usize = 128;
/// Most rows per block of packed activations.
const MC: usize = 256;
/// Bytes of packed activations per block (kept in L2 while the strips pass over it).
const A_BLOCK: usize = 256 << 10;

/// Whether this process multiplies bf16 weights with `vdpbf16ps` under `medium` (the CPU has
/// AVX-512F and AVX512-BF16 and `PEFT_DPBF16` is not `0`). AMX, where present, goes first.
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        super::cpu::optional_path("PEFT_DPBF16", "bf16 products on vdpbf16ps", imp::detect)
    })
}

/// `y = bias + bf16(x) · b` for `x` `[m, k]` (row-major f32, each value rounded to the nearest
/// bf16 before the product), `b` `[k, n]` (bf16), `bias` `[n]` (none: zeros), `y` `[m, n]`
/// (row-major, written whole: its prior contents are not read). Returns `false`, with nothing
/// written, when the path is not [`available`].
///
/// Panics when the lengths do not fit the shapes.
pub fn linear(
    y: &mut [MaybeUninit<f32>],
    x: &[f32],
    b: Bf16Mat<'_>,
    bias: Option<&[f32]>,
    m: usize,
) -> bool {
    let (k, n) = (b.rows, b.cols);
    b.check_product("dpbf16", x.len(), y.len(), bias, m);
    if !available() || m == 0 || n == 0 || k == 0 {
        return false;
    }
    let pairs = k.div_ceil(2);
    let bp = pack_b(b, pairs);
    let tasks = 2 * rayon::current_num_threads();
    let rows = m.div_ceil(tasks).div_ceil(MR) * MR;
    y.par_chunks_mut(rows * n)
        .enumerate()
        .for_each(|(t, yt)| run(yt, x, &bp, bias, [m, k, n], t * rows));
    true
}

/// [`linear`] into a fresh `Vec` (`None` when the path is not available).
pub fn linear_vec(x: &[f32], b: Bf16Mat<'_>, bias: Option<&[f32]>, m: usize) -> Option<Vec<f32>> {
    let len = m * b.cols;
    let mut y = Vec::with_capacity(len);
    if !linear(&mut y.spare_capacity_mut()[..len], x, b, bias, m) {
        return None;
    }
    // SAFETY: `linear` returned true, so every element was written: the tasks' row ranges
    // cover all m rows, each range's blocks and panels cover its rows, the strips cover all n
    // columns, and each microkernel call stores every row and column of its block.
    unsafe { y.set_len(len) };
    Some(y)
}

/// `b` as strips of [`NR`] columns: for each strip, for each inner pair `p`, the 48 pairs
/// `(b[2p, c], b[2p + 1, c])` as one `u32` per column (the even row in the low half, as the
/// instruction pairs them); zero beyond `b`'s edges. Rows are read as slices where the columns
/// are contiguous (both layouts the linears pass), so the interleave vectorises.
fn pack_b(b: Bf16Mat<'_>, pairs: usize) -> Vec<u32> {
    let strip = pairs * NR;
    let strips = b.cols.div_ceil(NR);
    let mut out = vec![0u32; strip * strips];
    let bits = |r: usize, c: usize| u32::from(b.data[r * b.rs + c * b.cs].to_bits());
    out.par_chunks_mut(strip).enumerate().for_each(|(s, dst)| {
        let c0 = s * NR;
        let cols = (b.cols - c0).min(NR);
        for (p, pair) in dst.chunks_exact_mut(NR).enumerate() {
            let (r0, r1) = (2 * p, 2 * p + 1);
            let pair = &mut pair[..cols];
            if b.cs == 1 {
                let even = &b.data[r0 * b.rs + c0..][..cols];
                if r1 < b.rows {
                    let odd = &b.data[r1 * b.rs + c0..][..cols];
                    for ((o, e), d) in pair.iter_mut().zip(even).zip(odd) {
                        *o = u32::from(e.to_bits()) | u32::from(d.to_bits()) << 16;
                    }
                } else {
                    for (o, e) in pair.iter_mut().zip(even) {
                        *o = u32::from(e.to_bits());
                    }
                }
            } else {
                for (c, o) in pair.iter_mut().enumerate() {
                    let odd = if r1 < b.rows { bits(r1, c0 + c) } else { 0 };
                    *o = bits(r0, c0 + c) | odd << 16;
                }
            }
        }
    });
    out
}

/// One task: the rows `r0 .. r0 + yt.len() / n` of `y`, block by block. Within a block of
/// rows, strip by strip, inner block by inner block: a strip's slice of the weight (24 KiB)
/// stays in L1 while the panels pass under it, and a later inner block reloads only that
/// strip's `[rows, 48]` outputs, still in cache. (Blocking the inner dimension outside the
/// strips instead reloaded outputs that a `[rows, n]` block too big for L2 had evicted:
/// measured 55–65 % of the instruction's peak, against 83–89 % now on one core.)
fn run(
    yt: &mut [MaybeUninit<f32>],
    x: &[f32],
    bp: &[u32],
    bias: Option<&[f32]>,
    [m, k, n]: [usize; 3],
    r0: usize,
) {
    let pairs = k.div_ceil(2);
    let strip = pairs * NR;
    let task_rows = yt.len() / n;
    // Rows per block: the packed block (`mc · pairs` pairs) within A_BLOCK bytes.
    let mc = (A_BLOCK / (4 * pairs)).clamp(MR, MC) / MR * MR;
    let lda = 2 * pairs;
    let mut ap = vec![0u16; mc * lda];
    for m0 in (0..task_rows).step_by(mc) {
        let mrows = mc.min(task_rows - m0);
        let panels = mrows.div_ceil(MR);
        pack_a(&mut ap, x, [m, k], r0 + m0, mrows);
        for (s, c0) in (0..n).step_by(NR).enumerate() {
            let cols = NR.min(n - c0);
            for p0 in (0..pairs).step_by(KC) {
                let kc = KC.min(pairs - p0);
                let b = &bp[s * strip + p0 * NR..][..kc * NR];
                // The bias starts the first inner block; later ones add to what `y` holds.
                let bias = bias.filter(|_| p0 == 0).map(|v| &v[c0..][..cols]);
                for i in 0..panels {
                    let rows = MR.min(mrows - i * MR);
                    let a = &ap[i * MR * lda + 2 * p0..][..(MR - 1) * lda + 2 * kc];
                    let yb = &mut yt[(m0 + i * MR) * n + c0..];
                    // The extents the microkernel touches: `rows` rows of `cols` at stride n.
                    assert!(yb.len() >= (rows - 1) * n + cols);
                    // SAFETY: `available()` held (checked by `linear` before any task ran);
                    // `a` holds MR rows of `lda` from pair p0 on (kc pairs each), `b` kc·48
                    // pairs, `yb` the extents asserted above (written by the first inner
                    // block before a later one reads them), the bias `cols` values;
                    // rows ≤ MR and cols ≤ NR.
                    unsafe {
                        imp::kernel(
                            a.as_ptr(),
                            lda,
                            b.as_ptr(),
                            kc,
                            yb.as_mut_ptr().cast(),
                            n,
                            bias.map_or(std::ptr::null(), |v| v.as_ptr()),
                            p0 > 0,
                            rows,
                            cols,
                        )
                    };
                }
            }
        }
    }
}

/// Rows `r0 .. r0 + rows` of `x` `[m, k]` rounded to bf16 into `ap`, row-major at a row
/// stride of `2 · pairs` (the microkernel broadcasts each row's pairs straight from here; a
/// pair's even position is the low half). The position past an odd `k` and the rows up to
/// the next multiple of [`MR`] are zero.
fn pack_a(ap: &mut [u16], x: &[f32], [m, k]: [usize; 2], r0: usize, rows: usize) {
    let lda = 2 * k.div_ceil(2);
    debug_assert!(r0 + rows <= m && ap.len() >= rows.div_ceil(MR) * MR * lda);
    for (r, dst) in ap
        .chunks_exact_mut(lda)
        .take(rows.div_ceil(MR) * MR)
        .enumerate()
    {
        if r < rows {
            round_into(&x[(r0 + r) * k..][..k], &mut dst[..k]);
            dst[k..].fill(0);
        } else {
            dst.fill(0);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;

    use super::{MR, NR, NV};

    pub(super) fn detect() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }

    /// Lanes of the [`NV`] vectors that hold columns `< cols`.
    #[inline(always)]
    fn masks(cols: usize) -> [__mmask16; NV] {
        std::array::from_fn(|j| {
            let lanes = cols.saturating_sub(16 * j).min(16);
            ((1u32 << lanes) - 1) as __mmask16
        })
    }

    /// The microkernel: `y[r, c] = start + Σ_p a[r·lda + 2p ..] · b[p·48 + c]` for `r < rows`,
    /// `c < cols` over `pairs` inner pairs, rows at stride `ldy` elements, where `start` is
    /// `y[r, c]` itself with `accumulate`, else `bias[c]` (a null `bias`: zero).
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512-BF16; `a` valid for MR rows of `lda`, each read for
    /// `2 · pairs` values, `b` for `pairs · 48`, `y` for writes (and, with `accumulate`, reads of
    /// initialised values) of `rows` rows of `cols` at stride `ldy`, a non-null `bias` for
    /// `cols` reads; `rows ≤ MR`, `cols ≤ NR`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn kernel(
        a: *const u16,
        lda: usize,
        b: *const u32,
        pairs: usize,
        y: *mut f32,
        ldy: usize,
        bias: *const f32,
        accumulate: bool,
        rows: usize,
        cols: usize,
    ) {
        let mask = masks(cols);
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        if accumulate {
            for (r, acc_r) in acc.iter_mut().enumerate().take(rows) {
                let yr = y.add(r * ldy);
                for j in 0..NV {
                    acc_r[j] = _mm512_maskz_loadu_ps(mask[j], yr.wrapping_add(16 * j));
                }
            }
        } else if !bias.is_null() {
            let row: [__m512; NV] =
                std::array::from_fn(|j| _mm512_maskz_loadu_ps(mask[j], bias.wrapping_add(16 * j)));
            acc.iter_mut().for_each(|r| *r = row);
        }
        for p in 0..pairs {
            let bp = b.add(p * NR);
            let w: [__m512bh; NV] = std::array::from_fn(|j| {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(16 * j).cast()))
            });
            let ap = a.add(2 * p);
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let pair = ap.add(r * lda).cast::<i32>().read_unaligned();
                let x = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
                for j in 0..NV {
                    acc_r[j] = _mm512_dpbf16_ps(acc_r[j], x, w[j]);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate().take(rows) {
            let yr = y.add(r * ldy);
            for j in 0..NV {
                _mm512_mask_storeu_ps(yr.wrapping_add(16 * j), mask[j], acc_r[j]);
            }
        }
    }
}

/// Elsewhere there is no AVX512-BF16: [`available`] is false and nothing else is reached.
#[cfg(not(target_arch = "x86_64"))]
mod imp {
    pub(super) fn detect() -> bool {
        false
    }
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel(
        _: *const u16,
        _: usize,
        _: *const u32,
        _: usize,
        _: *mut f32,
        _: usize,
        _: *const f32,
        _: bool,
        _: usize,
        _: usize,
    ) {
        unreachable!("AVX512-BF16 is never available on this target")
    }
}

#[cfg(test)]
#[path = "tests/dpbf16.rs"]
mod tests;
