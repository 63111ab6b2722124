//! The adapter folder every run writes: a round trip gives identical logits, `eval` on a run's
//! folder reproduces the run's own score, and every mismatch (plugin version, API version,
//! backbone weights, missing or corrupt files, tensors of the wrong shape) is a clear error that
//! names what is wrong.
use std::path::Path;

use peft_host::{
    config::RunConfig,
    data,
    heads::Head,
    model::Model,
    run::{run_generic, RunFlags},
    serve::{
        eval,
        folder::{self, MANIFEST_FILE, TENSORS_FILE},
        predict,
    },
};
use peft_registry::Registry;
use peft_tests::*;
use serde_json::{json, Value};

fn registry() -> Registry {
    Registry::with_static_plugins().unwrap()
}

/// A tiny model with LoRA (B drawn non-zero, so the module changes the output) and Houlsby,
/// and a classification head for SST-2's two labels, saved into `dir`.
fn saved_model(dir: &Path) -> (Model<B>, RunConfig, data::Task) {
    saved_model_with(
        dir,
        json!([
            { "plugin": "lora", "config": { "rank": 2, "b_init_std": 0.5 } },
            { "plugin": "houlsby" }
        ]),
    )
}

/// A tiny-BERT adapter folder with `modules` and an SST-2 classification head.
fn saved_model_with(dir: &Path, modules: serde_json::Value) -> (Model<B>, RunConfig, data::Task) {
    let _ = shared();
    let mut cfg = tiny_bert_config(modules);
    cfg["training"] = json!({ "max_length": 32, "batch_size": 4 });
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let task = data::load_task(&data::data_dir(None).unwrap(), "glue-sst2", 4, 8, 13, 1).unwrap();
    let model = Model::<B>::build(&cfg, &registry(), &Default::default(), 0).unwrap();
    let head = Head::Classification {
        prefix: "head".into(),
        classes: 2,
    };
    head.create(&mut model.params.borrow_mut(), 32).unwrap();
    folder::save(&model, &cfg, &[(&task, &head)], dir).unwrap();
    (model, cfg, task)
}

fn logits_of(model: &Model<B>, texts: &[(String, Option<String>)]) -> Vec<f32> {
    let g = peft_host::bridge::HostGraph::inference(&model.params);
    let tb = model.tokenize(texts, 32, &Default::default()).unwrap();
    let pooled = model.pooled(&g, &tb).unwrap();
    model
        .head_linear(&g, pooled, "head")
        .unwrap()
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap()
}

