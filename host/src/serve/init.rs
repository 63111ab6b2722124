//! `init_from`: a run's modules and heads started from a saved adapter folder (continued
//! training, hyper-init from `peft-host adapt`, shared init from a multi-task run).
use std::path::Path;

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use super::folder::{backbone_record, read_manifest, TENSORS_FILE};
use crate::{backbone::weights::Checkpoint, config::RunConfig, model::Model, params::from_values};

/// What `init_from` loaded (in result.json).
#[derive(Serialize, Clone, Debug)]
pub struct InitReport {
    pub folder: String,
    /// Tensors loaded into this run's parameters, and their elements.
    pub tensors: usize,
    pub elements: usize,
    /// Tensors of the folder that no parameter of this run has (left unused).
    pub unused: Vec<String>,
}

/// Loads every tensor of the adapter folder `dir` whose name is a parameter of `model`
/// (shapes must agree). Refuses a folder made on other backbone weights, and one of which
/// nothing fits.
pub fn init_from<B: AutodiffBackend>(
    model: &Model<B>,
    cfg: &RunConfig,
    dir: &Path,
) -> anyhow::Result<InitReport> {
    let manifest = read_manifest(dir)?;
    let here = backbone_record(cfg, model.info().hidden_size)?;
    if here.weights_sha256 != manifest.backbone.weights_sha256
        || here.hidden_size != manifest.backbone.hidden_size
    {
        bail!(
            "{}: init_from a folder trained on backbone `{}` (sha256 {}), this run's is `{}` (sha256 {})",
            dir.display(),
            manifest.backbone.name,
            manifest.backbone.weights_sha256.as_deref().unwrap_or("none"),
            here.name,
            here.weights_sha256.as_deref().unwrap_or("none")
        );
    }
    if here.dtype != manifest.backbone.dtype {
        // Not an error: the saved parameters are f32 either way and the frozen weights differ
        // only by bf16 rounding (about 0.4 % per weight), so the start is close, not equal.
        tracing::warn!(
            "{}: the folder was trained on a {} backbone, this run holds it in {}: the modules start from the same values, but the frozen weights differ by bf16 rounding",
            dir.display(),
            manifest.backbone.dtype,
            here.dtype
        );
    }
    let path = dir.join(TENSORS_FILE);
    let ckpt = Checkpoint::read(&path)?;
    let mut store = model.params.borrow_mut();
    let device = store.device.clone();
    let (mut tensors, mut elements, mut unused) = (0, 0, Vec::new());
    for (name, (shape, values)) in ckpt.tensors {
        let Some(want) = store
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.shape.clone())
        else {
            unused.push(name);
            continue;
        };
        if want != shape {
            bail!(
                "{}: tensor `{name}` has shape {shape:?}, this run's parameter is {want:?}",
                path.display()
            );
        }
        elements += values.len();
        let prim = from_values::<B>(&shape, values, &device)?;
        store
            .assign(&name, prim)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("{}: loading `{name}`", path.display()))?;
        tensors += 1;
    }
    if tensors == 0 {
        bail!(
            "{}: no tensor of the folder is a parameter of this run (the folder has {:?}…); do the module instance names match?",
            dir.display(),
            unused.iter().take(4).collect::<Vec<_>>()
        );
    }
    unused.sort();
    Ok(InitReport {
        folder: dir.display().to_string(),
        tensors,
        elements,
        unused,
    })
}
