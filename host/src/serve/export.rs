//! HF formats out. A saved adapter's modules in HF peft's format (each plugin that answers
//! `hf_peft_export`, i.e. LoRA), loadable with `PeftModel.from_pretrained`; or, with merge, the
//! backbone with the modules folded into its weights as a plain `model.safetensors` +
//! `config.json` that `transformers.AutoModel` loads. The heads go to `heads.safetensors` (HF
//! peft and transformers have no place for them) so that checks can rebuild the logits.
use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use serde_json::{json, Value as Json};

use super::folder::Loaded;
use crate::{
    adapters::{self, SavedFormat},
    bridge::{value::ft, HostGraph},
    files::write_atomic,
    model::resolve_backbone,
};

/// The parameters `select` picks, as f32 tensors under their store names.
fn tensors<B: AutodiffBackend>(
    loaded: &Loaded<B>,
    select: impl Fn(&crate::params::Param<B>) -> bool,
) -> anyhow::Result<super::NamedTensors> {
    let store = loaded.model.params.borrow();
    store
        .iter()
        .filter(|p| select(p))
        .map(|p| {
            let v = crate::by_rank!(p.shape.len(), |D| Ok(ft::<B, D>(p.value.clone())
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| peft_api::ApiError::internal(format!("{e:?}")))?))
            .map_err(|e| anyhow::anyhow!("reading `{}`: {e}", p.name))?;
            Ok((p.name.clone(), p.shape.clone(), v))
        })
        .collect()
}

fn write_heads<B: AutodiffBackend>(loaded: &Loaded<B>, out: &Path) -> anyhow::Result<()> {
    let heads = tensors(loaded, |p| p.group == "head")?;
    if !heads.is_empty() {
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write_atomic(
            &out.join("heads.safetensors"),
            &super::safetensors_bytes(&heads, meta)?,
        )?;
    }
    Ok(())
}

/// Writes each module in HF peft's format: into `out` for a single module, `out/<instance>`
/// for several. Fails, naming the module, when a plugin has no HF peft format.
pub fn hf_peft<B: AutodiffBackend>(
    loaded: &Loaded<B>,
    base_model: Option<&str>,
    out: &Path,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let modules = &loaded.model.modules.modules;
    if modules.is_empty() {
        bail!(
            "{}: the adapter has no modules to export",
            loaded.dir.display()
        );
    }
    let config = &loaded.manifest.config;
    let mut written = Vec::new();
    for (m, spec) in modules.iter().zip(&config.modules) {
        let dir = if modules.len() == 1 {
            out.to_path_buf()
        } else {
            out.join(&m.name)
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let format = adapters::save(&loaded.model, &m.name, &spec.config, base_model, &dir)?;
        if format != SavedFormat::HfPeft {
            // `adapters::save` wrote peft-host's own per-module format; do not leave it
            // looking like an HF export.
            let _ = std::fs::remove_file(dir.join(adapters::WEIGHTS_FILE));
            let _ = std::fs::remove_file(dir.join(adapters::CONFIG_FILE));
            let graph = HostGraph::new(&loaded.model.params, false);
            match m.unsupported_reason(&graph, "hf_peft_export", "{}") {
                Some(why) => bail!("{} has no HF peft format here: {why}", m.describe()),
                None => bail!(
                    "{} has no HF peft format (only plugins answering `hf_peft_export`, e.g. lora and prefix, do)",
                    m.describe()
                ),
            }
        }
        written.push(dir);
    }
    write_heads(loaded, out)?;
    Ok(written)
}

/// Folds every module into the backbone's weights (the plugins' `merge`) and writes the
/// backbone as `model.safetensors` + `config.json` (+ tokenizer files) in `out`.
pub fn merged<B: AutodiffBackend>(loaded: &Loaded<B>, out: &Path) -> anyhow::Result<()> {
    let model = &loaded.model;
    let files = resolve_backbone(&loaded.manifest.config.backbone)?;
    for m in &model.modules.modules {
        let graph = HostGraph::new(&model.params, false);
        if m.call(&graph, "merge", "null")?.is_none() {
            bail!(
                "{} cannot be merged into the backbone (its plugin has no `merge`)",
                m.describe()
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut weights = tensors(loaded, |p| p.owner == "backbone")?;
    // Weights the host does not use (BERT's pooler) are copied from the original file, so that
    // transformers finds a complete model.
    if let Some(dir) = &files.dir {
        let original = crate::backbone::weights::Checkpoint::read(&dir.join("model.safetensors"))?;
        let have: std::collections::BTreeSet<String> =
            weights.iter().map(|(n, _, _)| n.clone()).collect();
        for (k, (shape, v)) in original.tensors {
            let bare = ["bert.", "model."]
                .iter()
                .find_map(|p| k.strip_prefix(p))
                .unwrap_or(&k)
                .to_string();
            if !have.contains(&k) && !have.contains(&bare) {
                weights.push((k, shape, v));
            }
        }
    }
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_atomic(
        &out.join("model.safetensors"),
        &super::safetensors_bytes(&weights, meta)?,
    )?;
    let mut config: Json = files.config.clone();
    config["peft_host_merged"] = json!({
        "modules": model.modules.modules.iter().map(|m| json!({
            "instance": m.name, "plugin": m.plugin, "version": m.plugin_version,
        })).collect::<Vec<_>>(),
        "code_version": super::code_version(),
    });
    write_atomic(
        &out.join("config.json"),
        (serde_json::to_string_pretty(&config)? + "\n").as_bytes(),
    )?;
    if let Some(dir) = &files.dir {
        for f in [
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.txt",
            "special_tokens_map.json",
        ] {
            let src = dir.join(f);
            if src.exists() {
                let bytes =
                    std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
                write_atomic(&out.join(f), &bytes)?;
            }
        }
    }
    write_heads(loaded, out)?;
    Ok(())
}
