//! Property-based fuzzing of what reads outside input: run configs (parse + validate), the
//! safetensors loader, the JSONL/TSV task readers, predict's input reader and adapter
//! manifests. Each property is "never panics" (errors are fine) plus, where it holds, "valid
//! input still reads". CI runs 48 cases per property (PROPTEST_CASES overrides); the long run
//! is documented in docs/adapters.md:
//!
//!     PROPTEST_CASES=100000 nice cargo test --release -p peft-tests --test fuzz
use peft_host::{
    backbone::weights::Checkpoint,
    data,
    serve::{folder, predict},
    validate::validate,
};
use peft_registry::Registry;
use peft_tests::*;
use proptest::prelude::*;
use serde_json::{json, Value};

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|x| json!(x)),
        "[a-z_/.-]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid config on a tiny random-init backbone (cheap to validate), to mutate.
fn base_config() -> Value {
    let mut c = tiny_bert_config(json!([{ "plugin": "lora", "config": { "rank": 2 } }]));
    c["training"] = json!({ "steps": 2, "batch_size": 2, "max_length": 16 });
    c
}

/// Sets `value` at a path of keys/indices chosen by `picks` inside `doc` (stopping at a leaf).
fn mutate(doc: &mut Value, picks: &[usize], value: Value) {
    let Some((&p, rest)) = picks.split_first() else {
        *doc = value;
        return;
    };
    match doc {
        Value::Object(m) if !m.is_empty() => {
            let k = m.keys().nth(p % m.len()).unwrap().clone();
            mutate(m.get_mut(&k).unwrap(), rest, value)
        }
        Value::Array(a) if !a.is_empty() => {
            let n = a.len();
            mutate(&mut a[p % n], rest, value)
        }
        _ => *doc = value,
    }
}

fn registry() -> &'static Registry {
    static R: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    R.get_or_init(|| Registry::with_static_plugins().unwrap())
}

/// Cases per property: PROPTEST_CASES for the long run, else a short CI run.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn config_validation_never_panics_on_any_json(doc in any_json()) {
        let _ = validate(&doc.to_string(), "fuzz.json", registry());
    }

    #[test]
    fn config_validation_never_panics_on_mutated_configs(
        picks in prop::collection::vec(any::<usize>(), 0..5),
        value in any_json(),
    ) {
        let mut doc = base_config();
        mutate(&mut doc, &picks, value);
        let _ = validate(&doc.to_string(), "fuzz.json", registry());
    }

    #[test]
    fn config_validation_never_panics_on_arbitrary_text(text in ".{0,200}") {
        let _ = validate(&text, "fuzz.json", registry());
    }

    #[test]
    fn safetensors_loader_never_panics_on_damaged_files(
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
    ) {
        let good = peft_host::serve::safetensors_bytes(
            &[("a".into(), vec![2, 3], vec![1.0; 6]), ("b.c".into(), vec![4], vec![0.5; 4])],
            Default::default(),
        ).unwrap();
        let mut bytes = good.clone();
        for (i, b) in &flips {
            let n = bytes.len();
            bytes[i.index(n)] ^= *b;
        }
        bytes.truncate(cut.index(good.len() + 1));
        let _ = Checkpoint::parse("fuzz.safetensors", &bytes);
        prop_assert!(Checkpoint::parse("good.safetensors", &good).is_ok());
    }

    #[test]
    fn safetensors_loader_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Checkpoint::parse("fuzz.safetensors", &bytes);
    }

    #[test]
    fn predict_inputs_never_panic(text in "(\\PC{0,40}\n){0,6}", jsonl in prop::collection::vec(any_json(), 0..4)) {
        let _ = predict::parse_inputs(&text, predict::InputFormat::Auto, "fuzz.txt");
        let lines: Vec<String> = jsonl.iter().map(|v| v.to_string()).collect();
        let _ = predict::parse_inputs(&lines.join("\n"), predict::InputFormat::Jsonl, "fuzz.jsonl");
    }

    #[test]
    fn task_readers_never_panic(text in "(\\PC{0,60}\n){0,6}", rows in prop::collection::vec(any_json(), 0..4)) {
        let dir = tempfile::tempdir().unwrap();
        let tsv = dir.path().join("dev.tsv");
        std::fs::write(&tsv, &text).unwrap();
        let _ = data::read_sst2(&tsv);
        let _ = data::read_cola(&tsv);
        let jsonl = dir.path().join("t_16_13_train.jsonl");
        let mut body: Vec<String> = rows.iter().map(|v| v.to_string()).collect();
        body.push(text.clone());
        std::fs::write(&jsonl, body.join("\n")).unwrap();
        let _ = data::read_crossfit(&jsonl, &mut Vec::new());
    }

    #[test]
    fn adapter_manifests_never_panic(picks in prop::collection::vec(any::<usize>(), 0..5), value in any_json()) {
        let dir = tempfile::tempdir().unwrap();
        let mut m = json!({
            "format": folder::FORMAT, "format_version": folder::FORMAT_VERSION,
            "code_version": "x",
            "backbone": { "name": "tiny-bert", "hidden_size": 32, "weights_sha256": null },
            "plugins": [{ "instance": "lora", "plugin": "lora", "version": "0.1.0", "api_version": "1.1" }],
            "tasks": [{ "name": "t", "kind": "classification", "labels": ["a", "b"], "metric": "accuracy",
                        "eval_split": "dev", "head": { "kind": "classification", "prefix": "head", "classes": 2 } }],
            "tensors": [{ "name": "head.bias", "shape": [2], "group": "head", "owner": "head" }],
            "config": base_config(),
        });
        mutate(&mut m, &picks, value);
        std::fs::write(dir.path().join(folder::MANIFEST_FILE), m.to_string()).unwrap();
        if let Ok(manifest) = folder::read_manifest(dir.path()) {
            let _ = folder::mismatches(&manifest, registry());
            for t in &manifest.tasks {
                let _ = t.task();
            }
        }
    }
}
