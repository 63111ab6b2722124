//! Parallel adapters (He et al., 2022, "Towards a Unified View of Parameter-Efficient Transfer
//! Learning"): a bottleneck beside a block, fed with the block's input,
//! `y' = y + s * W_up act(W_down x)`. At the FFN of a post-LN BERT, `x` is the attention
//! LayerNorm's output, so this is `FFN(LN(h)) + A(LN(h))`. `W_up` starts at zero, so the adapter
//! starts as a no-op. Parameters per adapter: `2 d b + d + b`.
mod config;

pub use config::{Activation, ParallelAdapterConfig, Stack};
use peft_api::{
    blocks::{sublayer_sites, Bottleneck},
    sdk, ApiError, AttachPlan, Attachment, BackboneInfo, Ctx, Module, Result, SiteCall, Tensor,
};

pub struct ParallelAdapter {
    config: ParallelAdapterConfig,
    /// One bottleneck per attachment.
    adapters: Vec<Bottleneck>,
}

impl ParallelAdapter {
    pub fn new(config: ParallelAdapterConfig) -> Self {
        ParallelAdapter {
            config,
            adapters: Vec::new(),
        }
    }

    /// Trainable parameters of one adapter between `d_in` and `d_out` features.
    pub fn params_per_adapter(d_in: usize, d_out: usize, b: usize) -> usize {
        Bottleneck::params(d_in, b, d_out)
    }
}

impl Module for ParallelAdapter {
    fn attach(&mut self, ctx: &Ctx<'_>, backbone: &BackboneInfo) -> Result<AttachPlan> {
        let c = &self.config;
        let mut plan = AttachPlan::default();
        for site in sublayer_sites(backbone, c.attention, c.ffn, &c.layers, c.stack) {
            let (d_in, d_out, b) = (site.in_features, site.out_features, c.bottleneck);
            self.adapters.push(Bottleneck::create(
                ctx,
                &site.name,
                d_in,
                b,
                d_out,
                &c.group,
                c.init_std,
                c.up_init_std,
            )?);
            plan.attachments.push(Attachment {
                site: site.name.clone(),
                role: format!("parallel adapter (b={b}, {})", c.activation.name()),
                unfreeze: vec![],
            });
        }
        let selection = sdk::sublayers(c.attention, c.ffn, &c.layers, c.stack);
        sdk::nonempty("parallel-adapter", plan, "site", selection, backbone)
    }

    fn apply<'c>(
        &self,
        ctx: &'c Ctx<'_>,
        site: &SiteCall<'_>,
        inputs: Vec<Tensor<'c>>,
    ) -> Result<Vec<Tensor<'c>>> {
        let adapter = sdk::attachment("parallel-adapter", &self.adapters, site)?;
        let [x, y]: [Tensor<'c>; 2] = inputs
            .try_into()
            .map_err(|_| ApiError::invalid("parallel-adapter: a sublayer site passes [x, y]"))?;
        let x = x.dropout(if site.training {
            self.config.dropout
        } else {
            0.0
        })?;
        let mut delta = adapter.forward(ctx, x, self.config.activation)?;
        if self.config.scale != 1.0 {
            delta = delta.mul_scalar(self.config.scale)?;
        }
        Ok(vec![y.add(delta)?])
    }
}

peft_api::module_plugin!(parallel_adapter, ParallelAdapterPlugin, ParallelAdapterConfig => ParallelAdapter::new);
