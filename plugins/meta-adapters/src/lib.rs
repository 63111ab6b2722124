//! Meta-Adapters (Bansal et al., 2022): at each adapter position (Houlsby's: after attention and
//! after the FFN, before the residual and LayerNorm) two extra serial bottleneck adapters
//! sandwich the task adapter, `y' = M2(A(M1(y)))`, each `z + W_up act(W_down z)`. `M1`, `M2` are
//! in group `meta_adapter` (upstream, MAML's outer loop), `A` in group `adapter` (downstream,
//! the inner loop). Every `W_up` starts at zero, so the module starts as the identity.
mod config;

pub use config::{Activation, MetaAdaptersConfig, Stack};
use peft_api::{
    ApiError, AttachPlan, Attachment, BackboneInfo, Ctx, Init, Manifest, Module, Plugin,
    PluginKind, Result, SiteCall, SiteKind, Tensor,
};
use serde_json::Value;

/// The three adapters at a site, in order, with their parameter name part.
const PARTS: [&str; 3] = ["meta_in", "adapter", "meta_out"];

pub struct MetaAdapters {
    config: MetaAdaptersConfig,
    /// Parameter prefix per attachment.
    prefixes: Vec<String>,
}

impl MetaAdapters {
    pub fn new(config: MetaAdaptersConfig) -> Self {
        MetaAdapters {
            config,
            prefixes: Vec::new(),
        }
    }

    /// Parameters of one serial adapter on a `d`-dimensional site.
    pub fn params_per_adapter(d: usize, b: usize) -> usize {
        2 * d * b + d + b
    }

    fn create_adapter(&self, ctx: &Ctx<'_>, p: &str, d: usize, b: usize, g: &str) -> Result<()> {
        let c = &self.config;
        ctx.create_param(
            &format!("{p}.down.weight"),
            &[b, d],
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
        ctx.create_param(&format!("{p}.up.weight"), &[d, b], g, up)?;
        ctx.create_param(&format!("{p}.up.bias"), &[d], g, Init::Zeros)?;
        Ok(())
    }

    fn serial<'c>(&self, ctx: &'c Ctx<'_>, p: &str, z: Tensor<'c>) -> Result<Tensor<'c>> {
        let h = z
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
        z.add(delta)
    }
}

impl Module for MetaAdapters {
    fn attach(&mut self, ctx: &Ctx<'_>, backbone: &BackboneInfo) -> Result<AttachPlan> {
        let c = self.config.clone();
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
            let d = site.out_features;
            let p = site.name.clone();
            for part in PARTS {
                let (b, g) = if part == "adapter" {
                    (c.bottleneck, c.adapter_group.as_str())
                } else {
                    (c.meta_bottleneck, c.meta_group.as_str())
                };
                self.create_adapter(ctx, &format!("{p}.{part}"), d, b, g)?;
            }
            self.prefixes.push(p);
            plan.attachments.push(Attachment {
                site: site.name.clone(),
                role: format!(
                    "meta-adapter sandwich (b={}, meta b={}, {})",
                    c.bottleneck,
                    c.meta_bottleneck,
                    c.activation.name()
                ),
                unfreeze: vec![],
            });
        }
        if plan.attachments.is_empty() {
            return Err(ApiError::config(format!(
                "meta-adapters: no site matched (attention={}, ffn={}, layers={:?}, stack={:?}) on backbone `{}`",
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
        let p = self
            .prefixes
            .get(site.attachment as usize)
            .ok_or_else(|| ApiError::invalid("meta-adapters: unknown attachment"))?;
        let mut z = inputs
            .into_iter()
            .nth(1)
            .ok_or_else(|| ApiError::invalid("meta-adapters: a sublayer site passes [x, y]"))?;
        for part in PARTS {
            z = self.serial(ctx, &format!("{p}.{part}"), z)?;
        }
        Ok(vec![z])
    }
}

pub struct MetaAdaptersPlugin;

impl Plugin for MetaAdaptersPlugin {
    fn manifest() -> Manifest {
        Manifest {
            name: "meta-adapters".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Module,
            api_version: String::new(),
            description:
                "Serial adapters sandwiched by two meta-adapters, M2(A(M1(y))) (Bansal et al., 2022)"
                    .into(),
            config_schema: serde_json::to_value(schemars::schema_for!(MetaAdaptersConfig))
                .expect("schema"),
            groups: vec!["adapter".into(), "meta_adapter".into()],
        }
    }

    fn create_module(config: &Value) -> Result<Box<dyn Module>> {
        let config = config::parse(config)?;
        Ok(Box::new(MetaAdapters::new(config)))
    }
}

peft_api::export_plugin!(meta_adapters, MetaAdaptersPlugin);
