//! Functional neural-network ops on burn tensors (what the backbones and the opcode dispatch
//! call), and the CPU kernels behind them, one file per op. The kernels work on raw `f32`
//! buffers for the shapes where burn's generic ops lose most (attention's head split and
//! small batched products, exact GELU's per-element `erf`, layer norm's seven recorded ops),
//! apply only on burn's CPU backend ([`enabled`]), and multiply through the one checked GEMM
//! in [`gemm`]. Each is tested against burn's generic path (values and gradients) in
//! `nn/tests/`, and end to end by the parity tests.
pub mod adamw;
pub mod amx;
pub mod attention;
pub(crate) mod attention_dense;
mod attention_tracked;
mod autodiff;
pub mod bf16;
pub(crate) mod cat;
pub mod cpu;
pub mod cross_entropy;
pub mod dpbf16;
pub mod dropout;
pub(crate) mod flash;
pub mod gelu;
pub mod gemm;
mod kv_site;
pub mod layer_norm;
pub mod linear;
pub mod low_rank;
mod math;
pub mod matmul;
pub mod rms_norm;
mod round;
pub mod softmax;
pub mod timing;
pub mod value;

pub use attention::{attention, attention_with, nograd_split, KvLayout, ScoreTerms};
pub use cpu::{draw_seed, enabled, from_vec, generic_ops, keep_mask, to_vec};
pub use cross_entropy::cross_entropy;
pub use gelu::gelu;
pub use layer_norm::{layer_norm, layer_norm_in, rms_norm};
pub use linear::linear;
pub use softmax::softmax;

/// The kernels as tracked operations of burn's CPU autodiff backend, each with its own
/// backward; an error on another backend (check [`tracked::enabled`] first).
pub mod tracked {
    pub use super::attention_tracked::tracked as attention;
    pub use super::attention_tracked::tracked_biased as attention_biased;
    pub use super::attention_tracked::tracked_split as attention_split;
    pub use super::attention_tracked::tracked_split_with as attention_split_with;
    pub use super::autodiff::enabled;
    pub use super::autodiff::{contiguous_tensor as contiguous, tracks_grad};
    pub use super::cat::tracked as cat;
    pub use super::dropout::tracked as dropout;
    pub use super::gelu::tracked as gelu;
    pub use super::kv_site::tracked as kv_site;
    pub use super::layer_norm::tracked as layer_norm;
    pub use super::linear::tracked as linear;
    pub use super::rms_norm::tracked as rms_norm;
}

#[cfg(test)]
#[path = "tests/support.rs"]
pub(crate) mod test_support;

#[cfg(test)]
#[path = "tests/math.rs"]
mod math_tests;

#[cfg(test)]
#[path = "tests/gemm.rs"]
mod gemm_tests;
