//! `peft-host bench model` on the methods that are more than one plugin's defaults: PHA (its
//! task count and the batch's task ids from `--tasks`, its retriever, prototypes and
//! hypernetwork training) and HyperT5 from a run config (`--config`: the hypermodel runs in
//! each training pass). Small shapes: this checks that each runs and reports what it trains,
//! not how fast.
use std::{path::Path, process::Command};

fn bench(args: &[&str]) -> serde_json::Value {
    let minilm = peft_host::model::model_dirs()
        .iter()
        .any(|d| d.join("all-MiniLM-L6-v2/model.safetensors").exists());
    assert!(
        minilm,
        "all-MiniLM-L6-v2 is not installed: run scripts/setup.sh"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_peft-host"))
        .args([
            "bench", "model", "--batch", "4", "--seq", "16", "--runs", "1", "--json",
        ])
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn pha_and_hypert5_train_what_their_runs_train() {
    let houlsby = bench(&["--plugin", "houlsby"]);
    let pha = bench(&["--plugin", "pha", "--tasks", "3"]);
    let hyper_cfg =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench/hypert5-minilm.json");
    let hypert5 = bench(&["--config", hyper_cfg.to_str().unwrap()]);
    let trainable = |r: &serde_json::Value| r["trainable_parameters"].as_u64().unwrap();
    // PHA trains its hypernetwork, retriever and prototypes (3 of them, 64 wide) besides
    // adapters: far more than Houlsby's adapters; HyperT5 its copy of the encoder.
    assert!(trainable(&pha) > 20 * trainable(&houlsby), "{pha}");
    assert!(trainable(&hypert5) > 10_000_000, "{hypert5}");
    for r in [&pha, &hypert5] {
        assert!(r["train_step"]["median_ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["inference"]["median_ms"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert_eq!(hypert5["modules"], serde_json::json!(["gen"]));
    // A task count the bench cannot mix in a batch is refused by clap, before any work.
    let o = Command::new(env!("CARGO_BIN_EXE_peft-host"))
        .args(["bench", "model", "--plugin", "pha", "--tasks", "0"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--tasks"));
}

/// No runs to take a median of is refused by clap, naming the flag, on every timing verb
/// (it panicked on an empty list of times).
#[test]
fn zero_runs_is_a_named_error() {
    for verb in [
        &["bench", "model"][..],
        &["bench", "seq2seq", "--backbone", "t5-small"],
        &["bench", "overhead", "--plugin", "x.so"],
        &["bench", "attention"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_peft-host"))
            .args(verb)
            .args(["--runs", "0"])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{verb:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("--runs") && err.contains("0 is not in 1.."),
            "{verb:?}: {err}"
        );
    }
}
