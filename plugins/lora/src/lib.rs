//! LoRA (Hu et al., 2021): `y' = W x + b + s * B A dropout(x)` on chosen projections, with
//! `s = alpha / r` (`alpha / sqrt(r)` with rsLoRA). `A` `[r, in]` starts Kaiming-uniform (HF
//! peft's init), `B` `[out, r]` at zero, so the module starts as the unchanged backbone.
//! Parameters per target: `r (in + out)`.
//!
//! Extension calls:
//! - `merge` / `unmerge`: fold `s B A` into the backbone weight `<site>.weight` (the projection
//!   site name is its HF module path) and back; while merged, `apply` passes `y` through.
//! - `hf_peft_export` (args: `{"base_model_name_or_path": ...}`): HF peft's `adapter_config.json`
//!   and the file key of each parameter (`base_model.model.<site>.lora_A.weight`).
//! - `hf_peft_import` (args: an `adapter_config.json`): checks that it describes this module and
//!   answers the same key mapping.
//! - `hf_peft_module_spec` (args: an `adapter_config.json`; no attach needed): the module section
//!   (`{"plugin": "lora", "config"}`) that rebuilds the module it describes, `null` when it is
//!   not a LoRA config.
mod config;

pub use config::{LoraConfig, Stack};
use peft_api::{
    ApiError, AttachPlan, Attachment, BackboneInfo, Ctx, Init, Module, Result, SiteCall, SiteInfo,
    SiteKind, Tensor,
};
use serde_json::{json, Value};

/// One adapted projection.
struct Target {
    site: String,
    /// Layer index, and the slot in generated `[L, 2, ...]` tensors (0 query, 1 value).
    layer: usize,
    slot: Option<usize>,
    in_features: usize,
    out_features: usize,
}

pub struct Lora {
    config: LoraConfig,
    /// `target_modules`, resolved against the backbone's architecture at attach.
    target_names: Vec<String>,
    targets: Vec<Target>,
    merged: bool,
}

/// HF peft's matching of `target_modules` entries, plus our site roles.
pub fn matches_target(site: &SiteInfo, target: &str) -> bool {
    site.role == target || site.name == target || site.name.ends_with(&format!(".{target}"))
}

impl Lora {
    pub fn new(config: LoraConfig) -> Self {
        Lora {
            config,
            target_names: Vec::new(),
            targets: Vec::new(),
            merged: false,
        }
    }

    pub fn scale(&self) -> f64 {
        let r = self.config.rank as f64;
        if self.config.use_rslora {
            self.config.alpha / r.sqrt()
        } else {
            self.config.alpha / r
        }
    }

    /// Trainable parameters of one target.
    pub fn params_per_target(in_features: usize, out_features: usize, r: usize) -> usize {
        r * (in_features + out_features)
    }

    /// `s B A` of one target, `[out, in]`.
    fn delta<'c>(&self, ctx: &'c Ctx<'_>, site: &str) -> Result<Tensor<'c>> {
        ctx.param(&format!("{site}.lora_B"))?
            .matmul(ctx.param(&format!("{site}.lora_A"))?)?
            .mul_scalar(self.scale())
    }

    fn fold(&mut self, ctx: &Ctx<'_>, sign: f64) -> Result<()> {
        for t in &self.targets {
            let key = format!("backbone:{}.weight", t.site);
            let w = ctx.param(&key)?;
            let d = self.delta(ctx, &t.site)?;
            let w = if sign > 0.0 { w.add(d)? } else { w.sub(d)? };
            ctx.assign_param(&key, w.detach()?)?;
        }
        Ok(())
    }

    fn key_map(&self) -> Vec<Value> {
        let r = self.config.rank;
        let mut v = Vec::new();
        for t in &self.targets {
            v.push(json!({
                "key": format!("base_model.model.{}.lora_A.weight", t.site),
                "param": format!("{}.lora_A", t.site),
                "shape": [r, t.in_features],
            }));
            v.push(json!({
                "key": format!("base_model.model.{}.lora_B.weight", t.site),
                "param": format!("{}.lora_B", t.site),
                "shape": [t.out_features, r],
            }));
        }
        v
    }

