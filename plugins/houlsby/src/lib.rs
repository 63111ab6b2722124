//! Houlsby adapters (Houlsby et al., 2019): a serial bottleneck `A(y) = y + W_up act(W_down y)`
//! after the attention block and after the feed-forward block of every layer, before the
//! residual connection and LayerNorm. `W_up` starts at zero, so the adapter starts as the
//! identity. Parameters per adapter: `2 d b + d + b`.
//!
//! Extension calls (foreign formats, read by the plugin itself; see [`adapterhub`]):
//! - `adapterhub_module_spec` (args: `{"adapter_config": AdapterHub's adapter_config.json,
//!   "keys": [tensor keys of its file]}`; no attach needed): the module section that computes
//!   that adapter, `null` when it is not an AdapterHub bottleneck adapter, an error naming the
//!   field when it is one this plugin does not compute (Pfeiffer placement, adapter LayerNorms,
//!   gating, scaling != 1, ...).
//! - `adapterhub_import` (args: the adapter_config.json): checks it describes this module and
//!   answers `{"tensors": [{"key", "param", "shape"}]}`, keys without the model prefix (`bert.`).
pub mod adapterhub;
mod config;

pub use config::{Activation, HoulsbyConfig, Stack};
use peft_api::{
    blocks::{sublayer_sites, Bottleneck},
    sdk, AttachPlan, Attachment, BackboneInfo, Ctx, Module, Result, SiteCall, Tensor,
};
use serde_json::Value;

pub struct Houlsby {
    config: HoulsbyConfig,
    /// One bottleneck per attachment.
    adapters: Vec<Bottleneck>,
    /// Each attachment's site name and role (`attention`, `ffn`), for foreign key maps.
    sites: Vec<(String, String)>,
    /// The backbone's architecture and width, as attached.
    architecture: String,
    hidden: usize,
}

impl Houlsby {
    pub fn new(config: HoulsbyConfig) -> Self {
        Houlsby {
            config,
            adapters: Vec::new(),
            sites: Vec::new(),
            architecture: String::new(),
            hidden: 0,
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
        self.architecture = backbone.architecture.clone();
        self.hidden = backbone.hidden_size;
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
            self.sites.push((site.name.clone(), site.role.clone()));
            plan.attachments.push(Attachment {
                site: site.name.clone(),
                role: format!("serial adapter (b={b}, {})", c.activation.name()),
                unfreeze: vec![],
            });
        }
        let selection = sdk::sublayers(c.attention, c.ffn, &c.layers, c.stack);
        sdk::nonempty("houlsby", plan, "site", selection, backbone)
    }

    fn apply<'c>(
        &self,
        ctx: &'c Ctx<'_>,
        site: &SiteCall<'_>,
        inputs: Vec<Tensor<'c>>,
    ) -> Result<Vec<Tensor<'c>>> {
        let adapter = sdk::attachment("houlsby", &self.adapters, site)?;
        let y = sdk::input("houlsby", inputs, 1, "sublayer site passes [x, y]")?;
        let delta = adapter.forward(ctx, y.clone(), self.config.activation)?;
        Ok(vec![y.add(delta)?])
    }

    fn call(&mut self, _ctx: &Ctx<'_>, name: &str, args: Value) -> Result<Value> {
        match name {
            "adapterhub_module_spec" => Ok(adapterhub::module_spec(&args)?.unwrap_or(Value::Null)),
            "adapterhub_import" => self.adapterhub_key_map(&args),
            other => Err(peft_api::ApiError::unsupported(other)),
        }
    }
}

peft_api::module_plugin!(houlsby, HoulsbyPlugin, HoulsbyConfig => Houlsby::new);
