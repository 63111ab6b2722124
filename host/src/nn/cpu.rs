//! When the CPU kernels apply, and moving values between burn tensors and the raw `f32`
//! buffers they read and write.
use std::any::TypeId;

use burn::tensor::{backend::AutodiffBackend, Tensor, TensorData};
use peft_api::ApiError;

/// Whether `B` computes on burn's CPU backend, where these kernels apply, and they are not
/// turned off with `PEFT_CPU_KERNELS=0` (to compare against burn's generic ops).
pub fn enabled<B: AutodiffBackend>() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var("PEFT_CPU_KERNELS").is_ok_and(|v| v == "0"));
    !off && !GENERIC.get() && TypeId::of::<B::InnerBackend>() == TypeId::of::<burn::backend::Flex>()
}

/// Whether an optional CPU path is on in this process: `probe` (a CPU feature check) says the
/// CPU can, and the environment variable `var` is not `0`; logged once at debug level. The
/// callers keep the answer in a `OnceLock` (the probe may make a system call).
pub(crate) fn optional_path(var: &str, what: &str, probe: impl FnOnce() -> bool) -> bool {
    if std::env::var(var).is_ok_and(|v| v == "0") {
        return false;
    }
    let on = probe();
    tracing::debug!(on, "{what}");
    on
}

thread_local! {
    static GENERIC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the kernels off on this thread (burn's generic ops, as with
/// `PEFT_CPU_KERNELS=0`): what tests compare the kernel paths against end to end.
pub fn generic_ops<R>(f: impl FnOnce() -> R) -> R {
    let before = GENERIC.replace(true);
    let out = f();
    GENERIC.set(before);
    out
}

/// A tensor's values, row-major.
pub fn to_vec<B: AutodiffBackend, const D: usize>(x: Tensor<B, D>) -> Result<Vec<f32>, ApiError> {
    x.inner()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| ApiError::internal(format!("tensor values as f32: {e:?}")))
}

/// A constant (untracked) tensor from row-major values.
pub fn from_vec<B: AutodiffBackend, const D: usize>(
    v: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_inner(Tensor::from_data(TensorData::new(v, shape), device))
}

/// Which keys attention may see: the 0/1 padding mask `[batch, time]` as booleans.
pub fn keep_mask<B: AutodiffBackend>(
    mask: &Tensor<B, 2, burn::tensor::Int>,
) -> Result<Vec<bool>, ApiError> {
    Ok(mask
        .clone()
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .map_err(|e| ApiError::internal(format!("attention mask: {e:?}")))?
        .into_iter()
        .map(|m| m != 0)
        .collect())
}

/// A seed drawn from the backend's generator, so kernel dropout follows `B::seed` (the same
/// seed, the same masks; a resumed run draws what an uninterrupted one does).
pub fn draw_seed<B: AutodiffBackend>(device: &B::Device) -> u64 {
    let u = Tensor::<B::InnerBackend, 1>::random(
        [2],
        burn::tensor::Distribution::Uniform(0.0, 1.0),
        device,
    )
    .into_data()
    .convert::<f32>()
    .into_vec::<f32>()
    .unwrap_or_default();
    // 24 random bits from each draw.
    u.iter()
        .fold(0u64, |acc, x| (acc << 24) | (x * 16_777_216.0) as u64)
}
