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
//! Attention's two products under `medium` use the same microkernel over [`Panel`]s: a head's
//! keys and values rounded and packed once, in strips of 32 columns ([`panel_product`], one
//! thread, called per head from `flash.rs`).
//!
//! The `unsafe` is the microkernel (`imp::kernel`, AVX-512 intrinsics) and the `set_len` of an
//! output it wrote whole; [`linear`] checks every extent first and [`available`] the CPU
//! (CPUID through `is_x86_feature_detected!`) and `PEFT_DPBF16=0` (which turns the path off).
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{amx::Bf16Mat, gemm::Mat, round::round_into};

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

/// Whether the CPU has AVX-512F and AVX512-BF16 (CPUID, whatever `PEFT_DPBF16` says; callers
/// keep the answer in a `OnceLock`): what [`available`] and `nn/round.rs`'s rounding check.
pub(super) fn cpu_has_bf16() -> bool {
    imp::detect()
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
    linear_then(y, x, b, bias, m, Epilogue::None)
}

/// What [`linear_then`] applies to the outputs once they are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    /// Exact GELU (`nn::gelu`), on each block of rows right after its last strip is stored,
    /// while the block is still in cache: a BERT intermediate layer without gradients then
    /// writes its `[tokens, 4·hidden]` output once instead of writing it, reading it back and
    /// writing it again.
    Gelu,
}

/// [`linear`], then `epilogue` on the outputs.
pub fn linear_then(
    y: &mut [MaybeUninit<f32>],
    x: &[f32],
    b: Bf16Mat<'_>,
    bias: Option<&[f32]>,
    m: usize,
    epilogue: Epilogue,
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
        .for_each(|(t, yt)| run(yt, x, &bp, bias, [m, k, n], t * rows, epilogue));
    true
}

/// [`linear`] into a fresh `Vec` (`None` when the path is not available).
pub fn linear_vec(x: &[f32], b: Bf16Mat<'_>, bias: Option<&[f32]>, m: usize) -> Option<Vec<f32>> {
    linear_vec_then(x, b, bias, m, Epilogue::None)
}

