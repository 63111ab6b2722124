//! Scaled dot-product attention of every (batch, head), reading `q` `[b, t, h]` and `k`, `v`
//! `[b, s, h]` where they lie (head `i` is columns `i·dh..(i+1)·dh`) and writing the context
//! `[b, t, h]` the same way, so no head is ever copied out: burn's generic path copies every
//! activation to split and merge heads and runs the batched `q kᵀ` as many small products.
//! One forward serves both the no-grad pass ([`attention`]) and the tracked operation
//! ([`tracked`]), which keeps the probabilities for its own backward.
use std::sync::Arc;

use burn::{
    backend::Flex,
    tensor::{backend::AutodiffBackend, Tensor},
};
use peft_api::ApiError;
use rayon::prelude::*;

use super::{
    autodiff::{
        ad, flat, into_b, primitive, Backward, Buf, Checkpointer, Gradients, NoCheckpointing, Ops,
        OpsKind,
    },
    dropout::draw_keep,
    gemm::{matmul, Mat, MatMut, Parallelism},
    softmax::softmax_rows,
};

/// The sizes every buffer of one attention call is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub b: usize,
    pub t: usize,
    pub s: usize,
    pub heads: usize,
    pub h: usize,
    pub scale: f32,
    /// 1 / (1 - dropout probability).
    inv_keep: f32,
}

impl Dims {
    /// Checks that `heads` divides `h` and that `q`, `k`, `v` and `keep` have the lengths of
    /// `[b, t, h]`, `[b, s, h]`, `[b, s, h]` and `[b, s]`: what the per-head offsets rely on.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        q: usize,
        k: usize,
        v: usize,
        keep: usize,
        [b, t, s]: [usize; 3],
        heads: usize,
        h: usize,
        scale: f32,
    ) -> Result<Self, ApiError> {
        if heads == 0 || h == 0 || !h.is_multiple_of(heads) {
            return Err(ApiError::shape(format!(
                "attention: {heads} heads do not divide the width {h}"
            )));
        }
        if s == 0 {
            return Err(ApiError::shape("attention: no keys (s = 0)"));
        }
        let (bth, bsh) = (b * t * h, b * s * h);
        if q != bth || k != bsh || v != bsh || keep != b * s {
            return Err(ApiError::shape(format!(
                "attention: q, k, v, mask have {q}, {k}, {v}, {keep} elements; \
                 [b={b}, t={t}, h={h}] and [b, s={s}, h] need {bth}, {bsh}, {bsh}, {}",
                b * s
            )));
        }
        Ok(Dims {
            b,
            t,
            s,
            heads,
            h,
            scale,
            inv_keep: 1.0,
        })
    }

    fn dh(&self) -> usize {
        self.h / self.heads
    }

    /// Offsets of (batch, head) `bh`'s first element in `q` and in `k`/`v`.
    fn offsets(&self, bh: usize) -> (usize, usize) {
        let (bi, hi) = (bh / self.heads, bh % self.heads);
        let dh = self.dh();
        (
            bi * self.t * self.h + hi * dh,
            bi * self.s * self.h + hi * dh,
        )
    }
}

/// `softmax(q kᵀ · scale) v` over the keys `keep` marks, without gradients. A dropped key gets
/// probability exactly 0, as HF's additive `finfo.min` mask gives after `exp`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    keep: &[bool],
    [b, t, s]: [usize; 3],
    heads: usize,
    scale: f32,
) -> Result<Vec<f32>, ApiError> {
    if b * t == 0 {
        return Ok(Vec::new());
    }
    let h = q.len() / (b * t);
    let d = Dims::check(
        q.len(),
        k.len(),
        v.len(),
        keep.len(),
        [b, t, s],
        heads,
        h,
        scale,
    )?;
    Ok(forward(q, k, v, keep, d, None, None))
}

/// The forward of every (batch, head) in parallel: `probs` (when given, `b·heads` blocks of
/// `t·s`) keeps the softmax probabilities, `dropout` (when given, the same blocks, with its
/// probability and seed) draws the kept entries and applies them to what multiplies `v`.
/// The buffers' lengths were checked into `d` by the caller.
fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    keep: &[bool],
    d: Dims,
    probs: Option<&mut [f32]>,
    dropout: Option<(&mut [bool], f64, u64)>,
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
    let (kept, p_drop, seed): (Vec<Option<&mut [bool]>>, f64, u64) = match dropout {
        Some((m, p, seed)) => (m.chunks_mut(n.max(1)).map(Some).collect(), p, seed),
        None => ((0..tasks).map(|_| None).collect(), 0.0, 0),
    };
    heads_out
        .into_par_iter()
        .zip(probs)
        .zip(kept)
        .enumerate()
        .for_each_init(
            || (vec![0f32; n], vec![0f32; n]),
            |(scratch, dropped), (bh, ((mut out, p), kept))| {
                let (qo, ko) = d.offsets(bh);
                let bi = bh / d.heads;
                let keep = &keep[bi * d.s..(bi + 1) * d.s];
                let p: &mut [f32] = p.unwrap_or(scratch.as_mut_slice());
                // scores[i, j] = scale · Σ_d q[i, d] k[j, d]: kᵀ is k read column-wise.
                let qm = Mat::rows(q, qo, d.t, dh, d.h);
                let km = Mat::rows(k, ko, d.s, dh, d.h);
                let mut scores = MatMut::dense(p, d.t, d.s);
                matmul(&mut scores, 0.0, qm, km.t(), d.scale, Parallelism::None);
                softmax_rows(p, d.s, keep);
                let used: &[f32] = match kept {
                    Some(kept) => {
                        draw_keep(kept, p_drop, seed, bh as u64);
                        for ((x, m), y) in p.iter().zip(kept.iter()).zip(dropped.iter_mut()) {
                            *y = if *m { x * d.inv_keep } else { 0.0 };
                        }
                        dropped
                    }
                    None => p,
                };
                let vm = Mat::rows(v, ko, d.s, dh, d.h);
                let pm = Mat::rows(used, 0, d.t, d.s, d.s);
                matmul(&mut out, 0.0, pm, vm, 1.0, Parallelism::None);
            },
        );
    out
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

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = flat(grads.consume::<Flex>(&ops.node));
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

