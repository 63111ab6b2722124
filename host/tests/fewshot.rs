//! `peft-host fewshot`: a grid of ordinary runs over tasks, methods and split seeds, summarised
//! as mean and std; a second invocation reuses the finished runs instead of training again.
use std::{path::Path, process::Command};

fn shared_data() -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    assert!(p.is_dir(), "expected task data at {}", p.display());
    p
}

#[test]
fn grid_summarises_seeds_and_reuses_finished_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("base.json");
    let base = serde_json::json!({
        "backbone": {"name": "tiny-bert", "architecture": "bert", "config": {
            "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 64, "max_position_embeddings": 128 }},
        "training": { "steps": 3, "batch_size": 16, "learning_rate": 3e-3, "max_length": 32, "checkpoint_every": 0 }
    });
    std::fs::write(&cfg, base.to_string()).unwrap();
    let out = tmp.path().join("grid");
    let grid = || {
        let o = Command::new(env!("CARGO_BIN_EXE_peft-host"))
            .args(["fewshot", "--plugin", "houlsby", "--plugin", "lora"])
            .args(["--tasks", "superglue-cb,ai2_arc", "--seeds", "13,21"])
            .args(["--eval-examples", "8", "--quiet", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&out)
            .arg("--data")
            .arg(shared_data())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let table = grid();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("fewshot.json")).unwrap()).unwrap();
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 8, "2 tasks x 2 methods x 2 seeds");
    let summaries = report["summaries"].as_array().unwrap();
    assert_eq!(summaries.len(), 4);
    // Classification scored by macro-F1, multiple choice (option scoring) by accuracy.
    for s in summaries {
        let want = if s["task"] == "ai2_arc" {
            "accuracy"
        } else {
            "macro_f1"
        };
        assert_eq!(s["metric"], want, "{s}");
        assert_eq!(s["seeds"], 2);
        let scores: Vec<f64> = cells
            .iter()
            .filter(|c| c["task"] == s["task"] && c["method"] == s["method"])
            .map(|c| c["score"].as_f64().unwrap())
            .collect();
        let mean = (scores[0] + scores[1]) / 2.0;
        assert!((s["mean"].as_f64().unwrap() - mean).abs() < 1e-12);
        assert!(
            (s["std"].as_f64().unwrap() - (scores[0] - scores[1]).abs() / 2f64.sqrt()).abs()
                < 1e-12
        );
    }
    assert!(
        table.contains("| task | metric | houlsby | lora |"),
        "{table}"
    );
    let md = std::fs::read_to_string(out.join("fewshot.md")).unwrap();
    assert!(
        md.starts_with("| task | metric | houlsby | lora |") && table.contains(&md),
        "{md}"
    );
    // Every cell is a run of its own, on its task's split seed.
    let one = out.join("crossfit-superglue-cb-lora-seed21");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(one.join("result.json")).unwrap()).unwrap();
    assert_eq!(r["config"]["task"]["split_seed"], 21);
    assert!(one.join("curves.svg").exists());
    // Again: nothing retrains (the results are read back), the same table comes out.
    let stamp = std::fs::metadata(one.join("result.json"))
        .unwrap()
        .modified()
        .unwrap();
    let again = grid();
    assert!(again.contains(&md), "{again}");
    assert!(!again.contains("result: "), "no cell ran again: {again}");
    assert_eq!(
        std::fs::metadata(one.join("result.json"))
            .unwrap()
            .modified()
            .unwrap(),
        stamp
    );
}
