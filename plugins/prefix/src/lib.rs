//! Prefix tuning (Li & Liang, 2021): `P` learned key and value vectors per attention layer,
//! prepended along time at every `AttentionKv` site (on encoder-decoder models: encoder self,
//! decoder self and decoder cross attention, as the paper does; HF peft prefixes the decoder
//! only). The host extends the attention mask with visible positions in front.
//!
//! Plain: per site `<site>.prefix_key`, `<site>.prefix_value` `[P, heads * head_dim]`,
//! `2 P heads head_dim` parameters. Re-parameterised: one embedding `[P, d]`, then
//! `Linear(d, hidden) -> tanh -> Linear(hidden, sites * 2 * heads * head_dim)`, of which each
//! site reads its own rows of the output layer (keys, then values, as HF peft lays them out).
//!
//! Extension calls: `hf_peft_export` / `hf_peft_import` / `hf_peft_module_spec` (HF peft's
//! prefix tuning format where the layouts match, see `hf.rs`), `context_inputs`,
//! `load_generated` (hyper-init).
mod config;
mod hf;

pub use config::{PrefixConfig, Stack};
use peft_api::{
    sdk, ApiError, AttachPlan, Attachment, BackboneInfo, Ctx, Init, Module, Result, SiteCall,
    SiteKind, Tensor,
};

pub struct Prefix {
    config: PrefixConfig,
    /// Site name per attachment.
    sites: Vec<String>,
    /// `heads * head_dim` of the keys and values.
    kv_dim: usize,
    /// Layer index per attachment (where generated prefixes are read from).
    layers: Vec<usize>,
    /// The backbone's shape, for HF peft's format.
    layout: hf::Layout,
}

impl Prefix {
    pub fn new(config: PrefixConfig) -> Self {
        Prefix {
            config,
            sites: Vec::new(),
            kv_dim: 0,
            layers: Vec::new(),
            layout: hf::Layout::default(),
        }
    }

    /// Plain prefix parameters at one site.
    pub fn params_per_site(p: usize, kv_dim: usize) -> usize {
        2 * p * kv_dim
    }

    /// Re-parameterised prefix parameters for `sites` kv sites.
    pub fn reparam_params(p: usize, d: usize, hidden: usize, sites: usize, kv_dim: usize) -> usize {
        let out = sites * 2 * kv_dim;
        p * d + d * hidden + hidden + hidden * out + out
    }

    /// The prefix keys and values of attachment `i`, each `[P, kv_dim]`.
    fn prefixes<'c>(&self, ctx: &'c Ctx<'_>, i: usize) -> Result<(Tensor<'c>, Tensor<'c>)> {
        let d = self.kv_dim;
        if let Some(name) = &self.config.from_context {
            return self.generated(ctx, name, i);
        }
        if !self.config.reparameterize {
            let s = &self.sites[i];
            return Ok((
                ctx.param(&format!("{s}.prefix_key"))?,
                ctx.param(&format!("{s}.prefix_value"))?,
            ));
        }
        let h = ctx
            .param("reparam.embedding")?
            .linear(
                ctx.param("reparam.dense1.weight")?,
                Some(ctx.param("reparam.dense1.bias")?),
            )?
            .tanh()?;
        let (a, b) = (i * 2 * d, (i + 1) * 2 * d);
        let w = ctx.param("reparam.dense2.weight")?.slice(0, a, b)?;
        let bias = ctx.param("reparam.dense2.bias")?.slice(0, a, b)?;
        let kv = h.linear(w, Some(bias))?;
        Ok((kv.clone().slice(1, 0, d)?, kv.slice(1, d, 2 * d)?))
    }
}

impl Prefix {
    /// Attachment `i`'s key and value prefixes from the context tensor `name`
    /// `[L, 2, P, kv_dim]` (computed, e.g. by a hypermodel: gradients flow back into it).
    fn generated<'c>(
        &self,
        ctx: &'c Ctx<'_>,
        name: &str,
        i: usize,
    ) -> Result<(Tensor<'c>, Tensor<'c>)> {
        let g = ctx.context(name).map_err(|e| {
            e.context(format_args!(
                "prefix: reading generated prefixes `{name}` (from_context); is a context encoder producing it?"
            ))
        })?;
        let shape = g.shape()?;
        let (p, d, l) = (self.config.prefix_length, self.kv_dim, self.layers[i]);
        if shape.len() != 4 || shape[0] <= l || shape[1] != 2 || shape[2] != p || shape[3] != d {
            return Err(ApiError::shape(format!(
                "prefix: context `{name}` has shape {shape:?}; layer {l} needs [>{l}, 2, {p}, {d}] (prefix_length {p})"
            )));
        }
        let layer = g.slice(0, l, l + 1)?;
        let key = layer
            .clone()
            .slice(1, 0, 1)?
            .reshape(&[p as i64, d as i64])?;
        let value = layer.slice(1, 1, 2)?.reshape(&[p as i64, d as i64])?;
        Ok((key, value))
    }
}

