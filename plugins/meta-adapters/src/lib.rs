//! Meta-Adapters (Bansal et al., 2022): at each adapter position (Houlsby's: after attention and
//! after the FFN, before the residual and LayerNorm) two extra serial bottleneck adapters
//! sandwich the task adapter, `y' = M2(A(M1(y)))`, each `z + W_up act(W_down z)`. `M1`, `M2` are
//! in group `meta_adapter` (upstream, MAML's outer loop), `A` in group `adapter` (downstream,
//! the inner loop). Every `W_up` starts at zero, so the module starts as the identity.
mod config;

pub use config::{Activation, MetaAdaptersConfig, Stack};
use peft_api::{
    blocks::{sublayer_sites, Bottleneck},
    sdk, AttachPlan, Attachment, BackboneInfo, Ctx, Module, Result, SiteCall, Tensor,
};

/// The three adapters at a site, in order, with their parameter name part.
const PARTS: [&str; 3] = ["meta_in", "adapter", "meta_out"];

pub struct MetaAdapters {
    config: MetaAdaptersConfig,
    /// Per attachment: the bottlenecks of `PARTS`, in order.
    adapters: Vec<[Bottleneck; 3]>,
}

impl MetaAdapters {
    pub fn new(config: MetaAdaptersConfig) -> Self {
        MetaAdapters {
            config,
            adapters: Vec::new(),
        }
    }

    /// Parameters of one serial adapter on a `d`-dimensional site.
    pub fn params_per_adapter(d: usize, b: usize) -> usize {
        Bottleneck::params(d, b, d)
    }
}

impl Module for MetaAdapters {
    fn attach(&mut self, ctx: &Ctx<'_>, backbone: &BackboneInfo) -> Result<AttachPlan> {
        let c = &self.config;
        let mut plan = AttachPlan::default();
        for site in sublayer_sites(backbone, c.attention, c.ffn, &c.layers, c.stack) {
            let d = site.out_features;
            let create = |part: &str| {
                let (b, g) = if part == "adapter" {
                    (c.bottleneck, c.adapter_group.as_str())
                } else {
                    (c.meta_bottleneck, c.meta_group.as_str())
                };
                Bottleneck::create(
                    ctx,
                    &format!("{}.{part}", site.name),
                    d,
                    b,
                    d,
                    g,
                    c.init_std,
                    c.up_init_std,
                )
            };
            self.adapters
                .push([create(PARTS[0])?, create(PARTS[1])?, create(PARTS[2])?]);
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
        let selection = sdk::sublayers(c.attention, c.ffn, &c.layers, c.stack);
        sdk::nonempty("meta-adapters", plan, "site", selection, backbone)
    }

    fn apply<'c>(
        &self,
        ctx: &'c Ctx<'_>,
        site: &SiteCall<'_>,
        inputs: Vec<Tensor<'c>>,
    ) -> Result<Vec<Tensor<'c>>> {
        let adapters = sdk::attachment("meta-adapters", &self.adapters, site)?;
        let mut z = sdk::input("meta-adapters", inputs, 1, "sublayer site passes [x, y]")?;
        // y' = M2(A(M1(y))), each a serial adapter z + W_up act(W_down z).
        for adapter in adapters {
            let delta = adapter.forward(ctx, z.clone(), self.config.activation)?;
            z = z.add(delta)?;
        }
        Ok(vec![z])
    }
}

peft_api::module_plugin!(meta_adapters, MetaAdaptersPlugin, MetaAdaptersConfig => MetaAdapters::new);
