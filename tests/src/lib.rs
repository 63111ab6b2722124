//! Shared helpers of the workspace integration tests.
use std::path::{Path, PathBuf};

pub type B = peft_host::device::Cpu;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("workspace root")
}

/// `../shared` beside the checkout (fixtures and data).
pub fn shared() -> PathBuf {
    let p = root().join("../shared");
    assert!(p.is_dir(), "expected the shared folder at {} (fixtures and task data)", p.display());
    p
}

pub fn fixture(name: &str) -> PathBuf {
    shared().join("fixtures").join(name)
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Fails with the fix when the pretrained weights are not installed.
pub fn require_minilm() {
    let found = peft_host::model::model_dirs().iter().any(|d| d.join("all-MiniLM-L6-v2/model.safetensors").exists());
    assert!(found, "all-MiniLM-L6-v2 is not installed: run scripts/setup.sh");
}

pub fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max)
}

pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

/// A small random-init BERT config for fast tests.
pub fn tiny_bert_config(modules: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "backbone": {"name": "tiny-bert", "architecture": "bert", "config": {
            "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 64, "max_position_embeddings": 128
        }},
        "modules": modules,
    })
}