#[test]
fn round_trip_gives_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _, task) = saved_model(dir.path());
    let texts: Vec<_> = task.eval.iter().map(|e| (e.text_a.clone(), None)).collect();
    let want = logits_of(&model, &texts);
    let loaded = folder::load::<B>(dir.path(), &registry(), &Default::default()).unwrap();
    assert_eq!(
        logits_of(&loaded.model, &texts),
        want,
        "bit-identical logits"
    );
    // Every module and head parameter was saved and restored, not re-initialised equal.
    let m = &loaded.manifest;
    assert!(m.tensors.iter().any(|t| t.name.starts_with("lora.")));
    assert!(m.tensors.iter().any(|t| t.name.starts_with("houlsby.")));
    assert!(m.tensors.iter().any(|t| t.name == "head.weight"));
    assert_eq!(m.plugins.len(), 2);
    assert_eq!(m.tasks[0].labels, task.labels);
    assert_eq!(m.backbone.name, "tiny-bert");
    // A fresh model with another seed differs, so equality above is the load's doing.
    let mut other = m.config.clone();
    other.seed += 1;
    let fresh = Model::<B>::build(&other, &registry(), &Default::default(), 2).unwrap();
    assert_ne!(logits_of(&fresh, &texts), want);
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut Value)) {
    let p = dir.join(MANIFEST_FILE);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

fn load_err(dir: &Path) -> String {
    match folder::load::<B>(dir, &registry(), &Default::default()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn every_mismatch_is_named() {
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
        (
            "plugin version",
            Box::new(|v| v["plugins"][0]["version"] = json!("0.0.1")),
            vec!["plugin `lora` 0.0.1", "this host has version"],
        ),
        (
            "API version",
            Box::new(|v| v["plugins"][1]["api_version"] = json!("9.0")),
            vec!["houlsby", "API 9.0"],
        ),
        (
            "unknown plugin",
            Box::new(|v| v["plugins"][0]["plugin"] = json!("nosuch")),
            vec!["plugin `nosuch`", "not installed"],
        ),
        (
            "backbone weights",
            Box::new(|v| v["backbone"]["weights_sha256"] = json!("00ff")),
            vec!["weights differ", "00ff", "none (random init)"],
        ),
        (
            "backbone name",
            Box::new(|v| v["backbone"]["name"] = json!("other-bert")),
            vec!["trained on backbone `other-bert`", "`tiny-bert`"],
        ),
        (
            "format",
            Box::new(|v| v["format"] = json!("something")),
            vec![MANIFEST_FILE, "\"something\""],
        ),
        (
            "format version",
            Box::new(|v| v["format_version"] = json!(99)),
            vec![MANIFEST_FILE, "format_version 99"],
        ),
        (
            "tensor not in the model",
            Box::new(|v| {
                v["tensors"].as_array_mut().unwrap().push(
                    json!({"name": "lora.nope", "shape": [1], "group": "adapter", "owner": "lora"}),
                )
            }),
            vec!["`lora.nope`", "not a parameter"],
        ),
    ];
    for (what, edit, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        saved_model(dir.path());
        edit_manifest(dir.path(), edit);
        let e = load_err(dir.path());
        for n in needles {
            assert!(e.contains(n), "{what}: `{n}` not in: {e}");
        }
    }
    // Two mismatches are both listed.
    let dir = tempfile::tempdir().unwrap();
    saved_model(dir.path());
    edit_manifest(dir.path(), |v| {
        v["plugins"][0]["version"] = json!("0.0.1");
        v["backbone"]["weights_sha256"] = json!("00ff");
    });
    let e = load_err(dir.path());
    assert!(e.contains("0.0.1") && e.contains("weights differ"), "{e}");
    // An adapter saved by plugins built for an earlier API minor (1.1, before `ATTENTION`)
    // still loads: the majors match and the plugins' own versions pin what they compute.
    let dir = tempfile::tempdir().unwrap();
    saved_model(dir.path());
    edit_manifest(dir.path(), |v| {
        for p in v["plugins"].as_array_mut().unwrap() {
            p["api_version"] = json!("1.1");
        }
    });
    folder::load::<B>(dir.path(), &registry(), &Default::default()).unwrap();
}

#[test]
fn missing_or_corrupt_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_err(&dir.path().join("absent"));
    assert!(
        e.contains("absent") && e.contains("no such adapter folder"),
        "{e}"
    );

    saved_model(dir.path());
    let tensors = dir.path().join(TENSORS_FILE);
    let bytes = std::fs::read(&tensors).unwrap();

    std::fs::write(&tensors, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains(TENSORS_FILE) && e.contains("corrupt or truncated"),
        "{e}"
    );

    std::fs::remove_file(&tensors).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains(TENSORS_FILE) && e.contains("cannot read"), "{e}");

    std::fs::write(&tensors, &bytes).unwrap();
    std::fs::write(dir.path().join(MANIFEST_FILE), "{ not json").unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains(MANIFEST_FILE) && e.contains("not valid JSON"),
        "{e}"
    );

    std::fs::remove_file(dir.path().join(MANIFEST_FILE)).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains(MANIFEST_FILE) && e.contains("cannot read"),
        "{e}"
    );
}

