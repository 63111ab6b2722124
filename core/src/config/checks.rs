//! Checks on a run config beyond the schemas that need neither a backbone nor a tensor: the
//! size a backbone's `config.json` describes and task names against the data folder. The
//! checks that build the backbone are `peft_host::validate`.

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
