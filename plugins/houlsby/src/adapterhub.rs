//! AdapterHub's bottleneck adapters (the `adapters` library's `save_adapter`): which of them
//! this plugin computes, and where their tensors go.
//!
//! AdapterHub's `Adapter` block, in `pre_forward` / `forward` / `post_forward`, with the
//! sublayer output `y` and the sublayer input `x`:
//! `LN(x + (y + scaling · up(act(down(y)))))` when `original_ln_before = false`,
//! `original_ln_after = true`, no adapter LayerNorms and no gating: Houlsby et al.'s adapter,
//! which is what this plugin computes at a sublayer site (`y + W_up act(W_down y)` before the
//! backbone's residual and LayerNorm) with `scaling = 1`. `residual_before_ln` and
//! `adapter_residual_before_ln` change nothing then (the residual is `y` either way), and
//! `dropout` / `stochastic_depth` act in training only. Every other setting (Pfeiffer's
//! `original_ln_before`, LayerNorms inside the adapter, gating, a scaling other than 1,
//! PHM/Compacter, invertible or cross adapters, parallel adapters) computes something else and
//! is refused, naming the field.
use peft_api::{ApiError, Result};
use serde_json::{json, Map, Value};

use crate::{Activation, Houlsby, HoulsbyConfig};

fn bad<T>(what: String) -> Result<T> {
    Err(ApiError::config(format!(
        "houlsby: AdapterHub adapter_config.json {what}"
    )))
}

/// Whether `cfg` is an `adapter_config.json` written by AdapterHub (`adapters` or the older
/// `adapter-transformers`): a `config` section and a `version` naming the library.
pub fn is_adapterhub(cfg: &Value) -> bool {
    cfg.get("config").is_some()
        && cfg
            .get("version")
            .and_then(Value::as_str)
            .is_some_and(|v| v.starts_with("adapters") || v.starts_with("adapter-transformers"))
}

fn flag(c: &Map<String, Value>, k: &str) -> bool {
    c.get(k).and_then(Value::as_bool).unwrap_or(false)
}

/// The activation AdapterHub's `non_linearity` names (transformers' `ACT2FN`).
fn activation(name: &str) -> Result<Activation> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "relu" => Activation::Relu,
        "gelu" => Activation::Gelu,
        "swish" | "silu" => Activation::Swish,
        other => {
            return bad(format!(
                "has non_linearity {other:?}; this plugin computes relu, gelu (erf) or swish/silu"
            ))
        }
    })
}

/// The bottleneck width AdapterHub gives a `hidden`-wide layer: `int(hidden // reduction_factor)`,
/// at least 1.
fn bottleneck(rf: &Value, hidden: usize, layers: &[usize]) -> Result<usize> {
    let width = |v: &Value, at: &str| -> Result<usize> {
        match v.as_f64() {
            Some(f) if f > 0.0 => Ok(((hidden as f64 / f).floor() as usize).max(1)),
            _ => bad(format!(
                "has reduction_factor{at} = {v}, expected a positive number"
            )),
        }
    };
    match rf {
        Value::Object(m) => {
            // Per-layer factors: one bottleneck size for every adapted layer is all this
            // plugin has.
            let mut sizes = Vec::new();
            for l in layers {
                let v = m
                    .get(&l.to_string())
                    .or_else(|| m.get("default"))
                    .map_or_else(|| bad(format!("has no reduction_factor for layer {l}")), Ok)?;
                sizes.push(width(v, &format!("[{l}]"))?);
            }
            sizes.dedup();
            match sizes.as_slice() {
                [b] => Ok(*b),
                _ => bad(format!(
                    "gives layers {layers:?} different bottleneck sizes {sizes:?}; this plugin uses one"
                )),
            }
        }
        v => width(v, ""),
    }
}

