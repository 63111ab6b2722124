//! The `priming` section: a two-stage run. Stage 1 trains the *upstream* groups on the
//! upstream tasks with a priming plugin (multi-task, MAML, Reptile...); stage 2 fine-tunes only
//! the *downstream* groups (and each task's head) on each downstream task's k-shot split, per
//! split seed, from the primed state. The thesis' combinations are group choices:
//!
//! | name | upstream_groups | downstream_groups |
//! |---|---|---|
//! | FT_A | (no `priming` section) | `training.train_groups` |
//! | A_A | `adapter` | `adapter` |
//! | M_A | `backbone` | `adapter` |
//! | M+A_A | `backbone`, `adapter` | `adapter` |
//! | MA_A | `meta_adapter` | `adapter` |
//! | MA+A_A | `meta_adapter`, `adapter` | `adapter` |
use std::collections::BTreeSet;

use peft_registry::Registry;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::{validate::ConfigError, TaskSpec};

/// The upstream stage and how the downstream stage uses it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrimingSpec {
    /// A registered priming plugin (`peft-host plugins` lists them): `multitask`, `maml`,
    /// `reptile`, or one from a plugin folder.
    pub plugin: String,
    /// The plugin's own settings, validated against its schema.
    #[serde(default)]
    pub config: Json,
    /// The tasks of stage 1 (disjoint from the downstream `task`/`tasks`).
    #[serde(default)]
    pub upstream_tasks: Vec<TaskSpec>,
    /// Groups stage 1 trains (`backbone`, `adapter`, `meta_adapter`, ...).
    #[serde(default = "default_upstream")]
    pub upstream_groups: Vec<String>,
    /// Groups stage 2 fine-tunes (each task's head trains too); MAML adapts them in its inner
    /// loop.
    #[serde(default = "default_downstream")]
    pub downstream_groups: Vec<String>,
    /// Upstream steps.
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// Write a stage-1 checkpoint every this many steps (0: only when interrupted).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    /// Stage 2 runs each downstream task once per k-shot split seed.
    #[serde(default = "default_split_seeds")]
    pub split_seeds: Vec<u64>,
}

fn default_upstream() -> Vec<String> {
    vec!["backbone".into()]
}
fn default_downstream() -> Vec<String> {
    vec!["adapter".into()]
}
fn default_steps() -> usize {
    100
}
fn default_checkpoint_every() -> usize {
    25
}
fn default_split_seeds() -> Vec<u64> {
    vec![13, 21, 42, 87, 100]
}

/// The thesis' name of a group set: `M` backbone, `A` adapter, `MA` meta-adapters.
fn letters(groups: &[String]) -> String {
    groups
        .iter()
        .map(|g| match g.as_str() {
            "backbone" => "M".to_string(),
            "adapter" => "A".to_string(),
            "meta_adapter" => "MA".to_string(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("+")
}

impl PrimingSpec {
    /// `M+A_A`-style name of the combination.
    pub fn combination(&self) -> String {
        format!(
            "{}_{}",
            letters(&self.upstream_groups),
            letters(&self.downstream_groups)
        )
    }
}

fn err(pointer: String, message: String) -> ConfigError {
    ConfigError {
        pointer,
        message,
        owner: "host".into(),
    }
}

/// The groups a config's parameters can be in: `backbone`, `head`, and each module plugin's
/// declared groups (or the `group` its config names).
fn known_groups(doc: &Json, registry: &Registry) -> BTreeSet<String> {
    let mut known: BTreeSet<String> = ["backbone", "head"].iter().map(|s| s.to_string()).collect();
    for m in doc
        .get("modules")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(g) = m.pointer("/config/group").and_then(Json::as_str) {
            known.insert(g.to_string());
        }
        if let Some(e) = m
            .get("plugin")
            .and_then(Json::as_str)
            .and_then(|n| registry.get(n).ok())
        {
            known.extend(e.manifest.groups.iter().cloned());
        }
    }
    known
}

/// Checks that go beyond the schemas: plugin kinds in `modules` and `priming`, the priming
/// groups against what the modules create, and disjoint upstream and downstream tasks.
pub fn check(doc: &Json, registry: &Registry, errors: &mut Vec<ConfigError>) {
    use peft_api::PluginKind;
    let kind_of = |name: &str| registry.get(name).ok().map(|e| e.manifest.kind);
    for (i, m) in doc
        .get("modules")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(name) = m.get("plugin").and_then(Json::as_str) {
            if let Some(k) = kind_of(name).filter(|k| *k != PluginKind::Module) {
                errors.push(err(
                    format!("/modules/{i}/plugin"),
                    format!(
                        "plugin `{name}` is a {} plugin, not a PEFT module; {}",
                        k,
                        match k {
                            PluginKind::Priming => "give it in the `priming` section",
                            _ => "give a module plugin here",
                        }
                    ),
                ));
            }
        }
    }
    let Some(p) = doc.get("priming").filter(|p| p.is_object()) else {
        return;
    };
    if let Some(name) = p.get("plugin").and_then(Json::as_str) {
        if let Some(k) = kind_of(name).filter(|k| *k != PluginKind::Priming) {
            errors.push(err(
                "/priming/plugin".into(),
                format!("plugin `{name}` is a {} plugin, not a priming algorithm", k),
            ));
        }
    }
    let known = known_groups(doc, registry);
    let list = |key: &str| -> Vec<String> {
        p.get(key)
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_else(|| {
                if key == "upstream_groups" {
                    default_upstream()
                } else {
                    default_downstream()
                }
            })
    };
    for key in ["upstream_groups", "downstream_groups"] {
        for (i, g) in list(key).iter().enumerate() {
            if !known.contains(g) {
                let what = if key == "downstream_groups" {
                    format!(
                        "downstream group `{g}`: no module creates it (groups here: {})",
                        known.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                } else {
                    format!(
                        "unknown group `{g}` (groups here: {})",
                        known.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                };
                let pointer = if p.get(key).is_some() {
                    format!("/priming/{key}/{i}")
                } else {
                    format!("/priming/{key}")
                };
                errors.push(err(pointer, what));
            }
        }
    }
    let downstream: BTreeSet<String> = match doc.get("tasks").and_then(Json::as_array) {
        Some(ts) => ts
            .iter()
            .filter_map(|t| t.get("name").and_then(Json::as_str))
            .map(normalise)
            .collect(),
        None => [doc
            .pointer("/task/name")
            .and_then(Json::as_str)
            .unwrap_or("glue-sst2")]
        .into_iter()
        .map(normalise)
        .collect(),
    };
    match p.get("upstream_tasks").and_then(Json::as_array) {
        Some(ts) if !ts.is_empty() => {
            for (i, t) in ts.iter().enumerate() {
                if let Some(name) = t.get("name").and_then(Json::as_str) {
                    if downstream.contains(&normalise(name)) {
                        errors.push(err(
                            format!("/priming/upstream_tasks/{i}/name"),
                            format!("task `{name}` is also a downstream task; upstream and downstream tasks must be disjoint"),
                        ));
                    }
                }
            }
        }
        _ => errors.push(err(
            "/priming/upstream_tasks".into(),
            "priming needs at least one upstream task".into(),
        )),
    }
}

/// `glue/rte`, `glue-rte` and `crossfit/glue-rte` name one task.
fn normalise(name: &str) -> String {
    name.trim_start_matches("crossfit/").replace('/', "-")
}
