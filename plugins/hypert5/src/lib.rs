//! HyperT5 / hypertuning (Phang et al., 2022): a context encoder
//! whose hypermodel reads a task's few-shot examples and generates per-layer prefixes and/or
//! LoRA A and B for query and value, stored in the pass context for the `prefix` and `lora`
//! modules configured with `from_context`.
//!
//! On T5 the hypermodel is an encoder copy over the examples and a decoder copy fed learned
//! queries, generating prefixes and/or LoRA A and B for all three attention kinds (`t5.rs`). On BERT-family
//! encoders — the rest of this file — it is (group `hyper`): a trainable copy of the backbone's encoder layers and embedding
//! LayerNorm, initialised from the backbone weights (`PARAM("backbone:…")` then
//! `ASSIGN_PARAM`; the word, position and type embeddings are read from the frozen backbone),
//! then one single-head attention block whose learned queries (one per layer and generated
//! kind) attend over the tokens of all `k` examples, then one MLP head per kind
//! (`Linear -> GELU -> Linear`).
//!
//! Outputs (`<name>` = `context_name`): `<name>.prefix` `[L, 2, P, heads * head_dim]` (key,
//! value); `<name>.lora_A` `[L, 2, r, H]` and `<name>.lora_B` `[L, 2, H, r]` (query, value).
//! Also `<name>.summary`, the learned-query block's output `[queries, H]`, for tests.
//!
//! `encode` inputs: `input_ids`, `attention_mask`, `token_type_ids`, each int `[k, T]`.
//! Extension calls: `outputs` (the context names it sets), `host_options` (`k`,
//! `max_length`, `consumers`), `parameter_count`.
mod config;
mod t5;

pub use config::{Generated, HyperT5Config};
use peft_api::{
    ApiError, AttachPlan, BackboneInfo, ContextEncoderImpl, Ctx, Init, Manifest, OpCode, Plugin,
    PluginKind, Result, Tensor,
};
use serde_json::{json, Value};

/// The per-layer weights of a BERT encoder layer, with their HF names.
const LAYER_WEIGHTS: [&str; 16] = [
    "attention.self.query.weight",
    "attention.self.query.bias",
    "attention.self.key.weight",
    "attention.self.key.bias",
    "attention.self.value.weight",
    "attention.self.value.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
];

/// BERT's LayerNorm epsilon (HF default, MiniLM's config).
const EPS: f64 = 1e-12;