#[test]
fn wrong_shapes_and_missing_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, _) = saved_model(dir.path());
    let path = dir.path().join(TENSORS_FILE);
    let ck = peft_host::backbone::weights::Checkpoint::read(&path).unwrap();
    // Drop one tensor, reshape another.
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = ck
        .tensors
        .into_iter()
        .filter(|(k, _)| k != "head.bias")
        .map(|(k, (s, v))| (k, s, v))
        .collect();
    let bytes = peft_host::serve::safetensors_bytes(&tensors, Default::default()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("`head.bias` is missing") && e.contains(TENSORS_FILE),
        "{e}"
    );

    let i = tensors.iter().position(|t| t.0 == "head.weight").unwrap();
    let n = tensors[i].2.len();
    tensors[i].1 = vec![n];
    tensors.push(("head.bias".into(), vec![2], vec![0.0; 2]));
    let bytes = peft_host::serve::safetensors_bytes(&tensors, Default::default()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("`head.weight` has shape [64]"), "{e}");
}

#[test]
fn predict_reads_text_and_jsonl_and_names_bad_lines() {
    let ex = predict::parse_inputs(
        "a good film\n\n{\"sentence1\": \"x\", \"sentence2\": \"y\"}\nleft\tright\n",
        predict::InputFormat::Auto,
        "in.txt",
    )
    .unwrap();
    assert_eq!(ex.len(), 3);
    assert_eq!(ex[1].text_b.as_deref(), Some("y"));
    assert_eq!(ex[2].text_b.as_deref(), Some("right"));
    for (text, needle) in [
        ("ok\n{\"sentence\": 3}\n", "in.txt:2: field `sentence` is 3"),
        ("{broken\n", "in.txt:1: not a JSON object"),
        ("{\"label\": 1}\n", "in.txt:1: no input text"),
        ("[1]\n", "in.txt:1: expected a JSON object"),
        (
            "{\"text\": \"a\", \"options\": \"b\"}\n",
            "in.txt:1: `options`",
        ),
    ] {
        let fmt = if text.starts_with('[') {
            predict::InputFormat::Jsonl
        } else {
            predict::InputFormat::Auto
        };
        let e = format!(
            "{:#}",
            predict::parse_inputs(text, fmt, "in.txt").unwrap_err()
        );
        assert!(e.contains(needle), "`{needle}` not in: {e}");
    }
}

#[test]
fn predict_scores_match_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _, task) = saved_model(dir.path());
    let loaded = folder::load::<B>(dir.path(), &registry(), &Default::default()).unwrap();
    let texts: Vec<_> = task.eval.iter().map(|e| (e.text_a.clone(), None)).collect();
    let logits = logits_of(&model, &texts);
    let mut out = Vec::new();
    // Batch 3 over 8 inputs: batching must not change a prediction.
    let stats = predict::predict(
        &loaded,
        &loaded.manifest.tasks[0],
        &task.eval,
        3,
        false,
        &mut out,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(stats.examples, 8);
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8);
    for (i, l) in lines.iter().enumerate() {
        let (a, b) = (logits[2 * i] as f64, logits[2 * i + 1] as f64);
        let p1 = 1.0 / (1.0 + (a - b).exp());
        let got = l["scores"][&task.labels[1]].as_f64().unwrap();
        assert!((got - p1).abs() < 1e-5, "row {i}: {got} vs {p1}");
        let best = if b > a {
            &task.labels[1]
        } else {
            &task.labels[0]
        };
        assert_eq!(l["label"], json!(best));
        assert_eq!(l["index"], json!(i));
    }
}