    /// HF peft's `adapter_config.json` for this module.
    fn peft_config(&self, base_model: Value) -> Value {
        let c = &self.config;
        let alpha = if c.alpha.fract() == 0.0 && c.alpha.abs() < 1e15 {
            json!(c.alpha as i64)
        } else {
            json!(c.alpha)
        };
        json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "base_model_name_or_path": base_model,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layer_replication": null,
            "layers_pattern": null,
            "layers_to_transform": c.layers,
            "loftq_config": {},
            "lora_alpha": alpha,
            "lora_bias": false,
            "lora_dropout": c.dropout,
            "megatron_config": null,
            "megatron_core": "megatron.core",
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": c.rank,
            "rank_pattern": {},
            "revision": null,
            "target_modules": self.target_names,
            "task_type": null,
            "use_dora": false,
            "use_rslora": c.use_rslora,
        })
    }

    /// Checks that an HF peft `adapter_config.json` describes what this module computes.
    fn check_peft_config(&self, cfg: &Value) -> Result<()> {
        let c = &self.config;
        let bad = |what: String| {
            Err(ApiError::config(format!(
                "lora: adapter_config.json {what}"
            )))
        };
        match cfg.get("peft_type").and_then(Value::as_str) {
            Some("LORA") => {}
            other => return bad(format!("has peft_type {other:?}, expected \"LORA\"")),
        }
        let r = cfg.get("r").and_then(Value::as_u64);
        if r != Some(c.rank as u64) {
            return bad(format!("has r = {r:?}, this module has rank {}", c.rank));
        }
        let alpha = cfg.get("lora_alpha").and_then(Value::as_f64);
        if alpha != Some(c.alpha) {
            return bad(format!(
                "has lora_alpha = {alpha:?}, this module has alpha {}",
                c.alpha
            ));
        }
        let flag = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(false);
        if flag("use_rslora") != c.use_rslora {
            return bad(format!(
                "has use_rslora = {}, this module has {}",
                flag("use_rslora"),
                c.use_rslora
            ));
        }
        for k in ["fan_in_fan_out", "use_dora", "lora_bias"] {
            if flag(k) {
                return bad(format!("sets `{k}`, which this plugin does not support"));
            }
        }
        if let Some(b) = cfg.get("bias").and_then(Value::as_str) {
            if b != "none" {
                return bad(format!("has bias = {b:?}; only \"none\" is supported"));
            }
        }
        for k in ["rank_pattern", "alpha_pattern"] {
            if cfg
                .get(k)
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
            {
                return bad(format!("sets `{k}`, which this plugin does not support"));
            }
        }
        Ok(())
    }
}

