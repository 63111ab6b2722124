//! Parallel adapters (He et al., 2022, "Towards a Unified View of Parameter-Efficient Transfer
//! Learning"): a bottleneck beside a block, fed with the block's input,
//! `y' = y + s * W_up act(W_down x)`. At the FFN of a post-LN BERT, `x` is the attention
//! LayerNorm's output, so this is `FFN(LN(h)) + A(LN(h))`. `W_up` starts at zero, so the adapter
//! starts as a no-op. Parameters per adapter: `2 d b + d + b`.
mod config;

pub use config::{Activation, ParallelAdapterConfig, Stack};
use peft_api::{
    ApiError, AttachPlan, Attachment, BackboneInfo, Ctx, Init, Manifest, Module, Plugin,
    PluginKind, Result, SiteCall, SiteKind, Tensor,
};
use serde_json::Value;

pub struct ParallelAdapter {
    config: ParallelAdapterConfig,
    /// Parameter prefix per attachment.
    prefixes: Vec<String>,
}

impl ParallelAdapter {
    pub fn new(config: ParallelAdapterConfig) -> Self {
        ParallelAdapter {
            config,
            prefixes: Vec::new(),
        }
    }

    /// Trainable parameters of one adapter between `d_in` and `d_out` features.
    pub fn params_per_adapter(d_in: usize, d_out: usize, b: usize) -> usize {
        d_in * b + b + b * d_out + d_out
    }
}

impl Module for ParallelAdapter {
    fn attach(&mut self, ctx: &Ctx<'_>, backbone: &BackboneInfo) -> Result<AttachPlan> {
        let c = &self.config;
        let mut plan = AttachPlan::default();
        for site in backbone.sites_of_kind(SiteKind::Sublayer) {
            let wanted_role = match site.role.as_str() {
                "attention" | "cross_attention" => c.attention,
                "ffn" => c.ffn,
                _ => false,
            };
            let wanted_layer = match (&c.layers, site.layer) {
                (Some(layers), Some(l)) => layers.contains(&l),
                _ => true,
            };
            if !(wanted_role && wanted_layer && c.stack.includes(&site.stack)) {
                continue;
            }
            let (d_in, d_out, b) = (site.in_features, site.out_features, c.bottleneck);
            let p = site.name.clone();
            let g = c.group.as_str();
            ctx.create_param(
                &format!("{p}.down.weight"),
                &[b, d_in],
                g,
                Init::Normal {
                    mean: 0.0,
                    std: c.init_std,
                },
            )?;
            ctx.create_param(&format!("{p}.down.bias"), &[b], g, Init::Zeros)?;
            let up = if c.up_init_std == 0.0 {
                Init::Zeros
            } else {
                Init::Normal {
                    mean: 0.0,
                    std: c.up_init_std,
                }
            };
            ctx.create_param(&format!("{p}.up.weight"), &[d_out, b], g, up)?;
            ctx.create_param(&format!("{p}.up.bias"), &[d_out], g, Init::Zeros)?;
            self.prefixes.push(p);
            plan.attachments.push(Attachment {
                site: site.name.clone(),
                role: format!("parallel adapter (b={b}, {})", c.activation.name()),
                unfreeze: vec![],
            });
        }
        if plan.attachments.is_empty() {
            return Err(ApiError::config(format!(
                "parallel-adapter: no site matched (ffn={}, attention={}, layers={:?}, stack={:?}) on backbone `{}`",
                c.ffn, c.attention, c.layers, c.stack, backbone.name
            )));
        }
        Ok(plan)
    }

    fn apply<'c>(
        &self,
        ctx: &'c Ctx<'_>,
        site: &SiteCall<'_>,
        inputs: Vec<Tensor<'c>>,
    ) -> Result<Vec<Tensor<'c>>> {
        let p = self
            .prefixes
            .get(site.attachment as usize)
            .ok_or_else(|| ApiError::invalid("parallel-adapter: unknown attachment"))?;
        let [x, y]: [Tensor<'c>; 2] = inputs
            .try_into()
            .map_err(|_| ApiError::invalid("parallel-adapter: a sublayer site passes [x, y]"))?;
        let h = x
            .dropout(if site.training {
                self.config.dropout
            } else {
                0.0
            })?
            .linear(
                ctx.param(&format!("{p}.down.weight"))?,
                Some(ctx.param(&format!("{p}.down.bias"))?),
            )?
            .activation(self.config.activation.name())?;
        let mut delta = h.linear(
            ctx.param(&format!("{p}.up.weight"))?,
            Some(ctx.param(&format!("{p}.up.bias"))?),
        )?;
        if self.config.scale != 1.0 {
            delta = delta.mul_scalar(self.config.scale)?;
        }
        Ok(vec![y.add(delta)?])
    }
}

pub struct ParallelAdapterPlugin;

impl Plugin for ParallelAdapterPlugin {
    fn manifest() -> Manifest {
        Manifest {
            name: "parallel-adapter".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Module,
            api_version: String::new(),
            description:
                "Bottleneck adapters parallel to the FFN block, fed with its input (He et al., 2022)"
                    .into(),
            config_schema: serde_json::to_value(schemars::schema_for!(ParallelAdapterConfig))
                .expect("schema"),
            groups: vec!["adapter".into()],
        }
    }

    fn create_module(config: &Value) -> Result<Box<dyn Module>> {
        let config = config::parse(config)?;
        Ok(Box::new(ParallelAdapter::new(config)))
    }
}

peft_api::export_plugin!(parallel_adapter, ParallelAdapterPlugin);
