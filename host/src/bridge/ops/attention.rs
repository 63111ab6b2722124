//! `ATTENTION` (API 1.2) and `ATTENTION_BIAS` (API 1.3): multi-head attention for plugins that
//! run their own encoders (a HyperT5 hypermodel), the second with an additive score bias
//! `[heads, t, s]` (T5's relative position bias, trainable or not) and an optional causal
//! mask. On burn's CPU backend they are the backbones' blocked kernel — tracked with its own
//! backward (the bias's gradient summed over the batch), or the no-gradient pass reading the
//! head split in place — which never holds the `[t, s]` scores; elsewhere (another backend,
//! `PEFT_CPU_KERNELS=0`) burn's ops, the composed chain a plugin would otherwise write and
//! what the kernel is tested against (`tests/gradients.rs`).
use burn::tensor::{activation, backend::AutodiffBackend, Tensor};
use peft_api::{ApiError, OpCode, Values};

use super::args::*;
use crate::bridge::{
    value::{fp, ft, FloatPrim, Value},
    HostGraph,
};
use crate::nn::{self, ScoreTerms};

/// The operands both ops share, checked: `q [b, t, h]`, `k`, `v [b, s, h]`, the heads and
/// the key mask `[b, s]` (all kept when absent).
struct Qkv<B: AutodiffBackend> {
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    keep: Vec<bool>,
    heads: usize,
    scale: f32,
    /// `[b, t, s]`.
    bts: [usize; 3],
}

fn operands<B: AutodiffBackend>(
    op: OpCode,
    [q, k, v]: [FloatPrim<B>; 3],
    keep: Option<FloatPrim<B>>,
    values: &Values,
) -> R<Qkv<B>> {
    let heads = int_arg(values, 0, op, "heads")?;
    let scale = float_arg(values, 0, op, "scale")? as f32;
    let (sq, sk, sv) = (shape_of::<B>(&q), shape_of::<B>(&k), shape_of::<B>(&v));
    let (&[b, t, h], &[bk, s, hk]) = (sq.as_slice(), sk.as_slice()) else {
        return Err(ApiError::shape(format!(
            "{op:?}: q {sq:?}, k {sk:?} must be [b, t, h] and [b, s, h]"
        )));
    };
    if bk != b || hk != h || sv != sk {
        return Err(ApiError::shape(format!(
            "{op:?}: q {sq:?}, k {sk:?}, v {sv:?} do not fit [b, t, h], [b, s, h], [b, s, h]"
        )));
    }
    if heads <= 0 || h % heads as usize != 0 {
        return Err(ApiError::invalid(format!(
            "{op:?}: heads = {heads} does not divide the width {h}"
        )));
    }
    let keep = match keep {
        None => vec![true; b * s],
        Some(m) => {
            let sm = shape_of::<B>(&m);
            if sm != [b, s] {
                return Err(ApiError::shape(format!(
                    "{op:?}: keep {sm:?} does not fit [b, s] = [{b}, {s}]"
                )));
            }
            nn::to_vec(ft::<B, 2>(m))?
                .iter()
                .map(|&x| x != 0.0)
                .collect()
        }
    };
    Ok(Qkv {
        q: ft(q),
        k: ft(k),
        v: ft(v),
        keep,
        heads: heads as usize,
        scale,
        bts: [b, t, s],
    })
}

/// `(q [b, t, h], k [b, s, h], v [b, s, h], [keep [b, s]])`, ints `[heads]`, floats `[scale]`.
pub(super) fn attention<B: AutodiffBackend>(
    g: &HostGraph<'_, B>,
    mut inputs: Vec<Value<B>>,
    values: &Values,
) -> R<FloatPrim<B>> {
    let op = OpCode::ATTENTION;
    let keep = optional_keep(&mut inputs, op, 3)?;
    let qkv = pop_qkv(&mut inputs, op)?;
    let x = operands::<B>(op, qkv, keep, values)?;
    let out = if !kernels(g) {
        generic(x, None, None)?
    } else if g.no_grad {
        let (k, v) = (split(&x, x.k.clone()), split(&x, x.v.clone()));
        nn::nograd_split(x.q, k, v, &x.keep, x.scale, ScoreTerms::default())?
    } else {
        nn::tracked::attention(x.q, x.k, x.v, &x.keep, x.heads, x.scale, 0.0, 0)?
    };
    Ok(fp(out))
}

