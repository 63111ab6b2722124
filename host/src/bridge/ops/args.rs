//! Reading an op's inputs and arguments, and the shape checks every op shares.
use burn::tensor::{backend::AutodiffBackend, Shape, TensorMetadata};
use peft_api::{ApiError, OpCode, Values};

use crate::bridge::value::{FloatPrim, Value};

pub(super) type R<T> = Result<T, ApiError>;

pub(super) fn float<B: AutodiffBackend>(v: Value<B>, what: &str) -> R<FloatPrim<B>> {
    match v {
        Value::Float(p) => Ok(p),
        Value::Int(_) => Err(ApiError::invalid(format!(
            "{what} must be a float tensor, got an int tensor"
        ))),
    }
}

pub(super) fn int<B: AutodiffBackend>(v: Value<B>, what: &str) -> R<crate::bridge::IntPrim<B>> {
    match v {
        Value::Int(p) => Ok(p),
        Value::Float(_) => Err(ApiError::invalid(format!(
            "{what} must be an int tensor, got a float tensor"
        ))),
    }
}

/// The last input (inputs are taken from the back), named `what` in the error when the plugin
/// passed too few; the arity check before it makes that an internal error, never a panic.
pub(super) fn pop<B: AutodiffBackend>(
    inputs: &mut Vec<Value<B>>,
    op: OpCode,
    what: &str,
) -> R<Value<B>> {
    inputs
        .pop()
        .ok_or_else(|| ApiError::invalid(format!("{op:?}: missing input `{what}`")))
}

/// [`pop`], which must be a float tensor.
pub(super) fn pop_float<B: AutodiffBackend>(
    inputs: &mut Vec<Value<B>>,
    op: OpCode,
    what: &str,
) -> R<FloatPrim<B>> {
    float(pop(inputs, op, what)?, what)
}

/// [`pop`], which must be an int tensor.
pub(super) fn pop_int<B: AutodiffBackend>(
    inputs: &mut Vec<Value<B>>,
    op: OpCode,
    what: &str,
) -> R<crate::bridge::IntPrim<B>> {
    int(pop(inputs, op, what)?, what)
}

pub(super) fn arity<B: AutodiffBackend>(
    op: OpCode,
    inputs: &[Value<B>],
    min: usize,
    max: usize,
) -> R<()> {
    if inputs.len() < min || inputs.len() > max {
        let want = if min == max {
            format!("{min}")
        } else {
            format!("{min} to {max}")
        };
        return Err(ApiError::invalid(format!(
            "{op:?} takes {want} tensors, got {}",
            inputs.len()
        )));
    }
    Ok(())
}

pub(super) fn int_arg(values: &Values, i: usize, op: OpCode, what: &str) -> R<i64> {
    values
        .ints
        .get(i)
        .copied()
        .ok_or_else(|| ApiError::invalid(format!("{op:?} needs ints[{i}] = {what}")))
}

pub(super) fn float_arg(values: &Values, i: usize, op: OpCode, what: &str) -> R<f64> {
    values
        .floats
        .get(i)
        .copied()
        .ok_or_else(|| ApiError::invalid(format!("{op:?} needs floats[{i}] = {what}")))
}

/// Resolves a signed dim against a rank.
pub fn dim(d: i64, rank: usize) -> R<usize> {
    let r = rank as i64;
    let n = if d < 0 { d + r } else { d };
    if n < 0 || n >= r {
        return Err(ApiError::shape(format!(
            "dim {d} is out of range for a tensor of rank {rank}"
        )));
    }
    Ok(n as usize)
}

pub(super) fn shape_of<B: AutodiffBackend>(p: &FloatPrim<B>) -> Vec<usize> {
    p.shape().to_vec()
}

pub(super) fn reshape<B: AutodiffBackend>(p: FloatPrim<B>, shape: Vec<usize>) -> FloatPrim<B> {
    B::float_reshape(p, Shape::from(shape))
}

/// Brings two tensors to the same rank by prepending size-1 dims (NumPy broadcasting).
pub(super) fn align<B: AutodiffBackend>(
    a: FloatPrim<B>,
    b: FloatPrim<B>,
) -> (FloatPrim<B>, FloatPrim<B>, usize) {
    let (sa, sb) = (shape_of::<B>(&a), shape_of::<B>(&b));
    let r = sa.len().max(sb.len());
    let pad = |p: FloatPrim<B>, s: Vec<usize>| {
        if s.len() == r {
            p
        } else {
            let mut full = vec![1; r - s.len()];
            full.extend(s);
            reshape::<B>(p, full)
        }
    };
    (pad(a, sa), pad(b, sb), r)
}

pub(super) fn check_broadcast(op: OpCode, a: &[usize], b: &[usize]) -> R<()> {
    let r = a.len().max(b.len());
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        if da != db && da != 1 && db != 1 {
            return Err(ApiError::shape(format!(
                "{op:?}: shapes {a:?} and {b:?} do not broadcast"
            )));
        }
    }
    Ok(())
}

pub(super) fn shape_arg(values: &Values, numel: usize, op: OpCode) -> R<Vec<usize>> {
    let mut unknown = None;
    let mut known = 1usize;
    for (i, &d) in values.ints.iter().enumerate() {
        if d == -1 {
            if unknown.replace(i).is_some() {
                return Err(ApiError::shape(format!(
                    "{op:?}: more than one -1 in {:?}",
                    values.ints
                )));
            }
        } else if d < 0 {
            return Err(ApiError::shape(format!(
                "{op:?}: negative size in {:?}",
                values.ints
            )));
        } else {
            known *= d as usize;
        }
    }
    let mut shape: Vec<usize> = values.ints.iter().map(|&d| d.max(0) as usize).collect();
    if let Some(i) = unknown {
        if known == 0 || !numel.is_multiple_of(known) {
            return Err(ApiError::shape(format!(
                "{op:?}: cannot infer -1 in {:?} for {numel} elements",
                values.ints
            )));
        }
        shape[i] = numel / known;
    }
    Ok(shape)
}
