//! AdapterBias (Fu et al., 2022): a token-dependent representation shift. Per adapted block a
//! trainable vector `v` (size `d`) and a linear `L_alpha: d -> 1`; with `y` the block's output
//! (before the residual and LayerNorm), `y' = y + L_alpha(y) * v`. The LayerNorm that follows
//! is trained too (listed in `Attachment.unfreeze`). Parameters per layer: `2d + 1` plus the
//! LayerNorm's `2d`.
mod config;

pub use config::{AdapterBiasConfig, Stack};
use peft_api::{
    ApiError, AttachPlan, Attachment, BackboneInfo, Ctx, Init, Manifest, Module, Plugin,
    PluginKind, Result, SiteCall, SiteInfo, SiteKind, Tensor,
};
use serde_json::Value;

pub struct AdapterBias {
    config: AdapterBiasConfig,
    /// Parameter prefix per attachment.
    prefixes: Vec<String>,
}

/// HF keys of the LayerNorm that follows a block, as templates, per architecture.
fn default_layer_norm_templates(arch: &str, site: &SiteInfo) -> Option<Vec<String>> {
    let role = site.role.as_str();
    let v = |a: &[&str]| Some(a.iter().map(|s| s.to_string()).collect());
    match (arch, role) {
        ("bert", "ffn") => v(&[
            "{stack}.layer.{layer}.output.LayerNorm.weight",
            "{stack}.layer.{layer}.output.LayerNorm.bias",
        ]),
        ("bert", "attention") => v(&[
            "{stack}.layer.{layer}.attention.output.LayerNorm.weight",
            "{stack}.layer.{layer}.attention.output.LayerNorm.bias",
        ]),
        ("bart", "ffn") => v(&[
            "{stack}.layers.{layer}.final_layer_norm.weight",
            "{stack}.layers.{layer}.final_layer_norm.bias",
        ]),
        ("bart", "attention") => v(&[
            "{stack}.layers.{layer}.self_attn_layer_norm.weight",
            "{stack}.layers.{layer}.self_attn_layer_norm.bias",
        ]),
        ("bart", "cross_attention") => v(&[
            "{stack}.layers.{layer}.encoder_attn_layer_norm.weight",
            "{stack}.layers.{layer}.encoder_attn_layer_norm.bias",
        ]),
        // T5 is pre-LN: the block's own (bias-free) RMS norm.
        ("t5", "attention") => v(&["{stack}.block.{layer}.layer.0.layer_norm.weight"]),
        ("t5", "cross_attention") => v(&["{stack}.block.{layer}.layer.1.layer_norm.weight"]),
        ("t5", "ffn") if site.stack == "decoder" => {
            v(&["{stack}.block.{layer}.layer.2.layer_norm.weight"])
        }
        ("t5", "ffn") => v(&["{stack}.block.{layer}.layer.1.layer_norm.weight"]),
        _ => None,
    }
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
        let templates = match &self.config.layer_norm_keys {
            Some(t) => t.clone(),
            None => default_layer_norm_templates(&backbone.architecture, site).ok_or_else(|| {
                ApiError::config(format!(
                    "adapter-bias: no known LayerNorm for site `{}` (role `{}`) of a `{}` backbone; set `layer_norm_keys` or `train_layer_norm: false`",
                    site.name, site.role, backbone.architecture
                ))
            })?,
        };
        let layer = site.layer.map(|l| l.to_string()).unwrap_or_default();
        let keys: Vec<String> = templates
            .iter()
            .map(|t| t.replace("{stack}", &site.stack).replace("{layer}", &layer))
            .collect();
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
        if plan.attachments.is_empty() {
            return Err(ApiError::config(format!(
                "adapter-bias: no site matched (ffn={}, attention={}, layers={:?}, stack={:?}) on backbone `{}`",
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
            .ok_or_else(|| ApiError::invalid("adapter-bias: unknown attachment"))?;
        let y = inputs
            .into_iter()
            .nth(1)
            .ok_or_else(|| ApiError::invalid("adapter-bias: a sublayer site passes [x, y]"))?;
        // alpha: [.., 1] per token, from the block output.
        let alpha = y.clone().linear(
            ctx.param(&format!("{p}.alpha.weight"))?,
            Some(ctx.param(&format!("{p}.alpha.bias"))?),
        )?;
        let shift = alpha.mul(ctx.param(&format!("{p}.vector"))?)?;
        Ok(vec![y.add(shift)?])
    }
}

pub struct AdapterBiasPlugin;

impl Plugin for AdapterBiasPlugin {
    fn manifest() -> Manifest {
        Manifest {
            name: "adapter-bias".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Module,
            api_version: String::new(),
            description:
                "Token-dependent representation shift alpha(y) * v after the FFN, LayerNorm trainable (Fu et al., 2022)"
                    .into(),
            config_schema: serde_json::to_value(schemars::schema_for!(AdapterBiasConfig))
                .expect("schema"),
            groups: vec!["adapter".into()],
        }
    }

    fn create_module(config: &Value) -> Result<Box<dyn Module>> {
        let config = config::parse(config)?;
        Ok(Box::new(AdapterBias::new(config)))
    }
}

peft_api::export_plugin!(adapter_bias, AdapterBiasPlugin);
