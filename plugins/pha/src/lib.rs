//! PHA, the prototype-based hyperadapter (Zhao et al., 2023; seed 000, METHODS.md "PHA"). One
//! module plays three roles at different sites:
//!
//! - **Shared adapters** below the split: plain parallel adapters at the FFN sublayers.
//! - **The retriever** at the split's `Hidden` site: mean-pools the hidden state over real
//!   tokens, maps it through the instance-dense retriever `G` (two linears, ReLU) to `z`, and in
//!   training adds `λ·L_IR` (supervised InfoNCE over the batch, positives = same task) and
//!   `λ·L_Pro` (cross-entropy of `cos(z, k)/τ` against the example's own prototype). It picks
//!   each example's prototype — its task's (`CONTEXT("task_ids")`), the one `retrieve` chose, or
//!   else the nearest to its `z` — and publishes it as `pha.prototype`.
//! - **Generated adapters** above the split: per example, `I_m = C([k; e_m])`, the hypernetwork
//!   `H` emits `D_m [d, b]` and `U_m [b, d]`, applied with batched `MATMUL` as a parallel adapter
//!   `y + act(x D_m) U_m`. The weights are per example, so one batch can mix tasks.
//!
//! Encoder-only backbones split at `split_layer`; encoder-decoder backbones put the shared
//! adapters in the encoder, the retriever on the last encoder layer's output and the generated
//! adapters in the decoder.
mod config;
mod losses;

pub use config::{Activation, PhaConfig};
use peft_api::{
    blocks::Bottleneck, ApiError, AttachPlan, Attachment, BackboneInfo, Ctx, ErrorKind, Init,
    Manifest, Module, Plugin, PluginKind, Result, SiteCall, SiteInfo, SiteKind, Tensor,
};
use serde_json::{json, Value};

/// What the module does at one attachment.
enum Role {
    Shared(Bottleneck),
    Retriever,
    /// A generated adapter; the index is its row of the layer embeddings.
    Generated(usize),
}

/// Sizes fixed at attach time.
#[derive(Clone, Copy, Debug, Default)]
struct Dims {
    hidden: usize,
    tasks: usize,
}

pub struct Pha {
    config: PhaConfig,
    roles: Vec<Role>,
    dims: Dims,
    /// The prototype `retrieve` picked (or `use_prototype` set): used for every example of a
    /// pass that carries no task ids.
    active: Option<usize>,
}

/// Which sites each role attaches to.
pub struct Layout<'a> {
    pub shared: Vec<&'a SiteInfo>,
    pub retriever: &'a SiteInfo,
    pub generated: Vec<&'a SiteInfo>,
}

/// Splits the backbone's sites into PHA's three roles (see the module doc).
pub fn layout<'a>(c: &PhaConfig, b: &'a BackboneInfo) -> Result<Layout<'a>> {
    let ffn = |stack: &'static str| {
        b.sites_of_kind(SiteKind::Sublayer)
            .filter(move |s| s.role == "ffn" && s.stack == stack)
    };
    let hidden = |layer: usize| {
        b.sites_of_kind(SiteKind::Hidden)
            // The layer's output state, not the FFN's intermediate activation (also `Hidden`).
            .find(|s| {
                s.stack == "encoder" && s.layer == Some(layer) && s.role != "ffn_intermediate"
            })
            .ok_or_else(|| {
                ApiError::config(format!(
                    "pha: backbone `{}` has no hidden-state site after encoder layer {layer}",
                    b.name
                ))
            })
    };
    if b.num_decoder_layers > 0 {
        if b.num_layers == 0 {
            return Err(ApiError::config("pha: the backbone has no encoder layer"));
        }
        return Ok(Layout {
            shared: ffn("encoder").collect(),
            retriever: hidden(b.num_layers - 1)?,
            generated: ffn("decoder").collect(),
        });
    }
    let l = b.num_layers;
    let s = c.split_layer.unwrap_or(l / 2);
    if s == 0 || s >= l {
        return Err(ApiError::config(format!(
            "pha: /split_layer must be in 1..{l} on backbone `{}` ({l} layers), got {s}",
            b.name
        )));
    }
    let below = |site: &&SiteInfo| site.layer.is_some_and(|m| m < s);
    Ok(Layout {
        shared: ffn("encoder").filter(below).collect(),
        retriever: hidden(s - 1)?,
        generated: ffn("encoder").filter(|x| !below(x)).collect(),
    })
}

