//! Building blocks shared by adapter-style plugins: config vocabulary (which stack, which
//! activation), choosing sublayer sites, and the bottleneck `W_up act(W_down x)`. Plugin-side
//! code compiled into each plugin — not part of the ABI, so it may grow freely.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ApiError, BackboneInfo, Ctx, Init, Result, SiteInfo, SiteKind, Tensor};

/// Which stack of an encoder-decoder model a module adapts.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Stack {
    Encoder,
    Decoder,
    #[default]
    Both,
}

impl Stack {
    pub fn includes(self, stack: &str) -> bool {
        matches!(
            (self, stack),
            (Stack::Both, _) | (Stack::Encoder, "encoder") | (Stack::Decoder, "decoder")
        )
    }
}

/// The non-linearity inside a bottleneck.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    Relu,
    Gelu,
    Swish,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::Swish => "swish",
        }
    }
}

/// Attention (self and cross) and/or FFN sublayer sites, in the given layers (all when `None`)
/// and stack.
pub fn sublayer_sites<'a>(
    backbone: &'a BackboneInfo,
    attention: bool,
    ffn: bool,
    layers: &'a Option<Vec<usize>>,
    stack: Stack,
) -> impl Iterator<Item = &'a SiteInfo> + 'a {
    backbone
        .sites_of_kind(SiteKind::Sublayer)
        .filter(move |site| {
            let role = match site.role.as_str() {
                "attention" | "cross_attention" => attention,
                "ffn" => ffn,
                _ => false,
            };
            let layer = match (layers, site.layer) {
                (Some(layers), Some(l)) => layers.contains(&l),
                _ => true,
            };
            role && layer && stack.includes(&site.stack)
        })
}

/// A bottleneck `W_up act(W_down x + b_down) + b_up` whose parameters are `<prefix>.down.*` and
/// `<prefix>.up.*`. `W_down` starts N(0, `init_std`); `W_up` N(0, `up_init_std`), i.e. zero by
/// default, so that an adapter built on it starts as the identity. Parameters:
/// `d_in b + b + b d_out + d_out`.
pub struct Bottleneck {
    pub prefix: String,
}

impl Bottleneck {
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        ctx: &Ctx<'_>,
        prefix: &str,
        d_in: usize,
        b: usize,
        d_out: usize,
        group: &str,
        init_std: f64,
        up_init_std: f64,
    ) -> Result<Self> {
        let normal = |std: f64| {
            if std == 0.0 {
                Init::Zeros
            } else {
                Init::Normal { mean: 0.0, std }
            }
        };
        ctx.create_param(
            &format!("{prefix}.down.weight"),
            &[b, d_in],
            group,
            normal(init_std),
        )?;
        ctx.create_param(&format!("{prefix}.down.bias"), &[b], group, Init::Zeros)?;
        ctx.create_param(
            &format!("{prefix}.up.weight"),
            &[d_out, b],
            group,
            normal(up_init_std),
        )?;
        ctx.create_param(&format!("{prefix}.up.bias"), &[d_out], group, Init::Zeros)?;
        Ok(Bottleneck {
            prefix: prefix.to_string(),
        })
    }

    pub fn params(d_in: usize, b: usize, d_out: usize) -> usize {
        d_in * b + b + b * d_out + d_out
    }

    /// `W_up act(W_down x)`: the adapter's delta, without the residual.
    pub fn forward<'c>(
        &self,
        ctx: &'c Ctx<'_>,
        x: Tensor<'c>,
        activation: Activation,
    ) -> Result<Tensor<'c>> {
        let p = &self.prefix;
        x.linear(
            ctx.param(&format!("{p}.down.weight"))?,
            Some(ctx.param(&format!("{p}.down.bias"))?),
        )?
        .activation(activation.name())?
        .linear(
            ctx.param(&format!("{p}.up.weight"))?,
            Some(ctx.param(&format!("{p}.up.bias"))?),
        )
    }
}

/// Parses a plugin's config section; `null` means every default. Errors name the plugin.
pub fn parse_config<T: serde::de::DeserializeOwned>(
    plugin: &str,
    v: &serde_json::Value,
) -> Result<T> {
    let v = if v.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        v.clone()
    };
    serde_json::from_value(v).map_err(|e| ApiError::config(format!("{plugin}: {e}")))
}

/// HF's `T5Attention._relative_position_bucket` for `relative_position = key - query`,
/// with its float32 arithmetic.
pub fn t5_relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut nb = num_buckets as i64;
    let mut bucket = 0i64;
    let mut n = relative_position;
    if bidirectional {
        nb /= 2;
        if n > 0 {
            bucket += nb;
        }
        n = n.abs();
    } else {
        n = -n.min(0);
    }
    let max_exact = nb / 2;
    if n < max_exact {
        return (bucket + n) as usize;
    }
    let log_ratio = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    let large = (n as f32 / max_exact as f32).ln() / log_ratio * (nb - max_exact) as f32;
    let large = (max_exact + large as i64).min(nb - 1);
    (bucket + large) as usize
}
