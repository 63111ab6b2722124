//! A module written against peft-api 1.0: adds a learned bias after every FFN block.
use peft_api::{
    ApiError, AttachPlan, Attachment, BackboneInfo, Ctx, Init, Manifest, Module, Plugin, PluginKind, Result, SiteCall,
    SiteKind, Tensor,
};

pub struct OldBias {
    names: Vec<String>,
}

impl Module for OldBias {
    fn attach(&mut self, ctx: &Ctx<'_>, backbone: &BackboneInfo) -> Result<AttachPlan> {
        let mut plan = AttachPlan::default();
        for site in backbone.sites_of_kind(SiteKind::Sublayer).filter(|s| s.role == "ffn") {
            let name = format!("{}.bias", site.name);
            ctx.create_param(&name, &[site.out_features], "adapter", Init::Constant { value: 0.5 })?;
            self.names.push(name);
            plan.attachments.push(Attachment { site: site.name.clone(), role: "bias (API 1.0 plugin)".into(), unfreeze: vec![] });
        }
        Ok(plan)
    }

    fn apply<'c>(&self, ctx: &'c Ctx<'_>, site: &SiteCall<'_>, inputs: Vec<Tensor<'c>>) -> Result<Vec<Tensor<'c>>> {
        let y = inputs.into_iter().nth(1).ok_or_else(|| ApiError::invalid("expected [x, y]"))?;
        let b = ctx.param(&self.names[site.attachment as usize])?;
        Ok(vec![y.add(b)?])
    }
}

pub struct OldBiasPlugin;

impl Plugin for OldBiasPlugin {
    fn manifest() -> Manifest {
        Manifest {
            name: "old-bias".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Module,
            api_version: String::new(),
            description: "test plugin built against peft-api 1.0".into(),
            config_schema: serde_json::json!({"type": "object"}),
            groups: vec!["adapter".into()],
        }
    }

    fn create_module(_config: &serde_json::Value) -> Result<Box<dyn Module>> {
        Ok(Box::new(OldBias { names: vec![] }))
    }
}

peft_api::export_plugin!(old_bias, OldBiasPlugin);
