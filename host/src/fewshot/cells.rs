//! Cells of a grid: one run each, its result.json read back, and reused only while its stored
//! config and code version equal the requested ones.
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::{selection::Choice, Grid, Part};
use crate::config::RunConfig;

/// One cell: a method on a task's split seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub method: String,
    pub task: String,
    pub seed: u64,
    pub metric: String,
    pub score: f64,
    pub examples: usize,
    pub train_seconds: f64,
    pub result: PathBuf,
    /// The split scored: `test`, or `dev` for a task without a `_test` file (marked in the
    /// table and left out of its mean).
    #[serde(default = "test_split")]
    pub split: String,
    /// The hyperparameters chosen on this split seed's `_dev` file, when the grid selects
    /// (`None`: the base config's, fixed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<Choice>,
}

pub(crate) fn test_split() -> String {
    "test".into()
}

/// Reads a cell's result.json back.
pub fn read_cell(method: &str, task: &str, seed: u64, path: &Path) -> anyhow::Result<Cell> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let r: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let ev = r["report"]["evaluations"]
        .as_array()
        .and_then(|v| v.last())
        .with_context(|| format!("{}: no evaluation", path.display()))?;
    let num = |v: &serde_json::Value, k: &str| {
        v[k].as_f64()
            .with_context(|| format!("{}: no number `{k}`", path.display()))
    };
    Ok(Cell {
        method: method.into(),
        task: task.into(),
        seed,
        metric: ev["metric"].as_str().unwrap_or_default().into(),
        score: num(ev, "score")?,
        examples: num(ev, "examples")? as usize,
        train_seconds: num(&r["report"], "train_seconds")?,
        result: path.to_path_buf(),
        split: r["report"]["eval_split"]
            .as_str()
            .unwrap_or("test")
            .to_string(),
        chosen: None,
    })
}

/// Why the stored `result.json` of a cell cannot stand for `cfg` run by this build: another
/// config, another code version, or unreadable. `None`: it can be reused.
pub fn stale_reason(result: &Path, cfg: &RunConfig) -> Option<String> {
    let r: serde_json::Value = match std::fs::read_to_string(result)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
    {
        Some(r) => r,
        None => return Some("it is unreadable".into()),
    };
    let want = match serde_json::to_value(cfg) {
        Ok(v) => v,
        Err(e) => return Some(format!("the requested config does not serialise: {e}")),
    };
    if r["config"] != want {
        let diff = match (&r["config"], &want) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => b
                .iter()
                .filter(|(k, v)| a.get(*k) != Some(*v))
                .map(|(k, _)| format!("/{k}"))
                .chain(
                    a.keys()
                        .filter(|k| !b.contains_key(*k))
                        .map(|k| format!("/{k}")),
                )
                .collect::<Vec<_>>()
                .join(", "),
            _ => "the whole config".into(),
        };
        return Some(format!(
            "its config differs from the requested one at {diff}"
        ));
    }
    let here = crate::serve::code_version();
    match r["code_version"].as_str() {
        Some(v) if v == here => None,
        Some(v) => Some(format!(
            "it was computed by code version {v}, this is {here}"
        )),
        None => Some(format!(
            "it records no code version (written before they were recorded); this is {here}"
        )),
    }
}

/// The result.json of `cfg` run under `out`: reused when stored and not stale, else run (an
/// interrupted run resumes from its checkpoint). Collecting runs nothing: `Ok(Err(why))` says
/// why a cell is not available.
pub(crate) fn obtain(
    grid: &Grid,
    cfg: &RunConfig,
    out: &Path,
    label: &str,
    registry: &peft_registry::Registry,
    data: &Path,
    device: crate::device::DeviceSpec,
) -> anyhow::Result<Result<PathBuf, String>> {
    use crate::run::{run, run_name, with_device, RunFlags};
    let dir = out.join(run_name(cfg));
    let result = dir.join("result.json");
    let stale = if result.exists() {
        stale_reason(&result, cfg)
    } else {
        None
    };
    if grid.part == Part::Collect && (stale.is_some() || !result.exists()) {
        return Ok(Err(stale.unwrap_or_else(|| "not run yet".into())));
    }
    if let Some(why) = &stale {
        if grid.refuse_stale {
            anyhow::bail!(
                "{label}: the stored {} cannot be reused: {why} (rerun without --refuse-stale to recompute it)",
                result.display()
            );
        }
        tracing::warn!(cell = %dir.display(), "rerunning: the stored result is stale: {why}");
        // Its checkpoint belongs to the same stale run.
        let _ = std::fs::remove_dir_all(dir.join("checkpoint"));
    }
    if !result.exists() || stale.is_some() {
        let flags = RunFlags {
            progress: false,
            resume: stale.is_none() && dir.join("checkpoint/progress.json").exists(),
        };
        with_device(device, |dev| run(cfg, registry, data, out, flags, dev))
            .map_err(|e| e.context(label.to_string()))?;
    }
    Ok(Ok(result))
}
