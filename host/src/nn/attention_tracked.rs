//! Attention as one tracked operation of the CPU autodiff backend ([`tracked`],
//! [`tracked_split`]): the blocked forward of [`super::attention`], and a backward that
//! recomputes each block's probabilities from the saved row log-sum-exp.
use std::sync::Arc;

use burn::{
    backend::Flex,
    tensor::{backend::AutodiffBackend, Tensor},
};
use peft_api::ApiError;

use super::{
    attention::{
        flash_backward, flash_forward, kv_buffers, split_dims, Dims, KvLayout, Masks, ScoreTerms,
    },
    autodiff::{
        ad, into_b, primitive, record, AdTensor, Backward, Buf, Checkpointer, Gradients, Ops,
    },
    flash::Dropout,
};

/// What the backward needs: the inputs, the output, each row's log-sum-exp and the masks
/// (the dropout mask is redrawn from its seed, in `dims`).
#[derive(Clone, Debug)]
struct State {
    q: Buf,
    k: Buf,
    v: Buf,
    o: Buf,
    lse: Arc<Vec<f32>>,
    masks: Arc<Masks>,
    dims: Dims,
    /// k and v came split by head (`[b, heads, s, dh]`) but were read in the projection's
    /// `[b, s, h]` buffer (`dims.layout` is `Time`): their gradients go back split.
    split_view: bool,
}

/// Registers the gradients of `q`, `k`, `v` with the first three parents (`k`'s and `v`'s in
/// the layout they came in) and, when there is a tracked fourth, the score bias's
/// `[heads, t, s]`.
fn backward_into<const N: usize>(ops: Ops<State, N>, grads: &mut Gradients) {
    let _t = super::timing::span("attention backward");
    let grad = Buf::new(grads.consume::<Flex>(&ops.node));
    let (st, parents) = (ops.state, ops.parents);
    let d = st.dims;
    let bias = parents.get(3).and_then(Option::as_ref);
    let g = flash_backward(
        &st.q,
        &st.k,
        &st.v,
        &st.o,
        &st.lse,
        &grad,
        &st.masks,
        d,
        bias.is_some(),
    );
    if let Some(node) = &parents[0] {
        grads.register::<Flex>(node.id, primitive(g.dq, [d.b, d.t, d.h]));
    }
    for (parent, x) in [(&parents[1], g.dk), (&parents[2], g.dv)] {
        if let Some(node) = parent {
            let x = match d.layout {
                KvLayout::Time if st.split_view => {
                    primitive(x, [d.b, d.s, d.heads, d.dh()]).transpose(1, 2)
                }
                KvLayout::Time => primitive(x, [d.b, d.s, d.h]),
                KvLayout::Heads => primitive(x, [d.b, d.heads, d.s, d.dh()]),
            };
            grads.register::<Flex>(node.id, x);
        }
    }
    if let (Some(node), Some(dpos)) = (bias, g.dpos) {
        grads.register::<Flex>(node.id, primitive(dpos, [d.heads, d.t, d.s]));
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        backward_into(ops, grads);
    }
}

/// Attention whose additive score bias (the fourth parent, `[heads, t, s]`) is tracked too.
#[derive(Debug)]
struct BiasedAttentionBackward;

impl Backward<Flex, 4> for BiasedAttentionBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        backward_into(ops, grads);
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
    let (bts, h) = (time_dims(q.dims(), k.dims(), v.dims())?, q.dims()[2]);
    let (qa, ka, va) = (ad(q)?, ad(k)?, ad(v)?);
    let spec = (bts, heads, h, KvLayout::Time);
    let terms = ScoreTerms::default();
    tracked_ad(qa, ka, va, None, keep, spec, scale, dropout, seed, terms)
}

/// [`tracked`] without dropout, with an additive score bias `[heads, t, s]` shared by the
/// batch (a trainable relative position bias: it receives the score gradient summed over
/// the batch) and, with `causal = Some(off)`, query `i` seeing key `j` only when
/// `j <= i + off`.
#[allow(clippy::too_many_arguments)]
pub fn tracked_biased<B: AutodiffBackend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    keep: &[bool],
    heads: usize,
    scale: f32,
    bias: Tensor<B, 3>,
    causal: Option<usize>,
) -> Result<Tensor<B, 3>, ApiError> {
    let [b, t, s] = time_dims(q.dims(), k.dims(), v.dims())?;
    if bias.dims() != [heads, t, s] {
        return Err(ApiError::shape(format!(
            "attention: the score bias {:?} does not fit [heads, t, s] = [{heads}, {t}, {s}]",
            bias.dims()
        )));
    }
    let h = q.dims()[2];
    let (qa, ka, va, ba) = (ad(q)?, ad(k)?, ad(v)?, ad(bias)?);
    let pos = Buf::new(ba.primitive.clone()).to_vec();
    let terms = ScoreTerms {
        pos: Some(pos),
        causal,
        bf16: false,
    };
    let spec = ([b, t, s], heads, h, KvLayout::Time);
    tracked_ad(qa, ka, va, Some(ba), keep, spec, scale, 0.0, 0, terms)
}