/// The layers whose adapters a file holds: `encoder.layer.<l>.` (after an optional model
/// prefix such as `bert.`) in its tensor keys.
fn layers_in(keys: &[String]) -> Vec<usize> {
    let mut out: Vec<usize> = keys
        .iter()
        .filter_map(|k| {
            let rest = &k[k.find("encoder.layer.")? + "encoder.layer.".len()..];
            rest.split('.').next()?.parse().ok()
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The module section (`{"plugin": "houlsby", "config": ...}`) that computes the AdapterHub
/// adapter `args.adapter_config` describes, its layers read from `args.keys` (the tensor
/// keys of its file); `Ok(None)` when it is not an AdapterHub bottleneck adapter.
pub fn module_spec(args: &Value) -> Result<Option<Value>> {
    let cfg = args.get("adapter_config").unwrap_or(args);
    if !is_adapterhub(cfg) {
        return Ok(None);
    }
    let c = match cfg.get("config") {
        Some(Value::Object(c)) => c,
        other => {
            return bad(format!(
                "has config {}, expected the adapter's settings as an object",
                other.unwrap_or(&Value::Null)
            ))
        }
    };
    // Other AdapterHub methods (prefix tuning, LoRA, ...) name their architecture.
    match c.get("architecture").and_then(Value::as_str) {
        None | Some("bottleneck") => {}
        Some(_) => return Ok(None),
    }
    match cfg.get("model_type").and_then(Value::as_str) {
        Some("bert") => {}
        other => {
            return bad(format!(
                "is for model_type {other:?}; this plugin maps AdapterHub's BERT layout only"
            ))
        }
    }
    if flag(c, "is_parallel") {
        return bad(
            "describes a parallel adapter (is_parallel); Houlsby adapters are serial".into(),
        );
    }
    if flag(c, "original_ln_before") {
        return bad(
            "sets original_ln_before (Pfeiffer's placement: the adapter reads LN(x + y)); this plugin adds the adapter before the residual and LayerNorm (Houlsby)"
                .into(),
        );
    }
    if !c
        .get("original_ln_after")
        .and_then(Value::as_bool)
        .unwrap_or(true)
    {
        return bad(
            "has original_ln_after = false (the backbone's residual and LayerNorm skipped)".into(),
        );
    }
    for k in [
        "ln_before",
        "ln_after",
        "use_gating",
        "phm_layer",
        "cross_adapter",
    ] {
        if flag(c, k) {
            return bad(format!("sets `{k}`, which this plugin does not compute"));
        }
    }
    if let Some(v) = c.get("inv_adapter").filter(|v| !v.is_null()) {
        return bad(format!(
            "has inv_adapter {v}; invertible adapters are not supported"
        ));
    }
    match c.get("scaling") {
        None => {}
        Some(v) if v.as_f64() == Some(1.0) => {}
        Some(v) => return bad(format!("has scaling {v}; this plugin computes scaling 1.0")),
    }
    let act = activation(
        c.get("non_linearity")
            .and_then(Value::as_str)
            .unwrap_or("relu"),
    )?;
    let (attention, ffn) = (flag(c, "mh_adapter"), flag(c, "output_adapter"));
    if !attention && !ffn {
        return bad("sets neither mh_adapter nor output_adapter: it adapts nothing".into());
    }
    let Some(hidden) = cfg.get("hidden_size").and_then(Value::as_u64) else {
        return bad("has no hidden_size".into());
    };
    let keys: Vec<String> = args
        .get("keys")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let layers = layers_in(&keys);
    if layers.is_empty() {
        return bad("comes with a weights file that holds no `encoder.layer.<l>.` adapter".into());
    }
    let leave_out: Vec<u64> = c
        .get("leave_out")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    if let Some(l) = layers.iter().find(|l| leave_out.contains(&(**l as u64))) {
        return bad(format!(
            "leaves out layer {l}, but the weights file has adapters there"
        ));
    }
    let b = bottleneck(
        c.get("reduction_factor").unwrap_or(&json!(16)),
        hidden as usize,
        &layers,
    )?;
    let config = HoulsbyConfig {
        bottleneck: b,
        activation: act,
        attention,
        ffn,
        layers: Some(layers),
        stack: Default::default(),
        init_std: 1e-2,
        up_init_std: 0.0,
        group: peft_api::sdk::adapter_group(),
    };
    Ok(Some(json!({
        "plugin": "houlsby",
        "name": cfg.get("name").and_then(Value::as_str).unwrap_or("houlsby"),
        "config": config,
    })))
}

impl Houlsby {
    /// Where each of this module's parameters is in an AdapterHub file for `cfg` (keys without
    /// the model prefix such as `bert.`), after checking that `cfg` describes this module.
    pub(crate) fn adapterhub_key_map(&self, cfg: &Value) -> Result<Value> {
        if self.architecture != "bert" {
            return bad(format!(
                "cannot be placed on a {} backbone; this plugin maps AdapterHub's BERT layout only",
                self.architecture
            ));
        }
        let keys: Vec<String> = self.sites.iter().map(|(s, _)| s.clone()).collect();
        let Some(spec) = module_spec(&json!({ "adapter_config": cfg, "keys": keys }))? else {
            return bad("is not an AdapterHub bottleneck adapter".into());
        };
        let want: HoulsbyConfig = serde_json::from_value(spec["config"].clone())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let c = &self.config;
        if (want.bottleneck, want.activation, want.attention, want.ffn)
            != (c.bottleneck, c.activation, c.attention, c.ffn)
        {
            return bad(format!(
                "describes bottleneck {} ({}, attention {}, ffn {}); this module has bottleneck {} ({}, attention {}, ffn {})",
                want.bottleneck, want.activation.name(), want.attention, want.ffn,
                c.bottleneck, c.activation.name(), c.attention, c.ffn
            ));
        }
        let name = cfg.get("name").and_then(Value::as_str).unwrap_or_default();
        let (d, b) = (self.hidden, c.bottleneck);
        let mut out = Vec::new();
        for (site, role) in &self.sites {
            // BERT: the attention adapter sits in `attention.output`, the FFN one in `output`.
            let module = match (role.as_str(), site.rsplit_once('.')) {
                ("attention", Some((layer, _))) => format!("{layer}.attention.output"),
                ("ffn", Some((layer, _))) => format!("{layer}.output"),
                _ => return bad(format!("has no place for this module's site `{site}`")),
            };
            let at = format!("{module}.adapters.{name}");
            for (key, param, shape) in [
                ("adapter_down.0.weight", "down.weight", vec![b, d]),
                ("adapter_down.0.bias", "down.bias", vec![b]),
                ("adapter_up.weight", "up.weight", vec![d, b]),
                ("adapter_up.bias", "up.bias", vec![d]),
            ] {
                out.push(json!({
                    "key": format!("{at}.{key}"),
                    "param": format!("{site}.{param}"),
                    "shape": shape,
                }));
            }
        }
        Ok(json!({ "tensors": out }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: Value, keys: &[&str]) -> Value {
        json!({
            "adapter_config": {
                "config": config, "hidden_size": 384, "model_type": "bert",
                "name": "a", "version": "adapters.1.3.0"
            },
            "keys": keys,
        })
    }

    const KEYS: [&str; 2] = [
        "bert.encoder.layer.1.attention.output.adapters.a.adapter_up.bias",
        "encoder.layer.3.output.adapters.a.adapter_up.bias",
    ];

    #[test]
    fn double_seq_bn_maps_to_houlsby() {
        let c = json!({
            "mh_adapter": true, "output_adapter": true, "reduction_factor": 16,
            "non_linearity": "swish", "original_ln_before": false, "original_ln_after": true,
            "residual_before_ln": true, "scaling": 1.0, "leave_out": [0]
        });
        let spec = module_spec(&args(c, &KEYS)).unwrap().unwrap();
        let h: HoulsbyConfig = serde_json::from_value(spec["config"].clone()).unwrap();
        assert_eq!((h.bottleneck, h.activation), (24, Activation::Swish));
        assert_eq!(h.layers, Some(vec![1, 3]));
        assert!(h.attention && h.ffn);
        assert_eq!(spec["name"], "a");
    }

    #[test]
    fn reduction_factors_per_layer_must_agree() {
        let per = |m: Value| {
            let c = json!({ "mh_adapter": true, "reduction_factor": m });
            module_spec(&args(c, &KEYS))
        };
        let h = per(json!({ "1": 32, "default": 32 })).unwrap().unwrap();
        assert_eq!(h["config"]["bottleneck"], 12);
        let e = per(json!({ "1": 8, "default": 16 }))
            .unwrap_err()
            .to_string();
        assert!(e.contains("different bottleneck sizes"), "{e}");
        // A factor above the width still leaves one unit, as AdapterHub does.
        assert_eq!(
            per(json!(1000)).unwrap().unwrap()["config"]["bottleneck"],
            1
        );
    }

    #[test]
    fn other_libraries_and_methods_are_not_claimed() {
        assert!(module_spec(&json!({ "peft_type": "LORA" }))
            .unwrap()
            .is_none());
        let c = json!({ "architecture": "prefix_tuning" });
        assert!(module_spec(&args(c, &KEYS)).unwrap().is_none());
    }
}
