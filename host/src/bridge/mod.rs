//! The burn bridge: where the op API ends and burn begins. [`HostGraph`] implements the
//! `peft_api::Graph` interface over a handle table of burn tensors, under autodiff, and
//! [`ops`] dispatches each opcode; the maths is in [`crate::nn`].
pub mod ops;
/// Rank-erased tensors live in `nn` (the parameter store uses them without the bridge).
pub use crate::nn::value;

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RResult, RSlice, RStr, RString},
};
use burn::tensor::backend::AutodiffBackend;
use peft_api::{
    error::guard, ApiError, ApiVersion, ErrorKind, Graph, GraphRef, Graph_TO, OpCode, OpOutput,
    TensorHandle, Values, API_VERSION,
};

use crate::params::ParamStore;
pub use value::{FloatPrim, IntPrim, Value};

/// Calls the modules attached at a site on behalf of the `SITE` op (backbones written as
/// plugins); native backbones call the same dispatcher directly.
pub trait SiteDispatch<B: AutodiffBackend> {
    fn dispatch(
        &self,
        graph: &HostGraph<'_, B>,
        site: &str,
        inputs: Vec<Value<B>>,
    ) -> Result<Vec<Value<B>>, ApiError>;
}

/// State of one forward/backward pass, shared by every op of the pass.
pub struct HostGraph<'p, B: AutodiffBackend> {
    table: RefCell<HashMap<u64, Value<B>>>,
    next: Cell<u64>,
    pub params: &'p RefCell<ParamStore<B>>,
    /// Substituted parameter values (MAML inner loops), by full name.
    pub overrides: RefCell<HashMap<String, FloatPrim<B>>>,
    pub context: RefCell<HashMap<String, Value<B>>>,
    /// Auxiliary loss terms added by modules, with their weights.
    pub aux_losses: RefCell<Vec<(f64, FloatPrim<B>)>>,
    pub training: bool,
    /// Nothing in this pass needs a gradient: parameters are read detached, and the backbones
    /// run softmax, GELU and layer norm on the inner backend, where burn's fused kernels apply.
    pub no_grad: bool,
    /// The module instance currently called; its parameter names are prefixed with it.
    pub namespace: RefCell<String>,
    pub sites: Cell<Option<&'p dyn SiteDispatch<B>>>,
    /// The API version plugins are told (this host's unless [`HostGraph::emulating`]).
    api: ApiVersion,
}

impl<'p, B: AutodiffBackend> HostGraph<'p, B> {
    pub fn new(params: &'p RefCell<ParamStore<B>>, training: bool) -> Self {
        HostGraph {
            table: RefCell::new(HashMap::new()),
            next: Cell::new(1),
            params,
            overrides: RefCell::new(HashMap::new()),
            context: RefCell::new(HashMap::new()),
            aux_losses: RefCell::new(Vec::new()),
            training,
            no_grad: false,
            namespace: RefCell::new(String::new()),
            sites: Cell::new(None),
            api: API_VERSION,
        }
    }

    /// This pass as a host of the older `version` (same major) would run it: plugins are told
    /// that version and ops it lacks answer `UNKNOWN_OP`, so a plugin's fallback for older
    /// hosts can be checked against its fast path in one build.
    pub fn emulating(self, version: ApiVersion) -> Result<Self, ApiError> {
        if version.major != API_VERSION.major || version > API_VERSION {
            return Err(ApiError::invalid(format!(
                "cannot emulate peft-api {version} on a {API_VERSION} host (an older minor of the same major only)"
            )));
        }
        Ok(HostGraph {
            api: version,
            ..self
        })
    }

    /// A pass in eval mode in which nothing needs a gradient (evaluation, inference).
    pub fn inference(params: &'p RefCell<ParamStore<B>>) -> Self {
        HostGraph {
            no_grad: true,
            ..Self::new(params, false)
        }
    }

    /// `loss` plus the auxiliary terms modules added in this pass (`ADD_LOSS`), each times
    /// its weight; the terms are taken, so a second call adds nothing.
    pub fn with_aux_losses(&self, loss: burn::tensor::Tensor<B, 1>) -> burn::tensor::Tensor<B, 1> {
        self.aux_losses
            .borrow_mut()
            .drain(..)
            .fold(loss, |l, (w, aux)| l + value::ft::<B, 1>(aux) * w)
    }

    pub fn device(&self) -> B::Device {
        self.params.borrow().device.clone()
    }

