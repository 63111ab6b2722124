//! LoRA and HF peft: the fixture saved by HF peft (all-MiniLM-L6-v2, r = 4, query/value) read
//! into our LoRA reproduces transformers' output; what we save is in HF peft's format and reads
//! back bit-exactly; peft-host's own adapter format round-trips for the other plugins.
use burn::tensor::{Int, Tensor, TensorData};
use peft_host::{
    adapters::{self, SavedFormat},
    backbone::{Hooks, NoModules, TextBatch},
    bridge::HostGraph,
    config::RunConfig,
    model::Model,
};
use peft_registry::Registry;
use peft_tests::*;
use serde_json::{json, Value};

const TOL: f64 = 1e-4;

fn build(cfg: Value) -> Model<B> {
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap()
}

fn ints(v: &Value) -> (Vec<i64>, usize, usize) {
    let rows = v.as_array().unwrap();
    let t = rows[0].as_array().unwrap().len();
    let flat = rows
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as i64)
        })
        .collect();
    (flat, rows.len(), t)
}

fn fixture_batch(fx: &Value) -> TextBatch<B> {
    let dev = Default::default();
    let mk = |k: &str| {
        let (v, n, t) = ints(&fx[k]);
        Tensor::<B, 2, Int>::from_data(TensorData::new(v, [n, t]), &dev)
    };
    TextBatch {
        input_ids: mk("input_ids"),
        attention_mask: mk("attention_mask"),
        token_type_ids: Some(mk("token_type_ids")),
    }
}

fn flat(v: &Value) -> Vec<f64> {
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

fn encode(model: &Model<B>, batch: &TextBatch<B>) -> Vec<f32> {
    let graph = HostGraph::new(&model.params, false);
    vals(model.encode(&graph, batch).unwrap())
}

/// Max abs difference over real (unpadded) tokens and over all tokens.
fn diffs(got: &[f32], want: &[f64], mask: &[i64], h: usize) -> (f64, f64) {
    assert_eq!(got.len(), want.len());
    let (mut real, mut all) = (0f64, 0f64);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (*g as f64 - w).abs();
        all = all.max(d);
        if mask[i / h] == 1 {
            real = real.max(d);
        }
    }
    (real, all)
}

fn fixture_model() -> (Model<B>, Value) {
    require_minilm();
    let dir = fixture("minilm-lora-peft");
    let spec = adapters::module_spec(&dir).unwrap();
    assert_eq!(spec["plugin"], "lora");
    assert_eq!(spec["config"]["rank"], 4);
    let model = build(json!({ "backbone": "all-MiniLM-L6-v2", "modules": [spec] }));
    adapters::load(&model, "lora", &dir).unwrap();
    (model, read_json(&dir.join("expected.json")))
}

#[test]
fn hf_peft_adapter_reproduces_transformers_output() {
    let (model, fx) = fixture_model();
    let batch = fixture_batch(&fx);
    let (mask, _, _) = ints(&fx["attention_mask"]);
    let h = model.info().hidden_size;

    let graph = HostGraph::new(&model.params, false);
    let hooks = Hooks::new(&graph, &NoModules);
    let base = vals(bert_last_hidden(&model, &hooks, &batch));
    let (base_real, base_all) = diffs(&base, &flat(&fx["base_last_hidden_state"]), &mask, h);
    eprintln!("base: max abs diff {base_real:e} (real tokens), {base_all:e} (all)");
    assert!(base_real < TOL, "base model differs by {base_real}");

    let want = flat(&fx["lora_last_hidden_state"]);
    let got = encode(&model, &batch);
    let (real, all) = diffs(&got, &want, &mask, h);
    eprintln!("LoRA (unmerged): max abs diff {real:e} (real tokens), {all:e} (all tokens)");
    assert!(real < TOL, "LoRA output differs from HF peft by {real}");
    assert!(
        all < TOL,
        "LoRA output (padding included) differs from HF peft by {all}"
    );
    let moved = diffs(&got, &flat(&fx["base_last_hidden_state"]), &mask, h).1;
    assert!(
        moved > 0.05,
        "the adapter changed the output by only {moved}"
    );

    let graph = HostGraph::new(&model.params, false);
    model.modules.modules[0]
        .call(&graph, "merge", "null")
        .unwrap();
    let merged = encode(&model, &batch);
    let (real, all) = diffs(&merged, &want, &mask, h);
    eprintln!("LoRA (merged): max abs diff {real:e} (real tokens), {all:e} (all tokens)");
    assert!(
        real < TOL && all < TOL,
        "merged LoRA differs from HF peft by {all}"
    );
}