/// `[P, heads * head_dim]` -> `[batch, heads, P, head_dim]`, then prepended to `x` along time.
fn prepend<'c>(ctx: &'c Ctx<'_>, prefix: Tensor<'c>, x: Tensor<'c>) -> Result<Tensor<'c>> {
    let shape = x.shape()?;
    let [b, heads, _t, dh]: [usize; 4] = shape.clone().try_into().map_err(|_| {
        ApiError::shape(format!(
            "prefix: keys/values must be [batch, heads, time, head_dim], got {shape:?}"
        ))
    })?;
    let pshape = prefix.shape()?;
    if pshape.len() != 2 || pshape[1] != heads * dh {
        return Err(ApiError::shape(format!(
            "prefix: prefix of shape {pshape:?} does not fit keys/values {shape:?}"
        )));
    }
    let p = pshape[0];
    let pre = prefix
        .reshape(&[1, p as i64, heads as i64, dh as i64])?
        .permute(&[0, 2, 1, 3])?
        .expand(&[b, heads, p, dh])?;
    ctx.cat(vec![pre, x], 2)
}

impl Module for Prefix {
    fn attach(&mut self, ctx: &Ctx<'_>, backbone: &BackboneInfo) -> Result<AttachPlan> {
        let c = self.config.clone();
        let mut plan = AttachPlan::default();
        self.kv_dim = backbone.num_heads * backbone.head_dim;
        self.layout = hf::Layout {
            architecture: backbone.architecture.clone(),
            num_layers: backbone.num_layers,
            hidden_size: backbone.hidden_size,
            num_heads: backbone.num_heads,
        };
        let (p, d) = (c.prefix_length, self.kv_dim);
        let std = c.init_std;
        for site in backbone.sites_of_kind(SiteKind::AttentionKv) {
            let wanted_role = c.roles.as_ref().is_none_or(|r| r.contains(&site.role));
            let wanted_layer = match (&c.layers, site.layer) {
                (Some(layers), Some(l)) => layers.contains(&l),
                _ => true,
            };
            if !(wanted_role && wanted_layer && c.stack.includes(&site.stack)) {
                continue;
            }
            let s = &site.name;
            if c.from_context.is_some() && site.layer.is_none() {
                return Err(ApiError::config(format!(
                    "prefix: from_context needs layered kv sites; `{s}` has no layer index"
                )));
            }
            self.layers.push(site.layer.unwrap_or(0));
            if !c.reparameterize && c.from_context.is_none() {
                for kv in ["prefix_key", "prefix_value"] {
                    ctx.create_param(
                        &format!("{s}.{kv}"),
                        &[p, d],
                        &c.group,
                        Init::Normal { mean: 0.0, std },
                    )?;
                }
            }
            self.sites.push(s.clone());
            plan.attachments.push(Attachment {
                site: s.clone(),
                role: format!(
                    "prefix (P={p}{})",
                    if c.reparameterize { ", MLP" } else { "" }
                ),
                unfreeze: vec![],
            });
        }
        let selection = format!(
            "roles={:?}, layers={:?}, stack={:?}",
            c.roles, c.layers, c.stack
        );
        let plan = sdk::nonempty(
            "prefix",
            plan,
            "attention key/value site",
            selection,
            backbone,
        )?;
        if c.reparameterize && c.from_context.is_some() {
            return Err(ApiError::config(
                "prefix: `reparameterize` and `from_context` exclude each other (generated prefixes need no MLP)",
            ));
        }
        if c.reparameterize {
            let (h, hid, out) = (
                backbone.hidden_size,
                c.reparam_hidden,
                self.sites.len() * 2 * d,
            );
            let g = c.group.as_str();
            // The embedding as nn.Embedding, the linears as nn.Linear.
            ctx.create_param(
                "reparam.embedding",
                &[p, h],
                g,
                Init::Normal { mean: 0.0, std },
            )?;
            let b1 = 1.0 / (h as f64).sqrt();
            let b2 = 1.0 / (hid as f64).sqrt();
            ctx.create_param("reparam.dense1.weight", &[hid, h], g, Init::KaimingUniform)?;
            ctx.create_param(
                "reparam.dense1.bias",
                &[hid],
                g,
                Init::Uniform { low: -b1, high: b1 },
            )?;
            ctx.create_param(
                "reparam.dense2.weight",
                &[out, hid],
                g,
                Init::KaimingUniform,
            )?;
            ctx.create_param(
                "reparam.dense2.bias",
                &[out],
                g,
                Init::Uniform { low: -b2, high: b2 },
            )?;
        }
        Ok(plan)
    }