/// Which tokens of the examples attention sees: the 0/1 mask `[k, T]` for the host's fused
/// `ATTENTION` (API 1.2), or on an older host BERT's additive mask `[k, T]` (0 on tokens,
/// −10000 on padding) for the composed ops.
enum Mask<'c> {
    Keep(Tensor<'c>),
    Additive(Tensor<'c>),
}

/// Whether the host runs `op` (its minor version is at least the op's): the fused attention
/// ops where it does, the composed chain on an older host.
pub(crate) fn has(ctx: &Ctx<'_>, op: OpCode) -> bool {
    ctx.graph().version().minor >= op.since_minor().unwrap_or(u32::MAX)
}

pub struct HyperT5 {
    config: HyperT5Config,
    info: BackboneInfo,
    /// Encoder layers copied into the hypermodel.
    layers: usize,
    /// Decoder layers copied (T5).
    decoder_layers: usize,
    /// T5 v1.1's gated FFN (`wi_0`, `wi_1`) rather than v1.0's `wi`.
    gated: bool,
    params: usize,
}

impl HyperT5 {
    pub fn new(config: HyperT5Config) -> Self {
        HyperT5 {
            config,
            info: BackboneInfo::default(),
            layers: 0,
            decoder_layers: 0,
            gated: false,
            params: 0,
        }
    }

    fn kinds(&self) -> Vec<Generated> {
        let mut v = Vec::new();
        for g in [Generated::Prefix, Generated::Lora] {
            if self.config.generate.contains(&g) {
                v.push(g);
            }
        }
        v
    }

    /// Output width per layer of one generated kind's heads: `2 P inner` (prefix keys and
    /// values), `2 r (d_model + inner)` (A `[r, d_model]` and B `[inner, r]` of `q` and `v`).
    /// BERT-family backbones have inner = d_model; T5's may differ.
    pub(crate) fn out_width(&self, g: Generated) -> usize {
        let (d, inner) = (
            self.info.hidden_size,
            self.info.num_heads * self.info.head_dim,
        );
        match g {
            Generated::Prefix => 2 * self.config.prefix_length * inner,
            Generated::Lora => 2 * self.config.lora_rank * (d + inner),
        }
    }

    fn create(&mut self, ctx: &Ctx<'_>, name: &str, shape: &[usize], init: Init) -> Result<()> {
        let group = self.config.group.clone();
        self.create_in(ctx, &group, name, shape, init)
    }

    fn create_in(
        &mut self,
        ctx: &Ctx<'_>,
        group: &str,
        name: &str,
        shape: &[usize],
        init: Init,
    ) -> Result<()> {
        self.params += shape.iter().product::<usize>();
        ctx.create_param(name, shape, group, init)?;
        Ok(())
    }

    fn copy(&mut self, ctx: &Ctx<'_>, key: &str) -> Result<()> {
        let w = ctx
            .param(&format!("backbone:{key}"))
            .map_err(|e| e.context(format_args!("hypert5: reading backbone weight `{key}`")))?;
        let shape = w.shape()?;
        // In `encoder_group` when given (or `group`).
        let group = (self.config.encoder_group.as_ref()).unwrap_or(&self.config.group);
        let group = group.clone();
        // Created, then given the backbone's values (widened to f32 by `PARAM`) inside the
        // host with `ASSIGN_PARAM`: `Init::Data` would carry every value through the ABI as
        // JSON text, ~3 s for MiniLM's 10.6 M encoder weights.
        self.create_in(ctx, &group, key, &shape, Init::Zeros)?;
        ctx.assign_param(key, w)
    }

    /// The MLP head `dense1 [hid, h] -> GELU -> dense2 [out, hid]` of one generated kind;
    /// `dense2` starts small (`out_init_std`).
    fn create_head(
        &mut self,
        ctx: &Ctx<'_>,
        kind: &str,
        lora_head: bool,
        h: usize,
        out: usize,
    ) -> Result<()> {
        let hid = self.config.head_hidden;
        let std = self.config.out_init_std;
        let p = format!("head.{kind}");
        self.create(
            ctx,
            &format!("{p}.dense1.weight"),
            &[hid, h],
            Init::KaimingUniform,
        )?;
        self.create(ctx, &format!("{p}.dense1.bias"), &[hid], Init::Zeros)?;
        let normal = Init::Normal { mean: 0.0, std };
        let w = format!("{p}.dense2.weight");
        self.create(ctx, &w, &[out, hid], normal)?;
        if lora_head && self.config.lora_zero_b {
            // Zero the rows that produce B: each of q and v takes `r·d` outputs of A, then
            // `inner·r` of B (the layout `out_width` and the generation's slicing share).
            let block = out / 2;
            let a_len = self.config.lora_rank * self.info.hidden_size;
            let mask: Vec<f32> = (0..out)
                .flat_map(|o| std::iter::repeat_n(f32::from(o % block < a_len), hid))
                .collect();
            let masked = ctx.param(&w)?.mul(ctx.from_data(&[out, hid], mask)?)?;
            ctx.assign_param(&w, masked)?;
        }
        self.create(ctx, &format!("{p}.dense2.bias"), &[out], Init::Zeros)
    }

    fn name(&self, what: &str) -> String {
        format!("{}.{what}", self.config.context_name)
    }

    /// `x @ W^T + b` with the hypermodel's own `{p}.weight`, `{p}.bias`.
    fn lin<'c>(&self, ctx: &'c Ctx<'_>, x: Tensor<'c>, p: &str) -> Result<Tensor<'c>> {
        x.linear(
            ctx.param(&format!("{p}.weight"))?,
            Some(ctx.param(&format!("{p}.bias"))?),
        )
    }

    fn ln<'c>(&self, ctx: &'c Ctx<'_>, x: Tensor<'c>, p: &str) -> Result<Tensor<'c>> {
        x.layer_norm(
            Some(ctx.param(&format!("{p}.weight"))?),
            Some(ctx.param(&format!("{p}.bias"))?),
            EPS,
        )
    }

    /// One BERT layer over `[k, T, H]`.
    fn layer<'c>(
        &self,
        ctx: &'c Ctx<'_>,
        x: Tensor<'c>,
        mask: &Mask<'c>,
        l: usize,
    ) -> Result<Tensor<'c>> {
        let p = format!("encoder.layer.{l}");
        let [k, t, h]: [usize; 3] = x
            .shape()?
            .try_into()
            .map_err(|_| ApiError::shape("hypert5: hidden states must be [k, T, H]"))?;
        let (nh, dh) = (self.info.num_heads, self.info.head_dim);
        let heads = |y: Tensor<'c>| -> Result<Tensor<'c>> {
            y.reshape(&[k as i64, t as i64, nh as i64, dh as i64])?
                .permute(&[0, 2, 1, 3])
        };
        let scale = 1.0 / (dh as f64).sqrt();
        let q = self.lin(ctx, x.clone(), &format!("{p}.attention.self.query"))?;
        let kk = self.lin(ctx, x.clone(), &format!("{p}.attention.self.key"))?;
        let v = self.lin(ctx, x.clone(), &format!("{p}.attention.self.value"))?;
        let c = match mask {
            // API 1.2: the host's fused attention (its kernel and backward on the CPU).
            Mask::Keep(keep) => q.attention(kk, v, Some(keep.clone()), nh, scale)?,
            Mask::Additive(bias) => heads(q)?
                .matmul(heads(kk)?.transpose(2, 3)?)?
                .mul_scalar(scale)?
                .add(bias.clone().reshape(&[k as i64, 1, 1, t as i64])?)?
                .softmax(-1)?
                .matmul(heads(v)?)?
                .permute(&[0, 2, 1, 3])?
                .reshape(&[k as i64, t as i64, h as i64])?,
        };
        let a = self.lin(ctx, c, &format!("{p}.attention.output.dense"))?;
        let h1 = self.ln(ctx, a.add(x)?, &format!("{p}.attention.output.LayerNorm"))?;
        let i = self
            .lin(ctx, h1.clone(), &format!("{p}.intermediate.dense"))?
            .gelu()?;
        let o = self.lin(ctx, i, &format!("{p}.output.dense"))?;
        self.ln(ctx, o.add(h1)?, &format!("{p}.output.LayerNorm"))
    }

    /// The examples' token states `[k, T, H]`.
    fn encode_examples<'c>(
        &self,
        ctx: &'c Ctx<'_>,
        ids: Tensor<'c>,
        types: Tensor<'c>,
        mask: &Mask<'c>,
    ) -> Result<Tensor<'c>> {
        let [k, t]: [usize; 2] = ids
            .shape()?
            .try_into()
            .map_err(|_| ApiError::shape("hypert5: input_ids must be [k, T]"))?;
        let h = self.info.hidden_size as i64;
        let words = ctx.param("backbone:embeddings.word_embeddings.weight")?;
        let pos = ctx.param("backbone:embeddings.position_embeddings.weight")?;
        let max_pos = pos.shape()?[0];
        if t > max_pos {
            return Err(ApiError::shape(format!(
                "hypert5: examples of {t} tokens exceed the backbone's {max_pos} positions"
            )));
        }
        let tt = ctx.param("backbone:embeddings.token_type_embeddings.weight")?;
        let flat = |x: Tensor<'c>| x.reshape(&[(k * t) as i64]);
        let e = words
            .index_select(0, flat(ids)?)?
            .reshape(&[k as i64, t as i64, h])?
            .add(pos.slice(0, 0, t)?.unsqueeze(0)?)?
            .add(
                tt.index_select(0, flat(types)?)?
                    .reshape(&[k as i64, t as i64, h])?,
            )?;
        let mut x = self.ln(ctx, e, "embeddings.LayerNorm")?;
        for l in 0..self.layers {
            x = self.layer(ctx, x, mask, l)?;
        }
        Ok(x)
    }
}

