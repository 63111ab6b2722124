//! Building blocks the architectures share: dropout, masks, head splitting, activations by HF
//! name, and the checks around them.
use burn::tensor::{activation, backend::AutodiffBackend, Tensor};
use peft_api::ApiError;

use super::Hooks;
use crate::nn;

/// Inverted dropout, in training mode only: the CPU kernel (one tracked operation, its mask
/// drawn from the backend's seeded generator) where it applies, else burn's Bernoulli mask.
pub(crate) fn dropout<B: AutodiffBackend, const D: usize>(
    hooks: &Hooks<'_, '_, B>,
    x: Tensor<B, D>,
    p: f64,
) -> Result<Tensor<B, D>, ApiError> {
    if !hooks.training() || p == 0.0 {
        return Ok(x);
    }
    if nn::tracked::enabled::<B>() {
        let seed = nn::draw_seed::<B>(&x.device());
        return nn::tracked::dropout(x, p, seed);
    }
    if !(0.0..1.0).contains(&p) {
        return Err(ApiError::config(format!("dropout {p} is not in [0, 1)")));
    }
    let mask = Tensor::<B, D>::random(
        x.shape(),
        burn::tensor::Distribution::Bernoulli(1.0 - p),
        &x.device(),
    );
    Ok(x * mask / (1.0 - p))
}

/// Splits `[batch, time, heads * dh]` into `[batch, heads, time, dh]`.
pub(crate) fn split_heads<B: AutodiffBackend>(y: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, t, hd] = y.dims();
    y.reshape([b, t, heads, hd / heads]).swap_dims(1, 2)
}

/// Activations by HF name (`ACT2FN`); exact GELU on the CPU kernel where it applies (burn's
/// evaluates `erf` per element through several recorded ops).
pub(crate) fn activation_fn<B: AutodiffBackend>(
    hooks: &Hooks<'_, '_, B>,
    name: &str,
    x: Tensor<B, 3>,
) -> Tensor<B, 3> {
    if name == "gelu" {
        if hooks.graph.no_grad && nn::enabled::<B>() {
            let (shape, device) = (x.dims(), x.device());
            if let Ok(mut v) = nn::to_vec(x.clone()) {
                nn::gelu(&mut v);
                return nn::from_vec(v, shape, &device);
            }
        } else if !hooks.graph.no_grad && nn::tracked::enabled::<B>() {
            if let Ok(y) = nn::tracked::gelu(x.clone()) {
                return y;
            }
        }
    }
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
