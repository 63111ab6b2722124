//! Scaled dot-product attention of every (batch, head), reading `q` `[b, t, h]` where it lies
//! (head `i` is columns `i·dh..(i+1)·dh`) and `k`, `v` either the same way (`[b, s, h]`, the
//! projections) or split by head (`[b, heads, s, dh]`, what a key/value site such as prefix
//! tuning returns), and writing the context `[b, t, h]` back in place, so no head is copied
//! out. Each (batch, head) runs the blocked kernel of [`super::flash`]: the `[t, s]` scores
//! never exist whole, in the no-grad pass ([`attention`]) and in the tracked operation
//! (`attention_tracked.rs`), whose backward recomputes them block by block from the saved row
//! log-sum-exp.
use burn::tensor::{backend::AutodiffBackend, Tensor};
use peft_api::ApiError;
use rayon::prelude::*;

use super::{
    autodiff::{ad, Buf, FlexTensor},
    dpbf16,
    flash::{Dropout, Head, Scratch},
    gemm::{Mat, MatMut},
};

/// Where head `i` of the keys and values lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvLayout {
    /// `[b, s, h]`: columns `i·dh..(i+1)·dh` of each row (the projections).
    Time,
    /// `[b, heads, s, dh]`: one `[s, dh]` block per (batch, head).
    Heads,
}

/// The narrowest head whose attention [`ScoreTerms::bf16`] rounds. Measured on a 2-core Zen 4
/// (`examples/attention_paths.rs`, one layer without gradients, 2 threads): t5-small's heads of
/// 64 run 1.3× faster on `vdpbf16ps` than in f32 (2.1 against 2.7 ms), MiniLM's heads of 32
/// 0.8× as fast (11.9 against 9.7 ms: with 16 pairs per product, rounding and packing the
/// operands outweighs the faster products), so narrower heads keep exact f32 attention.
pub const BF16_MIN_DH: usize = 64;

/// The fewest queries per head whose attention [`ScoreTerms::bf16`] rounds: packing a head's
/// keys and values costs as much as multiplying them by one query row, so a decoding step (one
/// query against the cache) keeps f32. Measured (`bench seq2seq`, t5-small shapes, bf16
/// medium, two rounds): greedy decoding's attention 130–149 ms in f32 against 223–228 ms with
/// every step rounded and packed.
pub const BF16_MIN_ROWS: usize = 16;

/// The sizes every buffer of one attention call is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub b: usize,
    pub t: usize,
    pub s: usize,
    pub heads: usize,
    pub h: usize,
    pub scale: f32,
    pub layout: KvLayout,
    /// Dropout on the probabilities (training only).
    pub(crate) drop: Option<Dropout>,
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
            layout: KvLayout::Time,
            drop: None,
        })
    }

    pub(crate) fn dh(&self) -> usize {
        self.h / self.heads
    }

    /// Offsets of (batch, head) `bh`'s first element in `q` and in `k`/`v`.
    pub(crate) fn offsets(&self, bh: usize) -> (usize, usize) {
        let (bi, hi) = (bh / self.heads, bh % self.heads);
        let dh = self.dh();
        let kv = match self.layout {
            KvLayout::Time => bi * self.s * self.h + hi * dh,
            KvLayout::Heads => bh * self.s * dh,
        };
        (bi * self.t * self.h + hi * dh, kv)
    }

    /// The distance between a head's consecutive key rows.
    pub(crate) fn kv_stride(&self) -> usize {
        match self.layout {
            KvLayout::Time => self.h,
            KvLayout::Heads => self.dh(),
        }
    }

    /// A `[b·s·h]` key/value buffer as each (batch, head)'s `[s, dh]` block, in `bh` order.
    pub(crate) fn kv_blocks<'a>(&self, buf: &'a mut [f32]) -> Vec<MatMut<'a>> {
        match self.layout {
            KvLayout::Time => MatMut::blocks(buf, self.b * self.s, self.h, self.s, self.dh()),
            KvLayout::Heads => MatMut::blocks(
                buf,
                self.b * self.heads * self.s,
                self.dh(),
                self.s,
                self.dh(),
            ),
        }
    }
}

