//! Rank-erased tensors: burn 0.21 has no dynamic-rank tensor, so the host stores backend
//! primitives and rebuilds `Tensor<B, D>` by matching the rank.
use burn::tensor::{backend::Backend, Int, Tensor, TensorMetadata, TensorPrimitive};

pub type FloatPrim<B> = burn::tensor::ops::FloatTensor<B>;
pub type IntPrim<B> = burn::tensor::ops::IntTensor<B>;

/// A tensor held in a handle table, context or parameter store.
pub enum Value<B: Backend> {
    Float(FloatPrim<B>),
    Int(IntPrim<B>),
}

impl<B: Backend> Clone for Value<B> {
    fn clone(&self) -> Self {
        match self {
            Value::Float(p) => Value::Float(p.clone()),
            Value::Int(p) => Value::Int(p.clone()),
        }
    }
}

impl<B: Backend> Value<B> {
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Value::Float(p) => p.shape().to_vec(),
            Value::Int(p) => p.shape().to_vec(),
        }
    }
    pub fn rank(&self) -> usize {
        self.shape().len()
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Float(_) => "float",
            Value::Int(_) => "int",
        }
    }
}

pub fn ft<B: Backend, const D: usize>(p: FloatPrim<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

pub fn fp<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatPrim<B> {
    t.into_primitive().tensor()
}

pub fn it<B: Backend, const D: usize>(p: IntPrim<B>) -> Tensor<B, D, Int> {
    Tensor::from_primitive(p)
}

pub fn ip<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> IntPrim<B> {
    t.into_primitive()
}

/// Runs `$body` with `$D` bound to the rank `$r` as a const generic (ranks 1 to 6).
#[macro_export]
macro_rules! by_rank {
    ($r:expr, |$D:ident| $body:expr) => {{
        match $r {
            1 => {
                const $D: usize = 1;
                $body
            }
            2 => {
                const $D: usize = 2;
                $body
            }
            3 => {
                const $D: usize = 3;
                $body
            }
            4 => {
                const $D: usize = 4;
                $body
            }
            5 => {
                const $D: usize = 5;
                $body
            }
            6 => {
                const $D: usize = 6;
                $body
            }
            r => Err(peft_api::ApiError::shape(format!(
                "tensors of rank {r} are not supported (1 to 6)"
            ))),
        }
    }};
}