fn module_params(model: &Model<B>, owner: &str) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let store = model.params.borrow();
    let names: Vec<(String, Vec<usize>)> = store
        .iter()
        .filter(|p| p.owner == owner)
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    names
        .into_iter()
        .map(|(n, s)| {
            let v = match s.len() {
                1 => store.tensor::<1>(&n).unwrap().into_data(),
                2 => store.tensor::<2>(&n).unwrap().into_data(),
                _ => panic!("rank"),
            };
            (n, s, v.convert::<f32>().into_vec().unwrap())
        })
        .collect()
}

fn bits(v: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<(String, Vec<usize>, Vec<u32>)> {
    v.iter()
        .map(|(n, s, x)| {
            (
                n.clone(),
                s.clone(),
                x.iter().map(|f| f.to_bits()).collect(),
            )
        })
        .collect()
}

fn safetensors_keys(path: &std::path::Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors_header(&bytes);
    let mut keys: Vec<String> = st
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn safetensors_header(bytes: &[u8]) -> Value {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + n]).unwrap()
}

#[test]
fn saved_lora_uses_hf_peft_files_and_reads_back_bit_exactly() {
    let (model, _) = fixture_model();
    let out = tempfile::tempdir().unwrap();
    let format = adapters::save(
        &model,
        "lora",
        &Value::Null,
        Some("sentence-transformers/all-MiniLM-L6-v2"),
        out.path(),
    )
    .unwrap();
    assert_eq!(format, SavedFormat::HfPeft);
    // For the cross-check with HF peft itself (scripts/check_peft_load.py).
    if let Ok(dest) = std::env::var("PEFT_EXPORT_LORA_TO") {
        std::fs::create_dir_all(&dest).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(out.path().join(f), std::path::Path::new(&dest).join(f)).unwrap();
        }
    }
    let src = fixture("minilm-lora-peft");
    // Same file names, same keys, same shapes and dtype as HF peft's.
    assert_eq!(
        safetensors_keys(&out.path().join("adapter_model.safetensors")),
        safetensors_keys(&src.join("adapter_model.safetensors"))
    );
    let ours =
        safetensors_header(&std::fs::read(out.path().join("adapter_model.safetensors")).unwrap());
    let theirs = safetensors_header(&std::fs::read(src.join("adapter_model.safetensors")).unwrap());
    for (k, v) in theirs.as_object().unwrap() {
        if k != "__metadata__" {
            assert_eq!(ours[k]["shape"], v["shape"], "{k}");
            assert_eq!(ours[k]["dtype"], v["dtype"], "{k}");
        }
    }
    // The config has HF peft's fields with the fixture's values.
    let cfg = read_json(&out.path().join("adapter_config.json"));
    let hf = read_json(&src.join("adapter_config.json"));
    for k in [
        "peft_type",
        "r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "bias",
        "task_type",
        "base_model_name_or_path",
        "fan_in_fan_out",
        "use_rslora",
        "use_dora",
        "init_lora_weights",
        "rank_pattern",
        "alpha_pattern",
        "modules_to_save",
        "layers_to_transform",
        "inference_mode",
    ] {
        assert_eq!(cfg.get(k), hf.get(k), "adapter_config.json field `{k}`");
    }
    // Bit-exact: the saved tensors equal the fixture's, and read back into a fresh model.
    let read = |p: &std::path::Path| {
        peft_host::backbone::weights::Checkpoint::read(&p.join("adapter_model.safetensors"))
            .unwrap()
            .tensors
    };
    let (ours, theirs) = (read(out.path()), read(&src));
    assert_eq!(ours.len(), theirs.len());
    for (k, (shape, v)) in &theirs {
        let (s2, v2) = &ours[k];
        assert_eq!(s2, shape, "{k}");
        let b1: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
        let b2: Vec<u32> = v2.iter().map(|x| x.to_bits()).collect();
        assert!(b1 == b2, "{k}: saved values differ from the fixture's");
    }
    let spec = adapters::module_spec(out.path()).unwrap();
    let fresh = build(json!({ "backbone": "all-MiniLM-L6-v2", "modules": [spec], "seed": 7 }));
    assert_ne!(
        bits(&module_params(&fresh, "lora")),
        bits(&module_params(&model, "lora"))
    );
    adapters::load(&fresh, "lora", out.path()).unwrap();
    assert_eq!(
        bits(&module_params(&fresh, "lora")),
        bits(&module_params(&model, "lora"))
    );
}

