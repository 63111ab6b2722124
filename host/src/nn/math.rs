//! Element functions shared by the kernels, `exp` and `erf`, written branch-free so that LLVM
//! vectorises the loops that call them, and the AVX-512 dispatch that compiles those loops wide.

/// Runs `$body` compiled for AVX-512 when the CPU has it (detected once), else as built:
/// the kernels' element loops are written branch-free so that LLVM vectorises them 16 wide.
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
                static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
                if *WIDE.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma"))
                {
                    // SAFETY: the CPU supports every feature `wide` is compiled for (all five
                    // detected just above); `wide` is otherwise the safe `body`.
                    return unsafe { wide($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

/// SplitMix64's finaliser: a bijective mix of 64 bits (the counter-based hash both dropout
/// kernels draw their keep decisions from; vectorises, unlike a sequential generator).
#[inline(always)]
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// e^x for f32, branch-free (Cody–Waite reduction to |r| ≤ ln2/2, degree-6 Taylor
/// polynomial, exponent bits): relative error below 2e-7, vectorisable unlike libm's `expf`.
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
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
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

/// erf by Abramowitz & Stegun 7.1.26 (1.5e-7 in exact arithmetic, below 5e-7 in f32: GELU's
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