/// `softmax(q kᵀ · scale + mask) v` with dropout `p` on the probabilities (drawn from `seed`)
/// as one tracked operation of the CPU autodiff backend, with its own backward; `q`
/// `[b, t, h]`, `k`, `v` `[b, s, h]` (`s` may differ from `t`), `keep` `[b, s]`. Shapes that
/// do not fit, or another backend, are an error.
#[allow(clippy::too_many_arguments)]
pub fn tracked<B: AutodiffBackend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    keep: &[bool],
    heads: usize,
    scale: f32,
    dropout: f64,
    seed: u64,
) -> Result<Tensor<B, 3>, ApiError> {
    let [b, t, h] = q.dims();
    let [bk, s, hk] = k.dims();
    if bk != b || hk != h || v.dims() != k.dims() {
        return Err(ApiError::shape(format!(
            "attention: q {:?}, k {:?}, v {:?} do not fit [b, t, h], [b, s, h], [b, s, h]",
            q.dims(),
            k.dims(),
            v.dims()
        )));
    }
    if !(0.0..1.0).contains(&dropout) {
        return Err(ApiError::invalid(format!(
            "attention: dropout {dropout} is not in [0, 1)"
        )));
    }
    let (qa, ka, va) = (ad(q)?, ad(k)?, ad(v)?);
    let (qb, kb, vb) = (
        Buf::new(qa.primitive.clone()),
        Buf::new(ka.primitive.clone()),
        Buf::new(va.primitive.clone()),
    );
    let mut d = Dims::check(
        qb.len(),
        kb.len(),
        vb.len(),
        keep.len(),
        [b, t, s],
        heads,
        h,
        scale,
    )?;
    d.inv_keep = 1.0 / (1.0 - dropout as f32);
    let n = b * heads * t * s;
    let mut probs = vec![0f32; n];
    let mut kept = (dropout > 0.0).then(|| vec![true; n]);
    let out = forward(
        &qb,
        &kb,
        &vb,
        keep,
        d,
        Some(&mut probs),
        kept.as_deref_mut().map(|m| (m, dropout, seed)),
    );
    let st = State {
        q: qb,
        k: kb,
        v: vb,
        probs: Arc::new(probs),
        kept: kept.map(Arc::new),
        dims: d,
    };
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

/// Gradients of `q`, `k`, `v` from the gradient of the output.
fn backward(st: &State, grad: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = st.dims;
    let (dh, n) = (d.dh(), d.t * d.s);
    let mut dq = vec![0f32; d.b * d.t * d.h];
    let mut dk = vec![0f32; d.b * d.s * d.h];
    let mut dv = vec![0f32; d.b * d.s * d.h];
    if dq.is_empty() {
        return (dq, dk, dv);
    }
    let dq_heads = MatMut::blocks(&mut dq, d.b * d.t, d.h, d.t, dh);
    let dk_heads = MatMut::blocks(&mut dk, d.b * d.s, d.h, d.s, dh);
    let dv_heads = MatMut::blocks(&mut dv, d.b * d.s, d.h, d.s, dh);
    dq_heads
        .into_par_iter()
        .zip(dk_heads)
        .zip(dv_heads)
        .enumerate()
        .for_each_init(
            || (vec![0f32; n], vec![0f32; n]),
            |(used, dp), (bh, ((mut dq, mut dk), mut dv))| {
                let p = &st.probs[bh * n..(bh + 1) * n];
                let kept = st.kept.as_ref().map(|m| &m[bh * n..(bh + 1) * n]);
                for j in 0..n {
                    used[j] = match kept {
                        Some(m) if !m[j] => 0.0,
                        Some(_) => p[j] * d.inv_keep,
                        None => p[j],
                    };
                }
                let (qo, ko) = d.offsets(bh);
                let g = Mat::rows(grad, qo, d.t, dh, d.h);
                let (q, k, v) = (
                    Mat::rows(&st.q, qo, d.t, dh, d.h),
                    Mat::rows(&st.k, ko, d.s, dh, d.h),
                    Mat::rows(&st.v, ko, d.s, dh, d.h),
                );
                // dv = usedᵀ · grad
                let u = Mat::rows(used.as_slice(), 0, d.t, d.s, d.s);
                matmul(&mut dv, 0.0, u.t(), g, 1.0, Parallelism::None);
                // d(used) = grad · vᵀ
                let mut dpm = MatMut::dense(dp.as_mut_slice(), d.t, d.s);
                matmul(&mut dpm, 0.0, g, v.t(), 1.0, Parallelism::None);
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
                let ds = Mat::rows(dp.as_slice(), 0, d.t, d.s, d.s);
                // dq = scale · dS · k
                matmul(&mut dq, 0.0, ds, k, d.scale, Parallelism::None);
                // dk = scale · dSᵀ · q
                matmul(&mut dk, 0.0, ds.t(), q, d.scale, Parallelism::None);
            },
        );
    (dq, dk, dv)
}

#[cfg(test)]
#[path = "tests/attention.rs"]
mod tests;
