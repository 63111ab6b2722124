//! Building blocks the architectures share: dropout, masks, head splitting, activations by HF
//! name, and the checks around them.
use burn::tensor::{activation, backend::AutodiffBackend, Tensor};
use peft_api::ApiError;

use super::Hooks;

/// Inverted dropout, in training mode only.
pub(crate) fn dropout<B: AutodiffBackend, const D: usize>(
    hooks: &Hooks<'_, '_, B>,
    x: Tensor<B, D>,
    p: f64,
) -> Tensor<B, D> {
    if !hooks.training() || p == 0.0 {
        return x;
    }
    let mask = Tensor::<B, D>::random(
        x.shape(),
        burn::tensor::Distribution::Bernoulli(1.0 - p),
        &x.device(),
    );
    x * mask / (1.0 - p)
}

/// Splits `[batch, time, heads * dh]` into `[batch, heads, time, dh]`.
pub(crate) fn split_heads<B: AutodiffBackend>(y: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, t, hd] = y.dims();
    y.reshape([b, t, heads, hd / heads]).swap_dims(1, 2)
}

/// Activations by HF name (`ACT2FN`).
pub(crate) fn activation_fn<B: AutodiffBackend, const D: usize>(
    name: &str,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    match name {
        "relu" => activation::relu(x),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => activation::gelu_approximate(x),
        "silu" | "swish" => activation::silu(x),
        "tanh" => x.tanh(),
        _ => activation::gelu(x),
    }
}

pub(crate) fn check_activation(name: &str) -> Result<(), ApiError> {
    if matches!(
        name,
        "relu"
            | "gelu"
            | "gelu_new"
            | "gelu_pytorch_tanh"
            | "gelu_fast"
            | "silu"
            | "swish"
            | "tanh"
    ) {
        Ok(())
    } else {
        Err(ApiError::config(format!(
            "unsupported activation `{name}` (supported: relu, gelu, gelu_new, gelu_pytorch_tanh, silu, tanh)"
        )))
    }
}

/// Subtracts the key count the projections produced from what the key/value site returned.
pub(crate) fn prefix_len(site: &str, got: usize, raw: usize) -> Result<usize, ApiError> {
    got.checked_sub(raw).ok_or_else(|| {
        ApiError::shape(format!(
            "site `{site}`: modules returned {got} key positions, fewer than the {raw} given"
        ))
    })
}
