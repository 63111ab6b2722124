//! The safe layer for plugin authors: [`Ctx`] (the host's graph) and [`Tensor`] (a handle that
//! is released on drop, with burn-like methods and operators).
//!
//! Methods consume `self` like burn's; `clone()` is a cheap second handle. Operators cannot
//! return `Result`, so a failed operator yields a *poisoned* tensor that carries the error to
//! the next method call or to the module's return value: errors are never lost and never panic.
use abi_stable::std_types::{RString, RVec};

mod ctx;

pub use crate::info::Init;
use crate::{
    abi::{GraphRef, OpOutput, TensorHandle, Values},
    error::{ApiError, ErrorKind, Result},
    info::ParamSpec,
    ops::OpCode,
};

/// The host's graph for the duration of one plugin call.
pub struct Ctx<'a> {
    graph: GraphRef<'a>,
}

/// What a [`Tensor`] needs from its graph; [`Ctx`] implements it. (A trait object keeps
/// `Tensor<'c>` covariant in `'c`, which the invariant ABI object type is not.)
pub trait Exec {
    fn exec_raw(&self, op: OpCode, inputs: &[TensorHandle], values: &Values) -> Result<OpOutput>;
    fn release(&self, handle: TensorHandle);
}

type G<'c> = &'c (dyn Exec + 'c);

pub struct Tensor<'c> {
    ctx: G<'c>,
    state: Result<TensorHandle>,
}

/// Runs an op on tensors; the inputs are consumed.
fn exec<'c>(
    g: G<'c>,
    op: OpCode,
    inputs: Vec<Tensor<'c>>,
    values: &Values,
) -> Result<Vec<Tensor<'c>>> {
    let mut handles = Vec::with_capacity(inputs.len());
    for t in inputs {
        handles.push(t.into_handle()?);
    }
    let out = g.exec_raw(op, &handles, values)?;
    Ok(out
        .tensors
        .into_iter()
        .map(|h| Tensor {
            ctx: g,
            state: Ok(h),
        })
        .collect())
}

fn exec1<'c>(g: G<'c>, op: OpCode, inputs: Vec<Tensor<'c>>, values: &Values) -> Result<Tensor<'c>> {
    let mut out = exec(g, op, inputs, values)?;
    if out.len() != 1 {
        return Err(ApiError::internal(format!(
            "op {op:?} returned {} tensors, expected 1",
            out.len()
        )));
    }
    Ok(out.pop().unwrap())
}

impl Exec for Ctx<'_> {
    fn exec_raw(&self, op: OpCode, inputs: &[TensorHandle], values: &Values) -> Result<OpOutput> {
        Ctx::exec_raw(self, op, inputs, values)
    }
    fn release(&self, handle: TensorHandle) {
        self.graph.release(handle)
    }
}

fn values() -> Values {
    Values::default()
}

fn ints(v: &[i64]) -> Values {
    Values {
        ints: RVec::from(v.to_vec()),
        ..values()
    }
}

fn floats(v: &[f64]) -> Values {
    Values {
        floats: RVec::from(v.to_vec()),
        ..values()
    }
}

fn text(s: &str) -> Values {
    Values {
        text: RString::from(s),
        ..values()
    }
}

