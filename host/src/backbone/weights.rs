//! Loading HF `model.safetensors` files into the parameter store, with errors a user can act
//! on: the file, the tensor, what was expected and what was found.
use std::{collections::BTreeMap, io::Read, path::Path};

use burn::tensor::backend::AutodiffBackend;
use safetensors::{
    tensor::{Metadata, TensorInfo},
    Dtype,
};

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

/// The `safetensors` crate's limit on a header (100 MB).
const MAX_HEADER: u64 = 100_000_000;
/// Bytes read and converted at a time (a multiple of 8, so every chunk holds whole elements).
const CHUNK: usize = 1 << 20;

/// A checkpoint's tensors as f32, by key (with any `bert.`/`model.` style prefix kept).
pub struct Checkpoint {
    pub file: String,
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Non-float tensors (e.g. BERT's `position_ids` buffer), by name, with their dtype.
    pub skipped: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Reads a safetensors file tensor by tensor: the file is never held whole, so loading
    /// peaks at the f32 values plus one chunk (not the file plus its parse).
    pub fn read(path: &Path) -> Result<Self, WeightsError> {
        let file = path.display().to_string();
        let io = |source| WeightsError::Io {
            file: file.clone(),
            source,
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        Self::parse_from(&file, &mut f, len)
    }

    /// The same from bytes in memory.
    pub fn parse(file: &str, bytes: &[u8]) -> Result<Self, WeightsError> {
        Self::parse_from(file, &mut std::io::Cursor::new(bytes), bytes.len() as u64)
    }

    /// Checks the header as the `safetensors` crate does (offsets contiguous, sizes matching
    /// shapes and dtypes, the data filling the file exactly), then converts each tensor to f32
    /// in file order, a chunk at a time.
    fn parse_from(file: &str, r: &mut impl Read, len: u64) -> Result<Self, WeightsError> {
        let corrupt = |message: String| WeightsError::Corrupt {
            file: file.to_string(),
            message,
        };
        let read = |r: &mut dyn Read, buf: &mut [u8], what: &str| {
            r.read_exact(buf).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => corrupt(format!("ends inside {what}")),
                _ => WeightsError::Io {
                    file: file.to_string(),
                    source: e,
                },
            })
        };
        let mut n8 = [0u8; 8];
        if len < 8 {
            return Err(corrupt(format!(
                "{len} bytes, shorter than the header's length field"
            )));
        }
        read(r, &mut n8, "the header's length")?;
        let n = u64::from_le_bytes(n8);
        if n > MAX_HEADER || n > len - 8 {
            return Err(corrupt(format!(
                "header of {n} bytes in a file of {len} bytes"
            )));
        }
        let mut header = vec![0u8; n as usize];
        read(r, &mut header, "the header")?;
        let entries: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| corrupt(format!("header is not a JSON object of tensors: {e}")))?;
        let mut infos = Vec::with_capacity(entries.len());
        for (name, v) in entries {
            if name == "__metadata__" {
                continue;
            }
            let info: TensorInfo = serde_json::from_value(v)
                .map_err(|e| corrupt(format!("header entry `{name}`: {e}")))?;
            infos.push((name, info));
        }
        infos.sort_by_key(|(_, i)| i.data_offsets);
        let meta = Metadata::new(None, infos.clone()).map_err(|e| corrupt(e.to_string()))?;
        let data_len = meta.data_len() as u64;
        if 8 + n + data_len != len {
            return Err(corrupt(format!(
                "the header describes {} bytes of data, the file holds {}",
                data_len,
                len - 8 - n
            )));
        }
        let (mut tensors, mut skipped) = (BTreeMap::new(), BTreeMap::new());
        let mut chunk = vec![0u8; CHUNK.min(data_len as usize)];
        for (name, info) in infos {
            let mut left = info.data_offsets.1 - info.data_offsets.0;
            let width = (info.dtype.bitsize() / 8).max(1);
            let convert: Option<fn(&[u8]) -> f32> = match info.dtype {
                Dtype::F32 => Some(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                Dtype::F16 => Some(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
                Dtype::BF16 => Some(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
                _ => None,
            };
            let mut values = Vec::with_capacity(if convert.is_some() { left / width } else { 0 });
            let what = format!("tensor `{name}`");
            while left > 0 {
                // Whole elements per chunk (CHUNK is a multiple of every float width).
                let take = left.min(chunk.len());
                read(r, &mut chunk[..take], &what)?;
                if let Some(f) = convert {
                    values.extend(chunk[..take].chunks_exact(width).map(f));
                }
                left -= take;
            }
            if convert.is_some() {
                tensors.insert(name, (info.shape, values));
            } else {
                skipped.insert(name, format!("{:?}", info.dtype));
            }
        }
        Ok(Checkpoint {
            file: file.to_string(),
            tensors,
            skipped,
        })
    }

    /// Finds `key`, also under the common HF wrappers' prefixes.
    pub fn find(&self, key: &str, prefixes: &[&str]) -> Option<&(Vec<usize>, Vec<f32>)> {
        self.key_of(key, prefixes).map(|k| &self.tensors[&k])
    }

    /// The checkpoint's own key for `key` (as is or under one of `prefixes`).
    fn key_of(&self, key: &str, prefixes: &[&str]) -> Option<String> {
        std::iter::once(key.to_string())
            .chain(prefixes.iter().map(|p| format!("{p}{key}")))
            .find(|k| self.tensors.contains_key(k))
    }

    /// Moves the expected tensors into the store as frozen `backbone` parameters (a tensor
    /// loaded under two names, a tie, is copied for all but the last). Every name and shape is
    /// checked before anything moves; the checkpoint keeps what no name asked for.
    pub fn load_into<B: AutodiffBackend>(
        &mut self,
        store: &mut ParamStore<B>,
        expected: &[(String, Vec<usize>)],
        prefixes: &[&str],
        aliases: &[(&str, &str)],
    ) -> Result<(), WeightsError> {
        let mut sources = Vec::with_capacity(expected.len());
        for (name, shape) in expected {
            let found = self.key_of(name, prefixes).or_else(|| {
                aliases
                    .iter()
                    .filter(|(k, _)| k == name)
                    .find_map(|(_, alias)| self.key_of(alias, prefixes))
            });
            let Some(key) = found else {
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
            let s = &self.tensors[&key].0;
            if s != shape {
                return Err(WeightsError::Shape {
                    file: self.file.clone(),
                    name: name.clone(),
                    expected: shape.clone(),
                    found: s.clone(),
                });
            }
            sources.push(key);
        }
        for (i, ((name, _), key)) in expected.iter().zip(&sources).enumerate() {
            let (s, values) = if sources[i + 1..].contains(key) {
                self.tensors[key].clone()
            } else {
                self.tensors.remove(key).expect("checked above")
            };
            let prim =
                from_values::<B>(&s, values, &store.device).map_err(|e| WeightsError::Corrupt {
                    file: self.file.clone(),
                    message: e.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::value::ft;

    type A = burn::backend::Autodiff<burn::backend::Flex>;

    /// A file of mixed dtypes: F32 (one tensor larger than a read chunk), F16, BF16 and an I64
    /// buffer, as `safetensors` writes them.
    fn mixed() -> (Vec<u8>, Vec<f32>) {
        use safetensors::tensor::TensorView;
        let big: Vec<f32> = (0..300_001).map(|i| (i as f32 * 0.37).sin()).collect();
        let f32b: Vec<u8> = big.iter().flat_map(|x| x.to_le_bytes()).collect();
        let f16b: Vec<u8> = [1.5f32, -2.25, 0.125]
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        let bf16b: Vec<u8> = [3.0f32, -0.5]
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect();
        let ids: Vec<u8> = [0i64, 1, 2].iter().flat_map(|x| x.to_le_bytes()).collect();
        let views = vec![
            (
                "big",
                TensorView::new(Dtype::F32, vec![300_001], &f32b).unwrap(),
            ),
            ("half", TensorView::new(Dtype::F16, vec![3], &f16b).unwrap()),
            (
                "brain",
                TensorView::new(Dtype::BF16, vec![1, 2], &bf16b).unwrap(),
            ),
            ("ids", TensorView::new(Dtype::I64, vec![3], &ids).unwrap()),
        ];
        (safetensors::serialize(views, None).unwrap(), big)
    }

    #[test]
    fn reads_every_float_dtype_in_chunks_and_skips_the_rest() {
        let (bytes, big) = mixed();
        let dir = std::env::temp_dir().join(format!("peft-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mixed.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let from_file = Checkpoint::read(&path).unwrap();
        let from_bytes = Checkpoint::parse("mixed", &bytes).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        for ck in [&from_file, &from_bytes] {
            assert_eq!(ck.tensors["big"], (vec![300_001], big.clone()));
            assert_eq!(ck.tensors["half"], (vec![3], vec![1.5, -2.25, 0.125]));
            assert_eq!(ck.tensors["brain"], (vec![1, 2], vec![3.0, -0.5]));
            assert_eq!(ck.skipped["ids"], "I64");
            assert!(!ck.tensors.contains_key("ids"));
        }
    }

    #[test]
    fn damaged_files_are_errors_naming_what_is_wrong() {
        let (bytes, _) = mixed();
        let msg = |b: &[u8]| match Checkpoint::parse("f.safetensors", b) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted a damaged file"),
        };
        // Truncated inside the data, with bytes appended, inside the header, before it.
        assert!(
            msg(&bytes[..bytes.len() - 10]).contains("describes"),
            "{}",
            msg(&bytes[..bytes.len() - 10])
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(msg(&longer).contains("describes"));
        assert!(msg(&bytes[..20]).contains("header of"));
        assert!(msg(&bytes[..5]).contains("shorter than"));
        // A header whose offsets overlap.
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        let bad = header.replacen("\"data_offsets\":[0,", "\"data_offsets\":[1,", 1);
        assert_eq!(bad.len(), header.len());
        let mut b = bytes.clone();
        b[8..8 + n].copy_from_slice(bad.as_bytes());
        assert!(
            msg(&b).starts_with("f.safetensors: not a valid safetensors file"),
            "{}",
            msg(&b)
        );
    }

    #[test]
    fn load_moves_tensors_and_copies_a_tied_one() {
        let (bytes, big) = mixed();
        let mut ck = Checkpoint::parse("mixed", &bytes).unwrap();
        let mut store = ParamStore::<A>::new(Default::default(), 0);
        let expected = [
            ("big".to_string(), vec![300_001]),
            ("tied".to_string(), vec![300_001]),
            ("half".to_string(), vec![3]),
        ];
        ck.load_into(&mut store, &expected, &[], &[("tied", "big")])
            .unwrap();
        for name in ["big", "tied"] {
            let v = ft::<A, 1>(store.get(name).unwrap().value.clone()).into_data();
            assert_eq!(v.to_vec::<f32>().unwrap(), big, "{name}");
        }
        // Moved out (no second copy kept); what no name asked for stays.
        assert!(!ck.tensors.contains_key("big") && !ck.tensors.contains_key("half"));
        assert!(ck.tensors.contains_key("brain"));
        // A wrong shape is refused before anything moves.
        let mut ck = Checkpoint::parse("mixed", &bytes).unwrap();
        let bad = [
            ("half".to_string(), vec![3]),
            ("brain".to_string(), vec![2]),
        ];
        let err = ck
            .load_into(&mut store, &bad, &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`brain` has shape [1, 2], expected [2]"),
            "{err}"
        );
        assert!(ck.tensors.contains_key("half"));
    }
}
