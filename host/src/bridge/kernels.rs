//! CPU kernels for passes without gradients (evaluation, inference), on raw f32 buffers, for
//! the shapes where burn's generic ops lose most: attention, where splitting and merging heads
//! copies every activation and the batched `q kᵀ` runs 384 small products; and exact GELU,
//! whose `erf` burn's CPU backend evaluates per element. Tested against the generic path in
//! the parity tests; used only on the CPU backend (`enabled`).
use std::any::TypeId;

use burn::tensor::{backend::AutodiffBackend, Tensor, TensorData};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Whether `B` computes on burn's CPU backend, where these kernels apply, and they are not
/// turned off with `PEFT_CPU_KERNELS=0` (to compare against burn's generic ops).
pub fn enabled<B: AutodiffBackend>() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var("PEFT_CPU_KERNELS").is_ok_and(|v| v == "0"));
    !off && TypeId::of::<B::InnerBackend>() == TypeId::of::<burn::backend::Flex>()
}

/// A tensor's values, row-major.
pub fn to_vec<B: AutodiffBackend, const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
    x.inner()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 data converts to Vec<f32>")
}

/// A constant (untracked) tensor from row-major values.
pub fn from_vec<B: AutodiffBackend, const D: usize>(
    v: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_inner(Tensor::from_data(TensorData::new(v, shape), device))
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each (batch, head) task writes a disjoint set of output elements.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Scaled dot-product attention of every (batch, head): `softmax(q kᵀ · scale) v` over the
/// keys `keep` marks, reading `q` `[b, t, h]` and `k`, `v` `[b, s, h]` where they lie (head
/// `i` is columns `i·dh..(i+1)·dh`) and writing the context `[b, t, h]` the same way, so no
/// head is ever copied out. A dropped key gets probability exactly 0, as HF's additive
/// `finfo.min` mask gives after `exp`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    keep: &[bool],
    b: usize,
    t: usize,
    s: usize,
    heads: usize,
    scale: f32,
) -> Vec<f32> {
    let h = q.len() / (b * t).max(1);
    let dh = h / heads;
    assert!(
        q.len() == b * t * h && k.len() == b * s * h && v.len() == b * s * h,
        "attention: shapes"
    );
    assert_eq!(keep.len(), b * s, "attention: mask shape");
    let mut out = vec![0f32; b * t * h];
    let dst = OutPtr(out.as_mut_ptr());
    (0..b * heads).into_par_iter().for_each_init(
        || vec![0f32; t * s],
        |scores, bh| {
            let (bi, hi) = (bh / heads, bh % heads);
            let keep = &keep[bi * s..(bi + 1) * s];
            // SAFETY: every pointer offset stays inside its buffer (checked shapes above);
            // gemm reads q, k, v and writes `scores` (this task's own) and this task's
            // head columns of `out`.
            unsafe {
                let qp = q.as_ptr().add(bi * t * h + hi * dh);
                let kp = k.as_ptr().add(bi * s * h + hi * dh);
                let vp = v.as_ptr().add(bi * s * h + hi * dh);
                // scores[i, j] = scale · Σ_d q[i, d] k[j, d]: kᵀ is k read column-wise.
                gemm(
                    t,
                    s,
                    dh,
                    scores.as_mut_ptr(),
                    1,
                    s as isize,
                    false,
                    qp,
                    1,
                    h as isize,
                    kp,
                    h as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
                softmax_rows(scores, s, keep);
                let out = dst;
                gemm(
                    t,
                    dh,
                    s,
                    out.0.add(bi * t * h + hi * dh),
                    1,
                    h as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    s as isize,
                    vp,
                    1,
                    h as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        },
    );
    out
}

/// Softmax of each row of `x` (rows of `s`) over the kept columns; dropped columns get 0. A row
/// with no kept column is uniform, as a row of equal `finfo.min` scores is in HF.
fn softmax_rows(x: &mut [f32], s: usize, keep: &[bool]) {
    let any = keep.iter().any(|&k| k);
    for row in x.chunks_exact_mut(s) {
        let mut max = f32::NEG_INFINITY;
        for (x, &k) in row.iter().zip(keep) {
            if k || !any {
                max = max.max(*x);
            }
        }
        let mut sum = 0.0f32;
        for (x, &k) in row.iter_mut().zip(keep) {
            *x = if k || !any { (*x - max).exp() } else { 0.0 };
            sum += *x;
        }
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

/// Exact GELU, `x · Φ(x) = x/2 · (1 + erf(x/√2))`, in place.
pub fn gelu(x: &mut [f32]) {
    x.par_chunks_mut(1 << 14).for_each(|c| {
        for v in c {
            *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
        }
    });
}

/// erf by Abramowitz & Stegun 7.1.26 (1.5e-7 in exact arithmetic, below 5e-7 in f32: GELU's
/// error stays under 2e-6 for |x| < 8), branch-free so the loop vectorises apart from `exp`.
fn erf(x: f32) -> f32 {
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
    let y = 1.0 - poly * (-a * a).exp();
    y.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_libm_to_5e7() {
        let mut worst = 0.0f64;
        for i in -6000..=6000 {
            let x = i as f64 / 1000.0;
            worst = worst.max((erf(x as f32) as f64 - libm::erf(x)).abs());
        }
        assert!(worst < 5e-7, "max |erf - libm::erf| = {worst}");
    }

    /// The kernel against a plain loop over the definition, with a padded key.
    #[test]
    fn attention_matches_the_definition() {
        let (b, t, s, heads, dh) = (2, 3, 4, 2, 3);
        let h = heads * dh;
        let val = |i: usize, m: f32| (i as f32 * 0.37 + m).sin() * 1.3;
        let q: Vec<f32> = (0..b * t * h).map(|i| val(i, 0.1)).collect();
        let k: Vec<f32> = (0..b * s * h).map(|i| val(i, 0.7)).collect();
        let v: Vec<f32> = (0..b * s * h).map(|i| val(i, 1.9)).collect();
        let keep = [true, true, true, false, true, true, true, true];
        let scale = 0.5;
        let got = attention(&q, &k, &v, &keep, b, t, s, heads, scale);
        for bi in 0..b {
            for hi in 0..heads {
                for i in 0..t {
                    let sc: Vec<f64> = (0..s)
                        .map(|j| {
                            let dot: f64 = (0..dh)
                                .map(|d| {
                                    q[(bi * t + i) * h + hi * dh + d] as f64
                                        * k[(bi * s + j) * h + hi * dh + d] as f64
                                })
                                .sum();
                            if keep[bi * s + j] {
                                dot * scale as f64
                            } else {
                                f64::NEG_INFINITY
                            }
                        })
                        .collect();
                    let max = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|x| (x - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..dh {
                        let want: f64 = (0..s)
                            .map(|j| e[j] / z * v[(bi * s + j) * h + hi * dh + d] as f64)
                            .sum();
                        let have = got[(bi * t + i) * h + hi * dh + d] as f64;
                        assert!((have - want).abs() < 1e-5, "{have} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn gelu_matches_the_exact_definition() {
        let mut x: Vec<f32> = (-800..=800).map(|i| i as f32 / 100.0).collect();
        let want: Vec<f64> = x
            .iter()
            .map(|&v| 0.5 * v as f64 * (1.0 + libm::erf(v as f64 / 2f64.sqrt())))
            .collect();
        gelu(&mut x);
        for (a, b) in x.iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 2e-6, "{a} vs {b}");
        }
    }
}
