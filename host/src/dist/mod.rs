//! Data-parallel training: N ranks (processes, machines, or threads of one process) train one
//! run together. Every rank draws the same batches (same sampler, same seed) and takes its share
//! of each (rows r, r+N, ...); after backward the trainer averages the trainable parameters'
//! gradients over the ranks through [`GradientSync`], so every rank takes the same optimiser
//! step as one process on the combined batch would. Rank 0 evaluates and writes; the others
//! write nothing.
//!
//! The engine is burn-collective ([`collective`], feature `distributed`); [`Single`] is the
//! default no-op. burn-collective has no global broadcast, so ranks are not synchronised at the
//! start: [`Dist::check_start`] compares hashes of the config and of the initial weights
//! instead and refuses to train when they differ.
#[cfg(feature = "distributed")]
pub mod collective;
pub mod launch;

use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context;
use burn::tensor::{backend::AutodiffBackend, Tensor, TensorData, TensorPrimitive};
use sha2::{Digest, Sha256};

use crate::{
    by_rank,
    config::RunConfig,
    params::{InnerPrim, ParamStore},
};

/// Averages what every rank computed: the one operation data-parallel training needs.
pub trait GradientSync: Send {
    /// Replaces `buf` by its element-wise mean over all ranks. Every rank passes a buffer of
    /// the same length, in the same order, once per call.
    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> anyhow::Result<()>;
    /// Leaves the group cleanly (after the last all-reduce).
    fn finish(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// One process alone: nothing to average.
pub struct Single;

impl GradientSync for Single {
    fn all_reduce_mean(&mut self, _buf: &mut [f32]) -> anyhow::Result<()> {
        Ok(())
    }
}

/// This rank's place in the group and the engine that connects it to the others.
#[derive(Clone)]
pub struct Dist {
    rank: usize,
    world: usize,
    sync: Arc<Mutex<Box<dyn GradientSync>>>,
}

impl Default for Dist {
    fn default() -> Self {
        Dist::single()
    }
}

impl std::fmt::Debug for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dist(rank {} of {})", self.rank, self.world)
    }
}

/// The process's group, set once by the CLI (`run --world-size`); a single process otherwise.
static WORLD: OnceLock<Dist> = OnceLock::new();

/// Makes `dist` the group every plain run of this process trains in.
pub fn install(dist: Dist) -> anyhow::Result<()> {
    WORLD
        .set(dist)
        .map_err(|_| anyhow::anyhow!("the distributed group is already set"))
}

/// The process's group (see [`install`]).
pub fn current() -> Dist {
    WORLD.get().cloned().unwrap_or_default()
}

/// Bits of a 64-bit digest as 0.0/1.0: their mean over ranks is 0 or 1 exactly when every rank
/// has the same digest, and anything else on *every* rank when one differs.
fn digest_bits(bytes: &[u8]) -> Vec<f32> {
    let d = Sha256::digest(bytes);
    (0..64)
        .map(|i| ((d[i / 8] >> (i % 8)) & 1) as f32)
        .collect()
}

fn agreed(bits: &[f32]) -> bool {
    bits.iter().all(|&b| b == 0.0 || b == 1.0)
}

impl Dist {
    pub fn single() -> Self {
        Dist::new(0, 1, Box::new(Single))
    }

    pub fn new(rank: usize, world: usize, sync: Box<dyn GradientSync>) -> Self {
        Dist {
            rank,
            world: world.max(1),
            sync: Arc::new(Mutex::new(sync)),
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world
    }

    /// Rank 0: the one that evaluates and writes.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    pub fn is_single(&self) -> bool {
        self.world == 1
    }

    /// This rank's rows of a batch: r, r+N, r+2N, ...
    pub fn shard<T>(&self, rows: Vec<T>) -> Vec<T> {
        if self.world == 1 {
            return rows;
        }
        rows.into_iter()
            .skip(self.rank)
            .step_by(self.world)
            .collect()
    }

