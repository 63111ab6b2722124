//! Config validation with errors a person can act on: file, JSON pointer, what was expected,
//! and which plugin owns the section.
use std::fmt;

use peft_registry::Registry;
use serde_json::Value as Json;

use super::{run_config_schema, RunConfig};

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// JSON pointer into the config (`/modules/0/config/bottleneck`), empty for the root.
    pub pointer: String,
    pub message: String,
    /// `plugin houlsby 0.1.0` when the plugin's schema owns the failing section, else `host`.
    pub owner: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.pointer.is_empty() {
            "(root)"
        } else {
            &self.pointer
        };
        write!(f, "{at}: {} [{}]", self.message, self.owner)
    }
}

/// Every problem found, in document order.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors {
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} problem{}",
            self.source,
            self.errors.len(),
            if self.errors.len() == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

fn schema_errors(schema: &Json, instance: &Json, base: &str, owner: &str) -> Vec<ConfigError> {
    let validator = match jsonschema::validator_for(schema) {
        Ok(v) => v,
        Err(e) => {
            return vec![ConfigError {
                pointer: base.into(),
                message: format!("the schema itself is invalid: {e}"),
                owner: owner.into(),
            }]
        }
    };
    let mut out = Vec::new();
    for err in validator.iter_errors(instance) {
        collect(&err, base, owner, &mut out);
    }
    out
}

