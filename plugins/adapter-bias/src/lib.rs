//! AdapterBias (Fu et al., 2022): a token-dependent representation shift. Per adapted block a
//! trainable vector `v` (size `d`) and a linear `L_alpha: d -> 1`; with `y` the block's output
//! (before the residual and LayerNorm), `y' = y + L_alpha(y) * v`. The LayerNorm that follows
//! is trained too (listed in `Attachment.unfreeze`). Parameters per layer: `2d + 1` plus the
//! LayerNorm's `2d`.
mod config;

pub use config::{AdapterBiasConfig, Stack};
use peft_api::{
    blocks::sublayer_sites, sdk, ApiError, AttachPlan, Attachment, BackboneInfo, Ctx, Init, Module,
    Result, SiteCall, SiteInfo, Tensor,
};

pub struct AdapterBias {
    config: AdapterBiasConfig,
    /// Parameter prefix per attachment.
    prefixes: Vec<String>,
}

impl AdapterBias {
    pub fn new(config: AdapterBiasConfig) -> Self {
        AdapterBias {
            config,
            prefixes: Vec::new(),
        }
    }

    /// Trainable module parameters at one `d`-dimensional site (without the LayerNorm).
    pub fn params_per_site(d: usize) -> usize {
        2 * d + 1
    }

    fn layer_norm_keys(
        &self,
        ctx: &Ctx<'_>,
        backbone: &BackboneInfo,
        site: &SiteInfo,
    ) -> Result<Vec<String>> {
        let keys: Vec<String> = match &self.config.layer_norm_keys {
            Some(templates) => {
                let layer = site.layer.map(|l| l.to_string()).unwrap_or_default();
                templates
                    .iter()
                    .map(|t| t.replace("{stack}", &site.stack).replace("{layer}", &layer))
                    .collect()
            }
            // The backbone names the norms that go with each sublayer.
            None => backbone.norms.get(&site.name).cloned().ok_or_else(|| {
                ApiError::config(format!(
                    "adapter-bias: backbone `{}` ({}) publishes no norm for site `{}` (role `{}`); set `layer_norm_keys` or `train_layer_norm: false`",
                    backbone.name, backbone.architecture, site.name, site.role
                ))
            })?,
        };
        for k in &keys {
            // Checks the key exists; the handle is released at once.
            ctx.param(&format!("backbone:{k}")).map_err(|e| {
                ApiError::config(format!(
                    "adapter-bias: LayerNorm weight `{k}` for site `{}` is not a backbone weight ({}); set `layer_norm_keys`",
                    site.name, e.message
                ))
            })?;
        }
        Ok(keys)
    }
}

impl Module for AdapterBias {
    fn attach(&mut self, ctx: &Ctx<'_>, backbone: &BackboneInfo) -> Result<AttachPlan> {
        let c = self.config.clone();
        let mut plan = AttachPlan::default();
        for site in sublayer_sites(backbone, c.attention, c.ffn, &c.layers, c.stack) {
            let d = site.out_features;
            let p = site.name.clone();
            let g = c.group.as_str();
            ctx.create_param(
                &format!("{p}.vector"),
                &[d],
                g,
                Init::Constant {
                    value: c.vector_init,
                },
            )?;
            // nn.Linear(d, 1): weight and bias U(-1/sqrt(d), 1/sqrt(d)).
            let bound = 1.0 / (d as f64).sqrt();
            ctx.create_param(
                &format!("{p}.alpha.weight"),
                &[1, d],
                g,
                Init::KaimingUniform,
            )?;
            ctx.create_param(
                &format!("{p}.alpha.bias"),
                &[1],
                g,
                Init::Uniform {
                    low: -bound,
                    high: bound,
                },
            )?;
            let unfreeze = if c.train_layer_norm {
                self.layer_norm_keys(ctx, backbone, site)?
            } else {
                vec![]
            };
            self.prefixes.push(p);
            plan.attachments.push(Attachment {
                site: site.name.clone(),
                role: "representation shift (AdapterBias)".into(),
                unfreeze,
            });
        }
        let selection = sdk::sublayers(c.attention, c.ffn, &c.layers, c.stack);
        sdk::nonempty("adapter-bias", plan, "site", selection, backbone)
    }

    fn apply<'c>(
        &self,
        ctx: &'c Ctx<'_>,
        site: &SiteCall<'_>,
        inputs: Vec<Tensor<'c>>,
    ) -> Result<Vec<Tensor<'c>>> {
        let p = sdk::attachment("adapter-bias", &self.prefixes, site)?;
        let y = sdk::input("adapter-bias", inputs, 1, "sublayer site passes [x, y]")?;
        // alpha: [.., 1] per token, from the block output.
        let alpha = y.clone().linear(
            ctx.param(&format!("{p}.alpha.weight"))?,
            Some(ctx.param(&format!("{p}.alpha.bias"))?),
        )?;
        let shift = alpha.mul(ctx.param(&format!("{p}.vector"))?)?;
        Ok(vec![y.add(shift)?])
    }
}

peft_api::module_plugin!(adapter_bias, AdapterBiasPlugin, AdapterBiasConfig => AdapterBias::new);
