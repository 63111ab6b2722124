//! How the frozen backbone is held, decided once right after loading: in bf16
//! (`"backbone": {"dtype": "bf16"}`), which weights are stored that way and the conversion;
//! and on the CPU kernels, in either dtype, the projection weights column-major (the layout
//! the GEMM reads without packing; see [`crate::nn::linear::column_major`]).
//!
//! Held in bf16: every projection's weight matrix (each `Projection` site's `<site>.weight`,
//! which only [`crate::nn::linear`] reads, widening it to f32 for the product) and, for the
//! BERT family, the three embedding tables (the forward widens the gathered rows). Everything
//! else stays f32: biases and norms (a few KB, and added elementwise), T5/BART's shared
//! embedding (it is also the tied output projection and is read by decoding code paths that
//! were not changed), relative position tables. A weight a module makes trainable is widened
//! back to f32 when it is marked trainable ([`crate::params::ParamStore::set_trainable`]), so
//! gradients and optimiser state are always f32.
use burn::tensor::{backend::AutodiffBackend, DType, TensorMetadata};
use peft_api::{BackboneInfo, SiteKind};

use crate::{config::BackboneDtype, nn, params::ParamStore};

/// Every projection's weight matrix (each `Projection` site's `<site>.weight`) present in the
/// store.
fn projection_keys<B: AutodiffBackend>(info: &BackboneInfo, store: &ParamStore<B>) -> Vec<String> {
    let mut keys: Vec<String> = info
        .sites
        .iter()
        .filter(|s| s.kind == SiteKind::Projection)
        .map(|s| format!("{}.weight", s.name))
        .collect();
    keys.retain(|k| store.get(k).is_some_and(|p| p.shape.len() == 2));
    keys.sort();
    keys.dedup();
    keys
}

/// The weights the CPU kernels read column-major: the projections, and an untied LM head
/// (read only by the output product; a tied one is also the embedding table, which burn's
/// row gather would copy whole if it were transposed).
fn column_major_keys<B: AutodiffBackend>(
    info: &BackboneInfo,
    store: &ParamStore<B>,
) -> Vec<String> {
    let mut keys = projection_keys(info, store);
    if store
        .get("lm_head.weight")
        .is_some_and(|p| p.shape.len() == 2)
    {
        keys.push("lm_head.weight".to_string());
    }
    keys
}

/// The weights a bf16 backbone holds in bf16, among those present in the store.
pub fn bf16_keys<B: AutodiffBackend>(info: &BackboneInfo, store: &ParamStore<B>) -> Vec<String> {
    let mut keys = projection_keys(info, store);
    if info.architecture == "bert" {
        keys.extend(
            ["word", "position", "token_type"].map(|e| format!("embeddings.{e}_embeddings.weight")),
        );
    }
    keys.retain(|k| store.get(k).is_some_and(|p| p.shape.len() == 2));
    keys.sort();
    keys.dedup();
    keys
}

/// What [`hold`] did: how many tensors it converted and the bytes of backbone weights before
/// and after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub tensors: usize,
    pub bytes_before: usize,
    pub bytes_after: usize,
}

/// Stores the backbone's frozen weights in `dtype` (a no-op for f32), one tensor at a time
/// (the f32 copy of each is freed as its bf16 one replaces it).
pub fn hold<B: AutodiffBackend>(
    info: &BackboneInfo,
    store: &mut ParamStore<B>,
    dtype: BackboneDtype,
) -> anyhow::Result<Held> {
    let backbone_bytes = |store: &ParamStore<B>| -> usize {
        store
            .iter()
            .filter(|p| p.owner == "backbone")
            .map(|p| p.numel() * if p.value.dtype() == DType::BF16 { 2 } else { 4 })
            .sum()
    };
    let before = backbone_bytes(store);
    let keys = match dtype {
        BackboneDtype::F32 => Vec::new(),
        BackboneDtype::Bf16 => bf16_keys(info, store),
    };
    for key in &keys {
        let p = store
            .get(key)
            .ok_or_else(|| anyhow::anyhow!("backbone weight `{key}` vanished"))?;
        if p.shape.len() != 2 {
            anyhow::bail!("backbone weight `{key}`: shape {:?} is not 2-D", p.shape);
        }
        let t = nn::bf16::from_f32(nn::value::ft::<B, 2>(p.value.clone()))?;
        store.assign(key, nn::value::fp(t))?;
    }
    if nn::enabled::<B>() {
        // On the CPU kernels, in either dtype: the weights only the output products read held
        // column-major, the layout their GEMM reads in place (`nn::linear::column_major`);
        // same values, same bytes.
        for key in column_major_keys(info, store) {
            let p = store
                .get(&key)
                .ok_or_else(|| anyhow::anyhow!("backbone weight `{key}` vanished"))?;
            let w = nn::linear::column_major(nn::value::ft::<B, 2>(p.value.clone()));
            store.assign(&key, nn::value::fp(w))?;
        }
    }
    let after = backbone_bytes(store);
    if !keys.is_empty() {
        tracing::info!(
            tensors = keys.len(),
            before_mib = before as f64 / (1 << 20) as f64,
            after_mib = after as f64 / (1 << 20) as f64,
            "backbone weights held in {}",
            dtype.as_str()
        );
    }
    Ok(Held {
        tensors: keys.len(),
        bytes_before: before,
        bytes_after: after,
    })
}
