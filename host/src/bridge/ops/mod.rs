//! Each opcode of `peft_api::OpCode` implemented on burn tensors: argument and shape checks,
//! then the functional ops of [`crate::nn`] or burn's own.
use abi_stable::std_types::{RString, RVec};
use burn::tensor::{backend::AutodiffBackend, Int, Shape, Tensor, TensorData, TensorMetadata};
use peft_api::{ApiError, OpCode, OpOutput, ParamSpec, Values};

use super::{
    value::{fp, ft, ip, it, FloatPrim, Value},
    HostGraph,
};
use crate::by_rank;
// The functional ops live in `nn`; `linear` is re-exported for the callers that name it here.
pub use crate::nn::{layer_norm, linear, rms_norm};

mod args;
mod attention;
mod math;

use args::*;
use math::*;

/// Ops that read their inputs without consuming them.
pub fn exec_borrowing<B: AutodiffBackend>(
    g: &HostGraph<'_, B>,
    op: OpCode,
    inputs: Vec<Value<B>>,
    _values: &Values,
) -> R<OpOutput> {
    arity(op, &inputs, 1, 1)?;
    let mut inputs = inputs;
    let v = pop(&mut inputs, op, "x")?;
    let shape: RVec<i64> = v.shape().iter().map(|&d| d as i64).collect();
    let mut out = OpOutput::default();
    match op {
        OpCode::DUP => out.tensors.push(g.insert(v)),
        OpCode::SHAPE => out.values.ints = shape,
        OpCode::TO_DATA => {
            out.values.ints = shape;
            match v {
                Value::Float(p) => {
                    let data = ft::<B, 1>(reshape::<B>(
                        p.clone(),
                        vec![shape_of::<B>(&p).iter().product()],
                    ))
                    .into_data();
                    out.values.data = data
                        .convert::<f32>()
                        .into_vec::<f32>()
                        .map_err(|e| ApiError::internal(format!("{e:?}")))?
                        .into();
                }
                Value::Int(p) => {
                    let n = p.shape().num_elements();
                    let data = it::<B, 1>(B::int_reshape(p, Shape::from(vec![n]))).into_data();
                    out.values.idata = data
                        .convert::<i64>()
                        .into_vec::<i64>()
                        .map_err(|e| ApiError::internal(format!("{e:?}")))?
                        .into();
                }
            }
        }
        other => {
            return Err(ApiError::internal(format!(
                "{other:?} reached the wrong kernel"
            )))
        }
    }
    Ok(out)
}