/// What shapes the scores besides the key mask (the encoder-decoders' attention).
#[derive(Clone, Debug, Default)]
pub struct ScoreTerms {
    /// Added to the scaled scores of every batch: `[heads, t, s]` row-major (T5's relative
    /// position bias, zeros on positions a key/value site prepends). A constant: no gradient.
    pub pos: Option<Vec<f32>>,
    /// Query `i` sees key `j` only when `j <= i + off` (a decoder: `off` = the prepended
    /// positions plus the first query's position).
    pub causal: Option<usize>,
    /// Both products on bf16-rounded operands, as `torch.autocast` runs attention
    /// (`matmul_precision: medium` on a bf16 backbone, [`crate::backbone::Hooks::bf16_attention`]);
    /// honoured without gradients only (the tracked pass keeps f32, its backward recomputing
    /// the probabilities from the forward's f32 scores), for heads of at least [`BF16_MIN_DH`]
    /// dimensions and at least [`BF16_MIN_ROWS`] queries (otherwise f32 is faster).
    pub bf16: bool,
}

/// The key mask per batch as the blocked kernel reads it: `bias` 0 / −∞ and `kf` 1 / 0 per
/// key, and whether no key of the batch is kept (then every key counts, uniformly); and the
/// [`ScoreTerms`].
#[derive(Debug)]
pub(crate) struct Masks {
    bias: Vec<f32>,
    kf: Vec<f32>,
    uniform: Vec<bool>,
    terms: ScoreTerms,
}

impl Masks {
    /// [`Masks::new`] with score terms, whose bias must have `heads · t · s` values.
    pub(crate) fn with(keep: &[bool], d: &Dims, terms: ScoreTerms) -> Result<Self, ApiError> {
        if let Some(pos) = &terms.pos {
            let want = d.heads * d.t * d.s;
            if pos.len() != want {
                return Err(ApiError::shape(format!(
                    "attention: the score bias has {} values, [heads={}, t={}, s={}] needs {want}",
                    pos.len(),
                    d.heads,
                    d.t,
                    d.s
                )));
            }
        }
        let mut m = Masks::new(keep, d);
        m.terms = terms;
        Ok(m)
    }

    pub(crate) fn new(keep: &[bool], d: &Dims) -> Self {
        let mut m = Masks {
            bias: Vec::with_capacity(keep.len()),
            kf: Vec::with_capacity(keep.len()),
            uniform: Vec::with_capacity(d.b),
            terms: ScoreTerms::default(),
        };
        for row in keep.chunks(d.s.max(1)) {
            let none = !row.iter().any(|&k| k);
            m.uniform.push(none);
            for &k in row {
                let k = k || none;
                m.bias.push(if k { 0.0 } else { f32::NEG_INFINITY });
                m.kf.push(if k { 1.0 } else { 0.0 });
            }
        }
        m
    }
}

/// (Batch, head) `bh`'s operands for the blocked kernel.
fn head<'a>(
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    m: &'a Masks,
    d: &Dims,
    bh: usize,
) -> Head<'a> {
    let (qo, ko) = d.offsets(bh);
    let (dh, bi, hi) = (d.dh(), bh / d.heads, bh % d.heads);
    let keys = bi * d.s..(bi + 1) * d.s;
    let ts = d.t * d.s;
    Head {
        pos: m
            .terms
            .pos
            .as_ref()
            .map(|p| Mat::rows(p, hi * ts, d.t, d.s, d.s)),
        causal: m.terms.causal,
        q: Mat::rows(q, qo, d.t, dh, d.h),
        k: Mat::rows(k, ko, d.s, dh, d.kv_stride()),
        v: Mat::rows(v, ko, d.s, dh, d.kv_stride()),
        bias: &m.bias[keys.clone()],
        kf: &m.kf[keys],
        uniform: m.uniform[bi],
        scale: d.scale,
        drop: d.drop.map(|dr| (dr, dr.stream(bh))),
        bf16: false,
    }
}

