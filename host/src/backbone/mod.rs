//! Backbones: frozen pretrained transformers, one file per architecture, HF key names kept so
//! weights load without remapping. Each declares hook sites ([`peft_api::SiteInfo`]) and calls
//! [`Hooks`] there; that is the only coupling between backbones and PEFT methods.
//!
//! An architecture file holds its config, its weights as an [`arch::Architecture`]
//! description and its forward pass; loading and random init are generic ([`arch`]), the
//! shared layers are in [`layers`], encoder-decoder decoding in [`seq2seq`]. A new one is
//! that file plus its line in [`AnyBackbone`]'s list below.
pub mod arch;
pub(crate) mod attend;
pub mod bart;
pub mod bert;
pub mod layers;
pub mod precision;
pub mod seq2seq;
pub mod t5;
pub mod weights;

use std::collections::HashMap;

use burn::tensor::{backend::AutodiffBackend, Int, Tensor};
use peft_api::{ApiError, BackboneInfo};

use crate::bridge::{
    value::{fp, ft},
    HostGraph, Value,
};
use crate::nn;

/// Token ids and masks of a batch, `[batch, time]`.
#[derive(Clone, Debug)]
pub struct TextBatch<B: AutodiffBackend> {
    pub input_ids: Tensor<B, 2, Int>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor<B, 2, Int>,
    pub token_type_ids: Option<Tensor<B, 2, Int>>,
}

/// A backbone implemented natively in the host.
pub trait Backbone<B: AutodiffBackend> {
    fn info(&self) -> &BackboneInfo;

    /// Encodes a batch; returns the last hidden state `[batch, time, hidden]`.
    fn encode(
        &self,
        hooks: &Hooks<'_, '_, B>,
        batch: &TextBatch<B>,
    ) -> Result<Tensor<B, 3>, ApiError>;
}

/// What a backbone calls at its sites: the modules attached there, in config order.
pub trait SiteModules<B: AutodiffBackend> {
    fn is_attached(&self, site: &str) -> bool;
    fn call(
        &self,
        graph: &HostGraph<'_, B>,
        site: &str,
        inputs: Vec<Value<B>>,
    ) -> Result<Vec<Value<B>>, ApiError>;
}

/// No modules anywhere (the bare backbone).
pub struct NoModules;

impl<B: AutodiffBackend> SiteModules<B> for NoModules {
    fn is_attached(&self, _: &str) -> bool {
        false
    }
    fn call(
        &self,
        _: &HostGraph<'_, B>,
        _: &str,
        inputs: Vec<Value<B>>,
    ) -> Result<Vec<Value<B>>, ApiError> {
        Ok(inputs)
    }
}

/// The graph of the current pass plus the attached modules; backbones read their weights
/// through it (so that substituted parameters apply) and call sites on it.
pub struct Hooks<'a, 'p, B: AutodiffBackend> {
    pub graph: &'a HostGraph<'p, B>,
    pub modules: &'a dyn SiteModules<B>,
    cache: std::cell::RefCell<HashMap<String, bool>>,
    /// Whether the backbone holds bf16 weights (looked up once per pass).
    bf16_held: std::cell::OnceCell<bool>,
}

impl<'a, 'p, B: AutodiffBackend> Hooks<'a, 'p, B> {
    pub fn new(graph: &'a HostGraph<'p, B>, modules: &'a dyn SiteModules<B>) -> Self {
        Hooks {
            graph,
            modules,
            cache: Default::default(),
            bf16_held: Default::default(),
        }
    }

    /// Whether attention's two products run on bf16-rounded operands in this pass: without
    /// gradients, under `matmul_precision: medium`, on a backbone held in bf16 — as
    /// `torch.autocast` runs attention (the probabilities rounded before `P·V`). A pass with
    /// gradients keeps f32 attention (see [`nn::ScoreTerms::bf16`]).
    pub fn bf16_attention(&self) -> bool {
        use crate::config::MatmulPrecision;
        self.graph.no_grad
            && nn::bf16::matmul_precision() == MatmulPrecision::Medium
            && *self.bf16_held.get_or_init(|| {
                self.graph.params.borrow().iter().any(|p| {
                    use burn::tensor::TensorMetadata;
                    p.owner == "backbone" && p.value.dtype() == burn::tensor::DType::BF16
                })
            })
    }

