//! A composed model: backbone + attached modules + task head, over one parameter store.
use std::{
    cell::RefCell,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use burn::tensor::{backend::AutodiffBackend, Int, Tensor, TensorData};
use peft_api::{ApiError, BackboneInfo};
use peft_registry::Registry;

use crate::{
    backbone::{t5::Seq2Seq, AnyBackbone, Backbone, Hooks, TextBatch},
    bridge::{
        ops::linear,
        value::{fp, ft},
        HostGraph, Value,
    },
    config::{BackboneDetail, BackboneSpec, RunConfig},
    modules::{Composition, ModuleRequest},
    params::ParamStore,
};

pub mod context;
mod task_ids;

pub use task_ids::{mark_task, publish_task_ids, TASK_ID, TASK_IDS};

/// Where a model's files are.
pub struct ModelFiles {
    pub name: String,
    pub dir: Option<PathBuf>,
    pub config: serde_json::Value,
    pub tokenizer: Option<PathBuf>,
}

/// Folders searched for a model name: `$PEFT_HOME/models`, then `.cache/models` in the
/// project checkout and in the current folder.
pub fn model_dirs() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(h) = std::env::var_os("PEFT_HOME") {
        v.push(PathBuf::from(h).join("models"));
    }
    v.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models"));
    v.push(PathBuf::from(".cache/models"));
    v
}

fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

