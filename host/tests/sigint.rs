//! A run killed with SIGINT writes a checkpoint and stops; `run --resume` then ends with the
//! same losses and metrics as a run that was never interrupted.
use std::{path::Path, process::Command, time::Duration};

fn shared_data() -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    assert!(p.is_dir(), "expected task data at {}", p.display());
    p
}

fn peft_host(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_peft-host"));
    c.args(args).arg("--data").arg(shared_data()).arg("--quiet");
    c
}

fn report(out: &Path) -> serde_json::Value {
    let dir = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("run folder");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
    r["report"].clone()
}

#[test]
fn sigint_then_resume_equals_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("run.json");
    let config = serde_json::json!({
        "backbone": {"name": "tiny-bert", "architecture": "bert", "config": {
            "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 64, "max_position_embeddings": 64, "hidden_dropout_prob": 0.1 }},
        "modules": [{ "plugin": "houlsby" }],
        "task": { "name": "glue-sst2", "train_examples": 256, "eval_examples": 64 },
        "training": { "steps": 1500, "batch_size": 8, "learning_rate": 3e-3, "max_length": 24, "checkpoint_every": 0 },
        "seed": 11
    });
    std::fs::write(&cfg, config.to_string()).unwrap();
    let cfg = cfg.to_str().unwrap();
    let (full, cut) = (tmp.path().join("full"), tmp.path().join("cut"));

    let status = peft_host(&["run", cfg, "--out", full.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());

    let mut child = peft_host(&["run", cfg, "--out", cut.to_str().unwrap()])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "an interrupted run exits with 130 after checkpointing"
    );
    let run_dir = std::fs::read_dir(&cut)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let progress: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("checkpoint/progress.json")).unwrap())
            .unwrap();
    let step = progress["step"].as_u64().unwrap();
    assert!(step > 0 && step < 1500, "stopped mid-run at step {step}");
    assert!(!run_dir.join("result.json").exists());

    let status = peft_host(&["run", cfg, "--out", cut.to_str().unwrap(), "--resume"])
        .status()
        .unwrap();
    assert!(status.success());
    let (a, b) = (report(&full), report(&cut));
    assert_eq!(a["losses"], b["losses"], "losses of the resumed run");
    assert_eq!(
        a["evaluations"], b["evaluations"],
        "metrics of the resumed run"
    );
}
