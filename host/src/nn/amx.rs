//! Products with a bf16-held weight on Intel AMX (the tile unit of Sapphire Rapids and later
//! Xeons), the fast path of [`super::bf16`].
//!
//! Why split the activations: AMX's `tdpbf16ps` multiplies bf16 by bf16 and accumulates in
//! f32. The weight already is bf16 (that is what the option holds), so it goes in exactly; an
//! f32 activation `x` goes in as two bf16 terms, `hi = bf16(x)` and `lo = bf16(x − hi)`, which
//! together keep 16 of its 24 significant bits (relative error ≤ 2⁻¹⁷). `y = hi·W + lo·W` then
//! differs from the f32 product of the same bf16 weights by about what f32 accumulation itself
//! does, while the tile unit does each product at several times the AVX-512 f32 rate: the one
//! error the user chose (the weights' rounding) stays the only one that matters.
//!
//! Layout: a `32 × 32` block of the output is four `16 × 16` f32 tiles, updated for every
//! 32-long slice of the inner dimension from two activation tiles (16 rows × 32 bf16) and two
//! weight tiles (16 pairs of inner positions × 16 columns, the pairs interleaved as the
//! instruction wants). Both operands are packed tile by tile into contiguous 1 KiB blocks (the
//! weight once per product, the activations 32 rows at a time right before their products), so
//! every tile load reads one contiguous kilobyte: loading tiles at the row stride of a matrix
//! whose rows are a multiple of 1 KiB apart maps all 16 rows onto a few cache sets (measured:
//! half the rate).
//!
//! The `unsafe` here is one inline-assembly microkernel (`imp::block`), the Linux request for
//! tile state and the `set_len` of an output the microkernel wrote whole; [`linear`] checks
//! every extent before it runs the microkernel, and [`available`] checks the CPU (CPUID), the
//! kernel's grant and `PEFT_AMX=0` (which turns the path off) once per process.
use std::mem::MaybeUninit;

use half::bf16;
use rayon::prelude::*;

use super::{
    math::simd_dispatch,
    round::{round_bits, round_into},
};

/// A bf16 matrix `[rows, cols]` whose element `(r, c)` is `data[r * rs + c * cs]` (a weight
/// seen in whichever layout the product needs, without a copy).
#[derive(Clone, Copy, Debug)]
pub struct Bf16Mat<'a> {
    pub data: &'a [bf16],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Bf16Mat<'a> {
    /// `data` as a contiguous row-major `[rows, cols]` matrix.
    pub fn row_major(data: &'a [bf16], rows: usize, cols: usize) -> Self {
        Bf16Mat {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// Panics (naming `who`) unless `x` `[m, rows]`, `y` `[m, cols]` and `bias` `[cols]` fit
    /// this weight and every element it names lies in its storage: the extents the products'
    /// unsafe microkernels rely on.
    pub(crate) fn check_product(
        &self,
        who: &str,
        x_len: usize,
        y_len: usize,
        bias: Option<&[f32]>,
        m: usize,
    ) {
        let (k, n) = (self.rows, self.cols);
        assert_eq!(x_len, m * k, "{who}: x is not [{m}, {k}]");
        assert_eq!(y_len, m * n, "{who}: y is not [{m}, {n}]");
        assert!(
            bias.is_none_or(|v| v.len() == n),
            "{who}: bias is not [{n}]"
        );
        if k > 0 && n > 0 {
            let last = (k - 1) * self.rs + (n - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "{who}: weight [{k}, {n}] outside its storage"
            );
        }
    }
}

/// Inner positions per tile step (32 bf16 = one 64-byte tile row).
const KB: usize = 32;
/// Output rows and columns per microkernel call (2 × 2 tiles of 16 × 16).
const BLOCK: usize = 32;

/// How an f32 activation enters the tile product: as `hi + lo` (16 significant bits, the
/// default: the weights' rounding stays the only error that matters) or as `hi` alone (8 bits,
/// like `torch.autocast`'s bf16 products or `set_float32_matmul_precision("medium")`: half the
/// tile work and packing, a second rounding the user opts into).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Terms {
    Two,
    One,
}

/// Whether products with a bf16 weight run on AMX in this process: the CPU has AMX-TILE and
/// AMX-BF16, Linux granted this process the tile state, and `PEFT_AMX` is not `0`.
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| super::cpu::optional_path("PEFT_AMX", "bf16 products on AMX", imp::request))
}

