//! Loading HF `model.safetensors` files into the parameter store, with errors a user can act
//! on: the file, the tensor, what was expected and what was found.
use std::{collections::BTreeMap, path::Path};

use burn::tensor::backend::AutodiffBackend;
use safetensors::{Dtype, SafeTensors};

use crate::params::{from_values, ParamStore};

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: not a valid safetensors file (corrupt or truncated?): {message}")]
    Corrupt { file: String, message: String },
    #[error(
        "{file}: tensor `{name}` is missing (the checkpoint has {count} tensors, e.g. {example})"
    )]
    Missing {
        file: String,
        name: String,
        count: usize,
        example: String,
    },
    #[error("{file}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        file: String,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{file}: tensor `{name}` has dtype {dtype}, expected F32, F16 or BF16")]
    Dtype {
        file: String,
        name: String,
        dtype: String,
    },
}

/// A checkpoint's tensors as f32, by key (with any `bert.`/`model.` style prefix kept).
pub struct Checkpoint {
    pub file: String,
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Non-float tensors (e.g. BERT's `position_ids` buffer), by name, with their dtype.
    pub skipped: BTreeMap<String, String>,
}

impl Checkpoint {
    pub fn read(path: &Path) -> Result<Self, WeightsError> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| WeightsError::Io {
            file: file.clone(),
            source,
        })?;
        Self::parse(&file, &bytes)
    }

    pub fn parse(file: &str, bytes: &[u8]) -> Result<Self, WeightsError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| WeightsError::Corrupt {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        let mut tensors = BTreeMap::new();
        let mut skipped = BTreeMap::new();
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                other => {
                    skipped.insert(name, format!("{other:?}"));
                    continue;
                }
            };
            tensors.insert(name, (shape, values));
        }
        Ok(Checkpoint {
            file: file.to_string(),
            tensors,
            skipped,
        })
    }

    /// Finds `key`, also under the common HF wrappers' prefixes.
    pub fn find(&self, key: &str, prefixes: &[&str]) -> Option<&(Vec<usize>, Vec<f32>)> {
        self.tensors.get(key).or_else(|| {
            prefixes
                .iter()
                .find_map(|p| self.tensors.get(&format!("{p}{key}")))
        })
    }

    /// Takes the expected tensors into the store as frozen `backbone` parameters.
    pub fn load_into<B: AutodiffBackend>(
        &self,
        store: &mut ParamStore<B>,
        expected: &[(String, Vec<usize>)],
        prefixes: &[&str],
        aliases: &[(&str, &str)],
    ) -> Result<(), WeightsError> {
        for (name, shape) in expected {
            let found = self.find(name, prefixes).or_else(|| {
                aliases
                    .iter()
                    .filter(|(k, _)| k == name)
                    .find_map(|(_, alias)| self.find(alias, prefixes))
            });
            let Some((s, values)) = found else {
                if let Some(dtype) = self.skipped.get(name) {
                    return Err(WeightsError::Dtype {
                        file: self.file.clone(),
                        name: name.clone(),
                        dtype: dtype.clone(),
                    });
                }
                return Err(WeightsError::Missing {
                    file: self.file.clone(),
                    name: name.clone(),
                    count: self.tensors.len(),
                    example: self.tensors.keys().next().cloned().unwrap_or_default(),
                });
            };
            if s != shape {
                return Err(WeightsError::Shape {
                    file: self.file.clone(),
                    name: name.clone(),
                    expected: shape.clone(),
                    found: s.clone(),
                });
            }
            let prim = from_values::<B>(s, values.clone(), &store.device).map_err(|e| {
                WeightsError::Corrupt {
                    file: self.file.clone(),
                    message: e.to_string(),
                }
            })?;
            store
                .insert(name, "backbone", "backbone", prim)
                .map_err(|e| WeightsError::Corrupt {
                    file: self.file.clone(),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }
}

/// A safetensors file of f32 tensors `(name, shape, values)`, in memory (checkpoints and
/// primed parameters write it).
pub fn serialize_f32(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> anyhow::Result<Vec<u8>> {
    serialize_f32_with(tensors, None)
}

/// [`serialize_f32`] with the file's `__metadata__` (adapter folders name their format in it).
pub fn serialize_f32_with(
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> anyhow::Result<Vec<u8>> {
    use safetensors::tensor::TensorView;
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    Ok(safetensors::serialize(views, metadata)?)
}
