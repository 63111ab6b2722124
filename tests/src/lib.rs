//! Shared helpers of the workspace integration tests.
use std::path::{Path, PathBuf};

mod hypert5;
mod setup;
pub use hypert5::*;
pub use setup::*;

pub type B = peft_host::device::Cpu;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace root")
}

/// `../shared` beside the checkout (fixtures and data).
pub fn shared() -> PathBuf {
    let p = root().join("../shared");
    assert!(
        p.is_dir(),
        "expected the shared folder at {} (fixtures and task data)",
        p.display()
    );
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
    let found = peft_host::model::model_dirs()
        .iter()
        .any(|d| d.join("all-MiniLM-L6-v2/model.safetensors").exists());
    assert!(
        found,
        "all-MiniLM-L6-v2 is not installed: run scripts/setup.sh"
    );
}

pub fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
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

/// Serialises cargo builds started by tests (they share output folders).
pub static BUILD_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `cargo build` with the given arguments; panics with cargo's output on failure.
pub fn cargo_build(args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["build", "--quiet"])
        .args(args)
        .current_dir(root())
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "cargo build {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// File name of a cdylib on this platform.
pub fn dylib_name(lib: &str) -> String {
    format!(
        "{}{lib}.{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_EXTENSION
    )
}

/// Builds the first-party houlsby plugin as a cdylib (in its own target folder, so that this
/// works under `cargo test` too) and copies it into a fresh plugin folder.
pub fn built_houlsby_dir() -> tempfile::TempDir {
    let _g = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let target = root().join("target/plugin-tests");
    cargo_build(&[
        "-p",
        "peft-plugin-houlsby",
        "--lib",
        "--target-dir",
        target.to_str().unwrap(),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let name = dylib_name("houlsby");
    std::fs::copy(target.join("debug").join(&name), dir.path().join(&name)).unwrap();
    dir
}

/// Builds the API-1.0 test plugin (tests/compat/old-plugin) with `features` and copies it
/// into a fresh folder under `file_stem`.
pub fn built_old_plugin(features: &str, file_stem: &str) -> (tempfile::TempDir, PathBuf) {
    let _g = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let target = root().join("target/compat");
    let manifest = root().join("tests/compat/old-plugin/Cargo.toml");
    let mut args = vec![
        "--manifest-path",
        manifest.to_str().unwrap(),
        "--target-dir",
        target.to_str().unwrap(),
    ];
    if !features.is_empty() {
        args.extend(["--features", features]);
    }
    cargo_build(&args);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join(dylib_name(file_stem));
    std::fs::copy(target.join("debug").join(dylib_name("old_bias")), &dest).unwrap();
    (dir, dest)
}

/// The largest absolute difference between two safetensors files with the same tensors.
pub fn max_tensor_diff(a: &Path, b: &Path) -> f64 {
    use peft_host::backbone::weights::Checkpoint;
    let (a, b) = (Checkpoint::read(a).unwrap(), Checkpoint::read(b).unwrap());
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    a.tensors
        .iter()
        .map(|(k, (_, x))| {
            let y = &b.tensors[k].1;
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs() as f64)
                .fold(0.0, f64::max)
        })
        .fold(0.0, f64::max)
}