    /// The ABI object plugins receive, borrowing this graph.
    pub fn as_abi(&self) -> GraphRef<'_> {
        Graph_TO::from_ptr(self, TD_Opaque)
    }

    /// Puts a tensor in the table and returns its handle.
    pub fn insert(&self, v: Value<B>) -> TensorHandle {
        let id = self.next.get();
        self.next.set(id + 1);
        self.table.borrow_mut().insert(id, v);
        TensorHandle(id)
    }

    /// Takes a tensor out of the table.
    pub fn take(&self, h: TensorHandle) -> Result<Value<B>, ApiError> {
        self.table.borrow_mut().remove(&h.0).ok_or_else(|| stale(h))
    }

    pub fn peek(&self, h: TensorHandle) -> Result<Value<B>, ApiError> {
        self.table
            .borrow()
            .get(&h.0)
            .cloned()
            .ok_or_else(|| stale(h))
    }

    /// Number of live handles (a leak check for tests).
    pub fn live_handles(&self) -> usize {
        self.table.borrow().len()
    }

    /// Full parameter name for a name a module used.
    pub fn qualify(&self, local: &str) -> String {
        if let Some(key) = local.strip_prefix("backbone:") {
            return key.to_string();
        }
        let ns = self.namespace.borrow();
        if ns.is_empty() {
            local.to_string()
        } else {
            format!("{ns}.{local}")
        }
    }

    /// Runs `f` with the namespace of module instance `name`.
    pub fn with_namespace<T>(&self, name: &str, f: impl FnOnce() -> T) -> T {
        let old = std::mem::replace(&mut *self.namespace.borrow_mut(), name.to_string());
        let out = f();
        *self.namespace.borrow_mut() = old;
        out
    }

    /// A parameter's current value: its substitute if one is set, else the stored tensor.
    pub fn param_value(&self, full: &str) -> Result<FloatPrim<B>, ApiError> {
        let v = match self.overrides.borrow().get(full) {
            Some(v) => v.clone(),
            None => self.params.borrow().value(full)?,
        };
        Ok(if self.no_grad { B::float_detach(v) } else { v })
    }

    fn exec_values(
        &self,
        op: OpCode,
        inputs: &[TensorHandle],
        values: &Values,
    ) -> Result<OpOutput, ApiError> {
        let _t = crate::nn::timing::op_span(op.name());
        if op.borrows_inputs() {
            let vals = inputs
                .iter()
                .map(|&h| self.peek(h))
                .collect::<Result<Vec<_>, _>>()?;
            return ops::exec_borrowing(self, op, vals, values);
        }
        // Consume the inputs; on failure they are gone, as the caller gave them up.
        let vals = inputs
            .iter()
            .map(|&h| self.take(h))
            .collect::<Result<Vec<_>, _>>()?;
        let out = ops::exec(self, op, vals, values)?;
        Ok(OpOutput {
            tensors: out.0.into_iter().map(|v| self.insert(v)).collect(),
            values: out.1,
        })
    }
}

fn stale(h: TensorHandle) -> ApiError {
    ApiError::invalid(format!(
        "tensor handle #{} is not live (released, moved into an op, or from another pass)",
        h.0
    ))
}

impl<B: AutodiffBackend> Graph for HostGraph<'_, B> {
    fn version(&self) -> ApiVersion {
        self.api
    }

    fn exec(
        &self,
        op: OpCode,
        inputs: RSlice<'_, TensorHandle>,
        values: &Values,
    ) -> RResult<OpOutput, ApiError> {
        if op.name().is_none() || op.since_minor().is_some_and(|m| m > self.api.minor) {
            // The inputs were moved into the op: released here as a failing op's are.
            for &h in inputs.iter() {
                self.release(h);
            }
            return RResult::RErr(ApiError::new(
                ErrorKind::UNKNOWN_OP,
                format!(
                    "op #{} is not known to this host (peft-api {}); the plugin needs a newer host",
                    op.0, self.api
                ),
            ));
        }
        guard(|| self.exec_values(op, inputs.as_slice(), values)).into()
    }

    fn release(&self, handle: TensorHandle) {
        self.table.borrow_mut().remove(&handle.0);
    }

    fn call(&self, name: RStr<'_>, _json: RStr<'_>) -> RResult<RString, ApiError> {
        match name.as_str() {
            "host.info" => RResult::ROk(RString::from(
                serde_json::json!({
                    "api_version": API_VERSION.to_string(),
                    "host_version": env!("CARGO_PKG_VERSION"),
                    "backend": std::any::type_name::<B>(),
                })
                .to_string(),
            )),
            other => RResult::RErr(ApiError::unsupported(format!("host call `{other}`"))),
        }
    }
}