/// The blocked forward of every (batch, head) in parallel; `lse` (when given, `b·heads`
/// blocks of `t`) keeps each row's log-sum-exp for [`flash_backward`]. The buffers' lengths
/// were checked into `d` by the caller.
pub(crate) fn flash_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    m: &Masks,
    d: Dims,
    lse: Option<&mut [f32]>,
) -> Vec<f32> {
    let mut out = vec![0f32; d.b * d.t * d.h];
    if out.is_empty() {
        return out;
    }
    let bf16 = m.terms.bf16
        && lse.is_none()
        && d.drop.is_none()
        && d.dh() >= BF16_MIN_DH
        && d.t >= BF16_MIN_ROWS;
    // Without `vdpbf16ps` the f32 path reads rounded copies (and rounds the probabilities).
    let rounded = (bf16 && !dpbf16::available()).then(|| [q, k, v].map(super::bf16::rounded));
    let (q, k, v) = match &rounded {
        Some([q, k, v]) => (&q[..], &k[..], &v[..]),
        None => (q, k, v),
    };
    let tasks = d.b * d.heads;
    let heads_out = MatMut::blocks(&mut out, d.b * d.t, d.h, d.t, d.dh());
    let lse: Vec<Option<&mut [f32]>> = match lse {
        Some(l) => l.chunks_mut(d.t).map(Some).collect(),
        None => (0..tasks).map(|_| None).collect(),
    };
    heads_out
        .into_par_iter()
        .zip(lse)
        .enumerate()
        .for_each_init(Scratch::default, |sc, (bh, (mut out, lse))| {
            let mut h = head(q, k, v, m, &d, bh);
            h.bf16 = bf16;
            h.forward(&mut out, lse, sc);
        });
    out
}

/// Gradients of `q`, `k`, `v` (in their own layouts) from the output `o`, its gradient
/// `grad` and the forward's `lse`; with `pos_grad`, also the score bias's `[heads, t, s]`
/// (summed over the batch: each worker sums the heads it ran into its own copy, so the
/// memory is a few `[heads, t, s]`, never the `[b, heads, t, s]` scores).
#[allow(clippy::too_many_arguments)]
pub(crate) fn flash_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    grad: &[f32],
    m: &Masks,
    d: Dims,
    pos_grad: bool,
) -> Grads {
    let mut dq = vec![0f32; d.b * d.t * d.h];
    let mut dk = vec![0f32; d.b * d.s * d.h];
    let mut dv = vec![0f32; d.b * d.s * d.h];
    let ts = d.t * d.s;
    let n = if pos_grad { d.heads * ts } else { 0 };
    if dq.is_empty() {
        let dpos = pos_grad.then(|| vec![0f32; n]);
        return Grads { dq, dk, dv, dpos };
    }
    let dh = d.dh();
    let dq_heads = MatMut::blocks(&mut dq, d.b * d.t, d.h, d.t, dh);
    let dk_heads = d.kv_blocks(&mut dk);
    let dv_heads = d.kv_blocks(&mut dv);
    let dpos = dq_heads
        .into_par_iter()
        .zip(dk_heads)
        .zip(dv_heads)
        .enumerate()
        .fold(
            || (Scratch::default(), vec![0f32; n]),
            |(mut sc, mut acc), (bh, ((mut dq, mut dk), mut dv))| {
                let (qo, _) = d.offsets(bh);
                let om = Mat::rows(o, qo, d.t, dh, d.h);
                let g = Mat::rows(grad, qo, d.t, dh, d.h);
                let lse = &lse[bh * d.t..(bh + 1) * d.t];
                let hi = bh % d.heads;
                let dpos = (n > 0).then(|| &mut acc[hi * ts..(hi + 1) * ts]);
                head(q, k, v, m, &d, bh)
                    .backward(om, g, lse, &mut dq, &mut dk, &mut dv, dpos, &mut sc);
                (sc, acc)
            },
        )
        .map(|(_, acc)| acc)
        .reduce(
            || vec![0f32; n],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    Grads {
        dq,
        dk,
        dv,
        dpos: pos_grad.then_some(dpos),
    }
}

/// What [`flash_backward`] returns: `dq` `[b, t, h]`, `dk`, `dv` in the keys' layout, and the
/// score bias's gradient `[heads, t, s]` when asked for.
pub(crate) struct Grads {
    pub dq: Vec<f32>,
    pub dk: Vec<f32>,
    pub dv: Vec<f32>,
    pub dpos: Option<Vec<f32>>,
}

/// `softmax(q kᵀ · scale) v` over the keys `keep` marks, without gradients, `k`, `v`
/// `[b, s, h]`. A dropped key gets probability exactly 0, as HF's additive `finfo.min` mask
/// gives after `exp`; a batch with no kept key attends uniformly, as that mask gives too.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    keep: &[bool],
    bts: [usize; 3],
    heads: usize,
    scale: f32,
) -> Result<Vec<f32>, ApiError> {
    let (layout, terms) = (KvLayout::Time, ScoreTerms::default());
    attention_with(q, k, v, keep, bts, heads, scale, layout, terms)
}