impl Pha {
    pub fn new(config: PhaConfig) -> Self {
        Pha {
            config,
            roles: Vec::new(),
            dims: Dims::default(),
            active: None,
        }
    }

    /// Trainable parameters for a hidden size `d`, `shared` shared adapters, `generated`
    /// generated adapters and `tasks` prototypes:
    /// shared `(2 d b_s + d + b_s)` each; retriever `d r + r + r z + z`; prototypes `T z`;
    /// layer embeddings `M e`; projector `(z + e) p + p`; hypernetwork
    /// `p h + h + 2 (h d b + d b)`.
    pub fn parameter_count(
        c: &PhaConfig,
        d: usize,
        shared: usize,
        generated: usize,
        tasks: usize,
    ) -> usize {
        let (z, r, e, p, h, b) = (
            c.z_dim,
            c.retriever_hidden,
            c.layer_embedding_dim,
            c.projector_dim,
            c.hyper_hidden,
            c.bottleneck,
        );
        shared * Bottleneck::params(d, c.shared_bottleneck, d)
            + (d * r + r + r * z + z)
            + tasks * z
            + generated * e
            + ((z + e) * p + p)
            + (p * h + h + 2 * (h * d * b + d * b))
    }

    fn linear<'c>(ctx: &'c Ctx<'_>, x: Tensor<'c>, name: &str) -> Result<Tensor<'c>> {
        x.linear(
            ctx.param(&format!("{name}.weight"))?,
            Some(ctx.param(&format!("{name}.bias"))?),
        )
    }

    /// The retriever's site: `z`, the losses, and each example's prototype.
    fn retrieve_at<'c>(
        &self,
        ctx: &'c Ctx<'_>,
        site: &SiteCall<'_>,
        h: Tensor<'c>,
    ) -> Result<Tensor<'c>> {
        let c = &self.config;
        let shape = h.shape()?;
        let &[n, t, d] = shape.as_slice() else {
            return Err(ApiError::shape(format!(
                "pha: the retriever reads [batch, time, hidden], got {shape:?}"
            )));
        };
        let mask = match optional(ctx.context("attention_mask"))? {
            Some(m) => {
                let m = m.to_ints()?;
                if m.len() != n * t {
                    return Err(ApiError::shape(format!(
                        "pha: attention_mask has {} entries, the hidden state [{n}, {t}, {d}] needs {}",
                        m.len(),
                        n * t
                    )));
                }
                m.into_iter().map(|v| (v != 0) as u8 as f32).collect()
            }
            None => vec![1.0; n * t],
        };
        let counts: Vec<f32> = mask
            .chunks(t)
            .map(|r| r.iter().sum::<f32>().max(1.0))
            .collect();
        let pooled = h
            .clone()
            .mul(ctx.from_data(&[n, t, 1], mask)?)?
            .sum_dim(1)?
            .div(ctx.from_data(&[n, 1, 1], counts)?)?
            .reshape(&[n as i64, d as i64])?;
        let z = Self::linear(
            ctx,
            Self::linear(ctx, pooled, "retriever.fc1")?.relu()?,
            "retriever.fc2",
        )?;
        ctx.set_context("pha.z", z.clone())?;
        let ids = match optional(ctx.context("task_ids"))? {
            Some(ids) => {
                let ids = ids.to_ints()?;
                if ids.len() != n {
                    return Err(ApiError::shape(format!(
                        "pha: task_ids has {} entries for a batch of {n}",
                        ids.len()
                    )));
                }
                if let Some(bad) = ids
                    .iter()
                    .find(|&&i| i < 0 || i as usize >= self.dims.tasks)
                {
                    return Err(ApiError::invalid(format!(
                        "pha: task id {bad} out of range: this module has {} prototypes (num_tasks)",
                        self.dims.tasks
                    )));
                }
                Some(ids)
            }
            None => None,
        };
        let k = ctx.param("prototypes")?;
        let chosen: Vec<i64> = match (&ids, self.active) {
            (Some(ids), _) => ids.clone(),
            (None, Some(a)) => vec![a as i64; n],
            (None, None) => losses::nearest(&z, &k, self.dims.tasks)?,
        };
        let selected = k.clone().index_select(0, ctx.from_ints(&[n], chosen)?)?;
        ctx.set_context("pha.prototype", selected)?;
        if let Some(ids) = ids.filter(|_| site.training) {
            // Single-task batches (adapting to a new task) train on the task loss alone, as the
            // paper fine-tunes a new task with cross-entropy only.
            let distinct = ids.iter().collect::<std::collections::BTreeSet<_>>().len();
            if distinct >= 2 {
                if c.retrieval_loss {
                    if let Some(l) = losses::info_nce(ctx, z.clone(), &ids, c.temperature)? {
                        ctx.add_loss(l, c.lambda)?;
                    }
                }
                if c.prototype_loss {
                    let l = losses::prototype(ctx, z, k, &ids, c.temperature)?;
                    ctx.add_loss(l, c.lambda)?;
                }
            }
        }
        Ok(h)
    }

    /// A generated parallel adapter: `y + act(x D) U` with `(D, U) = H(C([k; e_m]))` per example.
    fn generated_at<'c>(
        &self,
        ctx: &'c Ctx<'_>,
        site: &SiteCall<'_>,
        row: usize,
        x: Tensor<'c>,
        y: Tensor<'c>,
    ) -> Result<Tensor<'c>> {
        let c = &self.config;
        let shape = x.shape()?;
        let (n, d, b) = (shape[0], self.dims.hidden, c.bottleneck);
        let k = optional(ctx.context("pha.prototype"))?.ok_or_else(|| {
            ApiError::invalid(format!(
                "pha: the generated adapter at `{}` ran before the retriever (no prototype in this pass)",
                site.site
            ))
        })?;
        let e = ctx
            .param("layer_embeddings")?
            .slice(0, row, row + 1)?
            .expand(&[n, c.layer_embedding_dim])?;
        let mixed = Self::linear(ctx, ctx.cat(vec![k, e], 1)?, "projector")?;
        let hid = Self::linear(ctx, mixed, "hyper.fc")?.relu()?;
        let down = Self::linear(ctx, hid.clone(), "hyper.down")?
            .reshape(&[n as i64, d as i64, b as i64])?;
        let up = Self::linear(ctx, hid, "hyper.up")?.reshape(&[n as i64, b as i64, d as i64])?;
        let delta = x
            .matmul(down)?
            .activation(c.activation.name())?
            .matmul(up)?;
        y.add(delta)
    }
}