/// `y = bias + x · b` for `x` `[m, k]` (row-major f32), `b` `[k, n]` (bf16), `bias` `[n]` (none:
/// zeros), `y` `[m, n]` (row-major f32, written whole: its prior contents are not read, so it may
/// be fresh memory), on AMX with `x` split into two bf16 terms (module docs). Returns `false`,
/// with nothing written, when AMX is not [`available`].
///
/// Panics when the lengths do not fit the shapes.
pub fn linear(
    y: &mut [MaybeUninit<f32>],
    x: &[f32],
    b: Bf16Mat<'_>,
    bias: Option<&[f32]>,
    m: usize,
    terms: Terms,
) -> bool {
    let (k, n) = (b.rows, b.cols);
    b.check_product("amx", x.len(), y.len(), bias, m);
    if !available() || m == 0 || n == 0 || k == 0 {
        return false;
    }
    let (kp, np) = (up(k, KB), up(n, BLOCK));
    let bp = pack_b(b, kp, np);
    // The bias padded to whole blocks: each block's accumulators start as its rows.
    let mut bias_p = vec![0f32; np];
    if let Some(v) = bias {
        bias_p[..n].copy_from_slice(v);
    }
    if n == np {
        run(y, x, &bp, &bias_p, [m, k, n], kp, terms);
    } else {
        // Ragged columns: the product runs on a buffer of whole blocks (the weight's padding
        // columns are zero), whose first n columns are copied out.
        let mut yp = vec![MaybeUninit::new(0f32); m * np];
        run(&mut yp, x, &bp, &bias_p, [m, k, np], kp, terms);
        for (dst, src) in y.chunks_exact_mut(n).zip(yp.chunks_exact(np)) {
            dst.copy_from_slice(&src[..n]);
        }
    }
    true
}

/// [`linear`] into a fresh `Vec` (`None` when AMX is not available).
pub fn linear_vec(
    x: &[f32],
    b: Bf16Mat<'_>,
    bias: Option<&[f32]>,
    m: usize,
    terms: Terms,
) -> Option<Vec<f32>> {
    let len = m * b.cols;
    let mut y = Vec::with_capacity(len);
    if !linear(&mut y.spare_capacity_mut()[..len], x, b, bias, m, terms) {
        return None;
    }
    // SAFETY: `linear` returned true, so it wrote all `len` elements (every 32 × 32 block of
    // the output is stored by the microkernel; ragged edges are copied in whole).
    unsafe { y.set_len(len) };
    Some(y)
}

fn up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

