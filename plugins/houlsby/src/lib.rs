//! Houlsby adapters (Houlsby et al., 2019): a serial bottleneck `A(y) = y + W_up act(W_down y)`
//! after the attention block and after the feed-forward block of every layer, before the
//! residual connection and LayerNorm. `W_up` starts at zero, so the adapter starts as the
//! identity. Parameters per adapter: `2 d b + d + b`.
mod config;

pub use config::{Activation, HoulsbyConfig, Stack};
use peft_api::{
    ApiError, AttachPlan, Attachment, BackboneInfo, Ctx, Init, Manifest, Module, Plugin,
    PluginKind, Result, SiteCall, SiteKind, Tensor,
};
use serde_json::Value;

pub struct Houlsby {
    config: HoulsbyConfig,
    /// Parameter prefix per attachment.
    prefixes: Vec<String>,
}

impl Houlsby {
    pub fn new(config: HoulsbyConfig) -> Self {
        Houlsby {
            config,
            prefixes: Vec::new(),
        }
    }

    /// Trainable parameters of one adapter on a `d`-dimensional site.
    pub fn params_per_adapter(d: usize, b: usize) -> usize {
        2 * d * b + d + b
    }
}

impl Module for Houlsby {
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
            let (d, b) = (site.out_features, c.bottleneck);
            let p = site.name.clone();
            let g = c.group.as_str();
            let std = c.init_std;
            ctx.create_param(
                &format!("{p}.down.weight"),
                &[b, d],
                g,
                Init::Normal { mean: 0.0, std },
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
            ctx.create_param(&format!("{p}.up.weight"), &[d, b], g, up)?;
            ctx.create_param(&format!("{p}.up.bias"), &[d], g, Init::Zeros)?;
            self.prefixes.push(p);
            plan.attachments.push(Attachment {
                site: site.name.clone(),
                role: format!("serial adapter (b={b}, {})", c.activation.name()),
                unfreeze: vec![],
            });
        }
        if plan.attachments.is_empty() {
            return Err(ApiError::config(format!(
                "houlsby: no site matched (attention={}, ffn={}, layers={:?}, stack={:?}) on backbone `{}`",
                c.attention, c.ffn, c.layers, c.stack, backbone.name
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
        let p = &self.prefixes[site.attachment as usize];
        let y = inputs
            .into_iter()
            .nth(1)
            .ok_or_else(|| ApiError::invalid("houlsby: a sublayer site passes [x, y]"))?;
        let h = y
            .clone()
            .linear(
                ctx.param(&format!("{p}.down.weight"))?,
                Some(ctx.param(&format!("{p}.down.bias"))?),
            )?
            .activation(self.config.activation.name())?;
        let delta = h.linear(
            ctx.param(&format!("{p}.up.weight"))?,
            Some(ctx.param(&format!("{p}.up.bias"))?),
        )?;
        Ok(vec![y.add(delta)?])
    }
}

pub struct HoulsbyPlugin;

impl Plugin for HoulsbyPlugin {
    fn manifest() -> Manifest {
        Manifest {
            name: "houlsby".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Module,
            api_version: String::new(),
            description:
                "Serial bottleneck adapters after attention and FFN (Houlsby et al., 2019)".into(),
            config_schema: serde_json::to_value(schemars::schema_for!(HoulsbyConfig))
                .expect("schema"),
            groups: vec!["adapter".into()],
        }
    }

    fn create_module(config: &Value) -> Result<Box<dyn Module>> {
        let config: HoulsbyConfig = config::parse(config)?;
        Ok(Box::new(Houlsby::new(config)))
    }
}

peft_api::export_plugin!(houlsby, HoulsbyPlugin);