pub fn resolve_backbone(spec: &BackboneSpec) -> anyhow::Result<ModelFiles> {
    let detail = match spec {
        BackboneSpec::Name(n) => BackboneDetail {
            name: Some(n.clone()),
            ..Default::default()
        },
        BackboneSpec::Detailed(d) => d.clone(),
    };
    if let Some(cfg) = &detail.config {
        if !cfg.is_object() {
            bail!("backbone `config` must be an object (a config.json's fields), got {cfg}");
        }
        let tokenizer = match &detail.tokenizer {
            Some(t) => Some(PathBuf::from(t)),
            None => model_dirs()
                .into_iter()
                .map(|d| d.join("all-MiniLM-L6-v2/tokenizer.json"))
                .find(|p| p.exists()),
        };
        let mut config = cfg.clone();
        if let Some(arch) = &detail.architecture {
            config["model_type"] = serde_json::Value::String(arch.clone());
        }
        return Ok(ModelFiles {
            name: detail.name.unwrap_or_else(|| "random-init".into()),
            dir: None,
            config,
            tokenizer,
        });
    }
    let dir = if let Some(p) = &detail.path {
        PathBuf::from(p)
    } else if let Some(n) = &detail.name {
        let dirs = model_dirs();
        match dirs.iter().map(|d| d.join(n)).find(|d| d.join("config.json").exists()) {
            Some(d) => d,
            None => bail!(
                "backbone `{n}` is not installed; looked in {}. Run scripts/setup.sh to install all-MiniLM-L6-v2, or give \"backbone\": {{\"path\": DIR}}",
                dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        }
    } else {
        bail!("backbone needs a name, a path, or an inline config");
    };
    let config = read_json(&dir.join("config.json"))?;
    let tokenizer = match &detail.tokenizer {
        Some(t) => Some(PathBuf::from(t)),
        None => Some(dir.join("tokenizer.json")).filter(|p| p.exists()),
    };
    Ok(ModelFiles {
        name: detail
            .name
            .unwrap_or_else(|| dir.file_name().unwrap_or_default().to_string_lossy().into()),
        dir: Some(dir),
        config,
        tokenizer,
    })
}

pub struct Model<B: AutodiffBackend> {
    pub backbone: AnyBackbone,
    pub params: RefCell<ParamStore<B>>,
    pub modules: Composition,
    pub tokenizer: Option<tokenizers::Tokenizer>,
    pub num_labels: usize,
    /// Task name -> the id published as `task_ids` in its passes (see [`TASK_IDS`]).
    pub task_index: RefCell<std::collections::BTreeMap<String, i64>>,
    /// The `context_encoder` section's plugin (HyperT5), run at the start of each pass.
    pub context_encoder: Option<context::ContextEncoder<B>>,
}

impl<B: AutodiffBackend> Model<B> {
    /// Builds the backbone (loading or initialising its weights), attaches modules and a
    /// classification head of `num_labels` outputs (0 = no head).
    pub fn build(
        config: &RunConfig,
        registry: &Registry,
        device: &B::Device,
        num_labels: usize,
    ) -> anyhow::Result<Self> {
        let files = resolve_backbone(&config.backbone)?;
        crate::config::checks::bounded_size(&files.config)
            .map_err(|e| anyhow::anyhow!("backbone `{}`: {e}", files.name))?;
        let mut store = ParamStore::<B>::new(device.clone(), config.seed);
        let weights = files.dir.as_ref().map(|d| d.join("model.safetensors"));
        let backbone =
            AnyBackbone::build(&files.name, &files.config, weights.as_deref(), &mut store)?;
        crate::backbone::precision::hold(
            Backbone::<B>::info(&backbone),
            &mut store,
            config.backbone.dtype(),
        )?;
        if config.backbone.dtype() == crate::config::BackboneDtype::Bf16 {
            // Process-wide, as PyTorch's setting: the last bf16 model built decides.
            crate::nn::bf16::set_matmul_precision(config.backbone.matmul_precision());
        }
        let hidden = Backbone::<B>::info(&backbone).hidden_size;
        let params = RefCell::new(store);
        let requests: Vec<ModuleRequest> = config
            .modules
            .iter()
            .map(|m| ModuleRequest {
                plugin: m.plugin.clone(),
                name: m.instance_name(),
                config: m.config.clone(),
            })
            .collect();
        let modules =
            Composition::attach(registry, &requests, Backbone::<B>::info(&backbone), &params)?;
        let context_encoder = match &config.context_encoder {
            Some(spec) => Some(context::ContextEncoder::attach(
                spec,
                registry,
                Backbone::<B>::info(&backbone),
                &params,
                &modules,
                config.seed,
            )?),
            None => None,
        };
        if num_labels > 0 {
            params
                .borrow_mut()
                .create_head_linear("head", num_labels, hidden)?;
        }
        let tokenizer = match &files.tokenizer {
            Some(path) => Some(load_tokenizer(path)?),
            None => None,
        };
        Ok(Model {
            backbone,
            params,
            modules,
            tokenizer,
            num_labels,
            task_index: Default::default(),
            context_encoder,
        })
    }

    pub fn info(&self) -> &BackboneInfo {
        Backbone::<B>::info(&self.backbone)
    }

    /// Makes the given groups (plus backbone weights modules asked for) trainable.
    pub fn set_trainable(&self, groups: &[String]) -> Result<(), ApiError> {
        let extra = self.modules.unfrozen_backbone_weights();
        self.params.borrow_mut().set_trainable(groups, &extra)
    }

    /// The hooks of one pass over `batch`, with the batch's padding mask in the context
    /// (modules that pool, like PHA's retriever, need it).
    pub(crate) fn hooks<'a, 'p>(
        &'a self,
        graph: &'a HostGraph<'p, B>,
        batch: &TextBatch<B>,
    ) -> Hooks<'a, 'p, B> {
        graph.sites.set(None);
        graph.context.borrow_mut().insert(
            "attention_mask".into(),
            Value::Int(batch.attention_mask.clone().into_primitive()),
        );
        publish_task_ids(graph, batch.attention_mask.dims()[0]);
        Hooks::new(graph, &self.modules)
    }

    /// Last hidden state with modules applied.
    pub fn encode(
        &self,
        graph: &HostGraph<'_, B>,
        batch: &TextBatch<B>,
    ) -> Result<Tensor<B, 3>, ApiError> {
        self.backbone.encode(&self.hooks(graph, batch), batch)
    }

    /// The encoder-decoder interface (T5, BART), or an error naming the backbone.
    pub fn seq2seq(&self) -> anyhow::Result<&dyn Seq2Seq<B>> {
        self.backbone.as_seq2seq::<B>().with_context(|| {
            format!(
                "backbone `{}` is encoder-only: text-to-text needs an encoder-decoder (T5, BART)",
                self.info().name
            )
        })
    }

    /// LM logits `[batch, time, vocab]` under teacher forcing, modules applied.
    pub fn seq2seq_logits(
        &self,
        graph: &HostGraph<'_, B>,
        batch: &TextBatch<B>,
        decoder_input_ids: &Tensor<B, 2, Int>,
    ) -> anyhow::Result<Tensor<B, 3>> {
        let s2s = self.seq2seq()?;
        Ok(s2s.logits(&self.hooks(graph, batch), batch, decoder_input_ids)?)
    }

    /// Greedy decoding (stopping at EOS) of at most `max_new_tokens` per row, each row
    /// starting with the decoder start token.
    pub fn generate(
        &self,
        graph: &HostGraph<'_, B>,
        batch: &TextBatch<B>,
        max_new_tokens: usize,
    ) -> anyhow::Result<Vec<Vec<i64>>> {
        let s2s = self.seq2seq()?;
        Ok(s2s.greedy_generate_with(&self.hooks(graph, batch), batch, 0, max_new_tokens)?)
    }

    /// Class logits `[batch, num_labels]` from the mean-pooled hidden state (the `head.*`
    /// classifier `build` creates).
    pub fn logits(
        &self,
        graph: &HostGraph<'_, B>,
        batch: &TextBatch<B>,
    ) -> Result<Tensor<B, 2>, ApiError> {
        let pooled = self.pooled(graph, batch)?;
        self.head_linear(graph, pooled, "head")
    }

    /// The mean-pooled last hidden state `[batch, hidden]`, modules applied.
    pub fn pooled(
        &self,
        graph: &HostGraph<'_, B>,
        batch: &TextBatch<B>,
    ) -> Result<Tensor<B, 2>, ApiError> {
        Ok(mean_pool(self.encode(graph, batch)?, &batch.attention_mask))
    }

    /// A head's linear layer `{prefix}.weight`, `{prefix}.bias` over `features`.
    pub fn head_linear(
        &self,
        graph: &HostGraph<'_, B>,
        features: Tensor<B, 2>,
        prefix: &str,
    ) -> Result<Tensor<B, 2>, ApiError> {
        let w = graph.param_value(&format!("{prefix}.weight"))?;
        let b = graph.param_value(&format!("{prefix}.bias"))?;
        Ok(ft::<B, 2>(linear::<B>(fp(features), w, Some(b))?))
    }

    /// Tokenises texts (or pairs) into a padded batch.
    pub fn tokenize(
        &self,
        texts: &[(String, Option<String>)],
        max_length: usize,
        device: &B::Device,
    ) -> anyhow::Result<TextBatch<B>> {
        let tok = self
            .tokenizer
            .as_ref()
            .context("this backbone has no tokenizer.json")?;
        tokenize(tok, texts, max_length, device)
    }
}

/// Mean of the hidden states over real tokens (sentence-transformers pooling).
pub fn mean_pool<B: AutodiffBackend>(h: Tensor<B, 3>, mask: &Tensor<B, 2, Int>) -> Tensor<B, 2> {
    let m = mask.clone().float().unsqueeze_dim::<3>(2);
    let sum = (h * m.clone()).sum_dim(1);
    let count = m.sum_dim(1).clamp_min(1e-9);
    let pooled = sum / count;
    let [b, _, d] = pooled.dims();
    pooled.reshape([b, d])
}

/// Loads `tokenizer.json` with its fixed padding and truncation turned off: the host pads
/// each batch to its longest sequence and passes the attention mask.
pub fn load_tokenizer(path: &Path) -> anyhow::Result<tokenizers::Tokenizer> {
    let mut tok = tokenizers::Tokenizer::from_file(path)
        .map_err(|e| anyhow::anyhow!(e))
        .with_context(|| path.display().to_string())?;
    tok.with_padding(None);
    tok.with_truncation(None)
        .map_err(|e| anyhow::anyhow!(e))
        .with_context(|| format!("{}: turning truncation off", path.display()))?;
    Ok(tok)
}

pub fn tokenize<B: AutodiffBackend>(
    tok: &tokenizers::Tokenizer,
    texts: &[(String, Option<String>)],
    max_length: usize,
    device: &B::Device,
) -> anyhow::Result<TextBatch<B>> {
    use tokenizers::{
        utils::truncation::{truncate_encodings, TruncationParams, TruncationStrategy},
        PostProcessor,
    };
    let mut rows = Vec::with_capacity(texts.len());
    for (a, b) in texts {
        let enc = |s: &str| {
            tok.encode(s, false)
                .map_err(|e| anyhow::anyhow!(e))
                .with_context(|| format!("tokenizing {s:?}"))
        };
        let (first, second) = (enc(a)?, b.as_deref().map(enc).transpose()?);
        // HF's truncation (strategy `longest_first`): trim the longer segment first, leaving
        // room for the special tokens, so a pair keeps both parts (and an option its text).
        let special = tok
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(second.is_some()));
        let params = TruncationParams {
            max_length: max_length.saturating_sub(special).max(1),
            strategy: TruncationStrategy::LongestFirst,
            ..Default::default()
        };
        let (first, second) = truncate_encodings(first, second, &params)
            .map_err(|e| anyhow::anyhow!(e))
            .with_context(|| format!("truncating {a:?}"))?;
        let enc = tok
            .post_process(first, second, true)
            .map_err(|e| anyhow::anyhow!(e))
            .with_context(|| format!("tokenizing {a:?}"))?;
        let ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
        let types: Vec<i64> = enc.get_type_ids().iter().map(|&i| i as i64).collect();
        rows.push((ids, types));
    }
    let t = rows.iter().map(|r| r.0.len()).max().unwrap_or(1).max(1);
    let n = rows.len();
    let (mut ids, mut types, mut mask) = (vec![0i64; n * t], vec![0i64; n * t], vec![0i64; n * t]);
    for (i, (r, ty)) in rows.iter().enumerate() {
        for j in 0..r.len() {
            ids[i * t + j] = r[j];
            types[i * t + j] = ty[j];
            mask[i * t + j] = 1;
        }
    }
    let mk = |v: Vec<i64>| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [n, t]), device);
    Ok(TextBatch {
        input_ids: mk(ids),
        attention_mask: mk(mask),
        token_type_ids: Some(mk(types)),
    })
}