    pub fn training(&self) -> bool {
        self.graph.training
    }

    /// A weight by HF key (or its substitute).
    pub fn weight<const D: usize>(&self, key: &str) -> Result<Tensor<B, D>, ApiError> {
        let t = ft::<B, D>(self.graph.param_value(key)?);
        Ok(t)
    }

    pub(crate) fn attached(&self, site: &str) -> bool {
        if let Some(&b) = self.cache.borrow().get(site) {
            return b;
        }
        let b = self.modules.is_attached(site);
        self.cache.borrow_mut().insert(site.to_string(), b);
        b
    }

    /// A biased linear projection with HF weights `<key>.weight` / `<key>.bias`, then its
    /// projection site `<key>` (where LoRA attaches).
    pub fn linear(&self, key: &str, x: &Tensor<B, 3>) -> Result<Tensor<B, 3>, ApiError> {
        let w = self.graph.param_value(&format!("{key}.weight"))?;
        let b = self.graph.param_value(&format!("{key}.bias"))?;
        let y = ft::<B, 3>(crate::nn::linear::<B>(fp(x.clone()), w, Some(b))?);
        self.pair(key, x, y)
    }

    /// [`Self::linear`] then exact GELU (a BERT intermediate layer): without gradients and
    /// with nothing attached at the site, the activation applied as the product's output is
    /// written (`vdpbf16ps`) or together with the bias ([`nn::linear::gelu_product`]).
    pub fn linear_gelu(&self, key: &str, x: &Tensor<B, 3>) -> Result<Tensor<B, 3>, ApiError> {
        if self.graph.no_grad && nn::enabled::<B>() && !self.attached(key) {
            let w = self.graph.param_value(&format!("{key}.weight"))?;
            let b = self.graph.param_value(&format!("{key}.bias"))?;
            if let Some(y) = nn::linear::gelu_product::<B>(x, w, b)? {
                return Ok(y);
            }
        }
        let y = self.linear(key, x)?;
        layers::gelu(self, y)
    }

    /// A bias-free linear projection (T5) with HF weight `<key>.weight`, then its site `<key>`.
    pub fn linear_no_bias(&self, key: &str, x: &Tensor<B, 3>) -> Result<Tensor<B, 3>, ApiError> {
        let w = self.graph.param_value(&format!("{key}.weight"))?;
        let y = ft::<B, 3>(nn::linear::<B>(fp(x.clone()), w, None)?);
        self.pair(key, x, y)
    }

    /// LayerNorm with HF weights `<key>.weight` / `<key>.bias`; `fused` lets a pass with
    /// gradients use the tracked CPU kernel (a pass without runs on the inner backend).
    pub fn layer_norm(
        &self,
        key: &str,
        x: Tensor<B, 3>,
        eps: f64,
        fused: bool,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let w = self.weight::<1>(&format!("{key}.weight"))?;
        let b = self.weight::<1>(&format!("{key}.bias"))?;
        self.layer_norm_with(x, w, b, eps, fused)
    }

    /// [`Self::layer_norm`] with its weights already looked up.
    fn layer_norm_with(
        &self,
        x: Tensor<B, 3>,
        w: Tensor<B, 1>,
        b: Tensor<B, 1>,
        eps: f64,
        fused: bool,
    ) -> Result<Tensor<B, 3>, ApiError> {
        if fused && !self.graph.no_grad && nn::tracked::enabled::<B>() {
            return nn::tracked::layer_norm(x, w, b, eps);
        }
        let [d] = w.dims();
        if fused && self.graph.no_grad && nn::enabled::<B>() && x.dims()[2] == d && b.dims() == [d]
        {
            let (shape, device) = (x.dims(), x.device());
            let (mut v, w, b) = (nn::to_vec(x)?, nn::to_vec(w)?, nn::to_vec(b)?);
            nn::layer_norm::layer_norm_rows(&mut v, &w, &b, eps);
            return Ok(nn::from_vec(v, shape, &device));
        }
        Ok(nn::layer_norm_in(
            self.graph.no_grad,
            x,
            Some(w),
            Some(b),
            eps,
        ))
    }