    /// The rows of a batch that the other ranks take (the complement of [`Dist::shard`]).
    pub fn others<'a, T>(&self, rows: &'a [T]) -> impl Iterator<Item = &'a T> + 'a {
        let (rank, world) = (self.rank, self.world);
        rows.iter()
            .enumerate()
            .filter(move |(k, _)| world > 1 && k % world != rank)
            .map(|(_, r)| r)
    }

    /// Added to the per-step dropout seed: ranks draw different masks for their rows (rank 0
    /// draws what a single process does).
    pub fn seed_offset(&self) -> u64 {
        (self.rank as u64) << 32
    }

    pub fn all_reduce_mean(&self, buf: &mut [f32]) -> anyhow::Result<()> {
        let mut sync = self
            .sync
            .lock()
            .map_err(|_| anyhow::anyhow!("the gradient sync engine failed earlier"))?;
        sync.all_reduce_mean(buf)
    }

    pub fn finish(&self) -> anyhow::Result<()> {
        if let Ok(mut sync) = self.sync.lock() {
            sync.finish()?;
        }
        Ok(())
    }

    /// Before the first step: the batch splits evenly, and every rank has the same config and
    /// the same weights (all of them, frozen included), else a clear error on every rank.
    pub fn check_start<B: AutodiffBackend>(
        &self,
        cfg: &RunConfig,
        params: &ParamStore<B>,
    ) -> anyhow::Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        let t = &cfg.training;
        anyhow::ensure!(
            t.batch_size.is_multiple_of(self.world),
            "/training/batch_size: {} does not split over {} ranks: each rank takes batch_size / \
             world_size rows of every batch, so the batch size must be a multiple of the world size",
            t.batch_size,
            self.world
        );
        let mut buf = digest_bits(serde_json::to_string(cfg)?.as_bytes());
        buf.extend(digest_bits(&weights_digest(params)?));
        self.all_reduce_mean(&mut buf)
            .context("checking that every rank starts alike")?;
        anyhow::ensure!(
            agreed(&buf[..64]),
            "rank {} of {}: the ranks were started with different run configs (their hashes \
             differ): give every rank the same config file and flags",
            self.rank,
            self.world
        );
        anyhow::ensure!(
            agreed(&buf[64..]),
            "rank {} of {}: the ranks start from different weights (their hashes differ): \
             every rank must build the model from the same seed and backbone, or resume the \
             same checkpoint (burn-collective cannot broadcast rank 0's weights)",
            self.rank,
            self.world
        );
        tracing::info!(
            rank = self.rank,
            world = self.world,
            "ranks agree on config and weights"
        );
        Ok(())
    }

    /// Averages the step's gradients (in the store's trainable order) over the ranks, in one
    /// all-reduce of a flat buffer: the gradients in sorted-name order, one presence flag per
    /// parameter (a parameter no rank has a gradient for stays without one), this rank's loss
    /// and its stop request. Returns the mean loss and whether any rank asked to stop.
    pub fn average<B: AutodiffBackend>(
        &self,
        params: &ParamStore<B>,
        grads: &mut [Option<InnerPrim<B>>],
        loss: f32,
        stop: bool,
    ) -> anyhow::Result<(f32, bool)> {
        if self.world == 1 {
            return Ok((loss, stop));
        }
        let meta: Vec<(String, Vec<usize>)> = params
            .trainable()
            .map(|p| (p.name.clone(), p.shape.clone()))
            .collect();
        anyhow::ensure!(
            meta.len() == grads.len(),
            "{} gradients for {} trainable parameters",
            grads.len(),
            meta.len()
        );
        let mut order: Vec<usize> = (0..meta.len()).collect();
        order.sort_by(|&a, &b| meta[a].0.cmp(&meta[b].0));
        let total: usize = meta.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        let mut buf = Vec::with_capacity(total + meta.len() + 2);
        for &i in &order {
            let n: usize = meta[i].1.iter().product();
            match grads[i].clone() {
                Some(g) => {
                    let v = inner_floats::<B>(g, meta[i].1.len())?;
                    anyhow::ensure!(
                        v.len() == n,
                        "gradient of `{}` has {} values, the parameter {n}",
                        meta[i].0,
                        v.len()
                    );
                    buf.extend(v);
                }
                None => buf.extend(std::iter::repeat_n(0.0, n)),
            }
        }
        for &i in &order {
            buf.push(if grads[i].is_some() { 1.0 } else { 0.0 });
        }
        buf.push(loss);
        buf.push(if stop { 1.0 } else { 0.0 });
        let t = std::time::Instant::now();
        self.all_reduce_mean(&mut buf)
            .with_context(|| format!("rank {}: averaging the gradients", self.rank))?;
        tracing::debug!(
            rank = self.rank,
            floats = buf.len(),
            ms = t.elapsed().as_secs_f64() * 1e3,
            "all-reduce"
        );
        let device = params.device.clone();
        let mut offset = 0;
        for (k, &i) in order.iter().enumerate() {
            let n: usize = meta[i].1.iter().product();
            let present = buf[total + k] > 0.0;
            grads[i] = if present {
                Some(inner_from::<B>(
                    buf[offset..offset + n].to_vec(),
                    &meta[i].1,
                    &device,
                )?)
            } else {
                None
            };
            offset += n;
        }
        Ok((buf[total + meta.len()], buf[total + meta.len() + 1] > 0.0))
    }
}

