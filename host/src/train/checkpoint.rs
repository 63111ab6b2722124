//! Training checkpoints: the trainable parameters, the optimiser state and the progress of a
//! run, written so that a crash mid-write never damages the last good checkpoint, and read back
//! by `run --resume`.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use burn::tensor::{backend::AutodiffBackend, Tensor, TensorData, TensorPrimitive};
use serde::{Deserialize, Serialize};

use super::{
    optim::{InnerPrim, OptimState},
    Evaluation,
};
use crate::{bridge::value::ft, by_rank, params::ParamStore};

/// What a checkpoint records besides tensors.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Progress {
    /// Optimiser steps completed.
    pub step: usize,
    pub losses: Vec<(usize, f64)>,
    pub evaluations: Vec<Evaluation>,
    /// Per-parameter optimiser step counts.
    pub optimizer_steps: Vec<(String, usize)>,
    /// Seconds of training before the checkpoint.
    pub train_seconds: f64,
}

type I<B> = <B as AutodiffBackend>::InnerBackend;

fn inner_to_vec<B: AutodiffBackend>(p: InnerPrim<B>) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
    use burn::tensor::TensorMetadata;
    let shape = p.shape().to_vec();
    let n: usize = shape.iter().product();
    let t = Tensor::<I<B>, 1>::from_primitive(TensorPrimitive::Float(p)).reshape([n]);
    let v = t
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok((shape, v))
}

fn vec_to_inner<B: AutodiffBackend>(
    shape: &[usize],
    v: Vec<f32>,
    device: &B::Device,
) -> anyhow::Result<InnerPrim<B>> {
    let data = TensorData::new(v, shape.to_vec());
    Ok(by_rank!(shape.len(), |D| Ok(
        Tensor::<I<B>, D>::from_data(data, device)
            .into_primitive()
            .tensor()
    ))?)
}

fn write_tensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> anyhow::Result<()> {
    let out = crate::backbone::weights::serialize_f32(tensors)?;
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// Tensors by name: shape and values.
type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn read_tensors(path: &Path) -> anyhow::Result<Tensors> {
    let ck = crate::backbone::weights::Checkpoint::read(path)?;
    Ok(ck.tensors.into_iter().collect())
}

/// Writes a checkpoint into `dir/checkpoint`: first into a fresh sibling folder, then swapped
/// in by renames, so that a complete checkpoint exists at every moment.
pub fn save<B: AutodiffBackend>(
    dir: &Path,
    store: &ParamStore<B>,
    optimizer: OptimState<B>,
    progress: &Progress,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("checkpoint.partial-")
        .tempdir_in(dir)?;
    let mut params = Vec::new();
    for p in store.trainable() {
        let rank = p.shape.len();
        let inner = by_rank!(rank, |D| Ok(ft::<B, D>(p.value.clone())
            .inner()
            .into_primitive()
            .tensor()))?;
        let (shape, v) = inner_to_vec::<B>(inner)?;
        params.push((p.name.clone(), shape, v));
    }
    write_tensors(&tmp.path().join("params.safetensors"), &params)?;
    let (opt_tensors, steps) = optimizer;
    let opt: Vec<_> = opt_tensors
        .into_iter()
        .map(|(n, t)| inner_to_vec::<B>(t).map(|(s, v)| (n, s, v)))
        .collect::<anyhow::Result<_>>()?;
    write_tensors(&tmp.path().join("optimizer.safetensors"), &opt)?;
    let progress = Progress {
        optimizer_steps: steps,
        ..progress.clone()
    };
    std::fs::write(
        tmp.path().join("progress.json"),
        serde_json::to_vec_pretty(&progress)?,
    )?;
    let dest = dir.join("checkpoint");
    let old = dir.join("checkpoint.old");
    let _ = std::fs::remove_dir_all(&old);
    if dest.exists() {
        std::fs::rename(&dest, &old)?;
    }
    std::fs::rename(tmp.keep(), &dest)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(dest)
}

/// Reads `dir/checkpoint` (or the previous one, if a crash came between the two renames) into
/// the store and returns the optimiser state and the progress.
#[allow(clippy::type_complexity)]
pub fn load<B: AutodiffBackend>(
    dir: &Path,
    store: &mut ParamStore<B>,
) -> anyhow::Result<(HashMap<String, InnerPrim<B>>, Progress)> {
    let ck = [dir.join("checkpoint"), dir.join("checkpoint.old")]
        .into_iter()
        .find(|d| d.join("progress.json").exists())
        .with_context(|| format!("no checkpoint to resume from in {}", dir.display()))?;
    let progress: Progress = serde_json::from_slice(&std::fs::read(ck.join("progress.json"))?)
        .with_context(|| format!("{}: unreadable progress.json", ck.display()))?;
    let device = store.device.clone();
    let params = read_tensors(&ck.join("params.safetensors"))?;
    let names: Vec<String> = store.trainable().map(|p| p.name.clone()).collect();
    if names.len() != params.len() {
        bail!(
            "{}: the checkpoint has {} trainable tensors, this run has {}: was the config changed?",
            ck.display(),
            params.len(),
            names.len()
        );
    }
    for name in names {
        let (shape, v) = params
            .get(&name)
            .with_context(|| format!("{}: no tensor `{name}`", ck.display()))?;
        let prim = crate::params::from_values::<B>(shape, v.clone(), &device)?;
        store.assign(&name, prim)?;
    }
    let mut opt = HashMap::new();
    for (name, (shape, v)) in read_tensors(&ck.join("optimizer.safetensors"))? {
        opt.insert(name, vec_to_inner::<B>(&shape, v, &device)?);
    }
    Ok((opt, progress))
}
