//! Saving and loading a context encoder's trained parameters (the HyperT5 hypermodel):
//! `hypermodel.safetensors` (f32, local names) plus `hypermodel.json` (plugin, version, config,
//! parameter list), written atomically. Adapting a new task then needs no gradient step:
//! load the hypermodel, [`ContextEncoder::hyper_init`](crate::model::context::ContextEncoder::hyper_init)
//! an ordinary module from the task's examples, and save that module with
//! [`adapters::save`](crate::adapters::save), in the format of a trained one.
use std::path::Path;

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use safetensors::{tensor::TensorView, Dtype};
use serde_json::json;

use crate::{
    backbone::weights::Checkpoint, bridge::value::ft, files::write_atomic, model::Model,
    params::from_values,
};

pub const WEIGHTS_FILE: &str = "hypermodel.safetensors";
pub const CONFIG_FILE: &str = "hypermodel.json";
const FORMAT: &str = "peft-host-hypermodel";

fn encoder<B: AutodiffBackend>(
    model: &Model<B>,
) -> anyhow::Result<&crate::model::context::ContextEncoder<B>> {
    model
        .context_encoder
        .as_ref()
        .context("this model has no context encoder (no `context_encoder` section)")
}

/// Saves the context encoder's parameters into `dir`; `config` is its config section.
pub fn save<B: AutodiffBackend>(
    model: &Model<B>,
    config: &serde_json::Value,
    dir: &Path,
) -> anyhow::Result<usize> {
    let enc = encoder(model)?;
    let prefix = format!("{}.", enc.name);
    let store = model.params.borrow();
    let mut tensors = Vec::new();
    let mut listed = Vec::new();
    for p in store.iter().filter(|p| p.owner == enc.name) {
        let local = p.name.strip_prefix(&prefix).unwrap_or(&p.name).to_string();
        let data = crate::by_rank!(p.shape.len(), |D| Ok(
            ft::<B, D>(p.value.clone()).into_data()
        ))
        .map_err(|e: peft_api::ApiError| anyhow::anyhow!("reading `{}`: {e}", p.name))?;
        let v: Vec<f32> = data
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading `{}`: {e:?}", p.name))?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        listed.push(json!({ "name": local, "shape": p.shape, "group": p.group }));
        tensors.push((local, p.shape.clone(), bytes));
    }
    drop(store);
    let n = tensors.len();
    let views = tensors
        .iter()
        .map(|(k, s, b)| Ok((k.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), FORMAT.to_string())]);
    write_atomic(
        &dir.join(WEIGHTS_FILE),
        &safetensors::serialize(views, Some(meta))?,
    )?;
    let cfg = json!({
        "format": FORMAT, "plugin": enc.name, "plugin_version": enc.plugin_version,
        "config": config, "parameters": listed,
    });
    write_atomic(
        &dir.join(CONFIG_FILE),
        (serde_json::to_string_pretty(&cfg)? + "\n").as_bytes(),
    )?;
    Ok(n)
}

/// Loads what [`save`] wrote into the model's context encoder; every parameter must be there
/// with its shape, and nothing else.
pub fn load<B: AutodiffBackend>(model: &Model<B>, dir: &Path) -> anyhow::Result<()> {
    let enc = encoder(model)?;
    let cfg_path = dir.join(CONFIG_FILE);
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("reading {}", cfg_path.display()))?,
    )
    .with_context(|| format!("{} is not valid JSON", cfg_path.display()))?;
    if cfg["format"] != FORMAT || cfg["plugin"] != enc.name.as_str() {
        bail!(
            "{}: not a `{}` hypermodel (format {}, plugin {})",
            cfg_path.display(),
            enc.name,
            cfg["format"],
            cfg["plugin"]
        );
    }
    let path = dir.join(WEIGHTS_FILE);
    let ckpt = Checkpoint::read(&path)?;
    let file = path.display().to_string();
    let prefix = format!("{}.", enc.name);
    let owned: Vec<(String, Vec<usize>)> = model
        .params
        .borrow()
        .iter()
        .filter(|p| p.owner == enc.name)
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    let mut store = model.params.borrow_mut();
    let device = store.device.clone();
    for (full, want) in &owned {
        let local = full.strip_prefix(&prefix).unwrap_or(full);
        let (shape, v) = ckpt
            .tensors
            .get(local)
            .with_context(|| format!("{file}: hypermodel parameter `{local}` is missing"))?;
        if shape != want {
            bail!("{file}: `{local}` has shape {shape:?}, the model has {want:?}");
        }
        let value = from_values::<B>(shape, v.clone(), &device)?;
        store.assign(full, value)?;
    }
    if let Some(extra) = ckpt.tensors.keys().find(|k| {
        !owned
            .iter()
            .any(|(f, _)| f.strip_prefix(&prefix) == Some(k))
    }) {
        bail!("{file}: tensor `{extra}` is not a parameter of the hypermodel");
    }
    drop(store);
    enc.clear_cache();
    Ok(())
}
