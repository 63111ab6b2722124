//! What an architecture is, as far as building it goes: its HF config type and `model_type`,
//! its weights (HF keys and shapes, the keys wrapper classes prefix, tied embeddings stored
//! under another key, weights HF fills with zeros when absent) and how a random-init model
//! initialises them. [`build`] and [`load`] work from that description alone, so an
//! architecture file holds its config, its weights and its forward pass, nothing else.
use std::path::Path;

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use peft_api::{ApiError, Init};
use serde::de::DeserializeOwned;

use super::weights::{Checkpoint, WeightsError};
use crate::params::ParamStore;

/// An architecture's description; see the module documentation.
pub trait Architecture: Sized {
    /// The fields of HF's `config.json` the architecture reads.
    type Config: DeserializeOwned;
    /// `model_type` in `config.json`.
    const MODEL_TYPE: &'static str;
    /// The name in messages (`BERT`).
    const DISPLAY: &'static str;
    /// Prefixes HF wrapper classes put before the base model's keys (`bert.`, `model.`).
    const PREFIXES: &'static [&'static str] = &[];
    /// Weights a checkpoint may store under another key, `(ours, theirs)`: tied embeddings.
    const TIES: &'static [(&'static str, &'static str)] = &[];
    /// Weights HF creates as zeros when a checkpoint lacks them.
    const ZERO_IF_MISSING: &'static [&'static str] = &[];

    /// Checks the config and derives the sites.
    fn new(name: &str, config: Self::Config) -> Result<Self, ApiError>;

    /// Every weight, with its shape (HF keys, PyTorch layouts), in creation order.
    fn weight_shapes(&self) -> Vec<(String, Vec<usize>)>;

    /// How weight `name` starts in a random-init model.
    fn init(&self, name: &str) -> Init {
        default_init(name)
    }

    /// Reads `config.json` from `dir` and loads `model.safetensors` into `store`.
    fn load<B: AutodiffBackend>(dir: &Path, store: &mut ParamStore<B>) -> anyhow::Result<Self> {
        load(dir, store)
    }
}

/// Norms 1, biases 0, everything else N(0, 0.02): HF's `_init_weights` for these families.
pub fn default_init(name: &str) -> Init {
    let lower = name.to_ascii_lowercase();
    if lower.contains("layer_norm") || lower.contains("layernorm") {
        if name.ends_with(".bias") {
            Init::Zeros
        } else {
            Init::Ones
        }
    } else if name.ends_with(".bias") || name == "final_logits_bias" {
        Init::Zeros
    } else {
        Init::Normal {
            mean: 0.0,
            std: 0.02,
        }
    }
}

/// Builds architecture `A` from an HF `config.json` value, loading `weights` when given and
/// initialising randomly otherwise.
pub fn build<A: Architecture, B: AutodiffBackend>(
    name: &str,
    config: &serde_json::Value,
    weights: Option<&Path>,
    store: &mut ParamStore<B>,
) -> anyhow::Result<A> {
    let cfg: A::Config = serde_json::from_value(config.clone()).with_context(|| {
        format!(
            "backbone `{name}`: config.json is not a valid {} config",
            A::DISPLAY
        )
    })?;
    let arch = A::new(name, cfg).with_context(|| format!("backbone `{name}`"))?;
    match weights {
        Some(p) => load_weights(&arch, p, store)?,
        None => init_weights(&arch, store).with_context(|| format!("backbone `{name}`"))?,
    }
    Ok(arch)
}

/// Reads `config.json` from `dir` and loads `model.safetensors` into `store`.
pub fn load<A: Architecture, B: AutodiffBackend>(
    dir: &Path,
    store: &mut ParamStore<B>,
) -> anyhow::Result<A> {
    let path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config: A::Config = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a valid config", path.display()))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    let arch = A::new(&name, config).with_context(|| dir.display().to_string())?;
    load_weights(&arch, &dir.join("model.safetensors"), store)?;
    Ok(arch)
}

/// Loads the weights of a safetensors file as frozen `backbone` parameters: each key as is or
/// under one of `A::PREFIXES`, tied weights under their other key, the `A::ZERO_IF_MISSING`
/// ones created as zeros when absent.
pub fn load_weights<A: Architecture, B: AutodiffBackend>(
    arch: &A,
    path: &Path,
    store: &mut ParamStore<B>,
) -> Result<(), WeightsError> {
    let mut ckpt = Checkpoint::read(path)?;
    let (mut present, mut absent) = (Vec::new(), Vec::new());
    for (name, shape) in arch.weight_shapes() {
        if A::ZERO_IF_MISSING.contains(&name.as_str()) && ckpt.find(&name, A::PREFIXES).is_none() {
            absent.push((name, shape));
        } else {
            present.push((name, shape));
        }
    }
    ckpt.load_into(store, &present, A::PREFIXES, A::TIES)?;
    for (name, shape) in absent {
        store
            .create(&name, "backbone", "backbone", &shape, &Init::Zeros)
            .map_err(|e| WeightsError::Corrupt {
                file: ckpt.file.clone(),
                message: e.to_string(),
            })?;
    }
    Ok(())
}

/// Creates randomly initialised weights in `store` (see [`Architecture::init`]).
pub fn init_weights<A: Architecture, B: AutodiffBackend>(
    arch: &A,
    store: &mut ParamStore<B>,
) -> Result<(), ApiError> {
    for (name, shape) in arch.weight_shapes() {
        store.create(&name, "backbone", "backbone", &shape, &arch.init(&name))?;
    }
    Ok(())
}