impl ContextEncoderImpl for HyperT5 {
    fn attach(&mut self, ctx: &Ctx<'_>, backbone: &BackboneInfo) -> Result<AttachPlan> {
        if self.config.generate.is_empty() {
            return Err(ApiError::config(
                "hypert5: `generate` is empty; ask for `prefix`, `lora` or both",
            ));
        }
        self.info = backbone.clone();
        match backbone.architecture.as_str() {
            "bert" => {}
            "t5" => {
                self.attach_t5(ctx, backbone)?;
                return Ok(AttachPlan::default());
            }
            other => {
                return Err(ApiError::config(format!(
                    "hypert5: backbone `{}` is `{other}`; the hypermodel is built for BERT-family encoders and for T5",
                    backbone.name
                )))
            }
        }
        let n = backbone.num_layers;
        self.layers = self.config.encoder_layers.unwrap_or(n);
        if self.layers > n {
            return Err(ApiError::config(format!(
                "hypert5: encoder_layers = {} but backbone `{}` has {n} layers",
                self.layers, backbone.name
            )));
        }
        self.copy(ctx, "embeddings.LayerNorm.weight")?;
        self.copy(ctx, "embeddings.LayerNorm.bias")?;
        for l in 0..self.layers {
            for w in LAYER_WEIGHTS {
                self.copy(ctx, &format!("encoder.layer.{l}.{w}"))?;
            }
        }
        let h = backbone.hidden_size;
        let q = n * self.kinds().len();
        let std = self.config.query_init_std;
        self.create(ctx, "queries", &[q, h], Init::Normal { mean: 0.0, std })?;
        for p in ["query", "key", "value", "output"] {
            self.create(
                ctx,
                &format!("pool.{p}.weight"),
                &[h, h],
                Init::KaimingUniform,
            )?;
            self.create(ctx, &format!("pool.{p}.bias"), &[h], Init::Zeros)?;
        }
        self.create(ctx, "pool.LayerNorm.weight", &[h], Init::Ones)?;
        self.create(ctx, "pool.LayerNorm.bias", &[h], Init::Zeros)?;
        for g in self.kinds() {
            let out = self.out_width(g);
            self.create_head(ctx, kind_name(g), g == Generated::Lora, h, out)?;
        }
        Ok(AttachPlan::default())
    }

