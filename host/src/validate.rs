//! What `validate` checks beyond the schemas, without loading any weights, so that a config that
//! validates does not fail in `run` on something a reader could have caught: each plugin's own
//! parser (bounds its schema cannot say, e.g. LoRA's `dropout < 1`), each module's attachment
//! on the named backbone built from its `config.json` alone, weights initialised, not read
//! (layers out of range, targets that match nothing), and task names against the data folder.
//! The schema checks themselves need no backbone and live in `peft_core` ([`config::validate`]).
use std::cell::RefCell;

use peft_api::BackboneInfo;
use peft_registry::Registry;

use crate::{
    backbone::AnyBackbone,
    config::{
        checks::{bounded_size, unknown_task},
        fill_num_tasks,
        validate::{parse, ConfigError, ConfigErrors},
        RunConfig,
    },
    model::resolve_backbone,
    modules::{Composition, ModuleRequest},
    params::ParamStore,
};

/// Parses and validates a config text: the schemas ([`parse`]), then [`check`]. `source`
/// names it in messages (a file path).
pub fn validate(text: &str, source: &str, registry: &Registry) -> Result<RunConfig, ConfigErrors> {
    let cfg = parse(text, source, registry)?;
    let errors = check(&cfg, registry);
    if !errors.is_empty() {
        return Err(ConfigErrors {
            source: source.to_string(),
            errors,
        });
    }
    Ok(cfg)
}

fn host(pointer: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        pointer: pointer.into(),
        message: message.into(),
        owner: "host".into(),
    }
}

/// The backbone built from its `config.json` alone, its weights initialised rather than read
/// (modules may look up backbone weights by name when they attach), in `store`.
pub fn backbone_info(
    cfg: &RunConfig,
    store: &mut ParamStore<crate::device::Cpu>,
) -> Result<BackboneInfo, String> {
    let files = resolve_backbone(&cfg.backbone).map_err(|e| format!("{e:#}"))?;
    bounded_size(&files.config)?;
    let b = AnyBackbone::build(&files.name, &files.config, None, store)
        .map_err(|e| format!("{e:#}"))?;
    Ok(crate::backbone::Backbone::<crate::device::Cpu>::info(&b).clone())
}

/// Problems `run` would hit, found without weights. `cfg` passed the schemas.
pub fn check(cfg: &RunConfig, registry: &Registry) -> Vec<ConfigError> {
    // What `run` fills in from the tasks before attaching (PHA's task count and names).
    let names: Vec<String> = cfg.task_specs().into_iter().map(|t| t.name).collect();
    let cfg = &fill_num_tasks(cfg, &names, registry);
    let mut errors = Vec::new();
    // Each plugin's own parser: bounds the schema cannot express.
    let mut parsed = vec![false; cfg.modules.len()];
    for (i, m) in cfg.modules.iter().enumerate() {
        match registry.create_module(&m.plugin, &m.config) {
            Ok(_) => parsed[i] = true,
            Err(e) => errors.push(ConfigError {
                pointer: format!("/modules/{i}/config"),
                message: format!("the plugin rejects it: {e}"),
                owner: registry
                    .get(&m.plugin)
                    .map(|e| format!("plugin {} {}", e.manifest.name, e.manifest.version))
                    .unwrap_or_else(|_| "host".into()),
            }),
        }
    }
    let mut store = ParamStore::<crate::device::Cpu>::new(Default::default(), 0);
    match backbone_info(cfg, &mut store) {
        Err(e) => errors.push(host("/backbone", e)),
        Ok(info) => {
            let store = RefCell::new(store);
            for (i, m) in cfg.modules.iter().enumerate().filter(|(i, _)| parsed[*i]) {
                let request = ModuleRequest {
                    plugin: m.plugin.clone(),
                    name: m.instance_name(),
                    config: m.config.clone(),
                };
                let owner = registry
                    .get(&m.plugin)
                    .map(|e| format!("plugin {} {}", e.manifest.name, e.manifest.version))
                    .unwrap_or_else(|_| "host".into());
                match Composition::attach(registry, &[request], &info, &store) {
                    Err(e) => errors.push(ConfigError {
                        pointer: format!("/modules/{i}"),
                        message: e.to_string(),
                        owner,
                    }),
                    Ok(c) if c.modules[0].plan.attachments.is_empty() => errors.push(host(
                        format!("/modules/{i}"),
                        format!(
                            "module `{}` (plugin {}) attaches at no site of backbone `{}` ({} layers): check its layer and target selection",
                            m.instance_name(),
                            m.plugin,
                            info.name,
                            info.num_layers
                        ),
                    )),
                    Ok(_) => {}
                }
            }
        }
    }
    let p = cfg.training.permute_labels;
    if p > 0.0 && (cfg.context_encoder.is_none() || cfg.training.mixed_batches) {
        errors.push(host(
            "/training/permute_labels",
            format!("{p}: label permutation needs a context encoder (the examples that show the permuted labels) and per-task batches (mixed_batches off)"),
        ));
    }
    if !cfg.backbone.matmul_precision().is_high()
        && cfg.backbone.dtype() != crate::config::BackboneDtype::Bf16
    {
        errors.push(host(
            "/backbone/matmul_precision",
            "\"medium\" rounds the activations of products with bf16-held weights, and this backbone holds none: set \"dtype\": \"bf16\" beside it",
        ));
    }
    for (group, lr) in &cfg.training.group_learning_rates {
        let pointer = format!("/training/group_learning_rates/{group}");
        if !cfg.training.train_groups.contains(group) {
            errors.push(host(
                pointer,
                format!(
                    "group `{group}` is not in train_groups {:?}: its rate would never be used",
                    cfg.training.train_groups
                ),
            ));
        } else if !(lr.is_finite() && *lr >= 0.0) {
            errors.push(host(
                pointer,
                format!("{lr}: a learning rate must be finite and not negative"),
            ));
        }
    }
    // A CACLM run reads its corpus, not tasks.
    if let Some(c) = &cfg.caclm {
        if !c.corpus.is_file() {
            errors.push(host(
                "/caclm/corpus",
                format!("{}: no such file", c.corpus.display()),
            ));
        }
        return errors;
    }
    // Task names against the data folder, when one is found (run needs it anyway).
    if let Ok(data) = crate::paths::data_dir(None) {
        let specs = cfg.task_specs();
        for (i, t) in specs.iter().enumerate() {
            let pointer = if cfg.tasks.is_empty() {
                "/task/name".to_string()
            } else {
                format!("/tasks/{i}/name")
            };
            if let Some(why) = unknown_task(&data, &t.name) {
                errors.push(host(pointer, why));
            }
        }
    }
    errors
}