    /// `LN(a + r)` (a post-norm layer's residual, then its layer norm with HF weights
    /// `<key>.weight`, `<key>.bias`), the sum formed inside the CPU kernels.
    pub fn add_layer_norm(
        &self,
        key: &str,
        a: Tensor<B, 3>,
        r: Tensor<B, 3>,
        eps: f64,
    ) -> Result<Tensor<B, 3>, ApiError> {
        let w = self.weight::<1>(&format!("{key}.weight"))?;
        let b = self.weight::<1>(&format!("{key}.bias"))?;
        let [d] = w.dims();
        let fits = a.dims() == r.dims() && a.dims()[2] == d && b.dims() == [d];
        if fits && !self.graph.no_grad && nn::tracked::enabled::<B>() {
            return nn::layer_norm::tracked_add(a, r, w, b, eps);
        }
        if fits && self.graph.no_grad && nn::enabled::<B>() {
            let (shape, device) = (a.dims(), a.device());
            let (a, r) = (nn::to_vec(a)?, nn::to_vec(r)?);
            let (w, b) = (nn::to_vec(w)?, nn::to_vec(b)?);
            let y = nn::layer_norm::add_layer_norm_rows(a, &r, &w, &b, eps);
            return Ok(nn::from_vec(y, shape, &device));
        }
        self.layer_norm_with(a + r, w, b, eps, true)
    }

    /// `LN(r + site(r, dropout(y)))` with HF weights `<key>.weight`, `<key>.bias`: a post-norm
    /// layer's sublayer output `y` through dropout `p` and the module site `site`, plus the
    /// residual `r`. Training on the CPU kernels with nothing at `site`, the three are one
    /// tracked op (the same seed drawn, so the same values as the ops one by one).
    pub fn dropout_add_layer_norm(
        &self,
        key: &str,
        site: &str,
        y: Tensor<B, 3>,
        r: Tensor<B, 3>,
        (p, eps): (f64, f64),
    ) -> Result<Tensor<B, 3>, ApiError> {
        let fused = self.training() && p > 0.0 && !self.graph.no_grad;
        if fused && nn::tracked::enabled::<B>() && !self.attached(site) && y.dims() == r.dims() {
            let w = self.weight::<1>(&format!("{key}.weight"))?;
            let b = self.weight::<1>(&format!("{key}.bias"))?;
            let seed = nn::draw_seed::<B>(&y.device());
            return nn::layer_norm::tracked_dropout_add(y, r, w, b, (p, seed), eps);
        }
        let y = layers::dropout(self, y, p)?;
        let y = self.pair(site, &r, y)?;
        self.add_layer_norm(key, y, r, eps)
    }

    /// T5's RMS LayerNorm with HF weight `<key>.weight`.
    pub fn rms_norm(&self, key: &str, x: Tensor<B, 3>, eps: f64) -> Result<Tensor<B, 3>, ApiError> {
        let w = self.weight::<1>(&format!("{key}.weight"))?;
        if self.graph.no_grad && nn::enabled::<B>() {
            let (shape, device) = (x.dims(), x.device());
            let (mut v, w) = (nn::to_vec(x)?, nn::to_vec(w)?);
            nn::rms_norm::rms_norm_rows(&mut v, &w, eps);
            return Ok(nn::from_vec(v, shape, &device));
        }
        if !self.graph.no_grad && nn::tracked::enabled::<B>() {
            return nn::tracked::rms_norm(x, w, eps);
        }
        Ok(nn::rms_norm(x, Some(w), eps))
    }

    /// Projection or sublayer site: `[x, y] -> y'`.
    pub fn pair<const D: usize>(
        &self,
        site: &str,
        x: &Tensor<B, D>,
        y: Tensor<B, D>,
    ) -> Result<Tensor<B, D>, ApiError> {
        if !self.attached(site) {
            return Ok(y);
        }
        let out = self.modules.call(
            self.graph,
            site,
            vec![Value::Float(fp(x.clone())), Value::Float(fp(y))],
        )?;
        one_float(site, out)
    }

