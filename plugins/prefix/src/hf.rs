//! HF peft's prefix tuning format (`peft_type: PREFIX_TUNING`, `prefix_projection: false`), on
//! encoder-only backbones where the layouts match: every layer's key and value prefixes
//! `[P, heads * head_dim]` stored side by side as one `prompt_embeddings` tensor
//! `[P, num_layers * 2 * token_dim]` (layer 0 key, layer 0 value, layer 1 key, ...), which HF
//! views as `[P, 2 L, heads, head_dim]` and hands to the model as its past keys and values.
use peft_api::{ApiError, Result};
use serde_json::{json, Value};

/// What HF's layout needs to know of the backbone, recorded at attach.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub architecture: String,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
}

fn bad<T>(what: String) -> Result<T> {
    Err(ApiError::config(format!("prefix: {what}")))
}

/// Why this module has no HF peft form, or `None` when it has one: plain prefixes at every
/// self-attention layer of an encoder-only backbone, keys and values as wide as the hidden state.
pub fn mismatch(
    layout: &Layout,
    layers: &[usize],
    reparameterize: bool,
    from_context: bool,
    kv_dim: usize,
) -> Option<String> {
    if reparameterize || from_context {
        return Some("only plain prefixes (no reparameterize, no from_context) map to HF peft's `prefix_projection: false`".into());
    }
    if layout.architecture != "bert" {
        return Some(format!(
            "HF peft lays prefixes out differently on `{}` (decoder only on encoder-decoder models)",
            layout.architecture
        ));
    }
    let all: Vec<usize> = (0..layout.num_layers).collect();
    if layers != all {
        return Some(format!(
            "HF peft prefixes every layer (0..{}); this module covers {layers:?}",
            layout.num_layers
        ));
    }
    if kv_dim != layout.hidden_size {
        return Some(format!(
            "keys/values of width {kv_dim} differ from the hidden size {} (HF's token_dim)",
            layout.hidden_size
        ));
    }
    None
}

/// HF peft's `adapter_config.json` for `p` virtual tokens over `layout`.
pub fn peft_config(layout: &Layout, p: usize, base_model: Value) -> Value {
    json!({
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "encoder_hidden_size": layout.hidden_size,
        "inference_mode": true,
        "init_weights": null,
        "modules_to_save": null,
        "num_attention_heads": layout.num_heads,
        "num_layers": layout.num_layers,
        "num_transformer_submodules": 1,
        "num_virtual_tokens": p,
        "peft_type": "PREFIX_TUNING",
        "prefix_projection": false,
        "revision": null,
        "task_type": "FEATURE_EXTRACTION",
        "token_dim": layout.hidden_size,
    })
}

/// The key map: one `prompt_embeddings` tensor, the sites' key and value prefixes side by side.
pub fn key_map(sites: &[String], p: usize, kv_dim: usize) -> Value {
    let concat: Vec<String> = sites
        .iter()
        .flat_map(|s| [format!("{s}.prefix_key"), format!("{s}.prefix_value")])
        .collect();
    json!([{
        "key": "prompt_embeddings",
        "shape": [p, sites.len() * 2 * kv_dim],
        "concat": concat,
    }])
}

/// Checks that an HF peft `adapter_config.json` describes this module over this backbone.
pub fn check(cfg: &Value, layout: &Layout, p: usize) -> Result<()> {
    if cfg.get("peft_type").and_then(Value::as_str) != Some("PREFIX_TUNING") {
        return bad(format!(
            "adapter_config.json has peft_type {:?}, expected \"PREFIX_TUNING\"",
            cfg.get("peft_type")
        ));
    }
    let num = |k: &str| cfg.get(k).and_then(Value::as_u64).map(|v| v as usize);
    for (key, want) in [
        ("num_virtual_tokens", p),
        ("num_layers", layout.num_layers),
        ("token_dim", layout.hidden_size),
    ] {
        if num(key) != Some(want) {
            return bad(format!(
                "adapter_config.json has {key} = {:?}, this module over this backbone has {want}",
                cfg.get(key)
            ));
        }
    }
    Ok(())
}

/// The module section that rebuilds the prefix module an HF peft config describes; `None` when
/// it is not a prefix tuning config.
pub fn module_spec(cfg: &Value) -> Result<Option<Value>> {
    if cfg.get("peft_type").and_then(Value::as_str) != Some("PREFIX_TUNING") {
        return Ok(None);
    }
    if cfg.get("prefix_projection").and_then(Value::as_bool) == Some(true) {
        return bad("adapter_config.json has prefix_projection = true; only plain prefixes (false) are read".into());
    }
    match cfg.get("num_virtual_tokens").and_then(Value::as_u64) {
        Some(p) if p > 0 => Ok(Some(
            json!({ "plugin": "prefix", "config": { "prefix_length": p } }),
        )),
        other => bad(format!(
            "adapter_config.json has num_virtual_tokens = {other:?}, expected a positive integer"
        )),
    }
}
