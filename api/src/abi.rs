//! The frozen ABI: handles, value bundles, and the `#[sabi_trait]` interfaces that cross the
//! library boundary. Nothing here changes within a major version (see `docs/architecture.md`);
//! growth goes through opcodes and `call(name, json)`.
#![allow(non_camel_case_types)]
use abi_stable::{
    sabi_trait,
    sabi_types::RRef,
    std_types::{RBox, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

use crate::{error::ApiError, ops::OpCode, version::ApiVersion};

/// An opaque reference to a tensor owned by the host.
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorHandle(pub u64);

/// Non-tensor arguments and results of an op.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, Default, PartialEq)]
pub struct Values {
    pub ints: RVec<i64>,
    pub floats: RVec<f64>,
    pub text: RString,
    pub data: RVec<f32>,
    pub idata: RVec<i64>,
}

#[repr(C)]
#[derive(StableAbi, Clone, Debug, Default)]
pub struct OpOutput {
    pub tensors: RVec<TensorHandle>,
    pub values: Values,
}

/// The host's compute interface, implemented by the host over burn. One `Graph` lives for one
/// forward/backward pass; handles are valid only within it.
#[sabi_trait]
pub trait Graph {
    /// The host's API version.
    fn version(&self) -> ApiVersion;

    /// Runs one op (see [`OpCode`]). Input handles are consumed unless the op borrows them.
    fn exec(
        &self,
        op: OpCode,
        inputs: RSlice<'_, TensorHandle>,
        values: &Values,
    ) -> RResult<OpOutput, ApiError>;

    /// Releases a handle (the safe `Tensor` calls this on drop).
    fn release(&self, handle: TensorHandle);

    /// Extension calls added in minor versions; an unknown name answers `UNSUPPORTED`.
    #[sabi(last_prefix_field)]
    fn call(&self, name: RStr<'_>, json: RStr<'_>) -> RResult<RString, ApiError>;
}

/// How a plugin receives the host's graph: borrowed for the duration of one call.
pub type GraphRef<'a> = Graph_TO<'a, RRef<'a, ()>>;

/// Where a module is being called: the site (as the backbone named it) and its position in the
/// module's attach plan.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct SiteCall<'a> {
    /// Full site name, e.g. `encoder.layer.3.ffn`.
    pub site: RStr<'a>,
    /// Index into the attach plan the module returned.
    pub attachment: u32,
    /// Layer index, or u32::MAX for sites outside the layer stack.
    pub layer: u32,
    pub training: bool,
}

/// A PEFT module (adapter, LoRA, prefix, hypernetwork...), implemented by a plugin.
#[sabi_trait]
pub trait PeftModuleAbi {
    /// Creates parameters for the backbone described by `backbone_json` (a [`BackboneInfo`])
    /// and returns the attach plan (JSON [`AttachPlan`]).
    ///
    /// [`BackboneInfo`]: crate::BackboneInfo
    /// [`AttachPlan`]: crate::AttachPlan
    fn attach(
        &mut self,
        graph: GraphRef<'_>,
        backbone_json: RStr<'_>,
    ) -> RResult<RString, ApiError>;

    /// Called at an attached site with the site's tensors; returns the replacement tensors.
    fn apply(
        &self,
        graph: GraphRef<'_>,
        site: &SiteCall<'_>,
        inputs: RVec<TensorHandle>,
    ) -> RResult<RVec<TensorHandle>, ApiError>;

    /// Named extension calls (`merge`, `unmerge`, `export`, ...); unknown names answer
    /// `UNSUPPORTED` so that the host falls back.
    #[sabi(last_prefix_field)]
    fn call(
        &mut self,
        graph: GraphRef<'_>,
        name: RStr<'_>,
        json: RStr<'_>,
    ) -> RResult<RString, ApiError>;
}

pub type PeftModuleBox = PeftModuleAbi_TO<'static, RBox<()>>;

/// Produces context tensors for a forward pass (task embeddings, generated parameters) from
/// the batch and, for hypernetworks, from few-shot examples. Implemented by a plugin.
#[sabi_trait]
pub trait ContextEncoderAbi {
    /// Same contract as [`PeftModuleAbi::attach`]: create parameters, describe them.
    fn attach(
        &mut self,
        graph: GraphRef<'_>,
        backbone_json: RStr<'_>,
    ) -> RResult<RString, ApiError>;

    /// Reads `inputs` (as described by `spec_json`) and stores its outputs with `SET_CONTEXT`.
    fn encode(
        &self,
        graph: GraphRef<'_>,
        inputs: RVec<TensorHandle>,
        spec_json: RStr<'_>,
    ) -> RResult<(), ApiError>;

    #[sabi(last_prefix_field)]
    fn call(
        &mut self,
        graph: GraphRef<'_>,
        name: RStr<'_>,
        json: RStr<'_>,
    ) -> RResult<RString, ApiError>;
}

pub type ContextEncoderBox = ContextEncoderAbi_TO<'static, RBox<()>>;

/// The training services a host offers a priming algorithm: sampling tasks and batches,
/// the loss of a batch under substituted parameters, optimiser steps over parameter groups,
/// evaluation. Each is a named service with JSON arguments (so the set can grow in minor
/// versions); tensors travel as handles of the graph passed alongside.
#[sabi_trait]
pub trait TrainerAbi {
    #[sabi(last_prefix_field)]
    fn service(
        &self,
        graph: GraphRef<'_>,
        name: RStr<'_>,
        json: RStr<'_>,
        inputs: RVec<TensorHandle>,
    ) -> RResult<OpOutput, ApiError>;
}

pub type TrainerRef<'a> = TrainerAbi_TO<'a, RRef<'a, ()>>;

/// An upstream training procedure (MAML, multi-task learning...), implemented by a plugin.
#[sabi_trait]
pub trait PrimingAbi {
    /// Runs the priming stage to the end and returns a JSON report.
    fn run(&mut self, graph: GraphRef<'_>, trainer: TrainerRef<'_>) -> RResult<RString, ApiError>;

    #[sabi(last_prefix_field)]
    fn call(&mut self, name: RStr<'_>, json: RStr<'_>) -> RResult<RString, ApiError>;
}

pub type PrimingBox = PrimingAbi_TO<'static, RBox<()>>;

/// A backbone written as a plugin: computes through the op set and calls sites with `SITE`.
/// (The built-in BERT, T5 and BART run natively in the host.)
#[sabi_trait]
pub trait BackboneAbi {
    /// JSON [`BackboneInfo`](crate::BackboneInfo): sizes and declared sites.
    fn describe(&self) -> RString;

    /// Creates the backbone's weights as parameters in group `backbone`.
    fn attach(&mut self, graph: GraphRef<'_>) -> RResult<(), ApiError>;

    /// (input_ids, attention_mask, ...) -> (hidden states, ...).
    fn forward(
        &self,
        graph: GraphRef<'_>,
        inputs: RVec<TensorHandle>,
    ) -> RResult<RVec<TensorHandle>, ApiError>;

    #[sabi(last_prefix_field)]
    fn call(
        &mut self,
        graph: GraphRef<'_>,
        name: RStr<'_>,
        json: RStr<'_>,
    ) -> RResult<RString, ApiError>;
}

pub type BackboneBox = BackboneAbi_TO<'static, RBox<()>>;