/// [`attention`] with the keys and values in `layout`, a score bias and a causal mask.
#[allow(clippy::too_many_arguments)]
pub fn attention_with(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    keep: &[bool],
    [b, t, s]: [usize; 3],
    heads: usize,
    scale: f32,
    layout: KvLayout,
    terms: ScoreTerms,
) -> Result<Vec<f32>, ApiError> {
    if b * t == 0 {
        return Ok(Vec::new());
    }
    let h = q.len() / (b * t);
    let mut d = Dims::check(
        q.len(),
        k.len(),
        v.len(),
        keep.len(),
        [b, t, s],
        heads,
        h,
        scale,
    )?;
    d.layout = layout;
    Ok(flash_forward(
        q,
        k,
        v,
        &Masks::with(keep, &d, terms)?,
        d,
        None,
    ))
}

/// Checks `q` `[b, t, h]` against keys and values split by head, `[b, heads, s, dh]` with
/// `heads · dh = h`: `[b, t, s]`, `heads` and `h`.
pub(crate) fn split_dims(
    q: [usize; 3],
    k: [usize; 4],
    v: [usize; 4],
) -> Result<([usize; 3], usize, usize), ApiError> {
    let [b, t, h] = q;
    let [bk, heads, s, dh] = k;
    if bk != b || heads * dh != h || v != k {
        return Err(ApiError::shape(format!(
            "attention: q {q:?}, k {k:?}, v {v:?} do not fit [b, t, h], [b, heads, s, h / heads] twice"
        )));
    }
    Ok(([b, t, s], heads, h))
}

/// Keys and values split by head as the kernel reads them: in the projection's `[b, s, h]`
/// buffer (`Time`) when both are its head split (a view, no copy), else contiguous `[b, heads,
/// s, dh]` (`Heads`, copied only when strided).
pub(crate) fn kv_buffers(k: FlexTensor, v: FlexTensor) -> (Buf, Buf, KvLayout) {
    match Buf::split_heads_source(&k).zip(Buf::split_heads_source(&v)) {
        Some((kb, vb)) => (kb, vb, KvLayout::Time),
        None => (Buf::new(k), Buf::new(v), KvLayout::Heads),
    }
}

/// [`attention_with`] without gradients on tensors of the CPU autodiff backend, reading them
/// where they lie: `q` `[b, t, h]`, `k`, `v` `[b, heads, s, dh]` either contiguous or as the
/// head split of a `[b, s, h]` projection (read in the `Time` layout: no copy of BERT's
/// projections, nor of a decoder's cached cross-attention keys and values per step). Another
/// backend is an error.
pub fn nograd_split<B: AutodiffBackend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    keep: &[bool],
    scale: f32,
    terms: ScoreTerms,
) -> Result<Tensor<B, 3>, ApiError> {
    let _t = super::timing::span("attention");
    let ([b, t, s], heads, h) = split_dims(q.dims(), k.dims(), v.dims())?;
    let device = q.device();
    let (qa, ka, va) = (ad(q)?, ad(k)?, ad(v)?);
    let (kb, vb, layout) = kv_buffers(ka.primitive, va.primitive);
    let qb = Buf::new(qa.primitive);
    let out = attention_with(&qb, &kb, &vb, keep, [b, t, s], heads, scale, layout, terms)?;
    Ok(super::cpu::from_vec(out, [b, t, h], &device))
}

#[cfg(test)]
#[path = "tests/attention.rs"]
mod tests;

#[cfg(test)]
#[path = "tests/attention_bf16.rs"]
mod bf16_tests;