#[inline(always)]
fn widen_bits(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// `b` as weight tiles: for each 16-column strip (outer) and 32-long inner slice, 16 rows of
/// 16 interleaved pairs `(b[2r, c], b[2r + 1, c])`, zero beyond `b`'s edges.
fn pack_b(b: Bf16Mat<'_>, kp: usize, np: usize) -> Vec<u16> {
    let strip = kp * 16;
    let mut out = vec![0u16; kp * np];
    out.par_chunks_mut(strip).enumerate().for_each(|(s, dst)| {
        let c0 = s * 16;
        let cols = b.cols.saturating_sub(c0).min(16);
        if b.rs == 1 && b.cs != 1 {
            // Columns contiguous (a row-major weight's `Wᵀ`, a column-major one's `W` in the
            // backward): each column read once, in order, its pairs landing side by side —
            // where the loop below gathers every value across columns.
            for c in 0..cols {
                let col = &b.data[(c0 + c) * b.cs..][..b.rows];
                for (q, pr) in col.chunks(2).enumerate() {
                    let kk = 2 * q;
                    let at = (kk / KB) * 512 + ((kk % KB) / 2) * 32 + c * 2;
                    for (d, v) in dst[at..at + pr.len()].iter_mut().zip(pr) {
                        *d = v.to_bits();
                    }
                }
            }
            return;
        }
        for kk in 0..b.rows {
            let (t, r, p) = (kk / KB, (kk % KB) / 2, kk % 2);
            let row = &mut dst[t * 512 + r * 32..][..32];
            for c in 0..cols {
                row[c * 2 + p] = b.data[kk * b.rs + (c0 + c) * b.cs].to_bits();
            }
        }
    });
    out
}

/// Rows `r0..r0 + 32` of `x` `[m, k]` split into `hi + lo` bf16 terms, each packed as two
/// activation strips (16 rows; for each 32-long inner slice 16 rows of 32 values), zero beyond
/// `x`'s edges. Done per block, right before its products, so the packed rows are in L1/L2.
/// With an empty `lo` ([`Terms::One`]) only `hi` is written.
fn pack_x(x: &[f32], [m, k]: [usize; 2], r0: usize, hi: &mut [u16], lo: &mut [u16]) {
    let kp = hi.len() / BLOCK;
    let two = !lo.is_empty();
    let rows = BLOCK.min(m.saturating_sub(r0));
    if rows < BLOCK || k % KB != 0 {
        // Padding is read as zeros; a whole block overwrites everything.
        hi.fill(0);
        lo.fill(0);
    }
    for r in 0..rows {
        let row = &x[(r0 + r) * k..][..k];
        let strip = r / 16 * kp * 16;
        for (t, part) in row.chunks(KB).enumerate() {
            let at = strip + t * 512 + (r % 16) * 32;
            let n = part.len();
            if two {
                split(part, &mut hi[at..at + n], &mut lo[at..at + n]);
            } else {
                round_into(part, &mut hi[at..at + n]);
            }
        }
    }
}

simd_dispatch! {
    /// `hi = bf16(v)`, `lo = bf16(v − hi)` element by element (16 lanes with AVX-512).
    fn split(src: &[f32], hi: &mut [u16], lo: &mut [u16]) {
        for ((h, l), &v) in hi.iter_mut().zip(lo.iter_mut()).zip(src) {
            let top = round_bits(v);
            *h = top;
            *l = round_bits(v - widen_bits(top));
        }
    }
}

/// `y [m, np] = bias + x[m, k] · b[kp, np]` over the packed weight, `np` a multiple of
/// [`BLOCK`]: rayon tasks own row ranges of `y`; each packs a 32-row block of `x` and runs it
/// against every column block (the packed weight, ≤ 2.4 MB for a 768 × 3072 projection, stays
/// in L2).
fn run(
    y: &mut [MaybeUninit<f32>],
    x: &[f32],
    bp: &[u16],
    bias: &[f32],
    [m, k, np]: [usize; 3],
    kp: usize,
    terms: Terms,
) {
    debug_assert!(
        np.is_multiple_of(BLOCK)
            && kp.is_multiple_of(KB)
            && y.len() == m * np
            && bp.len() == kp * np
    );
    let tasks = 2 * rayon::current_num_threads();
    let rows = up(m.div_ceil(tasks), BLOCK);
    let strip = kp * 16;
    y.par_chunks_mut(rows * np).enumerate().for_each(|(t, yt)| {
        let lo_len = if terms == Terms::Two { BLOCK * kp } else { 0 };
        let (mut hi, mut lo) = (vec![0u16; BLOCK * kp], vec![0u16; lo_len]);
        let mut edge = Vec::new();
        imp::with_tiles(|| {
            for r in (0..yt.len() / np).step_by(BLOCK) {
                pack_x(x, [m, k], t * rows + r, &mut hi, &mut lo);
                // A last block of fewer than 32 rows runs on a 32-row buffer.
                let full = r + BLOCK <= yt.len() / np;
                let yb: &mut [MaybeUninit<f32>] = if full {
                    &mut yt[r * np..(r + BLOCK) * np]
                } else {
                    edge.resize(BLOCK * np, MaybeUninit::new(0f32));
                    &mut edge
                };
                for c in (0..np).step_by(BLOCK) {
                    let bo = c / 16 * strip;
                    // The tiles' extents: 32 rows of y from column `c` at stride np, 32 bias
                    // values, the two activation strips, two 16-column weight strips.
                    assert!(yb.len() == BLOCK * np && c + BLOCK <= np && bias.len() == np);
                    assert!(hi.len() == 2 * strip && bo + 2 * strip <= bp.len());
                    assert!(lo.is_empty() || lo.len() == hi.len());
                    let (y, ldy, bias) = (yb[c..].as_mut_ptr().cast(), np, bias[c..].as_ptr());
                    let (b, steps) = (bp[bo..].as_ptr(), kp / KB);
                    // SAFETY: the extents were checked just above; the tiles are configured
                    // on this thread by `with_tiles`.
                    unsafe {
                        if lo.is_empty() {
                            let x = [hi.as_ptr(); 2];
                            imp::block::<false>(y, ldy, bias, x, strip, b, steps)
                        } else {
                            let x = [hi.as_ptr(), lo.as_ptr()];
                            imp::block::<true>(y, ldy, bias, x, strip, b, steps)
                        }
                    }
                }
                if !full {
                    let n = yt.len() - r * np;
                    yt[r * np..].copy_from_slice(&edge[..n]);
                }
            }
        });
    });
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use std::arch::asm;

    /// The tile configuration (`ldtilecfg`'s 64-byte operand): palette 1, its eight tiles 16
    /// rows of 64 bytes each.
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// CPUID says AMX-TILE and AMX-BF16, and Linux grants this process the tile data state
    /// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`; without the grant the first tile
    /// instruction would fault).
    pub(super) fn request() -> bool {
        if std::arch::x86_64::__get_cpuid_max(0).0 < 7 {
            return false;
        }
        let l7 = std::arch::x86_64::__cpuid_count(7, 0);
        let (bf16, tile) = (l7.edx & (1 << 22) != 0, l7.edx & (1 << 24) != 0);
        if !(bf16 && tile) {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain system call with integer arguments; it changes only which register
        // state this process may use.
        let r = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        r == 0
    }

    /// Runs `f` with the tiles configured on this thread, and releases them after (so a
    /// context switch does not save 8 KiB of tile data for a thread that is done with it).
    pub(super) fn with_tiles(f: impl FnOnce()) {
        // Palette 1 has eight tiles; configuring any of the other eight faults.
        let mut cfg = Config {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        cfg.colsb[..8].fill(64);
        cfg.rows[..8].fill(16);
        // SAFETY: only reached after `available()` (the grant); the operand is a valid
        // 64-byte configuration.
        unsafe { asm!("ldtilecfg [{0}]", in(reg) &cfg as *const Config, options(nostack)) };
        f();
        // SAFETY: as above; releases what `ldtilecfg` configured.
        unsafe { asm!("tilerelease", options(nostack)) };
    }

    /// The microkernel: the `32 × 32` f32 block at `y` (row stride `ldy` elements) `=` the 32
    /// values at `bias` in every row `+` the two activation strips at `hi` (and, with `TWO`,
    /// those of the second term at `lo`; otherwise `lo` is not read) (strip stride `strip`
    /// elements) times the two weight strips at `b` (strip stride `strip`), over `steps`
    /// inner slices of 32. `y` is only written.
    ///
    /// # Safety
    /// AMX granted and tiles configured on this thread ([`with_tiles`]); `y` valid for writes
    /// of 32 rows of 32 at stride `ldy`; `bias` valid for 32 reads; `hi`, `lo` and `b` valid
    /// for `2 · strip` elements, `strip ≥ steps · 512`, `steps ≥ 1`.
    pub(super) unsafe fn block<const TWO: bool>(
        y: *mut f32,
        ldy: usize,
        bias: *const f32,
        [hi, lo]: [*const u16; 2],
        strip: usize,
        b: *const u16,
        steps: usize,
    ) {
        let y16 = y.add(16 * ldy);
        let (hi2, lo2, b2) = (hi.add(strip), lo.add(strip), b.add(strip));
        asm!(
            // Row stride 0: every row of an accumulator starts as the same 16 bias values.
            "tileloadd tmm0, [{bias} + {zero}*1]",
            "tileloadd tmm1, [{bias} + {zero}*1 + 64]",
            "tileloadd tmm2, [{bias} + {zero}*1]",
            "tileloadd tmm3, [{bias} + {zero}*1 + 64]",
            "2:",
            "tileloadd tmm6, [{b} + {s64}*1]",
            "tileloadd tmm7, [{b2} + {s64}*1]",
            "tileloadd tmm4, [{hi} + {s64}*1]",
            "tileloadd tmm5, [{hi2} + {s64}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            // The second term (assembled only for `TWO`).
            ".if {two}",
            "tileloadd tmm4, [{lo} + {s64}*1]",
            "tileloadd tmm5, [{lo2} + {s64}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {lo}, 1024",
            "add {lo2}, 1024",
            ".endif",
            "add {b}, 1024",
            "add {b2}, 1024",
            "add {hi}, 1024",
            "add {hi2}, 1024",
            "dec {steps}",
            "jnz 2b",
            "tilestored [{y} + {ldy}*1], tmm0",
            "tilestored [{y} + {ldy}*1 + 64], tmm1",
            "tilestored [{y16} + {ldy}*1], tmm2",
            "tilestored [{y16} + {ldy}*1 + 64], tmm3",
            y = in(reg) y,
            y16 = in(reg) y16,
            bias = in(reg) bias,
            zero = in(reg) 0usize,
            ldy = in(reg) ldy * 4,
            hi = inout(reg) hi => _,
            hi2 = inout(reg) hi2 => _,
            lo = inout(reg) lo => _,
            lo2 = inout(reg) lo2 => _,
            b = inout(reg) b => _,
            b2 = inout(reg) b2 => _,
            s64 = in(reg) 64usize,
            steps = inout(reg) steps => _,
            two = const TWO as u8,
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
            options(nostack),
        );
    }
}

/// Elsewhere there is no AMX: [`available`] is false and nothing else is reached.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    pub(super) fn request() -> bool {
        false
    }
    pub(super) fn with_tiles(f: impl FnOnce()) {
        f()
    }
    pub(super) unsafe fn block<const TWO: bool>(
        _: *mut f32,
        _: usize,
        _: *const f32,
        _: [*const u16; 2],
        _: usize,
        _: *const u16,
        _: usize,
    ) {
        unreachable!("AMX is never available on this target")
    }
}

#[cfg(test)]
#[path = "tests/amx.rs"]
mod tests;