macro_rules! unary {
    ($($(#[$m:meta])* $name:ident => $op:ident;)*) => {$(
        $(#[$m])*
        pub fn $name(self) -> Result<Tensor<'c>> {
            exec1(self.ctx, OpCode::$op, vec![self], &values())
        }
    )*};
}

macro_rules! with_dim {
    ($($(#[$m:meta])* $name:ident => $op:ident;)*) => {$(
        $(#[$m])*
        pub fn $name(self, dim: i64) -> Result<Tensor<'c>> {
            exec1(self.ctx, OpCode::$op, vec![self], &ints(&[dim]))
        }
    )*};
}

/// `add`, `sub`, `mul`, `div` and `neg` are the `Result`-returning forms of the operators.
#[allow(clippy::should_implement_trait)]
impl<'c> Tensor<'c> {
    /// The handle, giving up ownership (the caller must release it or pass it on).
    pub fn into_handle(mut self) -> Result<TensorHandle> {
        std::mem::replace(
            &mut self.state,
            Err(ApiError::internal("tensor already moved")),
        )
    }

    /// Borrows the handle without giving it up.
    pub fn handle(&self) -> Result<TensorHandle> {
        self.state.clone()
    }

    pub fn error(&self) -> Option<&ApiError> {
        self.state.as_ref().err()
    }

    fn poisoned(ctx: G<'c>, e: ApiError) -> Self {
        Tensor { ctx, state: Err(e) }
    }

    fn borrowed(&self, op: OpCode, v: &Values) -> Result<OpOutput> {
        let h = self.handle()?;
        self.ctx.exec_raw(op, &[h], v)
    }

    pub fn shape(&self) -> Result<Vec<usize>> {
        Ok(self
            .borrowed(OpCode::SHAPE, &values())?
            .values
            .ints
            .iter()
            .map(|&d| d as usize)
            .collect())
    }

    pub fn dims(&self) -> Result<usize> {
        Ok(self.shape()?.len())
    }

    /// Copies a float tensor's values to the plugin.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        Ok(self
            .borrowed(OpCode::TO_DATA, &values())?
            .values
            .data
            .into_vec())
    }

    /// Copies an int tensor's values to the plugin.
    pub fn to_ints(&self) -> Result<Vec<i64>> {
        Ok(self
            .borrowed(OpCode::TO_DATA, &values())?
            .values
            .idata
            .into_vec())
    }

    fn binary(self, op: OpCode, other: Tensor<'c>) -> Result<Tensor<'c>> {
        exec1(self.ctx, op, vec![self, other], &values())
    }

    pub fn add(self, other: Tensor<'c>) -> Result<Tensor<'c>> {
        self.binary(OpCode::ADD, other)
    }
    pub fn sub(self, other: Tensor<'c>) -> Result<Tensor<'c>> {
        self.binary(OpCode::SUB, other)
    }
    pub fn mul(self, other: Tensor<'c>) -> Result<Tensor<'c>> {
        self.binary(OpCode::MUL, other)
    }
    pub fn div(self, other: Tensor<'c>) -> Result<Tensor<'c>> {
        self.binary(OpCode::DIV, other)
    }
    /// Batched matrix product over the last two dims.
    pub fn matmul(self, other: Tensor<'c>) -> Result<Tensor<'c>> {
        self.binary(OpCode::MATMUL, other)
    }
    /// `x @ weight^T + bias` with PyTorch's `[out, in]` weight layout.
    pub fn linear(self, weight: Tensor<'c>, bias: Option<Tensor<'c>>) -> Result<Tensor<'c>> {
        let ctx = self.ctx;
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        exec1(ctx, OpCode::LINEAR, inputs, &values())
    }

    pub fn add_scalar(self, c: f64) -> Result<Tensor<'c>> {
        exec1(self.ctx, OpCode::ADD_SCALAR, vec![self], &floats(&[c]))
    }
    pub fn mul_scalar(self, c: f64) -> Result<Tensor<'c>> {
        exec1(self.ctx, OpCode::MUL_SCALAR, vec![self], &floats(&[c]))
    }
    pub fn powf(self, p: f64) -> Result<Tensor<'c>> {
        exec1(self.ctx, OpCode::POW_SCALAR, vec![self], &floats(&[p]))
    }
    pub fn clamp(self, min: f64, max: f64) -> Result<Tensor<'c>> {
        exec1(self.ctx, OpCode::CLAMP, vec![self], &floats(&[min, max]))
    }

    unary! {
        neg => NEG;
        exp => EXP;
        log => LOG;
        sqrt => SQRT;
        relu => RELU;
        /// Exact (erf) GELU, as BERT's `gelu`.
        gelu => GELU;
        silu => SILU;
        tanh => TANH;
        sigmoid => SIGMOID;
        abs => ABS;
        detach => DETACH;
        /// A new leaf with this value that requires gradients.
        require_grad => REQUIRE_GRAD;
    }

    /// GELU with the tanh approximation (`gelu_new`, T5 v1.1's `gelu_new`).
    pub fn gelu_tanh(self) -> Result<Tensor<'c>> {
        exec1(self.ctx, OpCode::GELU, vec![self], &ints(&[1]))
    }

    with_dim! {
        softmax => SOFTMAX;
        log_softmax => LOG_SOFTMAX;
        /// Sum along `dim`, keeping it with size 1.
        sum_dim => SUM;
        /// Mean along `dim`, keeping it with size 1.
        mean_dim => MEAN;
        /// Max along `dim`, keeping it with size 1.
        max_dim => MAX;
    }

    /// Sum of all elements, shape `[1]`.
    pub fn sum(self) -> Result<Tensor<'c>> {
        exec1(self.ctx, OpCode::SUM, vec![self], &values())
    }
    /// Mean of all elements, shape `[1]`.
    pub fn mean(self) -> Result<Tensor<'c>> {
        exec1(self.ctx, OpCode::MEAN, vec![self], &values())
    }

    /// Activation by name: `relu`, `gelu`, `gelu_new`, `swish`/`silu`, `tanh`, `sigmoid`, `identity`.
    pub fn activation(self, name: &str) -> Result<Tensor<'c>> {
        match name {
            "relu" => self.relu(),
            "gelu" => self.gelu(),
            "gelu_new" | "gelu_tanh" => self.gelu_tanh(),
            "swish" | "silu" => self.silu(),
            "tanh" => self.tanh(),
            "sigmoid" => self.sigmoid(),
            "identity" | "linear" => Ok(self),
            other => Err(ApiError::invalid(format!(
                "unknown activation `{other}` (expected relu, gelu, gelu_new, swish, silu, tanh, sigmoid or identity)"
            ))),
        }
    }

    pub fn layer_norm(
        self,
        weight: Option<Tensor<'c>>,
        bias: Option<Tensor<'c>>,
        eps: f64,
    ) -> Result<Tensor<'c>> {
        let ctx = self.ctx;
        let mut inputs = vec![self];
        inputs.extend(weight);
        inputs.extend(bias);
        exec1(ctx, OpCode::LAYER_NORM, inputs, &floats(&[eps]))
    }

    pub fn rms_norm(self, weight: Option<Tensor<'c>>, eps: f64) -> Result<Tensor<'c>> {
        let ctx = self.ctx;
        let mut inputs = vec![self];
        inputs.extend(weight);
        exec1(ctx, OpCode::RMS_NORM, inputs, &floats(&[eps]))
    }

    /// Shape with at most one `-1`.
    pub fn reshape(self, shape: &[i64]) -> Result<Tensor<'c>> {
        exec1(self.ctx, OpCode::RESHAPE, vec![self], &ints(shape))
    }
    pub fn permute(self, axes: &[i64]) -> Result<Tensor<'c>> {
        exec1(self.ctx, OpCode::PERMUTE, vec![self], &ints(axes))
    }
    pub fn transpose(self, a: i64, b: i64) -> Result<Tensor<'c>> {
        let rank = self.dims()? as i64;
        let norm = |d: i64| if d < 0 { d + rank } else { d };
        let mut axes: Vec<i64> = (0..rank).collect();
        axes.swap(norm(a) as usize, norm(b) as usize);
        self.permute(&axes)
    }
    pub fn unsqueeze(self, dim: i64) -> Result<Tensor<'c>> {
        let mut shape: Vec<i64> = self.shape()?.iter().map(|&d| d as i64).collect();
        let at = if dim < 0 {
            shape.len() as i64 + 1 + dim
        } else {
            dim
        } as usize;
        shape.insert(at, 1);
        self.reshape(&shape)
    }
    /// `x[.., start..end, ..]` along `dim`.
    pub fn slice(self, dim: i64, start: usize, end: usize) -> Result<Tensor<'c>> {
        exec1(
            self.ctx,
            OpCode::SLICE,
            vec![self],
            &ints(&[dim, start as i64, end as i64]),
        )
    }
    pub fn gather(self, dim: i64, index: Tensor<'c>) -> Result<Tensor<'c>> {
        exec1(self.ctx, OpCode::GATHER, vec![self, index], &ints(&[dim]))
    }
    pub fn index_select(self, dim: i64, index: Tensor<'c>) -> Result<Tensor<'c>> {
        exec1(
            self.ctx,
            OpCode::INDEX_SELECT,
            vec![self, index],
            &ints(&[dim]),
        )
    }
    pub fn expand(self, shape: &[usize]) -> Result<Tensor<'c>> {
        let s: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        exec1(self.ctx, OpCode::EXPAND, vec![self], &ints(&s))
    }

    /// Mean cross-entropy of logits `[n, c]` against int labels `[n]`.
    pub fn cross_entropy(self, labels: Tensor<'c>, label_smoothing: f64) -> Result<Tensor<'c>> {
        let v = Values {
            floats: RVec::from(vec![label_smoothing]),
            ints: RVec::from(vec![-100]),
            ..values()
        };
        exec1(self.ctx, OpCode::CROSS_ENTROPY, vec![self, labels], &v)
    }
    /// Inverted dropout in training mode; identity in eval mode.
    pub fn dropout(self, p: f64) -> Result<Tensor<'c>> {
        if p == 0.0 {
            return Ok(self);
        }
        exec1(self.ctx, OpCode::DROPOUT, vec![self], &floats(&[p]))
    }

    /// Cosine similarity along `dim` (removed). Since API 1.1.
    pub fn cosine_similarity(self, other: Tensor<'c>, dim: i64, eps: f64) -> Result<Tensor<'c>> {
        let v = Values {
            ints: RVec::from(vec![dim]),
            floats: RVec::from(vec![eps]),
            ..values()
        };
        exec1(self.ctx, OpCode::COSINE_SIMILARITY, vec![self, other], &v)
    }
    /// Multi-head attention of these queries `[b, t, h]` over keys and values `[b, s, h]`:
    /// `softmax(q kᵀ · scale) v` per head, `heads` split from `h` BERT's way; `keep` `[b, s]`
    /// (1 = visible, 0 = padding) masks keys. The host's fused kernel on the CPU (values and
    /// gradients equal to the composed ops). Since API 1.2: on an older host this fails with
    /// `UNKNOWN_OP`; compare `OpCode::ATTENTION.since_minor()` with the host's minor first.
    pub fn attention(
        self,
        k: Tensor<'c>,
        v: Tensor<'c>,
        keep: Option<Tensor<'c>>,
        heads: usize,
        scale: f64,
    ) -> Result<Tensor<'c>> {
        let v_ = Values {
            ints: RVec::from(vec![heads as i64]),
            floats: RVec::from(vec![scale]),
            ..values()
        };
        let ctx = self.ctx;
        let mut inputs = vec![self, k, v];
        inputs.extend(keep);
        exec1(ctx, OpCode::ATTENTION, inputs, &v_)
    }
    /// [`Tensor::attention`] with `bias` `[heads, t, s]` added to every batch's scaled scores
    /// (T5's relative position bias, which may be trainable: it gets the score gradient
    /// summed over the batch) and, with `causal = Some(off)`, query `i` seeing key `j` only
    /// for `j <= i + off`. Since API 1.3 (`OpCode::ATTENTION_BIAS`).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_bias(
        self,
        k: Tensor<'c>,
        v: Tensor<'c>,
        bias: Tensor<'c>,
        keep: Option<Tensor<'c>>,
        heads: usize,
        scale: f64,
        causal: Option<usize>,
    ) -> Result<Tensor<'c>> {
        let causal = causal.map_or(-1, |c| c as i64);
        let v_ = Values {
            ints: RVec::from(vec![heads as i64, causal]),
            floats: RVec::from(vec![scale]),
            ..values()
        };
        let ctx = self.ctx;
        let mut inputs = vec![self, k, v, bias];
        inputs.extend(keep);
        exec1(ctx, OpCode::ATTENTION_BIAS, inputs, &v_)
    }
    /// Mean squared error, shape `[1]`. Since API 1.1.
    pub fn mse(self, other: Tensor<'c>) -> Result<Tensor<'c>> {
        self.binary(OpCode::MSE, other)
    }

    /// Checks the tensor is not poisoned.
    pub fn ok(self) -> Result<Tensor<'c>> {
        match &self.state {
            Ok(_) => Ok(self),
            Err(e) => Err(e.clone()),
        }
    }
}