/// `(q [b, t, h], k [b, s, h], v [b, s, h], bias [heads, t, s], [keep [b, s]])`, ints
/// `[heads, causal]` (`-1`: none), floats `[scale]`.
pub(super) fn attention_bias<B: AutodiffBackend>(
    g: &HostGraph<'_, B>,
    mut inputs: Vec<Value<B>>,
    values: &Values,
) -> R<FloatPrim<B>> {
    let op = OpCode::ATTENTION_BIAS;
    let keep = optional_keep(&mut inputs, op, 4)?;
    let bias = pop_float(&mut inputs, op, "bias")?;
    let qkv = pop_qkv(&mut inputs, op)?;
    let causal = match int_arg(values, 1, op, "causal")? {
        -1 => None,
        c if c >= 0 => Some(c as usize),
        c => {
            return Err(ApiError::invalid(format!(
                "{op:?}: causal = {c} must be -1 (none) or an offset >= 0"
            )))
        }
    };
    let x = operands::<B>(op, qkv, keep, values)?;
    let [_, t, s] = x.bts;
    let sb = shape_of::<B>(&bias);
    if sb != [x.heads, t, s] {
        return Err(ApiError::shape(format!(
            "{op:?}: bias {sb:?} does not fit [heads, t, s] = [{}, {t}, {s}]",
            x.heads
        )));
    }
    let bias = ft::<B, 3>(bias);
    let out = if !kernels(g) {
        generic(x, Some(bias), causal)?
    } else if g.no_grad {
        let (k, v) = (split(&x, x.k.clone()), split(&x, x.v.clone()));
        let terms = ScoreTerms {
            pos: Some(nn::to_vec(bias)?),
            causal,
            bf16: false,
        };
        nn::nograd_split(x.q, k, v, &x.keep, x.scale, terms)?
    } else {
        nn::tracked::attention_biased(x.q, x.k, x.v, &x.keep, x.heads, x.scale, bias, causal)?
    };
    Ok(fp(out))
}

/// After checking that there are `fixed` inputs and maybe the key mask: the mask, taken.
fn optional_keep<B: AutodiffBackend>(
    inputs: &mut Vec<Value<B>>,
    op: OpCode,
    fixed: usize,
) -> R<Option<FloatPrim<B>>> {
    arity(op, inputs, fixed, fixed + 1)?;
    (inputs.len() > fixed)
        .then(|| pop_float(inputs, op, "keep"))
        .transpose()
}

/// `[q, k, v]`, the first three inputs (taken from the back).
fn pop_qkv<B: AutodiffBackend>(inputs: &mut Vec<Value<B>>, op: OpCode) -> R<[FloatPrim<B>; 3]> {
    let v = pop_float(inputs, op, "v")?;
    let k = pop_float(inputs, op, "k")?;
    Ok([pop_float(inputs, op, "q")?, k, v])
}

/// Whether the CPU kernels run this pass.
fn kernels<B: AutodiffBackend>(g: &HostGraph<'_, B>) -> bool {
    if g.no_grad {
        nn::enabled::<B>()
    } else {
        nn::tracked::enabled::<B>()
    }
}

/// `[b, s, h]` as `[b, heads, s, h / heads]` (a view).
fn split<B: AutodiffBackend>(x: &Qkv<B>, y: Tensor<B, 3>) -> Tensor<B, 4> {
    let [b, _, s] = x.bts;
    let h = y.dims()[2];
    y.reshape([b, s, x.heads, h / x.heads]).swap_dims(1, 2)
}

/// burn's ops: scores, the bias, the padding (and the causally hidden keys) as `f32::MIN`
/// added (a batch with no key kept then attends uniformly, as the kernel does), softmax, the
/// heads merged.
fn generic<B: AutodiffBackend>(
    x: Qkv<B>,
    bias: Option<Tensor<B, 3>>,
    causal: Option<usize>,
) -> R<Tensor<B, 3>> {
    let ([b, t, s], heads, h) = (x.bts, x.heads, x.q.dims()[2]);
    let (k, v) = (split(&x, x.k.clone()), split(&x, x.v.clone()));
    let q = x.q.reshape([b, t, heads, h / heads]).swap_dims(1, 2);
    let device = q.device();
    let mask: Vec<f32> = x
        .keep
        .iter()
        .map(|&k| if k { 0.0 } else { f32::MIN })
        .collect();
    let mask = nn::from_vec::<B, 2>(mask, [b, s], &device)
        .unsqueeze_dim::<3>(1)
        .unsqueeze_dim::<4>(1);
    let mut scores = q.matmul(k.swap_dims(2, 3)) * x.scale as f64 + mask;
    if let Some(bias) = bias {
        scores = scores + bias.unsqueeze_dim::<4>(0);
    }
    if let Some(off) = causal {
        let hidden: Vec<f32> = (0..t * s)
            .map(|e| if e % s > e / s + off { f32::MIN } else { 0.0 })
            .collect();
        scores = scores + nn::from_vec::<B, 2>(hidden, [t, s], &device).unsqueeze::<4>();
    }
    let c = activation::softmax(scores, 3).matmul(v);
    Ok(c.swap_dims(1, 2).reshape([b, t, h]))
}