    /// Hidden-state site: `[h] -> h'`.
    pub fn hidden<const D: usize>(
        &self,
        site: &str,
        h: Tensor<B, D>,
    ) -> Result<Tensor<B, D>, ApiError> {
        if !self.attached(site) {
            return Ok(h);
        }
        let out = self
            .modules
            .call(self.graph, site, vec![Value::Float(fp(h))])?;
        one_float(site, out)
    }

    /// Key/value site: `[k, v] -> [k', v']`, each `[batch, heads, time, head_dim]`.
    pub fn kv(
        &self,
        site: &str,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>), ApiError> {
        if !self.attached(site) {
            return Ok((k, v));
        }
        let (dk, dv) = (k.dims(), v.dims());
        // The gradients coming back to the head-split views, written in their layout.
        let (k, v) = (
            crate::nn::tracked::kv_site(k)?,
            crate::nn::tracked::kv_site(v)?,
        );
        let out = self.modules.call(
            self.graph,
            site,
            vec![Value::Float(fp(k)), Value::Float(fp(v))],
        )?;
        if out.len() != 2 {
            return Err(ApiError::invalid(format!(
                "site `{site}`: modules returned {} tensors, expected [k, v]",
                out.len()
            )));
        }
        let [k2, v2]: [Value<B>; 2] = out
            .try_into()
            .map_err(|_| ApiError::internal("two tensors counted, not two"))?;
        let (k2, v2) = (float4(site, k2)?, float4(site, v2)?);
        let (nk, nv) = (k2.dims(), v2.dims());
        if nk[0] != dk[0]
            || nk[1] != dk[1]
            || nk[3] != dk[3]
            || nv[0] != dv[0]
            || nv[1] != dv[1]
            || nv[3] != dv[3]
            || nk[2] != nv[2]
        {
            return Err(ApiError::shape(format!(
                "site `{site}`: keys/values {dk:?}/{dv:?} came back as {nk:?}/{nv:?}; only the time axis may grow, equally"
            )));
        }
        Ok((k2, v2))
    }
}

/// A rank-4 float tensor from what a key/value site returned, or the error naming the site.
fn float4<B: AutodiffBackend>(site: &str, v: Value<B>) -> Result<Tensor<B, 4>, ApiError> {
    match v {
        Value::Float(p) if v_rank::<B>(&p) == 4 => Ok(ft::<B, 4>(p)),
        other => Err(ApiError::shape(format!(
            "site `{site}`: expected a rank-4 float tensor, got {} {:?}",
            other.kind(),
            other.shape()
        ))),
    }
}

fn v_rank<B: AutodiffBackend>(p: &crate::bridge::FloatPrim<B>) -> usize {
    burn::tensor::TensorMetadata::shape(p).num_dims()
}

fn one_float<B: AutodiffBackend, const D: usize>(
    site: &str,
    out: Vec<Value<B>>,
) -> Result<Tensor<B, D>, ApiError> {
    if out.len() != 1 {
        return Err(ApiError::invalid(format!(
            "site `{site}`: modules returned {} tensors, expected 1",
            out.len()
        )));
    }
    let Some(v) = out.into_iter().next() else {
        return Err(ApiError::internal("one tensor counted, none found"));
    };
    match v {
        Value::Float(p) => {
            let shape = burn::tensor::TensorMetadata::shape(&p).to_vec();
            if shape.len() != D {
                return Err(ApiError::shape(format!(
                    "site `{site}`: modules returned rank {}, expected {D}",
                    shape.len()
                )));
            }
            Ok(ft::<B, D>(p))
        }
        Value::Int(_) => Err(ApiError::invalid(format!(
            "site `{site}`: modules returned an int tensor"
        ))),
    }
}

