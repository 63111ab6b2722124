//! Swapping priming algorithms without recompiling the host: a first-party priming plugin and a
//! third-party one (tests/third-party-priming, outside the workspace), each built as a shared
//! library, loaded from a plugin folder, and run in a two-stage run by this test binary, which
//! does not link the third-party crate (and, for the first-party test, uses a registry holding
//! only the libraries of the folder).
use peft_host::{config::RunConfig, data, run::priming::fine_tune, validate::validate};
use peft_registry::{Origin, Registry};
use peft_tests::*;
use serde_json::json;

static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn config(plugin: &str, registry: &Registry, plugin_config: serde_json::Value) -> RunConfig {
    let mut cfg =
        tiny_bert_config(json!([{ "plugin": "houlsby", "config": { "up_init_std": 0.05 } }]));
    cfg["training"] =
        json!({ "steps": 3, "batch_size": 4, "learning_rate": 1e-2, "max_length": 32 });
    cfg["task"] = json!({ "name": "ethos-disability", "eval_examples": 16 });
    cfg["priming"] = json!({
        "plugin": plugin, "config": plugin_config,
        "upstream_tasks": [{ "name": "ethos-gender", "eval_examples": 8 }, { "name": "ethos-religion", "eval_examples": 8 }],
        "upstream_groups": ["backbone"], "downstream_groups": ["adapter"],
        "steps": 3, "checkpoint_every": 0, "split_seeds": [13]
    });
    validate(&cfg.to_string(), "test", registry).unwrap_or_else(|e| panic!("{e}"))
}

/// Builds a crate's cdylib into its own target folder; returns the library's path.
fn build(args: &[&str], target: &str, lib: &str) -> std::path::PathBuf {
    let _g = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let target = root().join(target);
    let mut a = args.to_vec();
    a.extend(["--target-dir", target.to_str().unwrap()]);
    cargo_build(&a);
    target.join("debug").join(dylib_name(lib))
}

#[test]
fn first_party_priming_plugin_runs_from_a_plugin_folder() {
    let _g = serial();
    let lib = build(
        &["-p", "peft-plugin-multitask", "--lib"],
        "target/plugin-tests",
        "multitask",
    );
    let folder = built_houlsby_dir();
    std::fs::copy(&lib, folder.path().join(dylib_name("multitask"))).unwrap();
    // Only the folder's libraries: nothing built in.
    let mut dynamic = Registry::new();
    let errors = dynamic.load_dir(folder.path());
    assert!(errors.is_empty(), "{errors:?}");
    assert!(matches!(
        dynamic.get("multitask").unwrap().origin,
        Origin::Dynamic { .. }
    ));
    let plugin_cfg = json!({ "tasks_per_step": 2, "batch_size": 4, "learning_rate": 1e-3 });
    let cfg = config("multitask", &dynamic, plugin_cfg);
    let dir = data::data_dir(None).unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = prime_default(&cfg, &dynamic, &dir, out.path()).unwrap();
    assert_eq!(r.steps, 3);
    let primed = out.path().join("primed.safetensors");
    let rows = fine_tune::<B>(
        &cfg,
        &dynamic,
        &dir,
        Some(&primed),
        false,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].score.is_finite());
    // The built-in copy of the same plugin primes to the same weights.
    let builtin = Registry::with_static_plugins().unwrap();
    let out2 = tempfile::tempdir().unwrap();
    prime_default(&cfg, &builtin, &dir, out2.path()).unwrap();
    // Bit for bit: the kernels' reductions run in a fixed order (see tests/priming.rs).
    let d = max_tensor_diff(&primed, &out2.path().join("primed.safetensors"));
    assert_eq!(
        d, 0.0,
        "the shared library and the built-in plugin primed differently ({d})"
    );
}

#[test]
fn third_party_priming_algorithm_runs_from_a_plugin_folder() {
    let _g = serial();
    let manifest = root().join("tests/third-party-priming/Cargo.toml");
    let lib = build(
        &["--manifest-path", manifest.to_str().unwrap()],
        "target/plugin-tests",
        "focal_priming",
    );
    let folder = tempfile::tempdir().unwrap();
    std::fs::copy(&lib, folder.path().join(dylib_name("focal_priming"))).unwrap();
    let mut registry = Registry::with_static_plugins().unwrap();
    let errors = registry.load_dir(folder.path());
    assert!(errors.is_empty(), "{errors:?}");
    let cfg = config(
        "focal-priming",
        &registry,
        json!({ "temperature": 0.5, "learning_rate": 1e-3 }),
    );
    // Its schema is enforced like any plugin's.
    let mut bad = serde_json::to_value(&cfg).unwrap();
    bad["priming"]["config"] = json!({ "temperature": -1 });
    let err = validate(&bad.to_string(), "bad", &registry)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/priming/config/temperature") && err.contains("focal-priming"),
        "{err}"
    );
    let dir = data::data_dir(None).unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = prime_default(&cfg, &registry, &dir, out.path()).unwrap();
    assert_eq!(r.plugin_report["algorithm"], "focal");
    assert_eq!(r.losses.len(), 3);
    let rows = fine_tune::<B>(
        &cfg,
        &registry,
        &dir,
        Some(&out.path().join("primed.safetensors")),
        false,
        &Default::default(),
    )
    .unwrap();
    assert!(rows[0].score.is_finite());
}
