#![allow(non_local_definitions, non_camel_case_types)]
//! `peft-api`: the stable ABI between the peft-host and its plugins.
//!
//! The host owns every tensor. Plugins hold opaque [`TensorHandle`]s and compute by asking the
//! host to run ops from a versioned op set ([`ops`]) through the [`Graph`] interface. The ABI
//! structures (vtables, root module) are frozen for the whole major version; growth happens as
//! data: new opcodes, and named extension calls (`call(name, json)`) whose absence an older
//! plugin or host reports as [`ErrorKind::UNSUPPORTED`] so that the other side can fall back.
//! See `docs/architecture.md` for the versioning rules and how each method maps onto this API.
//!
//! Plugin authors use the safe layer: [`Tensor`], [`Ctx`], the [`Module`] / [`Priming`] /
//! [`ContextEncoderImpl`] traits and [`export_plugin!`]; a module method is its config and its
//! maths with the SDK in [`sdk`] ([`module_plugin!`]).

pub mod abi;
pub mod blocks;
pub mod error;
pub mod info;
pub mod ops;
pub mod plugin;
pub mod sdk;
pub mod tensor;
pub mod version;

pub use abi::*;
pub use error::{ApiError, ErrorKind, Result};
pub use info::*;
pub use ops::OpCode;
pub use plugin::*;
pub use tensor::{Ctx, Init, Tensor};
pub use version::{ApiVersion, API_VERSION};

#[doc(hidden)]
pub mod __private {
    pub use abi_stable;
    pub use inventory;
    pub use serde_json;
}
