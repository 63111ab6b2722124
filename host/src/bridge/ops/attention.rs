//! `ATTENTION` (API 1.2): multi-head attention for plugins that run their own encoders (a
//! HyperT5 hypermodel). On burn's CPU backend it is the backbones' blocked kernel — tracked
//! with its own backward, or the no-gradient pass reading the head split in place — which
//! never holds the `[t, s]` scores; elsewhere (another backend, `PEFT_CPU_KERNELS=0`) burn's
//! ops, the composed chain a plugin would otherwise write and what the kernel is tested
//! against (`tests/gradients.rs`).
use burn::tensor::{activation, backend::AutodiffBackend, Tensor};
use peft_api::{ApiError, OpCode, Values};

use super::args::*;
use crate::bridge::{
    value::{fp, ft, FloatPrim, Value},
    HostGraph,
};
use crate::nn;

/// `(q [b, t, h], k [b, s, h], v [b, s, h], [keep [b, s]])`, ints `[heads]`, floats `[scale]`.
pub(super) fn attention<B: AutodiffBackend>(
    g: &HostGraph<'_, B>,
    mut inputs: Vec<Value<B>>,
    values: &Values,
) -> R<FloatPrim<B>> {
    let op = OpCode::ATTENTION;
    arity(op, &inputs, 3, 4)?;
    let keep = if inputs.len() == 4 {
        Some(pop_float(&mut inputs, op, "keep")?)
    } else {
        None
    };
    let v = pop_float(&mut inputs, op, "v")?;
    let k = pop_float(&mut inputs, op, "k")?;
    let q = pop_float(&mut inputs, op, "q")?;
    let heads = int_arg(values, 0, op, "heads")?;
    let scale = float_arg(values, 0, op, "scale")? as f32;
    let (sq, sk, sv) = (shape_of::<B>(&q), shape_of::<B>(&k), shape_of::<B>(&v));
    let (&[b, _t, h], &[bk, s, hk]) = (sq.as_slice(), sk.as_slice()) else {
        return Err(ApiError::shape(format!(
            "ATTENTION: q {sq:?}, k {sk:?} must be [b, t, h] and [b, s, h]"
        )));
    };
    if bk != b || hk != h || sv != sk {
        return Err(ApiError::shape(format!(
            "ATTENTION: q {sq:?}, k {sk:?}, v {sv:?} do not fit [b, t, h], [b, s, h], [b, s, h]"
        )));
    }
    if heads <= 0 || h % heads as usize != 0 {
        return Err(ApiError::invalid(format!(
            "ATTENTION: heads = {heads} does not divide the width {h}"
        )));
    }
    let heads = heads as usize;
    let keep = match keep {
        None => vec![true; b * s],
        Some(m) => {
            let sm = shape_of::<B>(&m);
            if sm != [b, s] {
                return Err(ApiError::shape(format!(
                    "ATTENTION: keep {sm:?} does not fit [b, s] = [{b}, {s}]"
                )));
            }
            nn::to_vec(ft::<B, 2>(m))?
                .iter()
                .map(|&x| x != 0.0)
                .collect()
        }
    };
    let (q, k, v) = (ft::<B, 3>(q), ft::<B, 3>(k), ft::<B, 3>(v));
    let split = |x: Tensor<B, 3>| x.reshape([b, s, heads, h / heads]).swap_dims(1, 2);
    let kernels = if g.no_grad {
        nn::enabled::<B>()
    } else {
        nn::tracked::enabled::<B>()
    };
    let out = if !kernels {
        generic(q, split(k), split(v), &keep, scale)?
    } else if g.no_grad {
        nn::nograd_split(q, split(k), split(v), &keep, scale, Default::default())?
    } else {
        nn::tracked::attention(q, k, v, &keep, heads, scale, 0.0, 0)?
    };
    Ok(fp(out))
}

/// burn's ops: scores, the padding as `f32::MIN` added (a batch with no key kept then
/// attends uniformly, as the kernel does), softmax, the heads merged.
fn generic<B: AutodiffBackend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    keep: &[bool],
    scale: f32,
) -> R<Tensor<B, 3>> {
    let [b, t, h] = q.dims();
    let [_, heads, s, dh] = k.dims();
    let q = q.reshape([b, t, heads, dh]).swap_dims(1, 2);
    let mask: Vec<f32> = keep
        .iter()
        .map(|&k| if k { 0.0 } else { f32::MIN })
        .collect();
    let mask = nn::from_vec::<B, 2>(mask, [b, s], &q.device())
        .unsqueeze_dim::<3>(1)
        .unsqueeze_dim::<4>(1);
    let scores = q.matmul(k.swap_dims(2, 3)) * scale as f64 + mask;
    let c = activation::softmax(scores, 3).matmul(v);
    Ok(c.swap_dims(1, 2).reshape([b, t, h]))
}
