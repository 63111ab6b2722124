//! A backbone held in bf16 (`"backbone": {"dtype": "bf16"}`): its forward and the gradients
//! through it equal an f32 model whose weights are the same bf16-rounded values (which
//! isolates the kernels from the rounding; on AMX within the activations' split, `nn::amx`),
//! and the rounding's own effect on MiniLM is stated.
use burn::tensor::{DType, TensorMetadata};
use peft_host::{
    backbone::{precision, Hooks},
    bridge::{value::fp, HostGraph},
    config::RunConfig,
    model::Model,
    nn,
};
use peft_registry::Registry;
use peft_tests::*;

fn with_dtype(mut cfg: serde_json::Value, dtype: &str) -> RunConfig {
    let b = cfg["backbone"].take();
    cfg["backbone"] = match b {
        serde_json::Value::String(name) => serde_json::json!({"name": name, "dtype": dtype}),
        mut d => {
            d["dtype"] = dtype.into();
            d
        }
    };
    serde_json::from_value(cfg).unwrap()
}

/// Builds the config twice: held in bf16, and in f32 with every weight the bf16 one holds
/// replaced by its rounded value.
fn pair(cfg: serde_json::Value) -> (Model<B>, Model<B>, Vec<String>) {
    let registry = Registry::with_static_plugins().unwrap();
    let dev = Default::default();
    let bf = Model::<B>::build(&with_dtype(cfg.clone(), "bf16"), &registry, &dev, 2).unwrap();
    let f = Model::<B>::build(&with_dtype(cfg, "f32"), &registry, &dev, 2).unwrap();
    let keys = precision::bf16_keys(f.info(), &f.params.borrow());
    for k in &keys {
        let mut store = f.params.borrow_mut();
        let p = store.get(k).unwrap();
        let shape: [usize; 2] = p.shape.clone().try_into().unwrap();
        let v = nn::to_vec(store.tensor::<2>(k).unwrap()).unwrap();
        let t = burn::tensor::Tensor::<B, 2>::from_data(
            burn::tensor::TensorData::new(nn::bf16::rounded(&v), shape),
            &dev,
        );
        store.assign(k, fp(t)).unwrap();
        assert_eq!(
            bf.params.borrow().get(k).unwrap().value.dtype(),
            DType::BF16,
            "{k}"
        );
    }
    (bf, f, keys)
}

fn sentences() -> Vec<(String, Option<String>)> {
    [
        "a frozen backbone in bf16 takes half the memory",
        "short",
        "the products still accumulate in single precision, so the forward equals the one of the rounded weights",
    ]
    .map(|s| (s.to_string(), None))
    .to_vec()
}

/// Last hidden states of a padded batch: the no-grad pass and the tracked one.
fn hidden(model: &Model<B>) -> (Vec<f32>, Vec<f32>) {
    let batch = model
        .tokenize(&sentences(), 64, &Default::default())
        .unwrap();
    let g = HostGraph::inference(&model.params);
    let h0 = vals(model.encode(&g, &batch).unwrap());
    let g = HostGraph::new(&model.params, false);
    let hooks = Hooks::new(&g, &model.modules);
    let h1 = vals(bert_last_hidden(model, &hooks, &batch));
    (h0, h1)
}

#[test]
fn minilm_in_bf16_equals_f32_with_rounded_weights() {
    require_minilm();
    let cfg = serde_json::json!({"backbone": "all-MiniLM-L6-v2"});
    let (bf, f, keys) = pair(cfg.clone());
    // 6 layers x 6 projections + 3 embedding tables.
    assert_eq!(keys.len(), 6 * 6 + 3);
    let (b0, b1) = hidden(&bf);
    let (f0, f1) = hidden(&f);
    let (d0, d1) = (max_diff(&b0, &f0), max_diff(&b1, &f1));
    // The same f32 products give the same bits (1e-4 allows for nothing in practice); on AMX
    // the activations enter as two bf16 terms (16 significant bits, `nn::amx`), which moves the
    // last hidden state by a few 1e-4 — still ~300 times less than the weights' rounding below.
    let tol = if nn::amx::available() { 1e-3 } else { 1e-4 };
    assert!(d0 <= tol && d1 <= tol, "no-grad {d0}, tracked {d1}");

    // Against the true f32 weights: the rounding's own effect, stated in docs/performance.md.
    let registry = Registry::new();
    let exact = Model::<B>::build(
        &serde_json::from_value(cfg).unwrap(),
        &registry,
        &Default::default(),
        0,
    )
    .unwrap();
    let (e0, _) = hidden(&exact);
    let scale = e0.iter().fold(0f32, |m, x| m.max(x.abs()));
    let d = max_diff(&b0, &e0);
    let mean = b0.iter().zip(&e0).map(|(a, b)| (a - b).abs()).sum::<f32>() / b0.len() as f32;
    println!(
        "MiniLM last hidden state, bf16 weights against f32: max abs diff {d:.3e}, mean {mean:.3e} (largest |value| {scale:.2}); against the rounded f32 weights: {d0:.1e}"
    );
    assert!(
        d > 0.0 && d < 0.05 * scale,
        "bf16 rounding moved the output by {d}"
    );

    // Half the bytes for the matrices it holds.
    let bytes = |m: &Model<B>| -> usize {
        m.params
            .borrow()
            .iter()
            .filter(|p| p.owner == "backbone")
            .map(|p| p.numel() * if p.value.dtype() == DType::BF16 { 2 } else { 4 })
            .sum()
    };
    let (b, e) = (bytes(&bf), bytes(&exact));
    println!("backbone weights: {e} bytes in f32, {b} in bf16");
    assert!(b * 100 < e * 52, "{b} of {e}");
}

