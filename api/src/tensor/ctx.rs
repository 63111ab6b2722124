//! [`Ctx`]'s methods: parameters, context values, constants and the ops that take no tensor
//! `self` (cat, stack...), each a checked call into the host's graph.
use abi_stable::std_types::{RSlice, RStr};

use super::*;

impl<'a> Ctx<'a> {
    pub fn new(graph: GraphRef<'a>) -> Self {
        Ctx { graph }
    }

    pub fn graph(&self) -> &GraphRef<'a> {
        &self.graph
    }

    /// Runs an op on handles; consumes them unless the op borrows.
    pub fn exec_raw(
        &self,
        op: OpCode,
        inputs: &[TensorHandle],
        values: &Values,
    ) -> Result<OpOutput> {
        self.graph
            .exec(op, RSlice::from_slice(inputs), values)
            .into_result()
            .map_err(|e| {
                if e.kind == ErrorKind::UNKNOWN_OP {
                    e
                } else {
                    e.context(format_args!("op {op:?}"))
                }
            })
    }

    /// Runs an op on tensors; the inputs are consumed.
    pub fn exec<'c>(
        &'c self,
        op: OpCode,
        inputs: Vec<Tensor<'c>>,
        values: &Values,
    ) -> Result<Vec<Tensor<'c>>> {
        exec(self, op, inputs, values)
    }

    fn exec1<'c>(
        &'c self,
        op: OpCode,
        inputs: Vec<Tensor<'c>>,
        values: &Values,
    ) -> Result<Tensor<'c>> {
        exec1(self, op, inputs, values)
    }

    /// Extension call on the host (`UNSUPPORTED` when the host is older).
    pub fn call(&self, name: &str, json: &str) -> Result<String> {
        self.graph
            .call(RStr::from(name), RStr::from(json))
            .into_result()
            .map(|s| s.into_string())
    }

    /// Takes ownership of a raw handle.
    pub fn wrap(&self, handle: TensorHandle) -> Tensor<'_> {
        Tensor {
            ctx: self as &dyn Exec,
            state: Ok(handle),
        }
    }

    pub fn wrap_all(&self, handles: RVec<TensorHandle>) -> Vec<Tensor<'_>> {
        handles.into_iter().map(|h| self.wrap(h)).collect()
    }

    /// Creates a parameter of this module in `group`.
    pub fn create_param(
        &self,
        name: &str,
        shape: &[usize],
        group: &str,
        init: Init,
    ) -> Result<Tensor<'_>> {
        let spec = ParamSpec {
            name: name.to_string(),
            shape: shape.to_vec(),
            group: group.to_string(),
            init,
        };
        let json = serde_json::to_string(&spec).map_err(|e| ApiError::internal(e.to_string()))?;
        self.exec1(OpCode::PARAM_CREATE, vec![], &text(&json))
            .map_err(|e| e.context(format_args!("creating parameter `{name}`")))
    }

    /// This module's parameter `name` (or its substitute in a MAML inner loop);
    /// `backbone:<HF key>` reads a backbone weight.
    pub fn param(&self, name: &str) -> Result<Tensor<'_>> {
        self.exec1(OpCode::PARAM, vec![], &text(name))
    }

    /// Overwrites a parameter outside the autodiff graph (merge/unmerge).
    pub fn assign_param<'c>(&'c self, name: &str, value: Tensor<'c>) -> Result<()> {
        self.exec(OpCode::ASSIGN_PARAM, vec![value], &text(name))
            .map(|_| ())
    }

    pub fn context(&self, name: &str) -> Result<Tensor<'_>> {
        self.exec1(OpCode::CONTEXT, vec![], &text(name))
    }

    pub fn set_context<'c>(&'c self, name: &str, value: Tensor<'c>) -> Result<()> {
        self.exec(OpCode::SET_CONTEXT, vec![value], &text(name))
            .map(|_| ())
    }

    /// Adds `weight * loss` to the training objective.
    pub fn add_loss<'c>(&'c self, loss: Tensor<'c>, weight: f64) -> Result<()> {
        self.exec(OpCode::ADD_LOSS, vec![loss], &floats(&[weight]))
            .map(|_| ())
    }

    pub fn is_training(&self) -> Result<bool> {
        Ok(self
            .exec_raw(OpCode::IS_TRAINING, &[], &values())?
            .values
            .ints
            .first()
            == Some(&1))
    }

    /// Gradients of `loss` with respect to `wrt`, detached.
    pub fn grad<'c>(&'c self, loss: Tensor<'c>, wrt: Vec<Tensor<'c>>) -> Result<Vec<Tensor<'c>>> {
        let mut inputs = vec![loss];
        inputs.extend(wrt);
        self.exec(OpCode::GRAD, inputs, &values())
    }

    /// Calls the modules attached at `site` (for backbones written as plugins).
    pub fn site<'c>(&'c self, site: &str, inputs: Vec<Tensor<'c>>) -> Result<Vec<Tensor<'c>>> {
        self.exec(OpCode::SITE, inputs, &text(site))
    }

    pub fn from_data(&self, shape: &[usize], data: Vec<f32>) -> Result<Tensor<'_>> {
        let v = Values {
            ints: shape.iter().map(|&d| d as i64).collect(),
            data: RVec::from(data),
            ..values()
        };
        self.exec1(OpCode::FROM_DATA, vec![], &v)
    }

    pub fn from_ints(&self, shape: &[usize], data: Vec<i64>) -> Result<Tensor<'_>> {
        let v = Values {
            ints: shape.iter().map(|&d| d as i64).collect(),
            idata: RVec::from(data),
            ..values()
        };
        self.exec1(OpCode::FROM_INTS, vec![], &v)
    }

    pub fn full(&self, shape: &[usize], value: f64) -> Result<Tensor<'_>> {
        let v = Values {
            ints: shape.iter().map(|&d| d as i64).collect(),
            floats: RVec::from(vec![value]),
            ..values()
        };
        self.exec1(OpCode::FULL, vec![], &v)
    }

    pub fn zeros(&self, shape: &[usize]) -> Result<Tensor<'_>> {
        self.full(shape, 0.0)
    }

    pub fn cat<'c>(&'c self, tensors: Vec<Tensor<'c>>, dim: i64) -> Result<Tensor<'c>> {
        self.exec1(OpCode::CAT, tensors, &ints(&[dim]))
    }
}