#[test]
fn hf_peft_config_that_does_not_match_the_module_is_refused() {
    require_minilm();
    let model = build(json!({ "backbone": "all-MiniLM-L6-v2", "modules": [{ "plugin": "lora" }] }));
    let err = adapters::load(&model, "lora", &fixture("minilm-lora-peft")).unwrap_err();
    assert!(err.to_string().contains("r = Some(4)"), "{err:#}");
}

/// peft-host's own format, for every plugin: save, load into a model with other initial
/// values, compare bit for bit and the outputs exactly.
#[test]
fn own_format_round_trips_bit_exactly() {
    let modules = [
        json!({ "plugin": "houlsby", "config": { "up_init_std": 0.05 } }),
        json!({ "plugin": "parallel-adapter", "config": { "up_init_std": 0.05 } }),
        json!({ "plugin": "meta-adapters", "config": { "up_init_std": 0.05 } }),
        json!({ "plugin": "adapter-bias" }),
        json!({ "plugin": "prefix", "config": { "reparameterize": true, "reparam_hidden": 8, "prefix_length": 2 } }),
    ];
    let dev = Default::default();
    let ids = vec![101i64, 2023, 2003, 1037, 3231, 102];
    let batch = TextBatch::<B> {
        input_ids: Tensor::from_data(TensorData::new(ids, [1, 6]), &dev),
        attention_mask: Tensor::ones([1, 6], &dev),
        token_type_ids: None,
    };
    for m in modules {
        let plugin = m["plugin"].as_str().unwrap().to_string();
        let cfg = |seed: u64| {
            let mut c = tiny_bert_config(json!([m.clone()]));
            c["seed"] = json!(seed);
            c
        };
        let a = build(cfg(0));
        let out = tempfile::tempdir().unwrap();
        let format = adapters::save(&a, &plugin, &m["config"], None, out.path()).unwrap();
        assert_eq!(format, SavedFormat::PeftHost, "{plugin}");
        let spec = adapters::module_spec(out.path()).unwrap();
        assert_eq!(spec["plugin"], plugin.as_str());
        // Another seed gives other backbone weights too; copy them so outputs can compare.
        let b = build(cfg(1));
        assert_ne!(
            bits(&module_params(&b, &plugin)),
            bits(&module_params(&a, &plugin)),
            "{plugin}"
        );
        adapters::load(&b, &plugin, out.path()).unwrap();
        assert_eq!(
            bits(&module_params(&b, &plugin)),
            bits(&module_params(&a, &plugin)),
            "{plugin}"
        );
        for (n, _, _) in module_params(&a, "backbone") {
            let v = a.params.borrow().value(&n).unwrap();
            b.params.borrow_mut().assign(&n, v).unwrap();
        }
        assert_eq!(
            encode(&a, &batch),
            encode(&b, &batch),
            "{plugin}: outputs after loading"
        );
    }
}