/// Gradients of Houlsby and LoRA parameters through bf16 layers equal the ones through f32
/// layers with the rounded weights; what trains is f32, a backbone weight made trainable too.
#[test]
fn module_gradients_through_bf16_layers_equal_rounded_f32() {
    let cfg = tiny_bert_config(serde_json::json!([
        { "plugin": "houlsby", "config": { "up_init_std": 0.05, "bottleneck": 4 } },
        { "plugin": "lora", "config": { "rank": 4, "b_init_std": 0.05 } }
    ]));
    let (bf, f, keys) = pair(cfg);
    assert_eq!(keys.len(), 2 * 6 + 3);
    let extra = "encoder.layer.1.output.dense.weight".to_string();
    let groups = vec!["adapter".to_string()];
    for m in [&bf, &f] {
        m.params
            .borrow_mut()
            .set_trainable(&groups, std::slice::from_ref(&extra))
            .unwrap();
    }
    assert_eq!(
        bf.params.borrow().get(&extra).unwrap().value.dtype(),
        DType::F32,
        "a trainable backbone weight is widened to f32"
    );
    let names = trainable_names(&bf);
    assert!(
        names.iter().any(|n| n.starts_with("houlsby."))
            && names.iter().any(|n| n.starts_with("lora."))
    );
    let run = |m: &Model<B>| {
        let batch = m.tokenize(&sentences(), 32, &Default::default()).unwrap();
        bert_probe(m, &m.modules, &batch, &names)
    };
    let (hb, gb) = run(&bf);
    let (hf, gf) = run(&f);
    // Relative to each gradient's scale: 1e-5 for the same f32 products, 2e-4 on AMX (the
    // activations' and incoming gradients' 16-bit split, forward and backward).
    let tol = if nn::amx::available() { 2e-4 } else { 1e-5 };
    println!("AMX: {}", nn::amx::available());
    assert!(max_diff(&hb, &hf) <= tol, "outputs {}", max_diff(&hb, &hf));
    for ((n, a), b) in names.iter().zip(&gb).zip(&gf) {
        let scale = b.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
        let d = max_diff(a, b);
        println!("gradient of {n}: relative {:.1e}", d / scale);
        assert!(d <= tol * scale, "gradient of {n}: {d} (scale {scale})");
        assert!(a.iter().any(|&x| x != 0.0), "gradient of {n} is zero");
    }
}

/// The adapter folder records a bf16 backbone; an f32 one writes no field (old manifests read
/// the same).
#[test]
fn adapter_manifest_records_the_backbone_dtype() {
    let cfg = tiny_bert_config(serde_json::json!([]));
    let r =
        peft_host::serve::folder::backbone_record(&with_dtype(cfg.clone(), "bf16"), 32).unwrap();
    assert_eq!(r.dtype, "bf16");
    let r = peft_host::serve::folder::backbone_record(&with_dtype(cfg, "f32"), 32).unwrap();
    let json = serde_json::to_value(&r).unwrap();
    assert!(json.get("dtype").is_none(), "{json}");
    let back: peft_host::serve::folder::BackboneRecord = serde_json::from_value(json).unwrap();
    assert_eq!(back.dtype, "f32");
}

/// T5 (v1.0 and v1.1) and BART hold their projections in bf16 too: teacher-forced logits and
/// greedy decoding (the KV-cache path) equal the f32 model with the rounded weights.
#[test]
fn seq2seq_backbones_in_bf16_equal_rounded_f32() {
    use burn::tensor::{Int, Tensor, TensorData};
    for name in ["t5-v1_0-tiny", "t5-v1_1-tiny", "bart-tiny"] {
        let cfg = serde_json::json!({ "backbone": { "name": name, "path": fixture(name) } });
        let (bf, f, keys) = pair(cfg);
        assert!(!keys.is_empty(), "{name}: nothing held in bf16");
        let dev = Default::default();
        let ids = |v: Vec<i64>, t: usize| {
            Tensor::<B, 2, Int>::from_data(TensorData::new(v, [2, t]), &dev)
        };
        let batch = peft_host::backbone::TextBatch {
            input_ids: ids(vec![5, 9, 13, 17, 21, 2, 6, 10, 14, 2, 0, 0], 6),
            attention_mask: ids(vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0], 6),
            token_type_ids: None,
        };
        let dec = ids(vec![0, 7, 11, 0, 8, 12], 3);
        let run = |m: &Model<B>| {
            let s2s = m.backbone.as_seq2seq::<B>().unwrap();
            let g = HostGraph::inference(&m.params);
            let hooks = Hooks::new(&g, &m.modules);
            let logits = vals(s2s.logits(&hooks, &batch, &dec).unwrap());
            (logits, s2s.greedy_generate(&hooks, &batch, 4).unwrap())
        };
        let ((lb, gb), (lf, gf)) = (run(&bf), run(&f));
        let d = max_diff(&lb, &lf);
        assert!(d <= 1e-4, "{name}: logits differ by {d}");
        assert_eq!(gb, gf, "{name}: greedy decoding");
    }
}