/// Every consuming op. Returns the output tensors and values.
pub fn exec<B: AutodiffBackend>(
    g: &HostGraph<'_, B>,
    op: OpCode,
    mut inputs: Vec<Value<B>>,
    values: &Values,
) -> R<(Vec<Value<B>>, peft_api::Values)> {
    let one = |p: FloatPrim<B>| Ok((vec![Value::Float(p)], Values::default()));
    let none = || Ok((vec![], Values::default()));
    let device = || g.device();
    match op {
        OpCode::ADD | OpCode::SUB | OpCode::MUL | OpCode::DIV => {
            arity(op, &inputs, 2, 2)?;
            let b = pop_float(&mut inputs, op, "b")?;
            let a = pop_float(&mut inputs, op, "a")?;
            one(binary::<B>(op, a, b)?)
        }
        OpCode::NEG
        | OpCode::EXP
        | OpCode::LOG
        | OpCode::SQRT
        | OpCode::RELU
        | OpCode::GELU
        | OpCode::SILU
        | OpCode::TANH
        | OpCode::SIGMOID
        | OpCode::ABS
        | OpCode::DETACH
        | OpCode::REQUIRE_GRAD
        | OpCode::ADD_SCALAR
        | OpCode::MUL_SCALAR
        | OpCode::POW_SCALAR
        | OpCode::CLAMP => {
            arity(op, &inputs, 1, 1)?;
            one(unary::<B>(op, pop_float(&mut inputs, op, "x")?, values)?)
        }
        OpCode::SOFTMAX | OpCode::LOG_SOFTMAX | OpCode::SUM | OpCode::MEAN | OpCode::MAX => {
            arity(op, &inputs, 1, 1)?;
            one(along_dim::<B>(
                op,
                pop_float(&mut inputs, op, "x")?,
                values,
            )?)
        }
        OpCode::LAYER_NORM => {
            arity(op, &inputs, 1, 3)?;
            one(norm::<B>(op, inputs, values)?)
        }
        OpCode::RMS_NORM => {
            arity(op, &inputs, 1, 2)?;
            one(norm::<B>(op, inputs, values)?)
        }
        OpCode::MATMUL => {
            arity(op, &inputs, 2, 2)?;
            let b = pop_float(&mut inputs, op, "b")?;
            let a = pop_float(&mut inputs, op, "a")?;
            one(matmul::<B>(a, b)?)
        }
        OpCode::ATTENTION => one(attention::attention(g, inputs, values)?),
        OpCode::ATTENTION_BIAS => one(attention::attention_bias(g, inputs, values)?),
        OpCode::LINEAR => {
            arity(op, &inputs, 2, 3)?;
            let b = (inputs.len() == 3)
                .then(|| pop_float(&mut inputs, op, "bias"))
                .transpose()?;
            let w = pop_float(&mut inputs, op, "weight")?;
            let x = pop_float(&mut inputs, op, "x")?;
            one(linear::<B>(x, w, b)?)
        }
        OpCode::RESHAPE => {
            arity(op, &inputs, 1, 1)?;
            match pop(&mut inputs, op, "x")? {
                Value::Float(p) => {
                    let n = p.shape().num_elements();
                    let s = shape_arg(values, n, op)?;
                    if s.iter().product::<usize>() != n {
                        return Err(ApiError::shape(format!(
                            "RESHAPE: {:?} ({n} elements) to {s:?}",
                            shape_of::<B>(&p)
                        )));
                    }
                    one(reshape::<B>(p, s))
                }
                Value::Int(p) => {
                    let n = p.shape().num_elements();
                    let s = shape_arg(values, n, op)?;
                    if s.iter().product::<usize>() != n {
                        return Err(ApiError::shape(format!("RESHAPE: {n} elements to {s:?}")));
                    }
                    Ok((
                        vec![Value::Int(B::int_reshape(p, Shape::from(s)))],
                        Values::default(),
                    ))
                }
            }
        }
        OpCode::PERMUTE => {
            arity(op, &inputs, 1, 1)?;
            let p = pop_float(&mut inputs, op, "x")?;
            let r = shape_of::<B>(&p).len();
            let axes = values
                .ints
                .iter()
                .map(|&a| dim(a, r))
                .collect::<R<Vec<_>>>()?;
            let mut sorted = axes.clone();
            sorted.sort();
            if sorted != (0..r).collect::<Vec<_>>() {
                return Err(ApiError::shape(format!(
                    "PERMUTE: {:?} is not a permutation of 0..{r}",
                    values.ints
                )));
            }
            one(B::float_permute(p, &axes))
        }
        OpCode::SLICE => {
            arity(op, &inputs, 1, 1)?;
            let p = pop_float(&mut inputs, op, "x")?;
            let s = shape_of::<B>(&p);
            let d = dim(int_arg(values, 0, op, "dim")?, s.len())?;
            let (start, end) = (
                int_arg(values, 1, op, "start")?,
                int_arg(values, 2, op, "end")?,
            );
            if start < 0 || end < start || end as usize > s[d] {
                return Err(ApiError::shape(format!(
                    "SLICE: {start}..{end} is out of range for dim {d} of {s:?}"
                )));
            }
            by_rank!(s.len(), |D| one(fp(ft::<B, D>(p).narrow(
                d,
                start as usize,
                (end - start) as usize
            ))))
        }
        OpCode::CAT => {
            if inputs.is_empty() {
                return Err(ApiError::invalid("CAT needs at least one tensor"));
            }
            let ps = inputs
                .into_iter()
                .map(|v| float(v, "x"))
                .collect::<R<Vec<_>>>()?;
            let s0 = shape_of::<B>(&ps[0]);
            let d = dim(int_arg(values, 0, op, "dim")?, s0.len())?;
            for p in &ps {
                let s = shape_of::<B>(p);
                if s.len() != s0.len()
                    || s.iter()
                        .zip(&s0)
                        .enumerate()
                        .any(|(i, (a, b))| i != d && a != b)
                {
                    return Err(ApiError::shape(format!(
                        "CAT along {d}: shapes {s0:?} and {s:?} differ elsewhere"
                    )));
                }
            }
            // On the CPU one tracked copy of each input into place (`nn::cat`); elsewhere
            // strided inputs (a head split, a broadcast prefix) are copied by whole rows
            // first: burn-flex's cat would walk them element by element.
            by_rank!(s0.len(), |D| {
                let xs: Vec<Tensor<B, D>> = ps.into_iter().map(ft::<B, D>).collect();
                if let Some(y) = crate::nn::tracked::cat(&xs, d)? {
                    return one(fp(y));
                }
                one(fp(Tensor::cat(
                    xs.into_iter().map(crate::nn::tracked::contiguous).collect(),
                    d,
                )))
            })
        }
        OpCode::GATHER => {
            arity(op, &inputs, 2, 2)?;
            let idx = pop_int(&mut inputs, op, "index")?;
            let p = pop_float(&mut inputs, op, "x")?;
            let s = shape_of::<B>(&p);
            let si = idx.shape().to_vec();
            if si.len() != s.len() {
                return Err(ApiError::shape(format!(
                    "GATHER: index rank {} differs from input rank {}",
                    si.len(),
                    s.len()
                )));
            }
            let d = dim(int_arg(values, 0, op, "dim")?, s.len())?;
            by_rank!(s.len(), |D| one(fp(
                ft::<B, D>(p).gather(d, it::<B, D>(idx))
            )))
        }
        OpCode::INDEX_SELECT => {
            arity(op, &inputs, 2, 2)?;
            let idx = pop_int(&mut inputs, op, "index")?;
            let p = pop_float(&mut inputs, op, "x")?;
            let s = shape_of::<B>(&p);
            if idx.shape().num_dims() != 1 {
                return Err(ApiError::shape("INDEX_SELECT: the index must have rank 1"));
            }
            let d = dim(int_arg(values, 0, op, "dim")?, s.len())?;
            by_rank!(s.len(), |D| one(fp(
                ft::<B, D>(p).select(d, it::<B, 1>(idx))
            )))
        }
        OpCode::EXPAND => {
            arity(op, &inputs, 1, 1)?;
            let p = pop_float(&mut inputs, op, "x")?;
            let target: Vec<usize> = values.ints.iter().map(|&d| d.max(0) as usize).collect();
            let s = shape_of::<B>(&p);
            check_broadcast(op, &s, &target)?;
            if target.len() < s.len() {
                return Err(ApiError::shape(format!(
                    "EXPAND: cannot expand {s:?} to fewer dims {target:?}"
                )));
            }
            let mut full = vec![1; target.len() - s.len()];
            full.extend(s);
            one(B::float_expand(reshape::<B>(p, full), Shape::from(target)))
        }
        OpCode::CROSS_ENTROPY => {
            arity(op, &inputs, 2, 2)?;
            let y = pop_int(&mut inputs, op, "labels")?;
            let x = pop_float(&mut inputs, op, "logits")?;
            one(cross_entropy::<B>(x, y, values)?)
        }
        OpCode::DROPOUT => {
            arity(op, &inputs, 1, 1)?;
            one(dropout(g, pop_float(&mut inputs, op, "x")?, values)?)
        }
        OpCode::COSINE_SIMILARITY => {
            arity(op, &inputs, 2, 2)?;
            let b = pop_float(&mut inputs, op, "b")?;
            let a = pop_float(&mut inputs, op, "a")?;
            one(cosine::<B>(a, b, values)?)
        }
        OpCode::MSE => {
            arity(op, &inputs, 2, 2)?;
            let b = pop_float(&mut inputs, op, "b")?;
            let a = pop_float(&mut inputs, op, "a")?;
            let d = binary::<B>(OpCode::SUB, a, b)?;
            let n = shape_of::<B>(&d).iter().product::<usize>();
            let flat = ft::<B, 1>(reshape::<B>(d, vec![n]));
            one(fp(flat.powf_scalar(2.0).mean()))
        }
        OpCode::FROM_DATA => {
            arity(op, &inputs, 0, 0)?;
            let shape: Vec<usize> = values.ints.iter().map(|&d| d.max(0) as usize).collect();
            one(crate::params::from_values::<B>(
                &shape,
                values.data.to_vec(),
                &device(),
            )?)
        }
        OpCode::FROM_INTS => {
            arity(op, &inputs, 0, 0)?;
            let shape: Vec<usize> = values.ints.iter().map(|&d| d.max(0) as usize).collect();
            let n: usize = shape.iter().product();
            if values.idata.len() != n {
                return Err(ApiError::shape(format!(
                    "FROM_INTS: {} values for shape {shape:?}",
                    values.idata.len()
                )));
            }
            let data = TensorData::new(values.idata.to_vec(), shape.clone());
            let t = by_rank!(shape.len(), |D| Ok(ip(Tensor::<B, D, Int>::from_data(
                data,
                &device()
            ))))?;
            Ok((vec![Value::Int(t)], Values::default()))
        }
        OpCode::FULL => {
            arity(op, &inputs, 0, 0)?;
            let shape: Vec<usize> = values.ints.iter().map(|&d| d.max(0) as usize).collect();
            let v = float_arg(values, 0, op, "value")?;
            by_rank!(shape.len(), |D| one(fp(Tensor::<B, D>::full(
                shape.clone(),
                v,
                &device()
            ))))
        }
        OpCode::PARAM_CREATE => {
            arity(op, &inputs, 0, 0)?;
            let spec: ParamSpec = serde_json::from_str(&values.text)
                .map_err(|e| ApiError::invalid(format!("PARAM_CREATE: bad spec: {e}")))?;
            let full = g.qualify(&spec.name);
            let owner = g.namespace.borrow().clone();
            let p = g.params.borrow_mut().create(
                &full,
                &spec.group,
                &owner,
                &spec.shape,
                &spec.init,
            )?;
            one(p)
        }
        OpCode::PARAM => {
            arity(op, &inputs, 0, 0)?;
            // Plugins compute in f32: a weight held in bf16 reaches them widened.
            let v = g.param_value(&g.qualify(&values.text))?;
            let v = by_rank!(v.shape().num_dims(), |D| Ok(fp(crate::nn::bf16::to_f32(
                ft::<B, D>(v)
            ))))?;
            one(v)
        }
        OpCode::ASSIGN_PARAM => {
            arity(op, &inputs, 1, 1)?;
            let v = pop_float(&mut inputs, op, "value")?;
            g.params.borrow_mut().assign(&g.qualify(&values.text), v)?;
            none()
        }
        OpCode::CONTEXT => {
            arity(op, &inputs, 0, 0)?;
            let v = g
                .context
                .borrow()
                .get(values.text.as_str())
                .cloned()
                .ok_or_else(|| {
                    let known: Vec<String> = g.context.borrow().keys().cloned().collect();
                    ApiError::new(
                        peft_api::ErrorKind::NOT_FOUND,
                        format!(
                            "no context tensor `{}` in this pass (present: {known:?})",
                            values.text
                        ),
                    )
                })?;
            Ok((vec![v], Values::default()))
        }
        OpCode::SET_CONTEXT => {
            arity(op, &inputs, 1, 1)?;
            g.context
                .borrow_mut()
                .insert(values.text.to_string(), pop(&mut inputs, op, "value")?);
            none()
        }
        OpCode::ADD_LOSS => {
            arity(op, &inputs, 1, 1)?;
            let w = values.floats.first().copied().unwrap_or(1.0);
            let p = pop_float(&mut inputs, op, "loss")?;
            let n = shape_of::<B>(&p).iter().product::<usize>();
            if n != 1 {
                return Err(ApiError::shape(format!(
                    "ADD_LOSS: the loss must have one element, got {n}"
                )));
            }
            g.aux_losses
                .borrow_mut()
                .push((w, reshape::<B>(p, vec![1])));
            none()
        }
        OpCode::SITE => {
            let sites = g.sites.get().ok_or_else(|| {
                ApiError::unsupported("SITE: no modules are attached in this pass")
            })?;
            let out = sites.dispatch(g, &values.text, inputs)?;
            Ok((out, Values::default()))
        }
        OpCode::GRAD => {
            if inputs.is_empty() {
                return Err(ApiError::invalid("GRAD needs (loss, tensors...)"));
            }
            let mut it = inputs.into_iter();
            let loss = float(
                it.next()
                    .ok_or_else(|| ApiError::invalid("GRAD needs (loss, tensors...)"))?,
                "loss",
            )?;
            let wrt = it.map(|v| float(v, "x")).collect::<R<Vec<_>>>()?;
            Ok((grad::<B>(loss, wrt)?, Values::default()))
        }
        OpCode::IS_TRAINING => {
            let v = Values {
                ints: RVec::from(vec![g.training as i64]),
                ..Values::default()
            };
            Ok((vec![], v))
        }
        other => Err(ApiError::new(
            peft_api::ErrorKind::UNKNOWN_OP,
            format!("{other:?} is not implemented by this host"),
        )),
    }
    .map(|(t, v): (Vec<Value<B>>, Values)| (t, v))
    .map_err(|e: ApiError| {
        if e.message.is_empty() {
            ApiError {
                message: RString::from("op failed"),
                ..e
            }
        } else {
            e
        }
    })
}