/// [`linear_then`] into a fresh `Vec` (`None` when the path is not available).
pub fn linear_vec_then(
    x: &[f32],
    b: Bf16Mat<'_>,
    bias: Option<&[f32]>,
    m: usize,
    epilogue: Epilogue,
) -> Option<Vec<f32>> {
    let len = m * b.cols;
    let mut y = Vec::with_capacity(len);
    if !linear_then(&mut y.spare_capacity_mut()[..len], x, b, bias, m, epilogue) {
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
        if b.rs == 1 && b.cs != 1 {
            // Columns contiguous (a column-major `b`: a row-major weight's `Wᵀ`, or a
            // column-major one's `W` in the backward): a pair is two adjacent values, so each
            // column is read once, in order, and written down the strip (in L1/L2) — where
            // the element-wise path below gathered every value across columns.
            for c in 0..cols {
                let col = &b.data[(c0 + c) * b.cs..][..b.rows];
                let mut two = col.chunks_exact(2);
                for (p, pr) in two.by_ref().enumerate() {
                    dst[p * NR + c] = u32::from(pr[0].to_bits()) | u32::from(pr[1].to_bits()) << 16;
                }
                if let [last] = two.remainder() {
                    dst[(b.rows / 2) * NR + c] = u32::from(last.to_bits());
                }
            }
            return;
        }
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
    epilogue: Epilogue,
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
                        imp::kernel::<NV>(
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
        if epilogue == Epilogue::Gelu {
            let block = &mut yt[m0 * n..(m0 + mrows) * n];
            // SAFETY: every element of these `mrows` whole rows was stored above: the strips
            // cover all n columns and each microkernel call stores every row and column of
            // its block (the first inner block writes, later ones add); MaybeUninit<f32> has
            // f32's layout.
            let block = unsafe { &mut *(block as *mut [MaybeUninit<f32>] as *mut [f32]) };
            super::gelu::gelu_serial(block);
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

/// Columns per strip of an attention [`Panel`] (two 16-lane vectors): keys come in blocks of
/// [`super::flash::BC`] (a multiple of it), and a head of 32 or 64 dimensions fills one or two
/// strips whole, where the linears' 48 would leave a third of the lanes idle.
pub(crate) const PANEL_NR: usize = 32;
const PANEL_NV: usize = PANEL_NR / 16;

/// The right-hand operand `b` `[k, n]` of one of attention's products under `medium` (keys for
/// `q kᵀ`, values for `p v`), rounded to bf16 once per (batch, head) and packed as the
/// microkernel reads it: strips of [`PANEL_NR`] columns, each `pairs × 32` `u32` pairs (the
/// even inner position in the low half), zero past `k` and `n`, in a [`PanelBuf`] the caller
/// reuses from head to head.
pub(crate) struct Panel<'a> {
    data: &'a [u32],
    k: usize,
    n: usize,
}

/// A [`Panel`]'s storage, and the rounded rows on the way there.
#[derive(Default)]
pub(crate) struct PanelBuf {
    data: Vec<u32>,
    tmp: Vec<u16>,
}

impl<'a> Panel<'a> {
    fn pairs(&self) -> usize {
        self.k.div_ceil(2)
    }

    /// `b = srcᵀ` for `src` `[n, k]` (rows read as slices): a head's keys, whose dimensions
    /// pair up within each key's row.
    pub(crate) fn transposed(src: Mat<'_>, n: usize, k: usize, buf: &'a mut PanelBuf) -> Self {
        let (pairs, tmp) = (k.div_ceil(2), &mut buf.tmp);
        let buf = &mut buf.data;
        // The keys rounded, each row `2·pairs` long (its pairs as u32 below), then transposed
        // strip by strip.
        let lda = round_rows(tmp, n, k, |c| src.row(c));
        buf.clear();
        buf.resize(n.div_ceil(PANEL_NR) * pairs * PANEL_NR, 0);
        for (c, row) in tmp.chunks_exact(lda).take(n).enumerate() {
            let strip = &mut buf[(c / PANEL_NR) * pairs * PANEL_NR + c % PANEL_NR..];
            for (p, two) in row.chunks_exact(2).enumerate() {
                strip[p * PANEL_NR] = u32::from(two[0]) | u32::from(two[1]) << 16;
            }
        }
        Panel { data: buf, k, n }
    }

    /// `b = src` `[k, n]` (rows read as slices): a head's values, whose consecutive keys pair
    /// up.
    pub(crate) fn rows(src: Mat<'_>, k: usize, n: usize, buf: &'a mut PanelBuf) -> Self {
        let (pairs, tmp) = (k.div_ceil(2), &mut buf.tmp);
        let buf = &mut buf.data;
        let strips = n.div_ceil(PANEL_NR);
        // Rows rounded at a stride of 2·⌈n/2⌉, one zero row past an odd k (MR-padded).
        let ld = round_rows(tmp, k, n, |r| src.row(r));
        buf.clear();
        buf.resize(strips * pairs * PANEL_NR, 0);
        for p in 0..pairs {
            let even = &tmp[2 * p * ld..][..n];
            let odd = &tmp[(2 * p + 1) * ld..][..n];
            for s in 0..strips {
                let c0 = s * PANEL_NR;
                let cols = PANEL_NR.min(n - c0);
                let dst = &mut buf[(s * pairs + p) * PANEL_NR..][..cols];
                for ((o, &e), &d) in dst.iter_mut().zip(&even[c0..]).zip(&odd[c0..]) {
                    *o = u32::from(e) | u32::from(d) << 16;
                }
            }
        }
        Panel { data: buf, k, n }
    }
}

/// `m` rows of `k` values (`row(r)`, f32) rounded to bf16 into `dst`, row-major at a stride of
/// `2·⌈k/2⌉` (returned), padded with zero rows to a multiple of [`MR`]: the left operand of
/// [`panel_product`].
pub(crate) fn round_rows<'a>(
    dst: &mut Vec<u16>,
    m: usize,
    k: usize,
    row: impl Fn(usize) -> &'a [f32],
) -> usize {
    let lda = 2 * k.div_ceil(2);
    dst.clear();
    dst.resize(m.div_ceil(MR) * MR * lda, 0);
    for (r, d) in dst.chunks_exact_mut(lda).take(m).enumerate() {
        round_into(&row(r)[..k], &mut d[..k]);
    }
    lda
}

/// `y (+)= a · b[2·pairs.start .., cols]` on one thread: `a` `m` rows from [`round_rows`]
/// (stride `lda = 2·pairs.len()`, or more), `y` dense `[m, cols.len()]`, overwritten or, with
/// `accumulate`, added to. `cols.start` is a multiple of [`PANEL_NR`]. The caller checked
/// [`available`]; panics when it does not hold or an extent does not fit.
#[allow(clippy::too_many_arguments)]
pub(crate) fn panel_product(
    y: &mut [f32],
    a: &[u16],
    lda: usize,
    m: usize,
    b: &Panel,
    pairs: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    accumulate: bool,
) {
    let (bp, n) = (b.pairs(), cols.len());
    assert!(available(), "panel_product without AVX512-BF16");
    assert!(
        pairs.end <= bp && cols.end <= b.n && cols.start.is_multiple_of(PANEL_NR),
        "panel_product: pairs {pairs:?}, columns {cols:?} of a {}x{} panel",
        b.k,
        b.n
    );
    assert!(lda >= 2 * pairs.len() && a.len() >= m.div_ceil(MR) * MR * lda && y.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    for c0 in cols.clone().step_by(PANEL_NR) {
        let width = PANEL_NR.min(cols.end - c0);
        let strip = &b.data[((c0 / PANEL_NR) * bp + pairs.start) * PANEL_NR..];
        let strip = &strip[..pairs.len() * PANEL_NR];
        for i in 0..m.div_ceil(MR) {
            let rows = MR.min(m - i * MR);
            let yb = &mut y[i * MR * n + (c0 - cols.start)..];
            assert!(yb.len() >= (rows - 1) * n + width);
            // SAFETY: `available()` held (asserted above); `a` holds MR rows of `lda` from
            // row i·MR (the padded length asserted above), each read for `2·pairs.len()`
            // values; `strip` `pairs.len()·32` pairs; `yb` the extents asserted just above;
            // rows ≤ MR, width ≤ 32 = 16·PANEL_NV.
            unsafe {
                imp::kernel::<PANEL_NV>(
                    a[i * MR * lda..].as_ptr(),
                    lda,
                    strip.as_ptr(),
                    pairs.len(),
                    yb.as_mut_ptr(),
                    n,
                    std::ptr::null(),
                    accumulate,
                    rows,
                    width,
                )
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;

    use super::MR;

    pub(super) fn detect() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }

    /// Lanes of the `V` vectors that hold columns `< cols`.
    #[inline(always)]
    fn masks<const V: usize>(cols: usize) -> [__mmask16; V] {
        std::array::from_fn(|j| {
            let lanes = cols.saturating_sub(16 * j).min(16);
            ((1u32 << lanes) - 1) as __mmask16
        })
    }

    /// The microkernel over strips of `16·V` columns (`V` = 3 for the linears, 2 for
    /// attention's panels): `y[r, c] = start + Σ_p a[r·lda + 2p ..] · b[p·16V + c]` for
    /// `r < rows`, `c < cols` over `pairs` inner pairs, rows at stride `ldy` elements, where
    /// `start` is `y[r, c]` itself with `accumulate`, else `bias[c]` (a null `bias`: zero).
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512-BF16; `a` valid for MR rows of `lda`, each read for
    /// `2 · pairs` values, `b` for `pairs · 16V`, `y` for writes (and, with `accumulate`, reads
    /// of initialised values) of `rows` rows of `cols` at stride `ldy`, a non-null `bias` for
    /// `cols` reads; `rows ≤ MR`, `cols ≤ 16V`, `V ≤ 3`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn kernel<const V: usize>(
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
        let mask = masks::<V>(cols);
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        if accumulate {
            for (r, acc_r) in acc.iter_mut().enumerate().take(rows) {
                let yr = y.add(r * ldy);
                for j in 0..V {
                    acc_r[j] = _mm512_maskz_loadu_ps(mask[j], yr.wrapping_add(16 * j));
                }
            }
        } else if !bias.is_null() {
            let row: [__m512; V] =
                std::array::from_fn(|j| _mm512_maskz_loadu_ps(mask[j], bias.wrapping_add(16 * j)));
            acc.iter_mut().for_each(|r| *r = row);
        }
        for p in 0..pairs {
            let bp = b.add(p * 16 * V);
            let w: [__m512bh; V] = std::array::from_fn(|j| {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(16 * j).cast()))
            });
            let ap = a.add(2 * p);
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let pair = ap.add(r * lda).cast::<i32>().read_unaligned();
                let x = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
                for j in 0..V {
                    acc_r[j] = _mm512_dpbf16_ps(acc_r[j], x, w[j]);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate().take(rows) {
            let yr = y.add(r * ldy);
            for j in 0..V {
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
    pub(super) unsafe fn kernel<const V: usize>(
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