#[test]
fn eval_of_a_runs_adapter_reproduces_the_runs_score() {
    let _ = shared();
    let out = tempfile::tempdir().unwrap();
    let mut cfg = tiny_bert_config(json!([{ "plugin": "lora", "config": { "rank": 2 } }]));
    cfg["task"] = json!({ "name": "glue-sst2", "train_examples": 16, "eval_examples": 24 });
    cfg["training"] =
        json!({ "steps": 6, "batch_size": 8, "learning_rate": 1e-2, "max_length": 32 });
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let data = data::data_dir(None).unwrap();
    run_generic::<B>(
        &cfg,
        &registry(),
        &data,
        out.path(),
        RunFlags::default(),
        &Default::default(),
    )
    .unwrap();
    let run_dir = out.path().join(peft_host::run::run_name(&cfg));
    let result: Value = read_json(&run_dir.join("result.json"));
    let evals = result["report"]["evaluations"].as_array().unwrap();
    let last = evals.last().unwrap();
    let loaded =
        folder::load::<B>(&run_dir.join("adapter"), &registry(), &Default::default()).unwrap();
    let r = eval::eval(&loaded, None, None, &data, &Default::default()).unwrap();
    assert_eq!(r.evaluation.examples, 24);
    assert_eq!(
        json!(r.evaluation.score),
        last["score"],
        "same score as the run"
    );
    assert_eq!(
        json!(r.evaluation.loss),
        last["loss"],
        "same loss as the run"
    );
    let e = format!(
        "{:#}",
        eval::eval(&loaded, Some("glue-rte"), None, &data, &Default::default()).unwrap_err()
    );
    assert!(e.contains("no task `glue-rte`"), "{e}");
}

/// HF formats in: the LoRA adapter HF peft saved (the fixture) loads as an adapter folder and
/// its dumped hidden states are transformers + peft's.
#[test]
fn an_hf_peft_adapter_folder_loads_and_reproduces_peft() {
    require_minilm();
    let dir = fixture("minilm-lora-peft");
    let fx = read_json(&dir.join("expected.json"));
    let loaded = folder::load::<B>(&dir, &registry(), &Default::default()).unwrap();
    assert_eq!(loaded.manifest.plugins[0].plugin, "lora");
    assert_eq!(loaded.manifest.backbone.name, "all-MiniLM-L6-v2");
    let texts: Vec<_> = fx["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s.as_str().unwrap().to_string(), None))
        .collect();
    let d = predict::dump(&loaded, None, &texts, &Default::default()).unwrap();
    assert_eq!(
        floats_nested(&d["input_ids"]),
        floats_nested(&fx["input_ids"]),
        "same tokens"
    );
    let mask: Vec<f64> = floats_nested(&fx["attention_mask"]);
    let got = floats_nested(&d["last_hidden_state"]);
    let want = floats_nested(&fx["lora_last_hidden_state"]);
    let h = got.len() / mask.len();
    let diff = got
        .iter()
        .zip(&want)
        .enumerate()
        .filter(|(i, _)| mask[i / h] == 1.0)
        .map(|(_, (a, b))| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!("HF peft adapter via the adapter folder: max abs diff {diff:e}");
    assert!(diff < 1e-4, "{diff}");
    let e = format!("{:#}", loaded.task(None).unwrap_err());
    assert!(e.contains("no task head"), "{e}");
}

fn floats_nested(v: &Value) -> Vec<f64> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<f64>) {
        match v {
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            x => out.push(x.as_f64().unwrap()),
        }
    }
    walk(v, &mut out);
    out
}