impl Module for Lora {
    fn attach(&mut self, ctx: &Ctx<'_>, backbone: &BackboneInfo) -> Result<AttachPlan> {
        let c = self.config.clone();
        self.target_names = c
            .targets
            .clone()
            .unwrap_or_else(|| config::default_targets(&backbone.architecture));
        let mut plan = AttachPlan::default();
        for site in backbone.sites_of_kind(SiteKind::Projection) {
            if !self.target_names.iter().any(|t| matches_target(site, t)) {
                continue;
            }
            let wanted_layer = match (&c.layers, site.layer) {
                (Some(layers), Some(l)) => layers.contains(&l),
                _ => true,
            };
            if !(wanted_layer && c.stack.includes(&site.stack)) {
                continue;
            }
            let (p, r) = (&site.name, c.rank);
            let slot = generated_slot(&site.role);
            if c.from_context.is_some() && (slot.is_none() || site.layer.is_none()) {
                return Err(ApiError::config(format!(
                    "lora: from_context covers the query and value projections of each layer; `{p}` (role {}) is not one",
                    site.role
                )));
            }
            // A generated tensor has one slot per layer and projection: two sites reading the
            // same one (encoder and decoder, or self- and cross-attention of a T5 decoder)
            // would silently share it.
            if let Some(o) = self.targets.iter().find(|t| {
                c.from_context.is_some() && t.layer == site.layer.unwrap_or(0) && t.slot == slot
            }) {
                return Err(ApiError::config(format!(
                    "lora: from_context `{}`: `{}` and `{p}` would read the same generated slot (layer {}, {}); restrict `stack` or `targets` (e.g. `SelfAttention.q`) so that one module covers one attention kind",
                    c.from_context.as_deref().unwrap_or_default(),
                    o.site,
                    o.layer,
                    site.role
                )));
            }
            self.targets.push(Target {
                site: p.clone(),
                layer: site.layer.unwrap_or(0),
                slot,
                in_features: site.in_features,
                out_features: site.out_features,
            });
            plan.attachments.push(Attachment {
                site: p.clone(),
                role: format!("lora (r={r}, alpha={})", c.alpha),
                unfreeze: vec![],
            });
            if c.from_context.is_some() {
                continue;
            }
            ctx.create_param(
                &format!("{p}.lora_A"),
                &[r, site.in_features],
                &c.group,
                Init::KaimingUniform,
            )?;
            let b_init = if c.b_init_std == 0.0 {
                Init::Zeros
            } else {
                Init::Normal {
                    mean: 0.0,
                    std: c.b_init_std,
                }
            };
            ctx.create_param(
                &format!("{p}.lora_B"),
                &[site.out_features, r],
                &c.group,
                b_init,
            )?;
        }
        if plan.attachments.is_empty() {
            let roles: std::collections::BTreeSet<&str> = backbone
                .sites_of_kind(SiteKind::Projection)
                .map(|s| s.role.as_str())
                .collect();
            return Err(ApiError::config(format!(
                "lora: no projection matches targets {:?} (layers={:?}, stack={:?}) on backbone `{}`; its projection roles are {roles:?}",
                self.target_names, c.layers, c.stack, backbone.name
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
        let [x, y]: [Tensor<'c>; 2] = inputs
            .try_into()
            .map_err(|_| ApiError::invalid("lora: a projection site passes [x, y]"))?;
        if self.merged {
            return Ok(vec![y]);
        }
        let t = self
            .targets
            .get(site.attachment as usize)
            .ok_or_else(|| ApiError::invalid("lora: unknown attachment"))?;
        let p = &t.site;
        let dropout = if site.training {
            self.config.dropout
        } else {
            0.0
        };
        let (a, b) = match &self.config.from_context {
            Some(name) => self.generated(ctx, name, t)?,
            None => (
                ctx.param(&format!("{p}.lora_A"))?,
                ctx.param(&format!("{p}.lora_B"))?,
            ),
        };
        // The scale multiplies B ([out, r]) rather than the product ([tokens, out]): the same
        // values up to rounding, one pass over a small matrix instead of the whole output.
        let delta = x
            .dropout(dropout)?
            .linear(a, None)?
            .linear(b.mul_scalar(self.scale())?, None)?;
        Ok(vec![y.add(delta)?])
    }

    fn merge(&mut self, ctx: &Ctx<'_>) -> Result<()> {
        if self.merged {
            return Err(ApiError::invalid("lora: already merged"));
        }
        if self.config.from_context.is_some() {
            return Err(ApiError::config(
                "lora: generated (from_context) updates change per task and cannot be merged",
            ));
        }
        self.fold(ctx, 1.0)?;
        self.merged = true;
        Ok(())
    }

    fn unmerge(&mut self, ctx: &Ctx<'_>) -> Result<()> {
        if !self.merged {
            return Err(ApiError::invalid("lora: not merged"));
        }
        self.fold(ctx, -1.0)?;
        self.merged = false;
        Ok(())
    }

    fn call(&mut self, ctx: &Ctx<'_>, name: &str, args: Value) -> Result<Value> {
        match name {
            "merged" => Ok(json!(self.merged)),
            "context_inputs" => Ok(json!(self
                .config
                .from_context
                .iter()
                .flat_map(|n| [format!("{n}_A"), format!("{n}_B")])
                .collect::<Vec<_>>())),
            // Hyper-init: generated A and B (`{"context": name}`) into own parameters.
            "load_generated" => {
                if self.config.from_context.is_some() {
                    return Err(ApiError::config(
                        "lora: load_generated needs own parameters (no from_context)",
                    ));
                }
                let source = args.get("context").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid("lora: load_generated needs {\"context\": name}")
                })?;
                for t in &self.targets {
                    let (a, b) = self.generated(ctx, source, t)?;
                    ctx.assign_param(&format!("{}.lora_A", t.site), a.detach()?)?;
                    ctx.assign_param(&format!("{}.lora_B", t.site), b.detach()?)?;
                }
                Ok(json!(self.targets.len()))
            }
            "hf_peft_export" => {
                let base = args
                    .get("base_model_name_or_path")
                    .cloned()
                    .unwrap_or(Value::Null);
                Ok(json!({
                    "adapter_config": self.peft_config(base),
                    "tensors": self.key_map(),
                }))
            }
            // Needs no attached module: the host asks a fresh instance which module an HF
            // peft folder describes before building the model.
            "hf_peft_module_spec" => Ok(config::from_hf_peft(&args)?.unwrap_or(Value::Null)),
            "hf_peft_import" => {
                self.check_peft_config(&args)?;
                Ok(json!({ "tensors": self.key_map() }))
            }
            other => Err(ApiError::unsupported(other)),
        }
    }
}

/// The slot of a projection in generated `[L, 2, ...]` tensors: 0 query, 1 value.
fn generated_slot(role: &str) -> Option<usize> {
    match role {
        "query" | "q" | "q_proj" => Some(0),
        "value" | "v" | "v_proj" => Some(1),
        _ => None,
    }
}

impl Lora {
    /// A `[r, in]` and B `[out, r]` of target `t` from the context tensors `<name>_A`
    /// `[L, 2, r, in]` and `<name>_B` `[L, 2, out, r]`.
    fn generated<'c>(
        &self,
        ctx: &'c Ctx<'_>,
        name: &str,
        t: &Target,
    ) -> Result<(Tensor<'c>, Tensor<'c>)> {
        let slot = t.slot.ok_or_else(|| {
            ApiError::config(format!(
                "lora: `{}` is neither a query nor a value projection; generated LoRA covers only those",
                t.site
            ))
        })?;
        let r = self.config.rank;
        let mut out = Vec::new();
        for (suffix, want) in [("A", [r, t.in_features]), ("B", [t.out_features, r])] {
            let key = format!("{name}_{suffix}");
            let g = ctx.context(&key).map_err(|e| {
                e.context(format_args!(
                    "lora: reading generated `{key}` (from_context); is a context encoder producing it?"
                ))
            })?;
            let shape = g.shape()?;
            if shape.len() != 4 || shape[0] <= t.layer || shape[1] != 2 || shape[2..] != want {
                return Err(ApiError::shape(format!(
                    "lora: context `{key}` has shape {shape:?}; layer {} needs [>{}, 2, {}, {}] (rank {r})",
                    t.layer, t.layer, want[0], want[1]
                )));
            }
            out.push(
                g.slice(0, t.layer, t.layer + 1)?
                    .slice(1, slot, slot + 1)?
                    .reshape(&[want[0] as i64, want[1] as i64])?,
            );
        }
        let b = out.pop().unwrap();
        let a = out.pop().unwrap();
        Ok((a, b))
    }
}

peft_api::module_plugin!(lora, LoraPlugin, LoraConfig => Lora::new);
