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

/// Which keys attention may see: the 0/1 padding mask `[batch, time]` as booleans.
pub fn keep_mask<B: AutodiffBackend>(
    mask: &Tensor<B, 2, burn::tensor::Int>,
) -> Result<Vec<bool>, peft_api::ApiError> {
    Ok(mask
        .clone()
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .map_err(|e| peft_api::ApiError::internal(format!("attention mask: {e:?}")))?
        .into_iter()
        .map(|m| m != 0)
        .collect())
}

/// A seed drawn from the backend's generator, so kernel dropout follows `B::seed` (the same
/// seed, the same masks; a resumed run draws what an uninterrupted one does).
pub fn draw_seed<B: AutodiffBackend>(device: &B::Device) -> u64 {
    let u = Tensor::<B::InnerBackend, 1>::random(
        [2],
        burn::tensor::Distribution::Uniform(0.0, 1.0),
        device,
    )
    .into_data()
    .convert::<f32>()
    .into_vec::<f32>()
    .unwrap_or_default();
    // 24 random bits from each draw.
    u.iter()
        .fold(0u64, |acc, x| (acc << 24) | (x * 16_777_216.0) as u64)
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

/// Runs `$body` compiled for AVX-512 when the CPU has it (detected once), else as built:
/// the kernels' element loops are written branch-free so that LLVM vectorises them 16 wide.
macro_rules! simd_dispatch {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
                unsafe fn wide($($arg: $ty),*) {
                    body($($arg),*)
                }
                static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
                if *WIDE.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl"))
                {
                    // SAFETY: the CPU supports every feature `wide` is compiled for.
                    return unsafe { wide($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

simd_dispatch! {
    /// Softmax of each row of `x` (rows of `s`) over the kept columns; dropped columns get 0.
    /// A row with no kept column is uniform, as a row of equal `finfo.min` scores is in HF.
    fn softmax_rows(x: &mut [f32], s: usize, keep: &[bool]) {
        let any = keep.iter().any(|&k| k);
        for row in x.chunks_exact_mut(s) {
            let mut max = f32::NEG_INFINITY;
            for (x, &k) in row.iter().zip(keep) {
                max = max.max(if k || !any { *x } else { f32::NEG_INFINITY });
            }
            let mut sum = 0.0f32;
            for (x, &k) in row.iter_mut().zip(keep) {
                let e = exp(*x - max);
                *x = if k || !any { e } else { 0.0 };
                sum += *x;
            }
            let inv = 1.0 / sum;
            for x in row.iter_mut() {
                *x *= inv;
            }
        }
    }
}

simd_dispatch! {
    /// Exact GELU, `x · Φ(x) = x/2 · (1 + erf(x/√2))`, in place, on one chunk.
    fn gelu_chunk(c: &mut [f32]) {
        for v in c {
            *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

/// Exact GELU, `x · Φ(x) = x/2 · (1 + erf(x/√2))`, in place.
pub fn gelu(x: &mut [f32]) {
    x.par_chunks_mut(1 << 14).for_each(gelu_chunk);
}

simd_dispatch! {
    /// GELU's backward on one chunk: `g · (Φ(x) + x·φ(x))`.
    fn gelu_backward_chunk(g: &mut [f32], x: &[f32]) {
        for (g, &x) in g.iter_mut().zip(x) {
            let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = exp(-0.5 * x * x) * 0.398_942_3;
            *g *= cdf + x * pdf;
        }
    }
}

/// e^x for f32, branch-free (Cody–Waite reduction to |r| ≤ ln2/2, degree-6 Taylor
/// polynomial, exponent bits): relative error below 2e-7, vectorisable unlike libm's `expf`.
/// Inputs below -87 give 2^-126 (≈ 0 against any kept score), above 88 saturate.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
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
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_f64_to_3e7_relative() {
        let mut worst = 0.0f64;
        for i in -8000..=8000 {
            let x = i as f32 / 100.0;
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64) - want).abs() / want);
        }
        assert!(worst < 3e-7, "max relative error {worst}");
        assert!(exp(-1e4) < 1e-37 && exp(-1e4) >= 0.0);
    }

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

    type A = burn::backend::Autodiff<burn::backend::Flex>;

    /// Each named pair of value lists has equal length and agrees to `tol`.
    fn assert_close(pairs: &[(&str, &Vec<f32>, &Vec<f32>)], tol: f32) {
        for (name, x, y) in pairs {
            assert_eq!(x.len(), y.len(), "{name}: lengths");
            let d = x
                .iter()
                .zip(y.iter())
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            assert!(d < tol, "{name}: max abs diff {d}");
        }
    }

    fn leaf(seed: f32, shape: [usize; 3]) -> Tensor<A, 3> {
        let n = shape.iter().product::<usize>();
        let v: Vec<f32> = (0..n)
            .map(|i| (i as f32 * 0.61 + seed).sin() * 1.1)
            .collect();
        Tensor::<A, 3>::from_data(TensorData::new(v, shape), &Default::default()).require_grad()
    }

    fn vals<Bk: burn::tensor::backend::Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec().unwrap()
    }

    /// burn's own ops: split heads, scores with the additive mask, softmax, merge.
    fn reference(
        q: Tensor<A, 3>,
        k: Tensor<A, 3>,
        v: Tensor<A, 3>,
        keep: &[bool],
        heads: usize,
    ) -> Tensor<A, 3> {
        let [b, t, h] = q.dims();
        let dh = h / heads;
        let split = |x: Tensor<A, 3>| x.reshape([b, t, heads, dh]).swap_dims(1, 2);
        let m: Vec<f32> = keep
            .iter()
            .map(|&k| if k { 0.0 } else { f32::MIN })
            .collect();
        let mask = Tensor::<A, 2>::from_data(TensorData::new(m, [b, t]), &Default::default())
            .unsqueeze_dim::<3>(1)
            .unsqueeze_dim::<4>(1);
        let scores = split(q).matmul(split(k).swap_dims(2, 3)) / (dh as f64).sqrt() + mask;
        burn::tensor::activation::softmax(scores, 3)
            .matmul(split(v))
            .swap_dims(1, 2)
            .reshape([b, t, h])
    }

    /// The tracked kernel's output and its gradients of q, k and v equal burn's, with a padded
    /// key.
    #[test]
    fn tracked_attention_matches_burn_values_and_gradients() {
        let (b, t, heads, h) = (2, 5, 2, 8);
        let keep = [true, true, true, true, false, true, true, true, true, true];
        let w = leaf(3.0, [b, t, h]).detach();
        let run = |fused: bool| {
            let (q, k, v) = (
                leaf(0.1, [b, t, h]),
                leaf(0.7, [b, t, h]),
                leaf(1.9, [b, t, h]),
            );
            let scale = 1.0 / ((h / heads) as f32).sqrt();
            let out = if fused {
                tracked::attention(q.clone(), k.clone(), v.clone(), &keep, heads, scale, 0.0, 0)
            } else {
                reference(q.clone(), k.clone(), v.clone(), &keep, heads)
            };
            let g = (out.clone() * w.clone()).sum().backward();
            let grad = |x: &Tensor<A, 3>| vals(x.grad(&g).unwrap());
            (vals(out), grad(&q), grad(&k), grad(&v))
        };
        let (a, b2) = (run(true), run(false));
        assert_close(
            &[
                ("out", &a.0, &b2.0),
                ("dq", &a.1, &b2.1),
                ("dk", &a.2, &b2.2),
                ("dv", &a.3, &b2.3),
            ],
            1e-5,
        );
    }

    /// With dropout on the probabilities, the gradient still is the derivative of what the
    /// forward computed (same seed, same mask): a central difference along a direction agrees.
    #[test]
    fn tracked_attention_dropout_gradient_is_consistent() {
        let (b, t, heads, h) = (1, 6, 2, 4);
        let keep = [true; 6];
        let dir = leaf(5.0, [b, t, h]).detach();
        let loss = |q: Tensor<A, 3>| {
            let (k, v) = (leaf(0.7, [b, t, h]).detach(), leaf(1.9, [b, t, h]).detach());
            let out = tracked::attention(q, k, v, &keep, heads, 0.5, 0.3, 1234);
            (out.clone() * out).sum()
        };
        let q = leaf(0.1, [b, t, h]);
        let g = loss(q.clone()).backward();
        let analytic: f32 = vals(q.grad(&g).unwrap())
            .iter()
            .zip(vals(dir.clone()))
            .map(|(a, b)| a * b)
            .sum();
        let eps = 1e-2;
        let at = |s: f64| vals(loss(q.clone().detach() + dir.clone() * s))[0];
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f32);
        assert!(
            (analytic - numeric).abs() < 2e-2 * analytic.abs().max(1.0),
            "{analytic} vs {numeric}"
        );
        // Dropout did act: without it the loss differs.
        let plain = {
            let (k, v) = (leaf(0.7, [b, t, h]).detach(), leaf(1.9, [b, t, h]).detach());
            let out = tracked::attention(q.clone().detach(), k, v, &keep, heads, 0.5, 0.0, 1234);
            vals((out.clone() * out).sum())[0]
        };
        assert!((plain - at(0.0)).abs() > 1e-4);
    }

    #[test]
    fn tracked_gelu_matches_burn_values_and_gradients() {
        let run = |fused: bool| {
            let x = leaf(0.3, [2, 3, 50]) * 4.0;
            let x = x.detach().require_grad();
            let y = if fused {
                tracked::gelu(x.clone())
            } else {
                burn::tensor::activation::gelu(x.clone())
            };
            let g = (y.clone() * y.clone()).sum().backward();
            (vals(y), vals(x.grad(&g).unwrap()))
        };
        let (a, b) = (run(true), run(false));
        for (x, y) in a.0.iter().zip(&b.0).chain(a.1.iter().zip(&b.1)) {
            assert!((x - y).abs() < 1e-5 * y.abs().max(1.0), "{x} vs {y}");
        }
    }

    /// Values and the gradients of input, weight and bias against burn's layer norm.
    #[test]
    fn tracked_layer_norm_matches_burn_values_and_gradients() {
        let d = 40;
        let run = |fused: bool| {
            let x = (leaf(0.3, [2, 3, d]) * 3.0 + 0.5).detach().require_grad();
            let wv: Vec<f32> = (0..d).map(|i| 1.0 + (i as f32 * 0.3).cos() * 0.2).collect();
            let bv: Vec<f32> = (0..d).map(|i| (i as f32 * 0.7).sin() * 0.1).collect();
            let w = Tensor::<A, 1>::from_data(TensorData::new(wv, [d]), &Default::default())
                .require_grad();
            let b = Tensor::<A, 1>::from_data(TensorData::new(bv, [d]), &Default::default())
                .require_grad();
            let y = if fused {
                tracked::layer_norm(x.clone(), w.clone(), b.clone(), 1e-12)
            } else {
                crate::bridge::ops::layer_norm(x.clone(), Some(w.clone()), Some(b.clone()), 1e-12)
            };
            let t = leaf(9.0, [2, 3, d]).detach();
            let g = (y.clone() * t).sum().backward();
            (
                vals(y),
                vals(x.grad(&g).unwrap()),
                vals(w.grad(&g).unwrap()),
                vals(b.grad(&g).unwrap()),
            )
        };
        let (a, b) = (run(true), run(false));
        assert_close(
            &[
                ("y", &a.0, &b.0),
                ("dx", &a.1, &b.1),
                ("dw", &a.2, &b.2),
                ("db", &a.3, &b.3),
            ],
            1e-4,
        );
    }

    /// Values and every gradient against burn's matmul + bias, with and without W training.
    #[test]
    fn tracked_linear_matches_burn_values_and_gradients() {
        let run = |fused: bool, w_trains: bool| {
            let x = leaf(0.2, [1, 7, 5]).reshape([7, 5]).detach().require_grad();
            let mut w = leaf(1.2, [1, 3, 5]).reshape([3, 5]).detach();
            if w_trains {
                w = w.require_grad();
            }
            let b = leaf(2.2, [1, 1, 3]).reshape([3]).detach().require_grad();
            let y = if fused {
                tracked::linear(x.clone(), w.clone(), Some(b.clone()))
            } else {
                x.clone().matmul(w.clone().transpose()) + b.clone().unsqueeze::<2>()
            };
            let t = leaf(4.0, [1, 7, 3]).reshape([7, 3]).detach();
            let g = (y.clone() * t).sum().backward();
            let dw = w.grad(&g).map(vals).unwrap_or_default();
            (
                vals(y),
                vals(x.grad(&g).unwrap()),
                dw,
                vals(b.grad(&g).unwrap()),
            )
        };
        for w_trains in [false, true] {
            let (a, b) = (run(true, w_trains), run(false, w_trains));
            assert_eq!(a.2.len(), if w_trains { 15 } else { 0 });
            assert_close(
                &[
                    ("y", &a.0, &b.0),
                    ("dx", &a.1, &b.1),
                    ("dw", &a.2, &b.2),
                    ("db", &a.3, &b.3),
                ],
                1e-5,
            );
        }
    }

    /// Inverted dropout: about p of the elements zeroed, the rest scaled by 1/(1 - p), the
    /// gradient the same mask; the same seed draws the same mask.
    #[test]
    fn tracked_dropout_masks_scales_and_differentiates() {
        let x = Tensor::<A, 3>::ones([4, 50, 500], &Default::default()).require_grad();
        let y = tracked::dropout(x.clone(), 0.3, 77);
        let g = y.clone().sum().backward();
        let (out, grad) = (vals(y), vals(x.grad(&g).unwrap()));
        let zeros = out.iter().filter(|v| **v == 0.0).count() as f64 / out.len() as f64;
        assert!((zeros - 0.3).abs() < 0.01, "dropped fraction {zeros}");
        assert!(out
            .iter()
            .all(|v| *v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
        assert_eq!(out, grad, "d(sum)/dx is the scaled mask");
        let again = vals(tracked::dropout(x.clone(), 0.3, 77));
        assert_eq!(out, again);
        assert_ne!(out, vals(tracked::dropout(x, 0.3, 78)));
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

/// The attention kernel as a tracked operation of the CPU autodiff backend: the same forward
/// as [`attention`] (plus dropout on the probabilities when training) and its own backward, so
/// training skips burn's head copies and five-op softmax too.
pub mod tracked {
    use std::{any::Any, sync::Arc};

    use burn::{
        backend::{
            autodiff::{
                checkpoint::{base::Checkpointer, strategy::NoCheckpointing},
                grads::Gradients,
                ops::{Backward, Ops, OpsKind},
            },
            Autodiff, Flex,
        },
        tensor::{
            backend::{AutodiffBackend, BackendTypes},
            Tensor, TensorData, TensorPrimitive,
        },
    };
    use gemm::{gemm, Parallelism};
    use rand::{rngs::SmallRng, RngCore, SeedableRng};
    use rayon::prelude::*;

    use super::{softmax_rows, OutPtr};

    type Ad = Autodiff<Flex>;
    /// The CPU autodiff backend's float primitive (burn-autodiff's `AutodiffTensor<Flex>`).
    type AdTensor = <Ad as BackendTypes>::FloatTensorPrimitive;
    type FlexTensor = <Flex as BackendTypes>::FloatTensorPrimitive;

    /// Whether `B` is the CPU autodiff backend (and the kernels are not turned off).
    pub fn enabled<B: AutodiffBackend>() -> bool {
        super::enabled::<B>() && std::any::TypeId::of::<B>() == std::any::TypeId::of::<Ad>()
    }

    /// A CPU-autodiff result as a tensor of `B` (which is that backend: see `enabled`).
    fn into_b<B: AutodiffBackend, const D: usize>(t: AdTensor) -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(cast::<
            AdTensor,
            <B as BackendTypes>::FloatTensorPrimitive,
        >(t)))
    }

    fn cast<T: 'static, U: 'static>(t: T) -> U {
        *(Box::new(t) as Box<dyn Any>)
            .downcast::<U>()
            .unwrap_or_else(|_| panic!("kernels::tracked used on another backend"))
    }

    /// A float tensor's storage, borrowed where it lies (copied only when strided or not f32):
    /// the inputs the kernels read and the backward keeps.
    #[derive(Clone, Debug)]
    struct Buf(FlexTensor);

    impl Buf {
        fn new(p: FlexTensor) -> Self {
            let f32 = p.dtype() == burn::tensor::DType::F32;
            let p = if f32 && p.is_contiguous() && p.layout().start_offset() == 0 {
                p
            } else {
                FlexTensor::from_data(p.into_data().convert::<f32>())
            };
            Buf(p)
        }
    }

    impl std::ops::Deref for Buf {
        type Target = [f32];
        fn deref(&self) -> &[f32] {
            self.0.as_slice::<f32>().expect("a contiguous f32 tensor")
        }
    }

    fn values(p: FlexTensor) -> Vec<f32> {
        Tensor::<Flex, 3>::from_primitive(TensorPrimitive::Float(p))
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32 data")
    }

    fn primitive(v: Vec<f32>, shape: [usize; 3]) -> FlexTensor {
        Tensor::<Flex, 3>::from_data(TensorData::new(v, shape), &Default::default())
            .into_primitive()
            .tensor()
    }

    /// What the backward needs: the inputs, the softmax probabilities before dropout and the
    /// dropout mask (kept elements).
    #[derive(Clone, Debug)]
    struct State {
        q: Buf,
        k: Buf,
        v: Buf,
        probs: Arc<Vec<f32>>,
        kept: Option<Arc<Vec<bool>>>,
        dims: Dims,
    }

    #[derive(Clone, Copy, Debug)]
    struct Dims {
        b: usize,
        t: usize,
        s: usize,
        heads: usize,
        h: usize,
        scale: f32,
        /// 1 / (1 - dropout probability).
        inv_keep: f32,
    }

    #[derive(Debug)]
    struct AttentionBackward;

    impl Backward<Flex, 3> for AttentionBackward {
        type State = State;

        fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let grad = values(grads.consume::<Flex>(&ops.node));
            let st = ops.state;
            let d = st.dims;
            let (dq, dk, dv) = backward(&st, &grad);
            let shapes = [[d.b, d.t, d.h], [d.b, d.s, d.h], [d.b, d.s, d.h]];
            for ((parent, g), shape) in ops.parents.iter().zip([dq, dk, dv]).zip(shapes) {
                if let Some(node) = parent {
                    grads.register::<Flex>(node.id, primitive(g, shape));
                }
            }
        }
    }

    /// `softmax(q kᵀ · scale + mask) v` with dropout `p` on the probabilities (drawn from
    /// `seed`) as one tracked operation; `q` `[b, t, h]`, `k`, `v` `[b, s, h]`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention<B: AutodiffBackend>(
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        keep: &[bool],
        heads: usize,
        scale: f32,
        dropout: f64,
        seed: u64,
    ) -> Tensor<B, 3> {
        let [b, t, h] = q.dims();
        let s = k.dims()[1];
        let ad = |x: Tensor<B, 3>| -> AdTensor { cast(x.into_primitive().tensor()) };
        let (qa, ka, va) = (ad(q), ad(k), ad(v));
        let st = State {
            q: Buf::new(qa.primitive.clone()),
            k: Buf::new(ka.primitive.clone()),
            v: Buf::new(va.primitive.clone()),
            probs: Arc::new(Vec::new()),
            kept: None,
            dims: Dims {
                b,
                t,
                s,
                heads,
                h,
                scale,
                inv_keep: 1.0 / (1.0 - dropout as f32),
            },
        };
        let (out, st) = forward(st, keep, dropout, seed);
        let out = primitive(out, [b, t, h]);
        let nodes = [qa.node.clone(), ka.node.clone(), va.node.clone()];
        let result = match AttentionBackward
            .prepare::<NoCheckpointing>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(st, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        into_b(result)
    }

    /// Forward per (batch, head): probabilities kept in the state, dropout applied to what
    /// multiplies `v`.
    fn forward(mut st: State, keep: &[bool], dropout: f64, seed: u64) -> (Vec<f32>, State) {
        let d = st.dims;
        let dh = d.h / d.heads;
        let n = d.t * d.s;
        let mut probs = vec![0f32; d.b * d.heads * n];
        let mut kept = (dropout > 0.0).then(|| vec![true; d.b * d.heads * n]);
        let mut out = vec![0f32; d.b * d.t * d.h];
        let dst = OutPtr(out.as_mut_ptr());
        let (q, k, v) = (&st.q, &st.k, &st.v);
        let kept_chunks: Vec<Option<&mut [bool]>> = match kept.as_mut() {
            Some(m) => m.chunks_mut(n).map(Some).collect(),
            None => (0..d.b * d.heads).map(|_| None).collect(),
        };
        probs
            .par_chunks_mut(n)
            .zip(kept_chunks)
            .enumerate()
            .for_each_init(
                || vec![0f32; n],
                |dropped, (bh, (p, kept))| {
                    let (bi, hi) = (bh / d.heads, bh % d.heads);
                    let keep = &keep[bi * d.s..(bi + 1) * d.s];
                    // SAFETY: offsets stay inside the checked buffers; each task writes its own
                    // probability block and its own head columns of `out`.
                    unsafe {
                        gemm(
                            d.t,
                            d.s,
                            dh,
                            p.as_mut_ptr(),
                            1,
                            d.s as isize,
                            false,
                            q.as_ptr().add(bi * d.t * d.h + hi * dh),
                            1,
                            d.h as isize,
                            k.as_ptr().add(bi * d.s * d.h + hi * dh),
                            d.h as isize,
                            1,
                            0.0,
                            d.scale,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                    softmax_rows(p, d.s, keep);
                    let used: &[f32] = match kept {
                        Some(kept) => {
                            draw_keep(kept, dropout, seed, bh as u64);
                            for ((x, m), y) in p.iter().zip(kept.iter()).zip(dropped.iter_mut()) {
                                *y = if *m { x * d.inv_keep } else { 0.0 };
                            }
                            dropped
                        }
                        None => p,
                    };
                    let out = dst;
                    unsafe {
                        gemm(
                            d.t,
                            dh,
                            d.s,
                            out.0.add(bi * d.t * d.h + hi * dh),
                            1,
                            d.h as isize,
                            false,
                            used.as_ptr(),
                            1,
                            d.s as isize,
                            v.as_ptr().add(bi * d.s * d.h + hi * dh),
                            1,
                            d.h as isize,
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
        st.probs = Arc::new(probs);
        st.kept = kept.map(Arc::new);
        (out, st)
    }

    #[derive(Debug)]
    struct GeluBackward;

    impl Backward<Flex, 1> for GeluBackward {
        type State = (Buf, [usize; 3]);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let mut grad = values(grads.consume::<Flex>(&ops.node));
            let (x, shape) = ops.state;
            // d/dx x·Φ(x) = Φ(x) + x·φ(x).
            grad.par_chunks_mut(1 << 14)
                .zip(x.par_chunks(1 << 14))
                .for_each(|(g, x)| super::gelu_backward_chunk(g, x));
            if let Some(node) = &ops.parents[0] {
                grads.register::<Flex>(node.id, primitive(grad, shape));
            }
        }
    }

    /// Exact GELU as one tracked operation with its own backward (burn's evaluates `erf` per
    /// element in both directions).
    pub fn gelu<B: AutodiffBackend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
        let shape = x.dims();
        let xa: AdTensor = cast(x.into_primitive().tensor());
        let input = Buf::new(xa.primitive.clone());
        let mut out = input.to_vec();
        super::gelu(&mut out);
        let out = primitive(out, shape);
        let result = match GeluBackward
            .prepare::<NoCheckpointing>([xa.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((input, shape), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        into_b(result)
    }

    fn primitive_of<const D: usize>(v: Vec<f32>, shape: [usize; D]) -> FlexTensor {
        Tensor::<Flex, D>::from_data(TensorData::new(v, shape), &Default::default())
            .into_primitive()
            .tensor()
    }

    #[derive(Debug)]
    struct LayerNormBackward;

    /// The normalised input, each row's 1/σ, the weight, and the input's shape.
    type LnState = (Arc<Vec<f32>>, Arc<Vec<f32>>, Buf, [usize; 3]);

    impl Backward<Flex, 3> for LayerNormBackward {
        type State = LnState;

        fn backward(self, ops: Ops<LnState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let dy = values(grads.consume::<Flex>(&ops.node));
            let (xhat, rstd, w, shape) = ops.state;
            let w: &[f32] = &w;
            let d = shape[2];
            let mut dx = vec![0f32; dy.len()];
            // dx = (1/σ)·(g − mean(g) − x̂·mean(g·x̂)) with g = dy·w, row by row; dw, db summed.
            let (dw, db) = dx
                .par_chunks_mut(d)
                .zip(dy.par_chunks(d))
                .zip(xhat.par_chunks(d))
                .zip(rstd.par_iter())
                .fold(
                    || (vec![0f32; d], vec![0f32; d]),
                    |(mut dw, mut db), (((dx, dy), xh), &r)| {
                        let (mut mg, mut mgx) = (0f32, 0f32);
                        for j in 0..d {
                            let g = dy[j] * w[j];
                            mg += g;
                            mgx += g * xh[j];
                            dw[j] += dy[j] * xh[j];
                            db[j] += dy[j];
                        }
                        let (mg, mgx) = (mg / d as f32, mgx / d as f32);
                        for j in 0..d {
                            dx[j] = r * (dy[j] * w[j] - mg - xh[j] * mgx);
                        }
                        (dw, db)
                    },
                )
                .reduce(
                    || (vec![0f32; d], vec![0f32; d]),
                    |(mut a, mut b), (c, e)| {
                        a.iter_mut().zip(c).for_each(|(x, y)| *x += y);
                        b.iter_mut().zip(e).for_each(|(x, y)| *x += y);
                        (a, b)
                    },
                );
            let [px, pw, pb] = &ops.parents;
            if let Some(node) = px {
                grads.register::<Flex>(node.id, primitive(dx, shape));
            }
            if let Some(node) = pw {
                grads.register::<Flex>(node.id, primitive_of(dw, [d]));
            }
            if let Some(node) = pb {
                grads.register::<Flex>(node.id, primitive_of(db, [d]));
            }
        }
    }

    /// Layer norm over the last dim with weight and bias (`torch.nn.LayerNorm`), as one tracked
    /// operation: burn's records seven ops and their backward.
    pub fn layer_norm<B: AutodiffBackend>(
        x: Tensor<B, 3>,
        w: Tensor<B, 1>,
        b: Tensor<B, 1>,
        eps: f64,
    ) -> Tensor<B, 3> {
        let shape = x.dims();
        let d = shape[2];
        let xa: AdTensor = cast(x.into_primitive().tensor());
        let wa: AdTensor = cast(w.into_primitive().tensor());
        let ba: AdTensor = cast(b.into_primitive().tensor());
        let (wv, bv) = (
            Buf::new(wa.primitive.clone()),
            Buf::new(ba.primitive.clone()),
        );
        let mut xhat = Buf::new(xa.primitive.clone()).to_vec();
        let mut rstd = vec![0f32; xhat.len() / d];
        xhat.par_chunks_mut(d)
            .zip(rstd.par_iter_mut())
            .for_each(|(row, r)| {
                let mean = row.iter().sum::<f32>() / d as f32;
                let var = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / d as f32;
                *r = 1.0 / (var + eps as f32).sqrt();
                for x in row.iter_mut() {
                    *x = (*x - mean) * *r;
                }
            });
        let mut out = xhat.clone();
        out.par_chunks_mut(d).for_each(|row| {
            for ((y, w), b) in row.iter_mut().zip(wv.iter()).zip(bv.iter()) {
                *y = *y * w + b;
            }
        });
        let out = primitive(out, shape);
        let nodes = [xa.node.clone(), wa.node.clone(), ba.node.clone()];
        let result = match LayerNormBackward
            .prepare::<NoCheckpointing>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((Arc::new(xhat), Arc::new(rstd), wv, shape), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        into_b(result)
    }

    #[derive(Debug)]
    struct LinearBackward;

    /// The input (kept only when the weight needs its gradient), the weight, and `[n, in, out]`.
    type LinearState = (Option<Buf>, Buf, [usize; 3]);

    impl Backward<Flex, 3> for LinearBackward {
        type State = LinearState;

        fn backward(self, ops: Ops<LinearState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let dy = flat(grads.consume::<Flex>(&ops.node));
            let (x, w, [n, i, o]) = ops.state;
            let [px, pw, pb] = &ops.parents;
            if let Some(node) = px {
                // dx = dy · W
                let mut dx = vec![0f32; n * i];
                // SAFETY: buffers of the stated sizes.
                unsafe {
                    gemm(
                        n,
                        i,
                        o,
                        dx.as_mut_ptr(),
                        1,
                        i as isize,
                        false,
                        dy.as_ptr(),
                        1,
                        o as isize,
                        w.as_ptr(),
                        1,
                        i as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::Rayon(0),
                    );
                }
                grads.register::<Flex>(node.id, primitive_of(dx, [n, i]));
            }
            if let (Some(node), Some(x)) = (pw, x) {
                // dW = dyᵀ · x
                let mut dw = vec![0f32; o * i];
                unsafe {
                    gemm(
                        o,
                        i,
                        n,
                        dw.as_mut_ptr(),
                        1,
                        i as isize,
                        false,
                        dy.as_ptr(),
                        o as isize,
                        1,
                        x.as_ptr(),
                        1,
                        i as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::Rayon(0),
                    );
                }
                grads.register::<Flex>(node.id, primitive_of(dw, [o, i]));
            }
            if let Some(node) = pb {
                let mut db = vec![0f32; o];
                for row in dy.chunks_exact(o) {
                    db.iter_mut().zip(row).for_each(|(a, b)| *a += b);
                }
                grads.register::<Flex>(node.id, primitive_of(db, [o]));
            }
        }
    }

    fn flat(p: FlexTensor) -> Vec<f32> {
        Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(p))
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32 data")
    }

    /// `x Wᵀ + b` for `x` `[n, in]`, `W` `[out, in]` (nn.Linear's layout), one `gemm` call
    /// reading W transposed in place; tracked with its own backward (dW only when W trains).
    pub fn linear<B: AutodiffBackend>(
        x: Tensor<B, 2>,
        w: Tensor<B, 2>,
        b: Option<Tensor<B, 1>>,
    ) -> Tensor<B, 2> {
        let [n, i] = x.dims();
        let o = w.dims()[0];
        let device = x.device();
        let b = b.unwrap_or_else(|| Tensor::zeros([o], &device));
        let xa: AdTensor = cast(x.into_primitive().tensor());
        let wa: AdTensor = cast(w.into_primitive().tensor());
        let ba: AdTensor = cast(b.into_primitive().tensor());
        let (xv, wv, bv) = (
            Buf::new(xa.primitive.clone()),
            Buf::new(wa.primitive.clone()),
            Buf::new(ba.primitive.clone()),
        );
        let mut y: Vec<f32> = Vec::with_capacity(n * o);
        for _ in 0..n {
            y.extend_from_slice(&bv);
        }
        // SAFETY: buffers of the stated sizes; y = 1·y + x·Wᵀ.
        unsafe {
            gemm(
                n,
                o,
                i,
                y.as_mut_ptr(),
                1,
                o as isize,
                true,
                xv.as_ptr(),
                1,
                i as isize,
                wv.as_ptr(),
                i as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::Rayon(0),
            );
        }
        let out = primitive_of(y, [n, o]);
        let keep_x = !wa.node.requirement.is_none();
        let nodes = [xa.node.clone(), wa.node.clone(), ba.node.clone()];
        let result = match LinearBackward
            .prepare::<NoCheckpointing>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((keep_x.then_some(xv), wv, [n, i, o]), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        into_b(result)
    }

    /// Fills `kept` with "keep" draws of probability `1 - p` from a fast generator seeded by
    /// `(seed, stream)`: the same on every run and thread schedule.
    fn draw_keep(kept: &mut [bool], p: f64, seed: u64, stream: u64) {
        let mut rng = SmallRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let threshold = (p * 4_294_967_296.0).min(4_294_967_295.0) as u32;
        for m in kept.iter_mut() {
            *m = rng.next_u32() >= threshold;
        }
    }

    #[derive(Debug)]
    struct DropoutBackward;

    impl Backward<Flex, 1> for DropoutBackward {
        /// The kept elements, 1/(1 - p), the shape.
        type State = (Arc<Vec<bool>>, f32, Vec<usize>);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (kept, inv, shape) = ops.state;
            let mut g = flat(grads.consume::<Flex>(&ops.node));
            g.par_iter_mut().zip(kept.par_iter()).for_each(|(g, &k)| {
                *g = if k { *g * inv } else { 0.0 };
            });
            if let Some(node) = &ops.parents[0] {
                let data = TensorData::new(g, shape);
                grads.register::<Flex>(node.id, FlexTensor::from_data(data));
            }
        }
    }

    /// Inverted dropout (`x · mask / (1 - p)`) as one tracked operation, drawing the mask with
    /// a fast generator from `seed` (burn's draws a float per element through ChaCha).
    pub fn dropout<B: AutodiffBackend, const D: usize>(
        x: Tensor<B, D>,
        p: f64,
        seed: u64,
    ) -> Tensor<B, D> {
        let shape = x.dims().to_vec();
        let xa: AdTensor = cast(x.into_primitive().tensor());
        let input = Buf::new(xa.primitive.clone());
        let mut kept = vec![true; input.len()];
        const CHUNK: usize = 1 << 16;
        kept.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, c)| draw_keep(c, p, seed, i as u64));
        let inv = 1.0 / (1.0 - p as f32);
        let out: Vec<f32> = input
            .par_iter()
            .zip(kept.par_iter())
            .map(|(x, &k)| if k { x * inv } else { 0.0 })
            .collect();
        let out = FlexTensor::from_data(TensorData::new(out, shape.clone()));
        let result = match DropoutBackward
            .prepare::<NoCheckpointing>([xa.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((Arc::new(kept), inv, shape), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        into_b(result)
    }

    /// Gradients of `q`, `k`, `v` from the gradient of the output.
    fn backward(st: &State, grad: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let d = st.dims;
        let dh = d.h / d.heads;
        let n = d.t * d.s;
        let mut dq = vec![0f32; d.b * d.t * d.h];
        let mut dk = vec![0f32; d.b * d.s * d.h];
        let mut dv = vec![0f32; d.b * d.s * d.h];
        let (pq, pk, pv) = (
            OutPtr(dq.as_mut_ptr()),
            OutPtr(dk.as_mut_ptr()),
            OutPtr(dv.as_mut_ptr()),
        );
        (0..d.b * d.heads).into_par_iter().for_each_init(
            || (vec![0f32; n], vec![0f32; n]),
            |(used, dp), bh| {
                let (bi, hi) = (bh / d.heads, bh % d.heads);
                let p = &st.probs[bh * n..(bh + 1) * n];
                let kept = st.kept.as_ref().map(|m| &m[bh * n..(bh + 1) * n]);
                for j in 0..n {
                    used[j] = match kept {
                        Some(m) if !m[j] => 0.0,
                        Some(_) => p[j] * d.inv_keep,
                        None => p[j],
                    };
                }
                let (qo, ko) = (bi * d.t * d.h + hi * dh, bi * d.s * d.h + hi * dh);
                let (dq, dk, dv) = (pq, pk, pv);
                // SAFETY: as in the forward: in-bounds offsets, disjoint head columns per task.
                unsafe {
                    // dv = usedᵀ · grad
                    gemm(
                        d.s,
                        dh,
                        d.t,
                        dv.0.add(ko),
                        1,
                        d.h as isize,
                        false,
                        used.as_ptr(),
                        d.s as isize,
                        1,
                        grad.as_ptr().add(qo),
                        1,
                        d.h as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                    // d(used) = grad · vᵀ
                    gemm(
                        d.t,
                        d.s,
                        dh,
                        dp.as_mut_ptr(),
                        1,
                        d.s as isize,
                        false,
                        grad.as_ptr().add(qo),
                        1,
                        d.h as isize,
                        st.v.as_ptr().add(ko),
                        d.h as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
                // Through dropout, then the softmax: dS = P ∘ (dP − Σ_j P dP).
                for (i, row) in dp.chunks_exact_mut(d.s).enumerate() {
                    let pr = &p[i * d.s..(i + 1) * d.s];
                    if let Some(m) = kept {
                        let mr = &m[i * d.s..(i + 1) * d.s];
                        for (x, &k) in row.iter_mut().zip(mr) {
                            *x = if k { *x * d.inv_keep } else { 0.0 };
                        }
                    }
                    let dot: f32 = row.iter().zip(pr).map(|(a, b)| a * b).sum();
                    for (x, &pj) in row.iter_mut().zip(pr) {
                        *x = pj * (*x - dot);
                    }
                }
                unsafe {
                    // dq = scale · dS · k
                    gemm(
                        d.t,
                        dh,
                        d.s,
                        dq.0.add(qo),
                        1,
                        d.h as isize,
                        false,
                        dp.as_ptr(),
                        1,
                        d.s as isize,
                        st.k.as_ptr().add(ko),
                        1,
                        d.h as isize,
                        0.0,
                        d.scale,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                    // dk = scale · dSᵀ · q
                    gemm(
                        d.s,
                        dh,
                        d.t,
                        dk.0.add(ko),
                        1,
                        d.h as isize,
                        false,
                        dp.as_ptr(),
                        d.s as isize,
                        1,
                        st.q.as_ptr().add(qo),
                        1,
                        d.h as isize,
                        0.0,
                        d.scale,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            },
        );
        (dq, dk, dv)
    }
}