/// `export`: the HF peft folder loads back (as a foreign adapter) with the same hidden states;
/// the merged backbone, loaded as a plain backbone without modules, gives them too.
#[test]
fn exports_reproduce_the_adapters_outputs() {
    require_minilm();
    let dir = tempfile::tempdir().unwrap();
    let cfg: RunConfig = serde_json::from_value(json!({
        "backbone": "all-MiniLM-L6-v2",
        "modules": [{ "plugin": "lora", "config": { "rank": 4, "alpha": 8, "b_init_std": 0.05 } }],
        "training": { "max_length": 32 }
    }))
    .unwrap();
    let _ = shared();
    let task = data::load_task(&data::data_dir(None).unwrap(), "glue-sst2", 4, 4, 13, 1).unwrap();
    let model = Model::<B>::build(&cfg, &registry(), &Default::default(), 0).unwrap();
    let head = Head::Classification {
        prefix: "head".into(),
        classes: 2,
    };
    head.create(&mut model.params.borrow_mut(), 384).unwrap();
    let saved = dir.path().join("adapter");
    folder::save(&model, &cfg, &[(&task, &head)], &saved).unwrap();
    let texts: Vec<_> = task.eval.iter().map(|e| (e.text_a.clone(), None)).collect();
    let dev = Default::default();
    let loaded = folder::load::<B>(&saved, &registry(), &dev).unwrap();
    let want = predict::dump(&loaded, Some(&loaded.manifest.tasks[0]), &texts, &dev).unwrap();
    let hidden = |d: &Value| floats_nested(&d["last_hidden_state"]);

    let peft = dir.path().join("peft");
    peft_host::serve::export::hf_peft(&loaded, None, &peft).unwrap();
    assert!(peft.join("adapter_config.json").exists() && peft.join("heads.safetensors").exists());
    let mut back = folder::load::<B>(&peft, &registry(), &dev).unwrap();
    // HF peft's config has no max_length: truncate as the run did.
    back.manifest.config.training.max_length = 32;
    let got = predict::dump(&back, None, &texts, &dev).unwrap();
    let maxdiff = |a: &[f64], b: &[f64]| {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    };
    let d = maxdiff(&hidden(&got), &hidden(&want));
    assert!(d < 1e-6, "HF peft export read back differs by {d}");

    let merged = dir.path().join("merged");
    peft_host::serve::export::merged(&loaded, &merged).unwrap();
    let plain: RunConfig = serde_json::from_value(json!({
        "backbone": { "path": merged.to_str().unwrap() },
        "training": { "max_length": 32 }
    }))
    .unwrap();
    let m = Model::<B>::build(&plain, &registry(), &dev, 0).unwrap();
    let g = peft_host::bridge::HostGraph::inference(&m.params);
    let tb = m.tokenize(&texts, 32, &dev).unwrap();
    let h: Vec<f64> = m
        .encode(&g, &tb)
        .unwrap()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    let w = hidden(&want);
    let diff = h
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!("merged backbone vs adapter: max abs diff {diff:e}");
    assert!(diff < 1e-4, "{diff}");
    // The unmerged backbone differs, so the merge did something.
    let base: RunConfig = serde_json::from_value(
        json!({ "backbone": "all-MiniLM-L6-v2", "training": { "max_length": 32 } }),
    )
    .unwrap();
    let b = Model::<B>::build(&base, &registry(), &dev, 0).unwrap();
    let g = peft_host::bridge::HostGraph::inference(&b.params);
    let h0: Vec<f32> = b
        .encode(&g, &tb)
        .unwrap()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap();
    let moved = h0
        .iter()
        .zip(&w)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(moved > 1e-3, "the adapter changed nothing: {moved}");
    // A plugin without an HF format is refused, naming it.
    let hdir = tempfile::tempdir().unwrap();
    let (_, _, _) = saved_model(hdir.path());
    let l = folder::load::<B>(hdir.path(), &registry(), &dev).unwrap();
    let e = format!(
        "{:#}",
        peft_host::serve::export::hf_peft(&l, None, &hdir.path().join("x")).unwrap_err()
    );
    assert!(
        e.contains("houlsby") && e.contains("no HF peft format"),
        "{e}"
    );
    // A plugin with an HF format, but not for this configuration, says why.
    let pdir = tempfile::tempdir().unwrap();
    saved_model_with(
        pdir.path(),
        json!([{ "plugin": "prefix", "config": { "prefix_length": 2, "layers": [1] } }]),
    );
    let l = folder::load::<B>(pdir.path(), &registry(), &dev).unwrap();
    let e = format!(
        "{:#}",
        peft_host::serve::export::hf_peft(&l, None, &pdir.path().join("x")).unwrap_err()
    );
    assert!(
        e.contains("prefix") && e.contains("every layer") && e.contains("covers [1]"),
        "{e}"
    );
}