/// `[b, t, s]` of `q` `[b, t, h]` over `k`, `v` `[b, s, h]`, or what does not fit.
fn time_dims(q: [usize; 3], k: [usize; 3], v: [usize; 3]) -> Result<[usize; 3], ApiError> {
    let ([b, t, h], [bk, s, hk]) = (q, k);
    if bk != b || hk != h || v != k {
        return Err(ApiError::shape(format!(
            "attention: q {q:?}, k {k:?}, v {v:?} do not fit [b, t, h], [b, s, h], [b, s, h]"
        )));
    }
    Ok([b, t, s])
}

/// [`tracked`] with the keys and values split by head, `[b, heads, s, dh]`, as a key/value
/// site returns them (prefix tuning's prepended positions included): read in place, their
/// gradients returned in the same layout.
#[allow(clippy::too_many_arguments)]
pub fn tracked_split<B: AutodiffBackend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    keep: &[bool],
    scale: f32,
    dropout: f64,
    seed: u64,
) -> Result<Tensor<B, 3>, ApiError> {
    tracked_split_with(q, k, v, keep, scale, dropout, seed, ScoreTerms::default())
}

/// [`tracked_split`] with a score bias (a constant) and a causal mask.
#[allow(clippy::too_many_arguments)]
pub fn tracked_split_with<B: AutodiffBackend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    keep: &[bool],
    scale: f32,
    dropout: f64,
    seed: u64,
    terms: ScoreTerms,
) -> Result<Tensor<B, 3>, ApiError> {
    let (bts, heads, h) = split_dims(q.dims(), k.dims(), v.dims())?;
    let (qa, ka, va) = (ad(q)?, ad(k)?, ad(v)?);
    let spec = (bts, heads, h, KvLayout::Heads);
    tracked_ad(qa, ka, va, None, keep, spec, scale, dropout, seed, terms)
}

#[allow(clippy::too_many_arguments)]
fn tracked_ad<B: AutodiffBackend>(
    qa: AdTensor,
    ka: AdTensor,
    va: AdTensor,
    bias: Option<AdTensor>,
    keep: &[bool],
    ([b, t, s], heads, h, layout): ([usize; 3], usize, usize, KvLayout),
    scale: f32,
    dropout: f64,
    seed: u64,
    terms: ScoreTerms,
) -> Result<Tensor<B, 3>, ApiError> {
    let _t = super::timing::span("attention");
    if !(0.0..1.0).contains(&dropout) {
        return Err(ApiError::invalid(format!(
            "attention: dropout {dropout} is not in [0, 1)"
        )));
    }
    // Keys and values split by head that are a view of the projections are read in place.
    let (kb, vb, read) = match layout {
        KvLayout::Heads => kv_buffers(ka.primitive.clone(), va.primitive.clone()),
        KvLayout::Time => (
            Buf::new(ka.primitive.clone()),
            Buf::new(va.primitive.clone()),
            KvLayout::Time,
        ),
    };
    let split_view = layout == KvLayout::Heads && read == KvLayout::Time;
    let layout = read;
    let qb = Buf::new(qa.primitive.clone());
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
    d.layout = layout;
    d.drop = Dropout::new(dropout, seed);
    let masks = Masks::with(keep, &d, terms)?;
    let mut lse = vec![0f32; b * heads * t];
    let out = flash_forward(&qb, &kb, &vb, &masks, d, Some(&mut lse));
    let out = primitive(out, [b, t, h]);
    let st = State {
        q: qb,
        k: kb,
        v: vb,
        o: Buf::new(out.clone()),
        lse: Arc::new(lse),
        masks: Arc::new(masks),
        dims: d,
        split_view,
    };
    let [qn, kn, vn] = [&qa, &ka, &va].map(|x| x.node.clone());
    let result = match bias {
        None => record!(AttentionBackward, [qn, kn, vn], st, out),
        Some(ba) => record!(
            BiasedAttentionBackward,
            [qn, kn, vn, ba.node.clone()],
            st,
            out
        ),
    };
    into_b(result)
}

#[cfg(test)]
#[path = "tests/attention_bias.rs"]
mod bias_tests;