/// jsonschema reports `oneOf`/`anyOf` failures with a useless top message: report the
/// branches' own errors instead (deduplicated), which say what was actually wrong.
fn collect(
    err: &jsonschema::ValidationError<'_>,
    base: &str,
    owner: &str,
    out: &mut Vec<ConfigError>,
) {
    use jsonschema::error::ValidationErrorKind as K;
    let pointer = format!("{base}{}", err.instance_path);
    match &err.kind {
        K::AnyOf { context } | K::OneOfNotValid { context }
            if context.iter().all(|b| {
                b.iter().all(|e| {
                    matches!(e.kind, K::Type { .. }) && e.instance_path == err.instance_path
                })
            }) =>
        {
            // The value has none of the accepted types: say which ones are.
            let types: Vec<String> = context
                .iter()
                .flat_map(|b| b.iter())
                .filter_map(|e| match &e.kind {
                    K::Type { kind } => Some(
                        format!("{kind:?}")
                            .to_lowercase()
                            .replace("single(", "")
                            .replace(['(', ')'], ""),
                    ),
                    _ => None,
                })
                .collect();
            out.push(ConfigError {
                pointer,
                message: format!("expected {}, got {}", types.join(" or "), err.instance),
                owner: owner.into(),
            });
        }
        K::AnyOf { context } | K::OneOfNotValid { context }
            if context.iter().all(|b| {
                b.len() == 1
                    && matches!(b[0].kind, K::Constant { .. } | K::Enum { .. })
                    && b[0].instance_path == err.instance_path
            }) =>
        {
            // A choice among named values (a documented enum): list them.
            let allowed: Vec<String> = context
                .iter()
                .flat_map(|b| match &b[0].kind {
                    K::Constant { expected_value } => vec![expected_value.to_string()],
                    K::Enum { options } => options
                        .as_array()
                        .map(|o| o.iter().map(|v| v.to_string()).collect())
                        .unwrap_or_default(),
                    _ => vec![],
                })
                .collect();
            out.push(ConfigError {
                pointer,
                message: format!(
                    "expected one of {}, got {}",
                    allowed.join(", "),
                    err.instance
                ),
                owner: owner.into(),
            });
        }
        K::AnyOf { context } | K::OneOfNotValid { context } => {
            // Prefer the branch whose errors go deepest (the one the user was aiming for).
            let best = context.iter().max_by_key(|branch| {
                branch
                    .iter()
                    .map(|e| e.instance_path.to_string().len())
                    .max()
                    .unwrap_or(0)
            });
            match best {
                Some(branch) if !branch.is_empty() => {
                    for e in branch {
                        collect(e, base, owner, out);
                    }
                }
                _ => out.push(ConfigError {
                    pointer,
                    message: err.to_string(),
                    owner: owner.into(),
                }),
            }
        }
        K::AdditionalProperties { unexpected } => out.push(ConfigError {
            pointer,
            message: format!(
                "unknown field{} {}",
                if unexpected.len() == 1 { "" } else { "s" },
                unexpected
                    .iter()
                    .map(|u| format!("`{u}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            owner: owner.into(),
        }),
        _ => out.push(ConfigError {
            pointer,
            message: err.to_string(),
            owner: owner.into(),
        }),
    }
}

/// Parses a config text and validates what needs no backbone: the host's schema, each plugin's
/// schema, names and the priming section. `source` names it in messages (a file path). The
/// checks that build a backbone (plugin parsers, attachment, task folders) come after, in
/// `peft_host::validate`; a config is only known good once both passed.
pub fn parse(text: &str, source: &str, registry: &Registry) -> Result<RunConfig, ConfigErrors> {
    let fail = |errors| ConfigErrors {
        source: source.to_string(),
        errors,
    };
    let doc: Json = serde_json::from_str(text).map_err(|e| {
        fail(vec![ConfigError {
            pointer: String::new(),
            message: format!("not valid JSON: {e}"),
            owner: "host".into(),
        }])
    })?;
    let mut errors = schema_errors(&run_config_schema(), &doc, "", "host");
    // Plugin sections, each against its own plugin's schema.
    let check_plugin = |section: &Json, base: String, errors: &mut Vec<ConfigError>| {
        let Some(name) = section.get("plugin").and_then(Json::as_str) else {
            return;
        };
        match registry.get(name) {
            Ok(entry) => {
                let owner = format!("plugin {} {}", entry.manifest.name, entry.manifest.version);
                let cfg = section.get("config").cloned().unwrap_or(Json::Null);
                let cfg = if cfg.is_null() {
                    Json::Object(Default::default())
                } else {
                    cfg
                };
                errors.extend(schema_errors(
                    &entry.manifest.config_schema,
                    &cfg,
                    &format!("{base}/config"),
                    &owner,
                ));
            }
            Err(e) => errors.push(ConfigError {
                pointer: format!("{base}/plugin"),
                message: e.to_string(),
                owner: "host".into(),
            }),
        }
    };
    if let Some(mods) = doc.get("modules").and_then(Json::as_array) {
        let mut names = std::collections::BTreeMap::new();
        for (i, m) in mods.iter().enumerate() {
            check_plugin(m, format!("/modules/{i}"), &mut errors);
            let name = m
                .get("name")
                .and_then(Json::as_str)
                .or_else(|| m.get("plugin").and_then(Json::as_str));
            if let Some(name) = name {
                if let Some(first) = names.insert(name.to_string(), i) {
                    errors.push(ConfigError {
                        pointer: format!("/modules/{i}/name"),
                        message: format!("module name `{name}` is already used by /modules/{first}; give one a distinct `name`"),
                        owner: "host".into(),
                    });
                }
            }
        }
    }
    if doc.get("task").is_some() && doc.get("tasks").is_some() {
        errors.push(ConfigError {
            pointer: "/tasks".into(),
            message: "give either `task` (one task) or `tasks` (multi-task), not both".into(),
            owner: "host".into(),
        });
    }
    if let Some(tasks) = doc.get("tasks").and_then(Json::as_array) {
        let mut names = std::collections::BTreeMap::new();
        for (i, t) in tasks.iter().enumerate() {
            if let Some(name) = t.get("name").and_then(Json::as_str) {
                if let Some(first) = names.insert(name.to_string(), i) {
                    errors.push(ConfigError {
                        pointer: format!("/tasks/{i}/name"),
                        message: format!("task `{name}` is already listed at /tasks/{first}"),
                        owner: "host".into(),
                    });
                }
            }
        }
    }
    for key in ["context_encoder", "priming"] {
        if let Some(section) = doc.get(key).filter(|v| !v.is_null()) {
            check_plugin(section, format!("/{key}"), &mut errors);
        }
    }
    super::priming::check(&doc, registry, &mut errors);
    super::caclm::check(&doc, &mut errors);
    if !errors.is_empty() {
        return Err(fail(errors));
    }
    serde_json::from_value::<RunConfig>(doc).map_err(|e| {
        fail(vec![ConfigError {
            pointer: String::new(),
            message: e.to_string(),
            owner: "host".into(),
        }])
    })
}