/// Extended additive attention mask `[batch, 1, 1, time]` from a 0/1 mask, as HF does
/// (`(1 - mask) * finfo(f32).min`), with `prefix` extra always-visible positions in front.
pub fn additive_mask<B: AutodiffBackend>(mask: &Tensor<B, 2, Int>, prefix: usize) -> Tensor<B, 4> {
    let [b, _t] = mask.dims();
    let mut m = mask.clone().float();
    if prefix > 0 {
        let ones = Tensor::<B, 2>::ones([b, prefix], &m.device());
        m = Tensor::cat(vec![ones, m], 1);
    }
    let neg = (m.neg() + 1.0) * f32::MIN as f64;
    neg.unsqueeze_dim::<3>(1).unsqueeze_dim::<4>(1)
}

/// Declares [`AnyBackbone`] over the listed architectures: one variant each, built by
/// `model_type`, dispatching `info` and `encode`; `: seq2seq` marks the encoder-decoders.
macro_rules! backbones {
    ($($variant:ident($ty:ty) $(: $s:ident)?),* $(,)?) => {
        /// Any built-in backbone, chosen by `model_type` in config.json.
        pub enum AnyBackbone {
            $($variant($ty),)*
        }

        impl AnyBackbone {
            /// Builds the backbone described by an HF `config.json`, loading `weights` when
            /// given and initialising randomly otherwise.
            pub fn build<B: AutodiffBackend>(
                name: &str,
                config: &serde_json::Value,
                weights: Option<&std::path::Path>,
                store: &mut crate::params::ParamStore<B>,
            ) -> anyhow::Result<Self> {
                use arch::Architecture;
                let model_type = config
                    .get("model_type")
                    .and_then(|v| v.as_str())
                    .unwrap_or("bert");
                $(
                    if model_type == <$ty>::MODEL_TYPE {
                        return Ok(AnyBackbone::$variant(arch::build::<$ty, B>(
                            name, config, weights, store,
                        )?));
                    }
                )*
                let known = [$(<$ty>::MODEL_TYPE),*].join(", ");
                anyhow::bail!(
                    "backbone `{name}`: architecture `{model_type}` is not supported (supported: {known})"
                )
            }

            /// The encoder-decoder interface, for T5 and BART.
            pub fn as_seq2seq<B: AutodiffBackend>(&self) -> Option<&dyn seq2seq::Seq2Seq<B>> {
                match self {
                    $(AnyBackbone::$variant(m) => backbones!(@seq2seq m $($s)?),)*
                }
            }
        }

        impl<B: AutodiffBackend> Backbone<B> for AnyBackbone {
            fn info(&self) -> &BackboneInfo {
                match self {
                    $(AnyBackbone::$variant(m) => Backbone::<B>::info(m),)*
                }
            }

            fn encode(
                &self,
                hooks: &Hooks<'_, '_, B>,
                batch: &TextBatch<B>,
            ) -> Result<Tensor<B, 3>, ApiError> {
                match self {
                    $(AnyBackbone::$variant(m) => m.encode(hooks, batch),)*
                }
            }
        }
    };
    (@seq2seq $m:ident seq2seq) => { Some($m) };
    (@seq2seq $m:ident) => {{
        let _ = $m;
        None
    }};
}

backbones! {
    Bert(bert::Bert),
    T5(t5::T5): seq2seq,
    Bart(bart::Bart): seq2seq,
}

impl AnyBackbone {
    pub fn as_bert(&self) -> Option<&bert::Bert> {
        match self {
            AnyBackbone::Bert(b) => Some(b),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type A = burn::backend::Autodiff<burn::backend::Flex>;

    /// A key/value site that returns a tensor of another rank gets the error naming the site,
    /// not a panic.
    #[test]
    fn float4_refuses_other_ranks_with_an_error() {
        let t = Tensor::<A, 3>::zeros([2, 3, 4], &Default::default());
        let err = float4::<A>("encoder.layer.0.attention.self.kv", Value::Float(fp(t)))
            .expect_err("rank 3 refused");
        assert!(
            err.message.contains("encoder.layer.0.attention.self.kv")
                && err.message.contains("rank-4")
                && err.message.contains("[2, 3, 4]"),
            "{}",
            err.message
        );
        let t = Tensor::<A, 4>::zeros([1, 2, 3, 4], &Default::default());
        assert_eq!(
            float4::<A>("s", Value::Float(fp(t))).unwrap().dims(),
            [1, 2, 3, 4]
        );
    }
}
