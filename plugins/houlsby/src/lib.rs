//! Houlsby adapters (Houlsby et al., 2019): a serial bottleneck `A(y) = y + W_up act(W_down y)`
//! after the attention block and after the feed-forward block of every layer, before the
//! residual connection and LayerNorm. `W_up` starts at zero, so the adapter starts as the
//! identity. Parameters per adapter: `2 d b + d + b`.
mod config;

pub use config::{Activation, HoulsbyConfig, Stack};
use peft_api::{
    blocks::{sublayer_sites, Bottleneck},
    ApiError, AttachPlan, Attachment, BackboneInfo, Ctx, Manifest, Module, Plugin, PluginKind,
    Result, SiteCall, Tensor,
};
use serde_json::Value;

pub struct Houlsby {
    config: HoulsbyConfig,
    /// One bottleneck per attachment.
    adapters: Vec<Bottleneck>,
}

impl Houlsby {
    pub fn new(config: HoulsbyConfig) -> Self {
        Houlsby {
            config,
            adapters: Vec::new(),
        }
    }

    /// Trainable parameters of one adapter on a `d`-dimensional site.
    pub fn params_per_adapter(d: usize, b: usize) -> usize {
        Bottleneck::params(d, b, d)
    }
}

impl Module for Houlsby {
    fn attach(&mut self, ctx: &Ctx<'_>, backbone: &BackboneInfo) -> Result<AttachPlan> {
        let c = &self.config;
        let mut plan = AttachPlan::default();
        for site in sublayer_sites(backbone, c.attention, c.ffn, &c.layers, c.stack) {
            let (d, b) = (site.out_features, c.bottleneck);
            self.adapters.push(Bottleneck::create(
                ctx,
                &site.name,
                d,
                b,
                d,
                &c.group,
                c.init_std,
                c.up_init_std,
            )?);
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
        let adapter = self
            .adapters
            .get(site.attachment as usize)
            .ok_or_else(|| ApiError::invalid("houlsby: unknown attachment"))?;
        let y = inputs
            .into_iter()
            .nth(1)
            .ok_or_else(|| ApiError::invalid("houlsby: a sublayer site passes [x, y]"))?;
        let delta = adapter.forward(ctx, y.clone(), self.config.activation)?;
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
        Ok(Box::new(Houlsby::new(config::parse(config)?)))
    }
}

peft_api::export_plugin!(houlsby, HoulsbyPlugin);