/// Prefix tuning in HF peft's format (plain prefixes at every layer of a BERT backbone): one
/// `prompt_embeddings` `[P, L * 2 * hidden]` tensor holding layer 0's key then value prefixes,
/// then layer 1's, ...; read back bit for bit, and through `module_spec` as HF folders are.
#[test]
fn prefix_in_hf_peft_format_round_trips_bit_exactly() {
    let module = json!({ "plugin": "prefix", "config": { "prefix_length": 3 } });
    let cfg = |seed: u64| {
        let mut c = tiny_bert_config(json!([module.clone()]));
        c["seed"] = json!(seed);
        c
    };
    let a = build(cfg(0));
    let out = tempfile::tempdir().unwrap();
    let format = adapters::save(
        &a,
        "prefix",
        &module["config"],
        Some("tiny-bert"),
        out.path(),
    )
    .unwrap();
    assert_eq!(format, SavedFormat::HfPeft);
    let hf: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(hf["peft_type"], "PREFIX_TUNING");
    assert_eq!(hf["prefix_projection"], false);
    assert_eq!(
        (
            &hf["num_virtual_tokens"],
            &hf["num_layers"],
            &hf["token_dim"]
        ),
        (&json!(3), &json!(2), &json!(32))
    );
    let bytes = std::fs::read(out.path().join("adapter_model.safetensors")).unwrap();
    let header = safetensors_header(&bytes);
    assert_eq!(header["prompt_embeddings"]["shape"], json!([3, 2 * 2 * 32]));
    // Row 1 of the file: layer 0 key, layer 0 value, layer 1 key, layer 1 value.
    let params = module_params(&a, "prefix");
    let row = |name: &str| -> Vec<f32> {
        let (_, _, v) = params.iter().find(|(n, _, _)| n.ends_with(name)).unwrap();
        v[32..64].to_vec()
    };
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let file: Vec<f32> = st
        .tensor("prompt_embeddings")
        .unwrap()
        .data()
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let want: Vec<f32> = [
        "layer.0.attention.self.kv.prefix_key",
        "layer.0.attention.self.kv.prefix_value",
        "layer.1.attention.self.kv.prefix_key",
        "layer.1.attention.self.kv.prefix_value",
    ]
    .iter()
    .flat_map(|n| row(n))
    .collect();
    assert_eq!(file[128..256], want[..]);
    // HF's config rebuilds the module; the values read back bit for bit.
    let spec = adapters::module_spec(out.path()).unwrap();
    assert_eq!(
        spec,
        json!({ "plugin": "prefix", "config": { "prefix_length": 3 } })
    );
    let b = build(cfg(1));
    assert_ne!(bits(&module_params(&b, "prefix")), bits(&params));
    adapters::load(&b, "prefix", out.path()).unwrap();
    assert_eq!(bits(&module_params(&b, "prefix")), bits(&params));
    // A prefix on some layers only has no HF form: saved in peft-host's own.
    let some = json!({ "plugin": "prefix", "config": { "prefix_length": 3, "layers": [1] } });
    let c = build(tiny_bert_config(json!([some.clone()])));
    let out2 = tempfile::tempdir().unwrap();
    let format = adapters::save(&c, "prefix", &some["config"], None, out2.path()).unwrap();
    assert_eq!(format, SavedFormat::PeftHost);
    // A config HF's layout does not match is refused naming the field.
    let mut bad = hf.clone();
    bad["num_virtual_tokens"] = json!(4);
    std::fs::write(out.path().join("adapter_config.json"), bad.to_string()).unwrap();
    let err = format!(
        "{:#}",
        adapters::load(&a, "prefix", out.path()).unwrap_err()
    );
    assert!(err.contains("num_virtual_tokens"), "{err}");
    bad["prefix_projection"] = json!(true);
    std::fs::write(out.path().join("adapter_config.json"), bad.to_string()).unwrap();
    let err = format!("{:#}", adapters::module_spec(out.path()).unwrap_err());
    assert!(err.contains("prefix_projection"), "{err}");
}
