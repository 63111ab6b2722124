//! What `validate` checks beyond the schemas, without loading any weights, so that a config that
//! validates does not fail in `run` on something a reader could have caught: each plugin's own
//! parser (bounds its schema cannot say, e.g. LoRA's `dropout < 1`), each module's attachment
//! on the named backbone built from its `config.json` alone, weights initialised, not read
//! (layers out of range, targets that match nothing), and task names against the data folder.
use std::cell::RefCell;

use peft_api::BackboneInfo;
use peft_registry::Registry;

use super::{validate::ConfigError, RunConfig};
use crate::{
    backbone::AnyBackbone,
    model::resolve_backbone,
    modules::{Composition, ModuleRequest},
    params::ParamStore,
};

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

/// The most parameters a backbone config may describe (16 GiB of f32): building one larger
/// would exhaust memory, which aborts the process instead of reporting an error.
const MAX_BACKBONE_PARAMETERS: u128 = 4_000_000_000;

/// Refuses a `config.json` whose sizes describe more parameters than [`MAX_BACKBONE_PARAMETERS`]
/// (an upper estimate over the BERT, T5 and BART field names), before anything is allocated.
pub fn bounded_size(config: &serde_json::Value) -> Result<(), String> {
    let field = |names: &[&str]| -> u128 {
        names
            .iter()
            .filter_map(|n| config.get(*n).and_then(serde_json::Value::as_u64))
            .max()
            .unwrap_or(0) as u128
    };
    let d = field(&["hidden_size", "d_model"]);
    let vocab = field(&["vocab_size"]);
    let positions = field(&["max_position_embeddings", "relative_attention_num_buckets"]);
    let ffn = field(&[
        "intermediate_size",
        "d_ff",
        "encoder_ffn_dim",
        "decoder_ffn_dim",
    ]);
    let inner = field(&["d_kv"]) * field(&["num_heads", "num_attention_heads"]);
    let layers = field(&["num_hidden_layers", "num_layers", "encoder_layers"])
        + field(&["num_decoder_layers", "decoder_layers"]);
    let width = d.max(inner);
    // Saturating: the fields are u64, so products can pass u128's range.
    let per_layer = (8 * width)
        .saturating_mul(width)
        .saturating_add((2 * width).saturating_mul(ffn));
    let estimate = (vocab + positions)
        .saturating_mul(width)
        .saturating_add(layers.saturating_mul(per_layer));
    if estimate > MAX_BACKBONE_PARAMETERS {
        return Err(format!(
            "its config.json describes about {estimate} parameters (vocab {vocab}, width {width}, ffn {ffn}, {layers} layers); this host builds at most {MAX_BACKBONE_PARAMETERS}"
        ));
    }
    Ok(())
}

/// Problems `run` would hit, found without weights. `cfg` passed the schemas.
pub fn check(cfg: &RunConfig, registry: &Registry) -> Vec<ConfigError> {
    // What `run` fills in from the tasks before attaching (PHA's task count and names).
    let names: Vec<String> = cfg.task_specs().into_iter().map(|t| t.name).collect();
    let cfg = &crate::train::mixed::fill_num_tasks(cfg, &names, registry);
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

/// Why `name` names no task in `data`, judged by its folder (the files are not read).
pub fn unknown_task(data: &std::path::Path, name: &str) -> Option<String> {
    let folder = if name == "glue-sst2" {
        data.join("glue/sst2")
    } else if let Some(t) = name.strip_prefix("glue/") {
        data.join("glue").join(t)
    } else if let Some(t) = name.strip_prefix("superglue/") {
        data.join("superglue")
            .join(if t == "rte" { "rte_superglue" } else { t })
    } else {
        data.join("crossfit")
            .join(name.strip_prefix("crossfit/").unwrap_or(name))
    };
    (!folder.is_dir()).then(|| {
        format!(
            "unknown task `{name}`: the data folder has no {} (GLUE tasks are glue/<task>, SuperGLUE superglue/<task>, others CrossFit names)",
            folder.strip_prefix(data).unwrap_or(&folder).display()
        )
    })
}

#[cfg(test)]
mod size_tests {
    use super::bounded_size;

    #[test]
    fn real_sizes_pass_and_absurd_ones_are_refused_before_allocation() {
        let minilm = serde_json::json!({
            "model_type": "bert", "vocab_size": 30522, "hidden_size": 384,
            "num_hidden_layers": 6, "intermediate_size": 1536, "max_position_embeddings": 512
        });
        assert!(bounded_size(&minilm).is_ok());
        let t5_large = serde_json::json!({
            "model_type": "t5", "vocab_size": 32128, "d_model": 1024, "d_ff": 2816,
            "d_kv": 64, "num_heads": 16, "num_layers": 24, "num_decoder_layers": 24
        });
        assert!(bounded_size(&t5_large).is_ok());
        let mut huge = minilm.clone();
        huge["vocab_size"] = serde_json::json!(u64::MAX);
        let err = bounded_size(&huge).unwrap_err();
        assert!(err.contains("parameters"), "{err}");
        let mut wide = minilm;
        wide["hidden_size"] = serde_json::json!(1u64 << 40);
        assert!(bounded_size(&wide).is_err());
    }
}
