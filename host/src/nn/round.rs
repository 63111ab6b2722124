//! Rounding f32 to bf16 in the CPU kernels (AMX's and `vdpbf16ps`'s packing, attention's
//! operands and a trained weight's per-call copy under `medium`): to nearest, ties to even,
//! NaN kept a NaN, subnormals rounded like any other value ([`round_bits`], the same values
//! as `half::bf16::from_f32` that the weights' conversion uses, NaN payloads aside); in bulk
//! ([`round_into`]) 32 values per `vcvtne2ps2bf16` on CPUs with AVX512-BF16, the same bits.
//!
//! The `unsafe` is the instruction's loop (`imp::round_chunks`); [`round_chunks`] checks the
//! lengths and the CPU (CPUID through `is_x86_feature_detected!`).
use super::math::simd_dispatch;

/// `x` rounded to the nearest bf16 (ties to even), as bits; NaN stays NaN. Branch-free, so the
/// packing loops vectorise.
#[inline(always)]
pub(crate) fn round_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let r = ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    if (b & 0x7fff_ffff) > 0x7f80_0000 {
        0x7fc0
    } else {
        r
    }
}

/// `hi = bf16(v)` element by element, as [`round_bits`] rounds (also `dpbf16`'s activation
/// packing, attention's operands under `medium` and `WeightBuf::medium_copy`): on AVX512-BF16
/// 32 values per `vcvtne2ps2bf16` ([`round_chunks`]), the rest here.
pub(crate) fn round_into(src: &[f32], hi: &mut [u16]) {
    let n = src.len().min(hi.len());
    let done = round_chunks(&src[..n], &mut hi[..n]);
    round_each(&src[done..n], &mut hi[done..n]);
}

simd_dispatch! {
    /// [`round_into`] value by value.
    fn round_each(src: &[f32], hi: &mut [u16]) {
        for (h, &v) in hi.iter_mut().zip(src) {
            *h = round_bits(v);
        }
    }
}

/// Rounds the whole chunks of 32 values of `src` into `dst` (equal lengths, asserted) with
/// `vcvtne2ps2bf16` and returns how many values it did (0 without AVX512-BF16). The
/// instruction rounds to nearest even as [`round_bits`] does but reads subnormal inputs as zero
/// and keeps a NaN's sign and payload; a chunk holding either is rounded by [`round_bits`]
/// instead, so the result is the same bits on every CPU.
fn round_chunks(src: &[f32], dst: &mut [u16]) -> usize {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    assert_eq!(
        src.len(),
        dst.len(),
        "round_chunks: {} values into {}",
        src.len(),
        dst.len()
    );
    if !*ON.get_or_init(super::dpbf16::cpu_has_bf16) {
        return 0;
    }
    // SAFETY: the CPU has AVX-512F and AVX512-BF16 (detected just above); `src` and `dst`
    // hold the same number of values, and the kernel reads and writes only whole chunks of
    // 32 below that number.
    unsafe { imp::round_chunks(src.as_ptr(), dst.as_mut_ptr(), src.len() / 32) }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;

    use super::round_bits;

    /// `chunks` chunks of 32 values of `src` rounded to bf16 into `dst`, a chunk with a
    /// subnormal or NaN value by [`round_bits`]; returns the values done.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512-BF16; `src` valid for reads and `dst` for writes of
    /// `32 · chunks` values.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn round_chunks(src: *const f32, dst: *mut u16, chunks: usize) -> usize {
        let magnitude = _mm512_set1_epi32(0x7fff_ffff);
        let (tiny, inf) = (
            _mm512_set1_epi32(0x007f_ffff),
            _mm512_set1_epi32(0x7f80_0000),
        );
        let one = _mm512_set1_epi32(1);
        for c in 0..chunks {
            let (lo, hi) = (
                _mm512_loadu_ps(src.add(32 * c)),
                _mm512_loadu_ps(src.add(32 * c + 16)),
            );
            // |x| − 1 below 0x7f_ffff (unsigned): a nonzero subnormal; |x| above +∞'s bits: NaN.
            let special = |v: __m512| {
                let a = _mm512_and_si512(_mm512_castps_si512(v), magnitude);
                _mm512_cmplt_epu32_mask(_mm512_sub_epi32(a, one), tiny)
                    | _mm512_cmpgt_epu32_mask(a, inf)
            };
            if special(lo) | special(hi) != 0 {
                for i in 32 * c..32 * (c + 1) {
                    *dst.add(i) = round_bits(*src.add(i));
                }
                continue;
            }
            // The second operand's values land in the low half of the result.
            let r = _mm512_cvtne2ps_pbh(hi, lo);
            _mm512_storeu_si512(
                dst.add(32 * c).cast(),
                std::mem::transmute::<__m512bh, __m512i>(r),
            );
        }
        32 * chunks
    }
}

/// Elsewhere there is no AVX512-BF16: the exact loop does every value.
#[cfg(not(target_arch = "x86_64"))]
mod imp {
    pub(super) unsafe fn round_chunks(_: *const f32, _: *mut u16, _: usize) -> usize {
        unreachable!("AVX512-BF16 is never available on this target")
    }
}

#[cfg(test)]
#[path = "tests/round.rs"]
mod tests;
