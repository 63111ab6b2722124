//! Key maps: how a plugin's parameters sit in a foreign format's file (HF peft, AdapterHub),
//! one parameter per file tensor or several side by side.
use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use serde::Deserialize;

use super::{assign, values};
use crate::model::Model;

/// One entry of a plugin's key mapping to a foreign format: file tensor `key` of `shape` is the
/// module's parameter `param`, or, with `concat`, the listed parameters side by side along the
/// last axis (each `[rows, cols_i]`, in order; HF peft's prefix tuning stores every layer's key
/// and value prefixes as one `prompt_embeddings` tensor).
#[derive(Deserialize, Clone, Debug)]
pub(super) struct KeyMap {
    pub key: String,
    #[serde(default)]
    pub param: String,
    pub shape: Vec<usize>,
    #[serde(default)]
    pub concat: Vec<String>,
}

impl KeyMap {
    /// The file tensor's values, read from module instance `name`'s parameters.
    pub fn gather<B: AutodiffBackend>(
        &self,
        model: &Model<B>,
        name: &str,
    ) -> anyhow::Result<Vec<f32>> {
        if self.concat.is_empty() {
            let (shape, v) = values(model, &format!("{name}.{}", self.param))?;
            if shape != self.shape {
                bail!(
                    "parameter `{name}.{}` has shape {shape:?}, the plugin maps it as {:?}",
                    self.param,
                    self.shape
                );
            }
            return Ok(v);
        }
        let parts = self
            .concat
            .iter()
            .map(|p| values(model, &format!("{name}.{p}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let rows = self.shape.first().copied().unwrap_or(0);
        let cols: usize = parts
            .iter()
            .map(|(s, _)| s.last().copied().unwrap_or(0))
            .sum();
        if self.shape != [rows, cols] || parts.iter().any(|(s, _)| s.len() != 2 || s[0] != rows) {
            let shapes: Vec<&Vec<usize>> = parts.iter().map(|(s, _)| s).collect();
            bail!(
                "`{}`: parameters of shapes {shapes:?} do not sit side by side as {:?}",
                self.key,
                self.shape
            );
        }
        let mut out = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for (s, v) in &parts {
                out.extend_from_slice(&v[r * s[1]..(r + 1) * s[1]]);
            }
        }
        Ok(out)
    }

    /// Writes the file tensor's values `v` (of shape `self.shape`, checked by the caller) into
    /// module instance `name`'s parameters.
    pub fn scatter<B: AutodiffBackend>(
        &self,
        model: &Model<B>,
        name: &str,
        v: &[f32],
    ) -> anyhow::Result<()> {
        if self.concat.is_empty() {
            return assign(model, &format!("{name}.{}", self.param), &self.shape, v);
        }
        let rows = self.shape.first().copied().unwrap_or(0);
        let widths = self
            .concat
            .iter()
            .map(|p| {
                let full = format!("{name}.{p}");
                let store = model.params.borrow();
                let shape = &store
                    .get(&full)
                    .with_context(|| format!("the model has no parameter `{full}`"))?
                    .shape;
                match shape.as_slice() {
                    [r, c] if *r == rows => Ok(*c),
                    _ => bail!("`{full}` has shape {shape:?}, not [{rows}, _]"),
                }
            })
            .collect::<anyhow::Result<Vec<usize>>>()?;
        let cols: usize = widths.iter().sum();
        if self.shape != [rows, cols] || v.len() != rows * cols {
            bail!(
                "`{}`: {:?} does not split into parameters of widths {widths:?}",
                self.key,
                self.shape
            );
        }
        let mut start = 0;
        for (p, w) in self.concat.iter().zip(&widths) {
            let part: Vec<f32> = (0..rows)
                .flat_map(|r| v[r * cols + start..r * cols + start + w].iter().copied())
                .collect();
            assign(model, &format!("{name}.{p}"), &[rows, *w], &part)?;
            start += w;
        }
        Ok(())
    }
}
