//! Element functions shared by the kernels, `exp` and `erf`, written branch-free so that LLVM
//! vectorises the loops that call them, and the AVX-512 dispatch that compiles those loops wide.

/// Runs `$body` compiled for AVX-512 when the CPU has it, else for AVX2 + FMA when it has
/// that (Zen 1-3, Haswell to Comet Lake: most rented cores without AVX-512), else as built
/// (x86-64's baseline, SSE2): the kernels' element loops are written branch-free so that LLVM
/// vectorises them 16, 8 or 4 wide. The tier is detected once. Rust never contracts `a * b + c`
/// into an FMA on its own and no body calls `mul_add`, so every tier gives the same bits.
macro_rules! simd_dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                // Safety contract: call only on a CPU with every feature enabled here; the
                // body itself is safe code.
                #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
                unsafe fn wide($($arg: $ty),*) {
                    body($($arg),*)
                }
                // Safety contract: as `wide`'s, for AVX2 and FMA.
                #[target_feature(enable = "avx2,fma")]
                unsafe fn mid($($arg: $ty),*) {
                    body($($arg),*)
                }
                match $crate::nn::math::simd_tier() {
                    // SAFETY: the CPU supports every feature `wide` is compiled for
                    // (`simd_tier` detected all five); `wide` is otherwise the safe `body`.
                    $crate::nn::math::SimdTier::Avx512 => return unsafe { wide($($arg),*) },
                    // SAFETY: as above, AVX2 and FMA detected by `simd_tier`.
                    $crate::nn::math::SimdTier::Avx2 => return unsafe { mid($($arg),*) },
                    $crate::nn::math::SimdTier::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

/// The widest instruction set `simd_dispatch!` compiles its loops for on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SimdTier {
    /// AVX-512 F, DQ and VL, with AVX2 and FMA.
    Avx512,
    /// AVX2 and FMA.
    Avx2,
    /// What the binary was built for.
    Baseline,
}

/// Detects the CPU's tier once; `PEFT_SIMD=avx2` or `baseline` caps it (to compare tiers on
/// one machine, or to check that each gives the same result).
pub(crate) fn simd_tier() -> SimdTier {
    static TIER: std::sync::OnceLock<SimdTier> = std::sync::OnceLock::new();
    let tier = *TIER.get_or_init(|| {
        let cap = match std::env::var("PEFT_SIMD").as_deref() {
            Ok("baseline") => SimdTier::Baseline,
            Ok("avx2") => SimdTier::Avx2,
            _ => SimdTier::Avx512,
        };
        detect().max_by_cap(cap)
    });
    #[cfg(test)]
    let tier = tier.max_by_cap(test_cap::get());
    tier
}

#[cfg(target_arch = "x86_64")]
fn detect() -> SimdTier {
    use std::arch::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx512dq") && has!("avx512vl") && has!("avx2") && has!("fma") {
        SimdTier::Avx512
    } else if has!("avx2") && has!("fma") {
        SimdTier::Avx2
    } else {
        SimdTier::Baseline
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> SimdTier {
    SimdTier::Baseline
}

impl SimdTier {
    pub(crate) fn rank(self) -> u8 {
        match self {
            SimdTier::Baseline => 0,
            SimdTier::Avx2 => 1,
            SimdTier::Avx512 => 2,
        }
    }

    /// The narrower of the detected tier and the cap.
    pub(crate) fn max_by_cap(self, cap: SimdTier) -> SimdTier {
        if cap.rank() < self.rank() {
            cap
        } else {
            self
        }
    }
}

/// SplitMix64's finaliser: a bijective mix of 64 bits (the dropout kernels' streams from a
/// seed; per element they use [`draw`]).
#[inline(always)]
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// lowbias32 (Wellons' hash prospector): a bijective 32-bit finaliser with low avalanche bias.
/// Multiplies of 32-bit lanes vectorise on AVX2 (`vpmulld`); 64-bit ones need AVX-512DQ and
/// are emulated 4 wide elsewhere, so [`mix`] per element cost 3.0 ns on Zen 1 where two
/// rounds of this cost 1.2.
#[inline(always)]
pub(crate) fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^ (x >> 16)
}