    fn encode<'c>(&self, ctx: &'c Ctx<'_>, inputs: Vec<Tensor<'c>>, _spec: &Value) -> Result<()> {
        let [ids, mask, types]: [Tensor<'c>; 3] = inputs.try_into().map_err(|_| {
            ApiError::invalid("hypert5: encode takes [input_ids, attention_mask, token_type_ids]")
        })?;
        let shape = ids.shape()?;
        let [k, t]: [usize; 2] = shape.clone().try_into().map_err(|_| {
            ApiError::shape(format!("hypert5: input_ids must be [k, T], got {shape:?}"))
        })?;
        if mask.shape()? != shape || types.shape()? != shape {
            return Err(ApiError::shape(
                "hypert5: attention_mask and token_type_ids must have input_ids' shape",
            ));
        }
        let m: Vec<f32> = mask.to_ints()?.iter().map(|&v| v as f32).collect();
        if self.info.architecture == "t5" {
            return self.encode_t5(ctx, ids, m);
        }
        let mask = if has(ctx, OpCode::ATTENTION) {
            Mask::Keep(ctx.from_data(&[k, t], m)?)
        } else {
            // 0 on tokens, -10000 on padding (BERT's convention).
            let neg: Vec<f32> = m.iter().map(|v| (1.0 - v) * -10000.0).collect();
            Mask::Additive(ctx.from_data(&[k, t], neg)?)
        };
        let x = self.encode_examples(ctx, ids, types, &mask)?;
        // Learned queries attend over every token of every example (one head).
        let h = self.info.hidden_size;
        let tokens = x.reshape(&[1, (k * t) as i64, h as i64])?;
        let queries = ctx.param("queries")?;
        let nq = queries.shape()?[0] as i64;
        let q = self.lin(ctx, queries.clone(), "pool.query")?.unsqueeze(0)?;
        let kx = self.lin(ctx, tokens.clone(), "pool.key")?;
        let vx = self.lin(ctx, tokens, "pool.value")?;
        let scale = 1.0 / (h as f64).sqrt();
        let flat = |m: &Tensor<'c>| m.clone().reshape(&[1, (k * t) as i64]);
        let context = match &mask {
            Mask::Keep(keep) => q.attention(kx, vx, Some(flat(keep)?), 1, scale)?,
            Mask::Additive(neg) => q
                .matmul(kx.transpose(1, 2)?)?
                .mul_scalar(scale)?
                .add(flat(neg)?)?
                .softmax(-1)?
                .matmul(vx)?,
        };
        let pooled = self.lin(ctx, context.reshape(&[nq, h as i64])?, "pool.output")?;
        let summary = self.ln(ctx, pooled.add(queries)?, "pool.LayerNorm")?;
        ctx.set_context(&self.name("summary"), summary.clone())?;
        let n = self.info.num_layers;
        for (i, g) in self.kinds().into_iter().enumerate() {
            let kind = kind_name(g);
            let z = summary.clone().slice(0, i * n, (i + 1) * n)?;
            let z = self.lin(ctx, z, &format!("head.{kind}.dense1"))?.gelu()?;
            let out = self.lin(ctx, z, &format!("head.{kind}.dense2"))?;
            let (nl, kv, hs) = (
                n as i64,
                (self.info.num_heads * self.info.head_dim) as i64,
                h as i64,
            );
            match g {
                Generated::Prefix => {
                    let p = self.config.prefix_length as i64;
                    ctx.set_context(&self.name("prefix"), out.reshape(&[nl, 2, p, kv])?)?;
                }
                Generated::Lora => {
                    let r = self.config.lora_rank;
                    let out = out.reshape(&[nl, 2, (2 * r * h) as i64])?;
                    let a = out
                        .clone()
                        .slice(2, 0, r * h)?
                        .reshape(&[nl, 2, r as i64, hs])?;
                    let b = out
                        .slice(2, r * h, 2 * r * h)?
                        .reshape(&[nl, 2, hs, r as i64])?;
                    ctx.set_context(&self.name("lora_A"), a)?;
                    ctx.set_context(&self.name("lora_B"), b)?;
                }
            }
        }
        Ok(())
    }

    fn call(&mut self, _ctx: &Ctx<'_>, name: &str, _args: Value) -> Result<Value> {
        match name {
            "outputs" if self.info.architecture == "t5" => Ok(json!(self.t5_outputs())),
            "outputs" => {
                let mut v = Vec::new();
                for g in self.kinds() {
                    match g {
                        Generated::Prefix => v.push(self.name("prefix")),
                        Generated::Lora => {
                            v.push(self.name("lora_A"));
                            v.push(self.name("lora_B"));
                        }
                    }
                }
                Ok(json!(v))
            }
            "host_options" => Ok(json!({
                "k": self.config.k,
                "max_length": self.config.max_length,
                "consumers": self.config.consumers,
            })),
            "parameter_count" => Ok(json!(self.params)),
            other => Err(ApiError::unsupported(other)),
        }
    }
}

fn kind_name(g: Generated) -> &'static str {
    match g {
        Generated::Prefix => "prefix",
        Generated::Lora => "lora",
    }
}

pub struct HyperT5Plugin;

impl Plugin for HyperT5Plugin {
    fn manifest() -> Manifest {
        Manifest {
            name: "hypert5".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::ContextEncoder,
            api_version: String::new(),
            description:
                "Hypermodel that generates prefixes and LoRA A/B from a task's few-shot examples (HyperT5, Phang et al., 2022)"
                    .into(),
            config_schema: serde_json::to_value(schemars::schema_for!(HyperT5Config))
                .expect("schema"),
            groups: vec!["hyper".into()],
        }
    }

    fn create_context_encoder(config: &Value) -> Result<Box<dyn ContextEncoderImpl>> {
        Ok(Box::new(HyperT5::new(config::parse(config)?)))
    }
}

peft_api::export_plugin!(hypert5, HyperT5Plugin);
