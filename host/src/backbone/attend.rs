//! The encoder-decoders' attention (T5, BART) after the projections: queries `[b, t, h]` over
//! head-split keys and values `[b, heads, s, dh]` (what the key/value site returns, cached and
//! prepended positions included), with T5's relative position bias and the decoder's causal
//! mask. On burn's CPU backend it runs the blocked kernel of [`crate::nn::attention`], which
//! reads q, k and v in place and never holds the `[t, s]` scores; elsewhere (another backend,
//! `PEFT_CPU_KERNELS=0`, or a position bias that trains) burn's own ops, the reference the
//! kernel path is tested against (`nn::generic_ops`).
use burn::tensor::{backend::AutodiffBackend, Int, Tensor, TensorData};
use peft_api::ApiError;

use super::{
    additive_mask,
    layers::{dropout, prefixed_keep},
    Hooks,
};
use crate::nn;

/// Which keys a query may see.
pub(crate) enum Visible<'a, B: AutodiffBackend> {
    /// The unpadded keys of a `[batch, keys]` 0/1 mask.
    Padding(&'a Tensor<B, 2, Int>),
    /// Keys up to the query's position; queries start at `q_start`.
    Causal { q_start: usize },
}

/// One attention call's operands besides q, k and v.
pub(crate) struct Spec<'a, B: AutodiffBackend> {
    pub heads: usize,
    /// Multiplies `q kᵀ` (T5: 1, BART: `dh^-1/2`).
    pub scale: f32,
    /// Dropout on the probabilities, in training.
    pub dropout: f64,
    /// Added to the scores: `[1, heads, t, n]` over the `n` keys the projections produced.
    pub bias: Option<&'a Tensor<B, 4>>,
    pub visible: Visible<'a, B>,
    /// Keys a key/value site prepended (prefix tuning): visible to every query, no bias.
    pub prefix: usize,
}

/// The context `[b, t, h]` of queries `q` `[b, t, h]` over `k`, `v` `[b, heads, prefix + n, dh]`.
pub(crate) fn attend<B: AutodiffBackend>(
    hooks: &Hooks<'_, '_, B>,
    q: Tensor<B, 3>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    spec: Spec<'_, B>,
) -> Result<Tensor<B, 3>, ApiError> {
    let no_grad = hooks.graph.no_grad;
    let kernels = if no_grad {
        nn::enabled::<B>()
    } else {
        nn::tracked::enabled::<B>()
    };
    // The kernel takes the bias as a constant: a trainable relative-position table
    // (`unfrozen_backbone_weights`) keeps burn's ops, which carry its gradient.
    let bias_trains = !no_grad && spec.bias.is_some_and(nn::tracked::tracks_grad);
    if kernels && !bias_trains {
        kernel(hooks, q, k, v, spec)
    } else {
        generic(hooks, q, k, v, spec)
    }
}

fn kernel<B: AutodiffBackend>(
    hooks: &Hooks<'_, '_, B>,
    q: Tensor<B, 3>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    spec: Spec<'_, B>,
) -> Result<Tensor<B, 3>, ApiError> {
    let [b, t, _] = q.dims();
    let s = k.dims()[2];
    let p = spec.prefix;
    let n = s.checked_sub(p).ok_or_else(|| {
        ApiError::shape(format!("attention: {p} prepended keys but only {s} keys"))
    })?;
    let keep = match &spec.visible {
        Visible::Padding(m) => prefixed_keep(&nn::keep_mask(m)?, b, n, s),
        Visible::Causal { .. } => vec![true; b * s],
    };
    let causal = match spec.visible {
        Visible::Causal { q_start } => Some(p + q_start),
        Visible::Padding(_) => None,
    };
    let pos = match spec.bias {
        None => None,
        Some(bias) => {
            let raw = nn::to_vec(bias.clone())?;
            if raw.len() != spec.heads * t * n {
                return Err(ApiError::shape(format!(
                    "attention: position bias {:?} does not fit [1, {}, {t}, {n}]",
                    bias.dims(),
                    spec.heads
                )));
            }
            if p == 0 {
                Some(raw)
            } else {
                let mut padded = vec![0f32; spec.heads * t * s];
                for (dst, src) in padded.chunks_exact_mut(s).zip(raw.chunks_exact(n.max(1))) {
                    dst[p..].copy_from_slice(src);
                }
                Some(padded)
            }
        }
    };
    let bf16 = hooks.bf16_attention();
    let terms = nn::ScoreTerms { pos, causal, bf16 };
    if hooks.graph.no_grad {
        nn::nograd_split(q, k, v, &keep, spec.scale, terms)
    } else {
        let p = if hooks.training() { spec.dropout } else { 0.0 };
        let seed = if p > 0.0 {
            nn::draw_seed::<B>(&q.device())
        } else {
            0
        };
        nn::tracked::attention_split_with(q, k, v, &keep, spec.scale, p, seed, terms)
    }
}

/// burn's ops: split heads, scores plus bias and additive mask, softmax, dropout, merge.
fn generic<B: AutodiffBackend>(
    hooks: &Hooks<'_, '_, B>,
    q: Tensor<B, 3>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    spec: Spec<'_, B>,
) -> Result<Tensor<B, 3>, ApiError> {
    let [b, t, h] = q.dims();
    let s = k.dims()[2];
    let (heads, p) = (spec.heads, spec.prefix);
    let n = s - p;
    let device = q.device();
    let q = q.reshape([b, t, heads, h / heads]).swap_dims(1, 2);
    let mut scores = q.matmul(k.swap_dims(2, 3));
    if spec.scale != 1.0 {
        scores = scores * spec.scale as f64;
    }
    if let Some(bias) = spec.bias {
        let bias = if p > 0 {
            let zeros = Tensor::<B, 4>::zeros([1, heads, t, p], &device);
            Tensor::cat(vec![zeros, bias.clone()], 3)
        } else {
            bias.clone()
        };
        scores = scores + bias;
    }
    scores = scores
        + match spec.visible {
            Visible::Padding(m) => additive_mask(m, p),
            Visible::Causal { q_start } => causal_mask(q_start, t, n, p, &device),
        };
    let probs = dropout(
        hooks,
        nn::softmax(hooks.graph.no_grad, scores, 3),
        spec.dropout,
    )?;
    Ok(probs.matmul(v).swap_dims(1, 2).reshape([b, t, h]))
}

/// Additive causal mask `[1, 1, tq, prefix + keys]`: query `i` (position `q_start + i`) sees
/// the `prefix` added keys and keys `0..=q_start + i`.
pub(crate) fn causal_mask<B: AutodiffBackend>(
    q_start: usize,
    tq: usize,
    keys: usize,
    prefix: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let n = prefix + keys;
    let mut v = vec![0f32; tq * n];
    for i in 0..tq {
        for j in 0..keys {
            if j > q_start + i {
                v[i * n + prefix + j] = f32::MIN;
            }
        }
    }
    Tensor::<B, 2>::from_data(TensorData::new(v, [tq, n]), device).reshape([1, 1, tq, n])
}