    fn apply<'c>(
        &self,
        ctx: &'c Ctx<'_>,
        site: &SiteCall<'_>,
        inputs: Vec<Tensor<'c>>,
    ) -> Result<Vec<Tensor<'c>>> {
        let i = site.attachment as usize;
        if i >= self.sites.len() {
            return Err(ApiError::invalid("prefix: unknown attachment"));
        }
        let [k, v]: [Tensor<'c>; 2] = inputs
            .try_into()
            .map_err(|_| ApiError::invalid("prefix: a key/value site passes [k, v]"))?;
        let (pk, pv) = self.prefixes(ctx, i)?;
        Ok(vec![prepend(ctx, pk, k)?, prepend(ctx, pv, v)?])
    }

    /// `context_inputs`: the context tensors this module reads. `load_generated`
    /// (`{"context": name}`): hyper-init, writes generated prefixes `[L, 2, P, kv_dim]` from the
    /// pass context into this module's own (plain) parameters with `ASSIGN_PARAM`.
    fn call(
        &mut self,
        ctx: &Ctx<'_>,
        name: &str,
        args: serde_json::Value,
    ) -> Result<serde_json::Value> {
        match name {
            "context_inputs" => Ok(serde_json::json!(self
                .config
                .from_context
                .iter()
                .collect::<Vec<_>>())),
            "load_generated" => {
                if self.config.reparameterize || self.config.from_context.is_some() {
                    return Err(ApiError::config(
                        "prefix: load_generated needs plain prefixes (no reparameterize, no from_context)",
                    ));
                }
                let source = args
                    .get("context")
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| {
                        ApiError::invalid("prefix: load_generated needs {\"context\": name}")
                    })?;
                for i in 0..self.sites.len() {
                    let (k, v) = self.generated(ctx, source, i)?;
                    let s = &self.sites[i];
                    ctx.assign_param(&format!("{s}.prefix_key"), k.detach()?)?;
                    ctx.assign_param(&format!("{s}.prefix_value"), v.detach()?)?;
                }
                Ok(serde_json::json!(self.sites.len()))
            }
            "hf_peft_export" | "hf_peft_import" => {
                let c = &self.config;
                if let Some(why) = hf::mismatch(
                    &self.layout,
                    &self.layers,
                    c.reparameterize,
                    c.from_context.is_some(),
                    self.kv_dim,
                ) {
                    // Unsupported, not an error: the host then saves the module in its own format.
                    return Err(ApiError::unsupported(format!(
                        "prefix: no HF peft form: {why}"
                    )));
                }
                let tensors = hf::key_map(&self.sites, c.prefix_length, self.kv_dim);
                if name == "hf_peft_import" {
                    hf::check(&args, &self.layout, c.prefix_length)?;
                    return Ok(serde_json::json!({ "tensors": tensors }));
                }
                let base = args
                    .get("base_model_name_or_path")
                    .cloned()
                    .unwrap_or(serde_json::Value::Null);
                Ok(serde_json::json!({
                    "adapter_config": hf::peft_config(&self.layout, c.prefix_length, base),
                    "tensors": tensors,
                }))
            }
            // Needs no attached module: asked of a fresh instance before the model is built.
            "hf_peft_module_spec" => Ok(hf::module_spec(&args)?.unwrap_or(serde_json::Value::Null)),
            other => Err(ApiError::unsupported(other)),
        }
    }
}

peft_api::module_plugin!(prefix, PrefixPlugin, PrefixConfig => Prefix::new);