impl Drop for Tensor<'_> {
    fn drop(&mut self) {
        if let Ok(h) = self.state {
            self.ctx.release(h);
        }
    }
}

impl<'c> Clone for Tensor<'c> {
    fn clone(&self) -> Self {
        let state = self.borrowed(OpCode::DUP, &values()).and_then(|out| {
            out.tensors
                .first()
                .copied()
                .ok_or_else(|| ApiError::internal("DUP returned no tensor"))
        });
        Tensor {
            ctx: self.ctx,
            state,
        }
    }
}

impl std::fmt::Debug for Tensor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.state {
            Ok(h) => write!(
                f,
                "Tensor(#{}, shape {:?})",
                h.0,
                self.shape().unwrap_or_default()
            ),
            Err(e) => write!(f, "Tensor(poisoned: {e:?})"),
        }
    }
}

fn lift<'c>(ctx: G<'c>, r: Result<Tensor<'c>>) -> Tensor<'c> {
    r.unwrap_or_else(|e| Tensor::poisoned(ctx, e))
}

macro_rules! operator {
    ($trait:ident, $method:ident, $op:ident) => {
        impl<'c> std::ops::$trait<Tensor<'c>> for Tensor<'c> {
            type Output = Tensor<'c>;
            fn $method(self, rhs: Tensor<'c>) -> Tensor<'c> {
                let ctx = self.ctx;
                lift(ctx, self.binary(OpCode::$op, rhs))
            }
        }
        impl<'c> std::ops::$trait<&Tensor<'c>> for &Tensor<'c> {
            type Output = Tensor<'c>;
            fn $method(self, rhs: &Tensor<'c>) -> Tensor<'c> {
                lift(self.ctx, self.clone().binary(OpCode::$op, rhs.clone()))
            }
        }
        impl<'c> std::ops::$trait<&Tensor<'c>> for Tensor<'c> {
            type Output = Tensor<'c>;
            fn $method(self, rhs: &Tensor<'c>) -> Tensor<'c> {
                let ctx = self.ctx;
                lift(ctx, self.binary(OpCode::$op, rhs.clone()))
            }
        }
    };
}

operator!(Add, add, ADD);
operator!(Sub, sub, SUB);
operator!(Mul, mul, MUL);
operator!(Div, div, DIV);

impl<'c> std::ops::Mul<f64> for Tensor<'c> {
    type Output = Tensor<'c>;
    fn mul(self, c: f64) -> Tensor<'c> {
        let ctx = self.ctx;
        lift(ctx, self.mul_scalar(c))
    }
}

impl<'c> std::ops::Add<f64> for Tensor<'c> {
    type Output = Tensor<'c>;
    fn add(self, c: f64) -> Tensor<'c> {
        let ctx = self.ctx;
        lift(ctx, self.add_scalar(c))
    }
}

impl<'c> std::ops::Neg for Tensor<'c> {
    type Output = Tensor<'c>;
    fn neg(self) -> Tensor<'c> {
        let ctx = self.ctx;
        lift(ctx, Tensor::neg(self))
    }
}
