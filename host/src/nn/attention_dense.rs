//! The attention kernel before the blocked one: the whole `[t, s]` probability matrix of each
//! (batch, head) in one buffer, kept for the backward. Not on any model path; kept as the
//! reference the blocked kernel is tested against and as the baseline `bench attention`
//! times it against (interleaved, in one process). Dropout draws the same mask as the
//! blocked kernel (the same counter-based hash), so the two agree with dropout too.
use rayon::prelude::*;

use super::{
    attention::Dims,
    gemm::{matmul, Mat, MatMut, Parallelism},
    math::dot,
    softmax::softmax_rows,
};

/// The context `[b, t, h]`; `probs` (when given, `b·heads` blocks of `t·s`) keeps the
/// softmax probabilities before dropout for [`backward`].
pub(crate) fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    keep: &[bool],
    d: Dims,
    probs: Option<&mut [f32]>,
) -> Vec<f32> {
    let (dh, n, tasks) = (d.dh(), d.t * d.s, d.b * d.heads);
    let mut out = vec![0f32; d.b * d.t * d.h];
    if out.is_empty() {
        return out;
    }
    let heads_out = MatMut::blocks(&mut out, d.b * d.t, d.h, d.t, dh);
    let probs: Vec<Option<&mut [f32]>> = match probs {
        Some(p) => p.chunks_mut(n.max(1)).map(Some).collect(),
        None => (0..tasks).map(|_| None).collect(),
    };
    heads_out
        .into_par_iter()
        .zip(probs)
        .enumerate()
        .for_each_init(
            || (vec![0f32; n], vec![0f32; n]),
            |(scratch, z), (bh, (mut out, p))| {
                let (qo, ko) = d.offsets(bh);
                let bi = bh / d.heads;
                let keep = &keep[bi * d.s..(bi + 1) * d.s];
                let p: &mut [f32] = p.unwrap_or(scratch.as_mut_slice());
                let qm = Mat::rows(q, qo, d.t, dh, d.h);
                let km = Mat::rows(k, ko, d.s, dh, d.kv_stride());
                let mut scores = MatMut::dense(p, d.t, d.s);
                matmul(&mut scores, 0.0, qm, km.t(), d.scale, Parallelism::None);
                softmax_rows(p, d.s, keep);
                let used: &[f32] = match d.drop {
                    Some(dr) => {
                        dr.factors(dr.stream(bh), z, d.s, d.s, 0, 0);
                        for (zj, &pj) in z.iter_mut().zip(p.iter()) {
                            *zj *= pj;
                        }
                        z
                    }
                    None => p,
                };
                let vm = Mat::rows(v, ko, d.s, dh, d.kv_stride());
                let pm = Mat::rows(used, 0, d.t, d.s, d.s);
                matmul(&mut out, 0.0, pm, vm, 1.0, Parallelism::None);
            },
        );
    out
}

/// Gradients of `q`, `k`, `v` (in their own layouts) from the output's gradient `grad`.
pub(crate) fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    grad: &[f32],
    d: Dims,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (dh, n) = (d.dh(), d.t * d.s);
    let mut dq = vec![0f32; d.b * d.t * d.h];
    let mut dk = vec![0f32; d.b * d.s * d.h];
    let mut dv = vec![0f32; d.b * d.s * d.h];
    if dq.is_empty() {
        return (dq, dk, dv);
    }
    let dq_heads = MatMut::blocks(&mut dq, d.b * d.t, d.h, d.t, dh);
    let dk_heads = d.kv_blocks(&mut dk);
    let dv_heads = d.kv_blocks(&mut dv);
    dq_heads
        .into_par_iter()
        .zip(dk_heads)
        .zip(dv_heads)
        .enumerate()
        .for_each_init(
            || (vec![0f32; n], vec![0f32; n], vec![0f32; n]),
            |(used, dp, z), (bh, ((mut dq, mut dk), mut dv))| {
                let p = &probs[bh * n..(bh + 1) * n];
                match d.drop {
                    Some(dr) => {
                        dr.factors(dr.stream(bh), z, d.s, d.s, 0, 0);
                        for ((u, &pj), &zj) in used.iter_mut().zip(p).zip(z.iter()) {
                            *u = pj * zj;
                        }
                    }
                    None => used.copy_from_slice(p),
                }
                let (qo, ko) = d.offsets(bh);
                let g = Mat::rows(grad, qo, d.t, dh, d.h);
                let (q, k, v) = (
                    Mat::rows(q, qo, d.t, dh, d.h),
                    Mat::rows(k, ko, d.s, dh, d.kv_stride()),
                    Mat::rows(v, ko, d.s, dh, d.kv_stride()),
                );
                let u = Mat::rows(used.as_slice(), 0, d.t, d.s, d.s);
                matmul(&mut dv, 0.0, u.t(), g, 1.0, Parallelism::None);
                let mut dpm = MatMut::dense(dp.as_mut_slice(), d.t, d.s);
                matmul(&mut dpm, 0.0, g, v.t(), 1.0, Parallelism::None);
                for (i, row) in dp.chunks_exact_mut(d.s).enumerate() {
                    let pr = &p[i * d.s..(i + 1) * d.s];
                    if d.drop.is_some() {
                        for (x, &zj) in row.iter_mut().zip(&z[i * d.s..(i + 1) * d.s]) {
                            *x *= zj;
                        }
                    }
                    let dot = dot(row, pr);
                    for (x, &pj) in row.iter_mut().zip(pr) {
                        *x = pj * (*x - dot);
                    }
                }
                let ds = Mat::rows(dp.as_slice(), 0, d.t, d.s, d.s);
                matmul(&mut dq, 0.0, ds, k, d.scale, Parallelism::None);
                matmul(&mut dk, 0.0, ds.t(), q, d.scale, Parallelism::None);
            },
        );
    (dq, dk, dv)
}
