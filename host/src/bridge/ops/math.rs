//! The ops that compute (elementwise, reductions, norms, products, losses, dropout, gradients),
//! after their arguments are read and checked.
use burn::tensor::{activation, backend::AutodiffBackend, Distribution, Tensor, TensorMetadata};
use peft_api::{ApiError, OpCode, Values};

use super::args::*;
use crate::bridge::{
    value::{fp, ft, it, FloatPrim, Value},
    HostGraph,
};
use crate::by_rank;
use crate::nn::{layer_norm, rms_norm};

pub(super) fn binary<B: AutodiffBackend>(
    op: OpCode,
    a: FloatPrim<B>,
    b: FloatPrim<B>,
) -> R<FloatPrim<B>> {
    check_broadcast(op, &shape_of::<B>(&a), &shape_of::<B>(&b))?;
    let (a, b, r) = align::<B>(a, b);
    by_rank!(r, |D| {
        let (a, b) = (ft::<B, D>(a), ft::<B, D>(b));
        Ok(fp(match op {
            OpCode::ADD => a + b,
            OpCode::SUB => a - b,
            OpCode::MUL => a * b,
            OpCode::DIV => a / b,
            other => {
                return Err(ApiError::internal(format!(
                    "{other:?} reached the wrong kernel"
                )))
            }
        }))
    })
}

pub(super) fn unary<B: AutodiffBackend>(
    op: OpCode,
    p: FloatPrim<B>,
    values: &Values,
) -> R<FloatPrim<B>> {
    let r = shape_of::<B>(&p).len();
    by_rank!(r, |D| {
        let x = ft::<B, D>(p);
        Ok(fp(match op {
            OpCode::NEG => x.neg(),
            OpCode::EXP => x.exp(),
            OpCode::LOG => x.log(),
            OpCode::SQRT => x.sqrt(),
            OpCode::RELU => activation::relu(x),
            OpCode::GELU => {
                let n = x.shape().num_elements();
                if values.ints.first() == Some(&1) {
                    activation::gelu_approximate(x)
                } else if n > 0 && crate::nn::tracked::enabled::<B>() {
                    // Exact GELU on the CPU kernel, one tracked op (burn's evaluates erf
                    // through several recorded ops: 8 ms on a hypermodel's [512, 1536]).
                    let dims = x.dims();
                    let last = dims[D - 1];
                    let y = crate::nn::tracked::gelu(x.reshape([1, n / last, last]))?;
                    y.reshape(dims)
                } else {
                    activation::gelu(x)
                }
            }
            OpCode::SILU => activation::silu(x),
            OpCode::TANH => x.tanh(),
            OpCode::SIGMOID => activation::sigmoid(x),
            OpCode::ABS => x.abs(),
            OpCode::DETACH => x.detach(),
            OpCode::REQUIRE_GRAD => x.detach().require_grad(),
            OpCode::ADD_SCALAR => x.add_scalar(float_arg(values, 0, op, "c")?),
            OpCode::MUL_SCALAR => x.mul_scalar(float_arg(values, 0, op, "c")?),
            OpCode::POW_SCALAR => x.powf_scalar(float_arg(values, 0, op, "p")?),
            OpCode::CLAMP => x.clamp(
                float_arg(values, 0, op, "min")?,
                float_arg(values, 1, op, "max")?,
            ),
            other => {
                return Err(ApiError::internal(format!(
                    "{other:?} reached the wrong kernel"
                )))
            }
        }))
    })
}

pub(super) fn along_dim<B: AutodiffBackend>(
    op: OpCode,
    p: FloatPrim<B>,
    values: &Values,
) -> R<FloatPrim<B>> {
    let r = shape_of::<B>(&p).len();
    if values.ints.is_empty() && matches!(op, OpCode::SUM | OpCode::MEAN) {
        return by_rank!(r, |D| {
            let x = ft::<B, D>(p);
            Ok(fp(if op == OpCode::SUM { x.sum() } else { x.mean() }))
        });
    }
    let d = dim(int_arg(values, 0, op, "dim")?, r)?;
    by_rank!(r, |D| {
        let x = ft::<B, D>(p);
        Ok(fp(match op {
            OpCode::SOFTMAX => activation::softmax(x, d),
            OpCode::LOG_SOFTMAX => activation::log_softmax(x, d),
            OpCode::SUM => x.sum_dim(d),
            OpCode::MEAN => x.mean_dim(d),
            OpCode::MAX => x.max_dim(d),
            other => {
                return Err(ApiError::internal(format!(
                    "{other:?} reached the wrong kernel"
                )))
            }
        }))
    })
}

pub(super) fn norm<B: AutodiffBackend>(
    op: OpCode,
    mut inputs: Vec<Value<B>>,
    values: &Values,
) -> R<FloatPrim<B>> {
    let eps = float_arg(values, 0, op, "eps")?;
    let x = float(inputs.remove(0), "x")?;
    let sx = shape_of::<B>(&x);
    let last = *sx
        .last()
        .ok_or_else(|| ApiError::shape("norm of a scalar"))?;
    let mut affine = Vec::new();
    for (i, v) in inputs.into_iter().enumerate() {
        let p = float(v, "norm weight")?;
        let s = shape_of::<B>(&p);
        if s != [last] {
            return Err(ApiError::shape(format!(
                "{op:?}: affine parameter {i} has shape {s:?}, expected [{last}]"
            )));
        }
        affine.push(ft::<B, 1>(p));
    }
    let mut affine = affine.into_iter();
    let (w, b) = (affine.next(), affine.next());
    by_rank!(sx.len(), |D| {
        let x = ft::<B, D>(x);
        Ok(fp(if op == OpCode::LAYER_NORM {
            layer_norm(x, w, b, eps)
        } else {
            rms_norm(x, w, eps)
        }))
    })
}

