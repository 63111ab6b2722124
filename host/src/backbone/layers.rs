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

/// The key mask `[b, t]` extended to `s ≥ t` keys by visible positions in front (what a
/// key/value site prepends), as [`super::additive_mask`] extends it.
pub(crate) fn prefixed_keep(keep: &[bool], b: usize, t: usize, s: usize) -> Vec<bool> {
    let pre = s.saturating_sub(t);
    let mut out = Vec::with_capacity(b * s);
    for row in keep.chunks(t.max(1)).take(b) {
        out.extend(std::iter::repeat_n(true, pre));
        out.extend_from_slice(row);
    }
    out
}

/// Splits `[batch, time, heads * dh]` into `[batch, heads, time, dh]`.
pub(crate) fn split_heads<B: AutodiffBackend>(y: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, t, hd] = y.dims();
    y.reshape([b, t, heads, hd / heads]).swap_dims(1, 2)
}

/// Exact GELU: on the CPU kernels where they apply — one pass without gradients over the
/// tensor's own buffer (it is taken, not cloned: a clone would force a copy of the largest
/// activation of every layer), one tracked op with them (burn's evaluates `erf` per element
/// through several recorded ops) — and burn's op elsewhere.
pub(crate) fn gelu<B: AutodiffBackend>(
    hooks: &Hooks<'_, '_, B>,
    x: Tensor<B, 3>,
) -> Result<Tensor<B, 3>, ApiError> {
    let no_grad = hooks.graph.no_grad;
    if no_grad && nn::enabled::<B>() {
        let (shape, device) = (x.dims(), x.device());
        let mut v = nn::to_vec(x)?;
        nn::gelu(&mut v);
        return Ok(nn::from_vec(v, shape, &device));
    }
    if !no_grad && nn::tracked::enabled::<B>() {
        return nn::tracked::gelu(x);
    }
    Ok(match no_grad {
        true => Tensor::from_inner(activation::gelu(x.inner())),
        false => activation::gelu(x),
    })
}

/// Activations by HF name (`ACT2FN`); exact GELU on the CPU kernel where it applies.
pub(crate) fn activation_fn<B: AutodiffBackend>(
    hooks: &Hooks<'_, '_, B>,
    name: &str,
    x: Tensor<B, 3>,
) -> Result<Tensor<B, 3>, ApiError> {
    if name == "gelu" {
        return gelu(hooks, x);
    }
    Ok(match name {
        "relu" => activation::relu(x),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => activation::gelu_approximate(x),
        "silu" | "swish" => activation::silu(x),
        "tanh" => x.tanh(),
        _ => activation::gelu(x),
    })
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