/// The two 32-bit keys of dropout's draws from a 64-bit `stream`, for the elements whose
/// index has high word `hi` (every index below 2³² has `hi` 0, and keys the stream's own bits).
#[inline]
pub(crate) fn draw_keys(stream: u64, hi: u64) -> (u32, u32) {
    let s = if hi == 0 {
        stream
    } else {
        mix(stream ^ hi.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    };
    (s as u32, (s >> 32) as u32)
}

/// The uniform 32-bit draw of the element whose index has low word `lo`: two keyed rounds of
/// [`mix32`] (one round and a key would make two streams' draws the same values at indices
/// a fixed XOR apart). A counter-based draw: any element is drawn alone, in any order.
#[inline(always)]
pub(crate) fn draw((k1, k2): (u32, u32), lo: u32) -> u32 {
    mix32(mix32(lo ^ k1) ^ k2)
}

/// Calls `f(at, n, keys, lo)` for each run of `len` consecutive indices from `first` that
/// share their high word: the `n` elements from offset `at` have draws `draw(keys, lo + j)`,
/// `j < n` (one run unless the indices cross a multiple of 2³²).
#[inline(always)]
pub(crate) fn draw_runs(
    stream: u64,
    first: u64,
    len: usize,
    mut f: impl FnMut(usize, usize, (u32, u32), u32),
) {
    let mut at = 0;
    while at < len {
        let index = first + at as u64;
        let room = (1u64 << 32) - (index & 0xFFFF_FFFF);
        let n = room.min((len - at) as u64) as usize;
        f(at, n, draw_keys(stream, index >> 32), index as u32);
        at += n;
    }
}

/// e^x for f32, branch-free (Cody–Waite reduction to |r| ≤ ln2/2, a degree-5 minimax
/// polynomial with p(0) = 1, exponent bits): relative error below 2.1e-7, vectorisable unlike
/// libm's `expf`. The polynomial is evaluated by Estrin's scheme, not Horner's: its longest
/// chain is 6 operations instead of 10, and on Zen 1 the chain, not the arithmetic, bounded
/// the loops (GELU 3.7 -> 3.0 ns per element; the degree-6 Taylor polynomial under Horner
/// before it had error 2.5e-7). The coefficients are a relative-error fit on the interval
/// (PyTorch's `exp_u20` uses the same polynomial, with a one-constant reduction).
/// Inputs below -87 give 0, above 88 saturate.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2^23: adding it rounds to the nearest integer and leaves that integer in the low
    // mantissa bits, so neither `round` nor the saturating `as i32` (which do not vectorise)
    // is needed; |x·log2 e| < 128 keeps it exact.
    const SHIFTER: f32 = 12_582_912.0;
    let x0 = x;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + SHIFTER;
    let n = t - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    const C1: f32 = 0.999_999_7;
    const C2: f32 = 0.499_991_5;
    const C3: f32 = 0.166_676_36;
    const C4: f32 = 0.041_897_934;
    const C5: f32 = 0.008_290_309;
    let r2 = r * r;
    let p = (1.0 + C1 * r) + r2 * ((C2 + C3 * r) + r2 * (C4 + C5 * r));
    let ni = t.to_bits().wrapping_sub(SHIFTER.to_bits()) as i32;
    let e = p * f32::from_bits(((ni + 127) as u32) << 23);
    // Exactly 0 below the clamp: a causally hidden score (`f32::MIN`) must give probability 0,
    // not 2^-126, whose products with gradients are subnormal and run ~100x slower (a decoder
    // self-attention's backward took 5x its cross-attention's). A select: still vectorises.
    if x0 < -87.0 {
        0.0
    } else {
        e
    }
}

/// erf by Abramowitz & Stegun 7.1.26 (1.5e-7 in exact arithmetic, below 6e-7 in f32: GELU's
/// error stays under 2e-6 for |x| < 8), branch-free so the loop vectorises apart from `exp`.
pub(crate) fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// Lanes of the reductions below: one AVX-512 register of f32.
const LANES: usize = 16;

/// `max_j (x[j] + bias[j])`, in 16 independent lanes so that it vectorises (a float
/// reduction in one accumulator is sequential: LLVM may not reorder it).
#[inline(always)]
pub(crate) fn max_plus(x: &[f32], bias: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let (xc, bc) = (x.chunks_exact(LANES), bias.chunks_exact(LANES));
    let (xr, br) = (xc.remainder(), bc.remainder());
    for (xs, bs) in xc.zip(bc) {
        for i in 0..LANES {
            let v = xs[i] + bs[i];
            acc[i] = if v > acc[i] { v } else { acc[i] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for (x, b) in xr.iter().zip(br) {
        m = m.max(x + b);
    }
    acc.iter().fold(m, |a, &b| a.max(b))
}

/// `Σ x`, in 16 independent lanes (see [`max_plus`]).
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let xc = x.chunks_exact(LANES);
    let r: f32 = xc.remainder().iter().sum();
    for xs in xc {
        for i in 0..LANES {
            acc[i] += xs[i];
        }
    }
    acc.iter().sum::<f32>() + r
}

/// `Σ x[j] y[j]`, in 16 independent lanes (see [`max_plus`]).
#[inline(always)]
pub(crate) fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (xc, yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let r: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (xs, ys) in xc.zip(yc) {
        for i in 0..LANES {
            acc[i] += xs[i] * ys[i];
        }
    }
    acc.iter().sum::<f32>() + r
}

/// Tests cap the tier at run time to check every tier gives the same bits; tests running
/// beside them at the same moment see a narrower tier, which by that property changes nothing.
#[cfg(test)]
pub(crate) mod test_cap {
    use super::SimdTier;
    use std::sync::atomic::{AtomicU8, Ordering};

    static CAP: AtomicU8 = AtomicU8::new(2);

    pub(crate) fn get() -> SimdTier {
        match CAP.load(Ordering::Relaxed) {
            0 => SimdTier::Baseline,
            1 => SimdTier::Avx2,
            _ => SimdTier::Avx512,
        }
    }

    /// Runs `f` with the tier capped at `tier`, then lifts the cap.
    pub(crate) fn with<R>(tier: SimdTier, f: impl FnOnce() -> R) -> R {
        CAP.store(tier.rank(), Ordering::Relaxed);
        let r = f();
        CAP.store(2, Ordering::Relaxed);
        r
    }
}