pub(super) fn matmul<B: AutodiffBackend>(a: FloatPrim<B>, b: FloatPrim<B>) -> R<FloatPrim<B>> {
    let (sa, sb) = (shape_of::<B>(&a), shape_of::<B>(&b));
    if sa.len() < 2 || sb.len() < 2 {
        return Err(ApiError::shape(format!(
            "MATMUL needs rank >= 2, got {sa:?} @ {sb:?}"
        )));
    }
    if sa[sa.len() - 1] != sb[sb.len() - 2] {
        return Err(ApiError::shape(format!(
            "MATMUL: inner sizes differ in {sa:?} @ {sb:?}"
        )));
    }
    check_broadcast(OpCode::MATMUL, &sa[..sa.len() - 2], &sb[..sb.len() - 2])?;
    let (a, b, r) = align::<B>(a, b);
    by_rank!(r, |D| {
        let (a, b) = (ft::<B, D>(a), ft::<B, D>(b));
        // The CPU kernel when the leading dims agree; burn's (broadcasting) matmul otherwise.
        match crate::nn::matmul::tracked(a.clone(), b.clone())? {
            Some(y) => Ok(fp(y)),
            None => Ok(fp(a.matmul(b))),
        }
    })
}

pub(super) fn cross_entropy<B: AutodiffBackend>(
    logits: FloatPrim<B>,
    labels: crate::bridge::IntPrim<B>,
    values: &Values,
) -> R<FloatPrim<B>> {
    let (sl, sy) = (shape_of::<B>(&logits), labels.shape().to_vec());
    if sl.len() != 2 || sy != [sl[0]] {
        return Err(ApiError::shape(format!(
            "CROSS_ENTROPY needs logits [n, c] and labels [n], got {sl:?} and {sy:?}"
        )));
    }
    let smoothing = values.floats.first().copied().unwrap_or(0.0);
    let ignore = values.ints.first().copied().unwrap_or(-100);
    let y = it::<B, 1>(labels);
    let valid = y.clone().not_equal_elem(ignore);
    let safe = y.mask_fill(valid.clone().bool_not(), 0);
    let per = crate::nn::cross_entropy(ft::<B, 2>(logits), safe, smoothing as f32)?;
    let w = valid.float();
    let count = w.clone().sum().clamp_min(1.0);
    Ok(fp((per * w).sum() / count))
}

pub(super) fn cosine<B: AutodiffBackend>(
    a: FloatPrim<B>,
    b: FloatPrim<B>,
    values: &Values,
) -> R<FloatPrim<B>> {
    check_broadcast(
        OpCode::COSINE_SIMILARITY,
        &shape_of::<B>(&a),
        &shape_of::<B>(&b),
    )?;
    let (a, b, r) = align::<B>(a, b);
    let d = dim(int_arg(values, 0, OpCode::COSINE_SIMILARITY, "dim")?, r)?;
    let eps = values.floats.first().copied().unwrap_or(1e-8);
    by_rank!(r, |D| {
        let (a, b) = (ft::<B, D>(a), ft::<B, D>(b));
        let dot = (a.clone() * b.clone()).sum_dim(d);
        let na = a.powf_scalar(2.0).sum_dim(d).sqrt().clamp_min(eps);
        let nb = b.powf_scalar(2.0).sum_dim(d).sqrt().clamp_min(eps);
        let c = dot / (na * nb);
        let mut out = c.dims().to_vec();
        out.remove(d);
        if out.is_empty() {
            out.push(1);
        }
        Ok(reshape::<B>(fp(c), out))
    })
}

pub(super) fn dropout<B: AutodiffBackend>(
    g: &HostGraph<'_, B>,
    p: FloatPrim<B>,
    values: &Values,
) -> R<FloatPrim<B>> {
    let prob = float_arg(values, 0, OpCode::DROPOUT, "p")?;
    if !(0.0..1.0).contains(&prob) {
        return Err(ApiError::invalid(format!(
            "DROPOUT: p = {prob} is not in [0, 1)"
        )));
    }
    if !g.training || prob == 0.0 {
        return Ok(p);
    }
    let r = shape_of::<B>(&p).len();
    by_rank!(r, |D| {
        let x = ft::<B, D>(p);
        let mask =
            Tensor::<B, D>::random(x.shape(), Distribution::Bernoulli(1.0 - prob), &x.device());
        Ok(fp(x * mask / (1.0 - prob)))
    })
}

/// Gradients of `loss` with respect to `wrt`, as detached tensors.
pub(super) fn grad<B: AutodiffBackend>(
    loss: FloatPrim<B>,
    wrt: Vec<FloatPrim<B>>,
) -> R<Vec<Value<B>>> {
    let sl = shape_of::<B>(&loss);
    if sl.iter().product::<usize>() != 1 {
        return Err(ApiError::shape(format!(
            "GRAD: the loss must have one element, got shape {sl:?}"
        )));
    }
    let loss = reshape::<B>(loss, vec![1]);
    let grads = ft::<B, 1>(loss).backward();
    wrt.into_iter()
        .map(|p| {
            let s = shape_of::<B>(&p);
            by_rank!(s.len(), |D| {
                let t = ft::<B, D>(p);
                let g = match t.grad(&grads) {
                    Some(g) => Tensor::<B, D>::from_inner(g),
                    None => t.zeros_like().detach(),
                };
                Ok(Value::Float(fp(g)))
            })
        })
        .collect()
}