/// `Ok(None)` for a context tensor the pass does not carry.
fn optional(r: Result<Tensor<'_>>) -> Result<Option<Tensor<'_>>> {
    match r {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind == ErrorKind::NOT_FOUND => Ok(None),
        Err(e) => Err(e),
    }
}

impl Module for Pha {
    fn attach(&mut self, ctx: &Ctx<'_>, backbone: &BackboneInfo) -> Result<AttachPlan> {
        let c = self.config.clone();
        let tasks = c.num_tasks.ok_or_else(|| {
            ApiError::config(
                "pha: /num_tasks is not set (one prototype per training task; `run` fills it in from the tasks)",
            )
        })?;
        let lay = layout(&c, backbone)?;
        let d = backbone.hidden_size;
        if lay.generated.is_empty() {
            return Err(ApiError::config(format!(
                "pha: backbone `{}` has no FFN site above the split for generated adapters",
                backbone.name
            )));
        }
        for s in lay.shared.iter().chain(&lay.generated) {
            if s.in_features != d || s.out_features != d {
                return Err(ApiError::shape(format!(
                    "pha: site `{}` is {} -> {}, generated and shared adapters need {d} -> {d}",
                    s.name, s.in_features, s.out_features
                )));
            }
        }
        self.dims = Dims { hidden: d, tasks };
        let mut plan = AttachPlan::default();
        let mut attach = |site: &SiteInfo, role: Role, what: String| {
            self.roles.push(role);
            plan.attachments.push(Attachment {
                site: site.name.clone(),
                role: what,
                unfreeze: vec![],
            });
        };
        for s in &lay.shared {
            let b = c.shared_bottleneck;
            let bn = Bottleneck::create(
                ctx,
                &format!("shared.{}", s.name),
                d,
                b,
                d,
                "adapter",
                c.init_std,
                0.0,
            )?;
            attach(
                s,
                Role::Shared(bn),
                format!("shared parallel adapter (b={b})"),
            );
        }
        let (z, r) = (c.z_dim, c.retriever_hidden);
        let normal = |std: f64| Init::Normal { mean: 0.0, std };
        ctx.create_param(
            "retriever.fc1.weight",
            &[r, d],
            "retriever",
            Init::KaimingUniform,
        )?;
        ctx.create_param("retriever.fc1.bias", &[r], "retriever", Init::Zeros)?;
        ctx.create_param(
            "retriever.fc2.weight",
            &[z, r],
            "retriever",
            Init::KaimingUniform,
        )?;
        ctx.create_param("retriever.fc2.bias", &[z], "retriever", Init::Zeros)?;
        ctx.create_param("prototypes", &[tasks, z], "prototype", normal(1.0))?;
        attach(
            lay.retriever,
            Role::Retriever,
            format!("instance retriever (z={z}, {tasks} prototypes)"),
        );
        let (e, p, h, b) = (
            c.layer_embedding_dim,
            c.projector_dim,
            c.hyper_hidden,
            c.bottleneck,
        );
        let m = lay.generated.len();
        ctx.create_param("layer_embeddings", &[m, e], "hyper", normal(1.0))?;
        ctx.create_param(
            "projector.weight",
            &[p, z + e],
            "hyper",
            Init::XavierUniform,
        )?;
        ctx.create_param("projector.bias", &[p], "hyper", Init::Zeros)?;
        ctx.create_param("hyper.fc.weight", &[h, p], "hyper", Init::KaimingUniform)?;
        ctx.create_param("hyper.fc.bias", &[h], "hyper", Init::Zeros)?;
        // D starts like a plain adapter's down projection (its bias carries the init_std
        // normal) with a small task-dependent part; U starts at zero, so the generated adapters
        // start as no-ops.
        ctx.create_param("hyper.down.weight", &[d * b, h], "hyper", normal(1e-3))?;
        ctx.create_param("hyper.down.bias", &[d * b], "hyper", normal(c.init_std))?;
        ctx.create_param("hyper.up.weight", &[b * d, h], "hyper", Init::Zeros)?;
        ctx.create_param("hyper.up.bias", &[b * d], "hyper", Init::Zeros)?;
        for (row, s) in lay.generated.iter().enumerate() {
            attach(
                s,
                Role::Generated(row),
                format!("generated parallel adapter (b={b}, layer embedding {row})"),
            );
        }
        Ok(plan)
    }

    fn apply<'c>(
        &self,
        ctx: &'c Ctx<'_>,
        site: &SiteCall<'_>,
        inputs: Vec<Tensor<'c>>,
    ) -> Result<Vec<Tensor<'c>>> {
        let role = self
            .roles
            .get(site.attachment as usize)
            .ok_or_else(|| ApiError::invalid("pha: unknown attachment"))?;
        let pair = |inputs: Vec<Tensor<'c>>| -> Result<[Tensor<'c>; 2]> {
            inputs
                .try_into()
                .map_err(|_| ApiError::invalid("pha: a sublayer site passes [x, y]"))
        };
        Ok(vec![match role {
            Role::Shared(bn) => {
                let [x, y] = pair(inputs)?;
                y.add(bn.forward(ctx, x, self.config.activation)?)?
            }
            Role::Retriever => {
                let h = inputs
                    .into_iter()
                    .next()
                    .ok_or_else(|| ApiError::invalid("pha: a hidden site passes [h]"))?;
                self.retrieve_at(ctx, site, h)?
            }
            Role::Generated(row) => {
                let [x, y] = pair(inputs)?;
                self.generated_at(ctx, site, *row, x, y)?
            }
        }])
    }

    /// `retrieve`: averages `z` over a new task's examples (`{"z": [[..], ..]}`, or this pass's
    /// `pha.z`), picks the prototype of highest cosine and uses it for passes without task
    /// ids; answers `{"picked", "picked_task", "tasks", "cosines", "examples"}`. `use_prototype`: `{"index": i}` sets
    /// it, `{"index": null}` goes back to per-example nearest prototypes.
    fn call(&mut self, ctx: &Ctx<'_>, name: &str, args: Value) -> Result<Value> {
        match name {
            "retrieve" => {
                let z = self.config.z_dim;
                let rows: Vec<Vec<f32>> = match args.get("z") {
                    Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                        ApiError::invalid(format!("pha: retrieve: /z must be rows of numbers: {e}"))
                    })?,
                    None => {
                        let t = optional(ctx.context("pha.z"))?.ok_or_else(|| {
                            ApiError::invalid(
                                "pha: retrieve needs {\"z\": rows} or a pass that ran the retriever",
                            )
                        })?;
                        t.to_vec()?.chunks(z).map(|r| r.to_vec()).collect()
                    }
                };
                let k = ctx.param("prototypes")?.to_vec()?;
                let (picked, cosines) = losses::retrieve(&rows, &k, z)?;
                self.active = Some(picked);
                Ok(json!({
                    "picked": picked,
                    "picked_task": self.config.task_names.get(picked),
                    "tasks": self.config.task_names,
                    "cosines": cosines,
                    "examples": rows.len()
                }))
            }
            "use_prototype" => {
                self.active = match args.get("index").and_then(Value::as_u64) {
                    Some(i) if (i as usize) < self.dims.tasks => Some(i as usize),
                    Some(i) => {
                        return Err(ApiError::invalid(format!(
                            "pha: use_prototype: /index {i} out of range (num_tasks {})",
                            self.dims.tasks
                        )))
                    }
                    None => None,
                };
                Ok(json!({"active": self.active}))
            }
            other => Err(ApiError::unsupported(other)),
        }
    }
}

pub struct PhaPlugin;

impl Plugin for PhaPlugin {
    fn manifest() -> Manifest {
        Manifest {
            name: "pha".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Module,
            api_version: String::new(),
            description: "Prototype-based hyperadapter: instance retriever, task prototypes and a hypernetwork generating per-example parallel adapters (Zhao et al., 2023)".into(),
            config_schema: serde_json::to_value(schemars::schema_for!(PhaConfig))
                .expect("schema"),
            groups: vec![
                "adapter".into(),
                "retriever".into(),
                "prototype".into(),
                "hyper".into(),
            ],
        }
    }

    fn create_module(config: &Value) -> Result<Box<dyn Module>> {
        Ok(Box::new(Pha::new(config::parse(config)?)))
    }
}

peft_api::export_plugin!(pha, PhaPlugin);