/// SHA-256 over every parameter (names, shapes and f32 values), in sorted-name order.
fn weights_digest<B: AutodiffBackend>(params: &ParamStore<B>) -> anyhow::Result<Vec<u8>> {
    let mut all: Vec<_> = params.iter().collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = Sha256::new();
    for p in all {
        h.update(p.name.as_bytes());
        for d in &p.shape {
            h.update((*d as u64).to_le_bytes());
        }
        let data: TensorData = by_rank!(p.shape.len(), |D| Ok(crate::nn::value::ft::<B, D>(
            p.value.clone()
        )
        .into_data()))?;
        let v = to_f32(data).with_context(|| format!("parameter `{}`", p.name))?;
        for x in v {
            h.update(x.to_le_bytes());
        }
    }
    Ok(h.finalize().to_vec())
}

fn inner_floats<B: AutodiffBackend>(g: InnerPrim<B>, rank: usize) -> anyhow::Result<Vec<f32>> {
    type I<B> = <B as AutodiffBackend>::InnerBackend;
    let data: TensorData = by_rank!(rank, |D| Ok(Tensor::<I<B>, D>::from_primitive(
        TensorPrimitive::Float(g)
    )
    .into_data()))?;
    to_f32(data)
}

fn to_f32(data: TensorData) -> anyhow::Result<Vec<f32>> {
    data.convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

fn inner_from<B: AutodiffBackend>(
    values: Vec<f32>,
    shape: &[usize],
    device: &B::Device,
) -> anyhow::Result<InnerPrim<B>> {
    type I<B> = <B as AutodiffBackend>::InnerBackend;
    let data = TensorData::new(values, shape.to_vec());
    Ok(by_rank!(shape.len(), |D| Ok(
        Tensor::<I<B>, D>::from_data(data, device)
            .into_primitive()
            .tensor()
    ))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_once() {
        let rows: Vec<usize> = (0..12).collect();
        let mut seen: Vec<usize> = (0..3)
            .flat_map(|r| {
                Dist::new(r, 3, Box::new(Single))
                    .shard(rows.clone())
                    .into_iter()
            })
            .collect();
        assert_eq!(
            Dist::new(1, 3, Box::new(Single)).shard(rows.clone()),
            [1, 4, 7, 10]
        );
        seen.sort();
        assert_eq!(seen, rows);
        let d = Dist::new(1, 3, Box::new(Single));
        let others: Vec<usize> = d.others(&rows).copied().collect();
        assert_eq!(others, [0, 2, 3, 5, 6, 8, 9, 11]);
        assert_eq!(Dist::single().others(&rows).count(), 0);
        assert_eq!(Dist::single().shard(rows.clone()), rows);
    }

    #[test]
    fn digest_bits_agree_only_when_equal() {
        let (a, b) = (digest_bits(b"config a"), digest_bits(b"config b"));
        let mean: Vec<f32> = a.iter().zip(&b).map(|(x, y)| (x + y) / 2.0).collect();
        assert!(agreed(&a) && agreed(&mean.iter().map(|_| 1.0).collect::<Vec<_>>()));
        assert!(!agreed(&mean), "different digests must show in the mean");
        let same: Vec<f32> = a.iter().zip(&a).map(|(x, y)| (x + y) / 2.0).collect();
        assert!(agreed(&same));
    }
}
