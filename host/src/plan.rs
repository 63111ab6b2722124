//! `peft-host plan`: the resolved composition of a config — which module attaches at which
//! site, and parameter counts per group. Its JSON form is what the insta snapshots pin.
use std::collections::BTreeMap;
use std::fmt::Write;

use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use crate::model::Model;

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Plan {
    pub backbone: BackbonePlan,
    pub modules: Vec<ModulePlan>,
    /// Parameters per group: total and trainable under the config's `train_groups`.
    pub groups: BTreeMap<String, GroupCount>,
    pub trainable_groups: Vec<String>,
    /// Every hook site the backbone declares.
    pub sites: Vec<SitePlan>,
    /// The two stages of a config with a `priming` section.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priming: Option<PrimingPlan>,
}

/// Upstream and downstream sets of a primed run, with parameter counts.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct PrimingPlan {
    pub plugin: String,
    /// The thesis' name of the group choice (`M_A`, `MA+A_A`, ...).
    pub combination: String,
    pub upstream_tasks: Vec<String>,
    pub downstream_tasks: Vec<String>,
    pub split_seeds: Vec<u64>,
    pub steps: usize,
    /// Parameters per group trained in stage 1 (the upstream tasks' heads besides).
    pub upstream_groups: BTreeMap<String, usize>,
    /// Parameters per group fine-tuned in stage 2 (each task's head besides).
    pub downstream_groups: BTreeMap<String, usize>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct SitePlan {
    pub name: String,
    pub kind: peft_api::SiteKind,
    pub role: String,
    pub in_features: usize,
    pub out_features: usize,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct BackbonePlan {
    pub name: String,
    pub architecture: String,
    pub layers: usize,
    pub hidden_size: usize,
    pub heads: usize,
    pub sites: usize,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ModulePlan {
    pub name: String,
    pub plugin: String,
    pub plugin_version: String,
    pub api_version: String,
    pub parameters: usize,
    pub attachments: Vec<AttachmentPlan>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct AttachmentPlan {
    pub site: String,
    pub role: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unfreeze: Vec<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct GroupCount {
    pub parameters: usize,
    pub trainable: usize,
}

impl Plan {
    pub fn of<B: AutodiffBackend>(
        model: &Model<B>,
        train_groups: &[String],
    ) -> anyhow::Result<Self> {
        model.set_trainable(train_groups)?;
        let info = model.info();
        let store = model.params.borrow();
        let by_owner = store.counts_by_owner();
        let modules = model
            .modules
            .modules
            .iter()
            .map(|m| ModulePlan {
                name: m.name.clone(),
                plugin: m.plugin.clone(),
                plugin_version: m.plugin_version.clone(),
                api_version: m.api_version.to_string(),
                parameters: by_owner.get(&m.name).copied().unwrap_or(0),
                attachments: m
                    .plan
                    .attachments
                    .iter()
                    .map(|a| AttachmentPlan {
                        site: a.site.clone(),
                        role: a.role.clone(),
                        unfreeze: a.unfreeze.clone(),
                    })
                    .collect(),
            })
            .collect();
        let groups = store
            .counts_by_group()
            .into_iter()
            .map(|(g, (parameters, trainable))| {
                (
                    g,
                    GroupCount {
                        parameters,
                        trainable,
                    },
                )
            })
            .collect();
        Ok(Plan {
            backbone: BackbonePlan {
                name: info.name.clone(),
                architecture: info.architecture.clone(),
                layers: info.num_layers,
                hidden_size: info.hidden_size,
                heads: info.num_heads,
                sites: info.sites.len(),
            },
            modules,
            groups,
            trainable_groups: train_groups.to_vec(),
            sites: info
                .sites
                .iter()
                .map(|s| SitePlan {
                    name: s.name.clone(),
                    kind: s.kind,
                    role: s.role.clone(),
                    in_features: s.in_features,
                    out_features: s.out_features,
                })
                .collect(),
            priming: None,
        })
    }

    /// The human-readable form.
    /// The backbone's sites, one a line: name, kind, role, features in -> out.
    pub fn render_sites(&self) -> String {
        let mut s = String::new();
        for site in &self.sites {
            let kind = serde_json::to_value(site.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "{:<52} {:<13} {:<18} {} -> {}",
                site.name, kind, site.role, site.in_features, site.out_features
            );
        }
        s
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let b = &self.backbone;
        let _ = writeln!(
            s,
            "backbone  {} ({}, {} layers, hidden {}, {} heads, {} sites)",
            b.name, b.architecture, b.layers, b.hidden_size, b.heads, b.sites
        );
        for m in &self.modules {
            let _ = writeln!(
                s,
                "module    {} = plugin {} {} (API {}), {} parameters",
                m.name,
                m.plugin,
                m.plugin_version,
                m.api_version,
                thousands(m.parameters)
            );
            for a in &m.attachments {
                let _ = writeln!(s, "            {:<44} {}", a.site, a.role);
                if !a.unfreeze.is_empty() {
                    let _ = writeln!(s, "            {:<44} trains {}", "", a.unfreeze.join(", "));
                }
            }
        }
        let _ = writeln!(s, "parameters");
        let total: usize = self.groups.values().map(|g| g.parameters).sum();
        let trainable: usize = self.groups.values().map(|g| g.trainable).sum();
        for (g, c) in &self.groups {
            let state = if c.trainable == c.parameters {
                "trainable".to_string()
            } else if c.trainable == 0 {
                "frozen".to_string()
            } else {
                format!("{} trainable", thousands(c.trainable))
            };
            let _ = writeln!(s, "  {:<14} {:>14}  {state}", g, thousands(c.parameters));
        }
        let _ = writeln!(
            s,
            "  {:<14} {:>14}  {} trainable ({:.3}%)",
            "total",
            thousands(total),
            thousands(trainable),
            100.0 * trainable as f64 / total.max(1) as f64
        );
        if let Some(p) = &self.priming {
            let sets = |m: &BTreeMap<String, usize>| {
                m.iter()
                    .map(|(g, n)| format!("{g} {}", thousands(*n)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                s,
                "priming   {} = plugin {}, {} steps",
                p.combination, p.plugin, p.steps
            );
            let _ = writeln!(
                s,
                "  upstream   {} tasks: {}",
                p.upstream_tasks.len(),
                p.upstream_tasks.join(", ")
            );
            let _ = writeln!(s, "             groups: {}", sets(&p.upstream_groups));
            let _ = writeln!(
                s,
                "  downstream {} tasks x {} split seeds: {}",
                p.downstream_tasks.len(),
                p.split_seeds.len(),
                p.downstream_tasks.join(", ")
            );
            let _ = writeln!(s, "             groups: {}", sets(&p.downstream_groups));
        }
        s
    }
}

pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
