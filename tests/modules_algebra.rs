//! The algebra of each PEFT module plugin, on the tiny random BERT and on real MiniLM:
//! - output equals the unmodified backbone at initialisation where the method starts as the
//!   identity (Houlsby, parallel adapter, Meta-Adapters, LoRA with B = 0, AdapterBias with
//!   v = 0), and differs where it does not (AdapterBias with the authors' v = 1, prefixes);
//! - trainable parameter counts equal each method's formula, computed here independently;
//! - LoRA merged equals unmerged, and unmerge restores the backbone weights;
//! - LoRA + Houlsby compose in one config.
use burn::tensor::{Int, Tensor, TensorData};
use peft_host::{
    backbone::{Hooks, NoModules, TextBatch},
    bridge::HostGraph,
    config::RunConfig,
    model::Model,
};
use peft_registry::Registry;
use peft_tests::*;
use serde_json::{json, Value};

fn build(cfg: Value) -> Model<B> {
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap()
}

fn minilm_config(modules: Value) -> Value {
    json!({ "backbone": "all-MiniLM-L6-v2", "modules": modules })
}

/// Two rows of different lengths (the first padded), without needing a tokenizer.
fn batch() -> TextBatch<B> {
    let ids: Vec<i64> = vec![
        101, 1037, 2158, 2003, 5983, 2833, 1012, 102, 0, 0, 0, 0, //
        101, 1996, 2047, 3185, 2003, 12476, 1010, 1045, 3866, 2296, 3371, 102,
    ];
    let mask: Vec<i64> = ids
        .iter()
        .enumerate()
        .map(|(i, _)| if (8..12).contains(&i) { 0 } else { 1 })
        .collect();
    let dev = Default::default();
    let mk = |v: Vec<i64>| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [2, 12]), &dev);
    TextBatch {
        input_ids: mk(ids),
        attention_mask: mk(mask),
        token_type_ids: None,
    }
}

fn row(b: &TextBatch<B>, i: usize, len: usize) -> TextBatch<B> {
    TextBatch {
        input_ids: b.input_ids.clone().slice([i..i + 1, 0..len]),
        attention_mask: b.attention_mask.clone().slice([i..i + 1, 0..len]),
        token_type_ids: None,
    }
}

/// Last hidden state with the model's modules.
fn encode(model: &Model<B>, batch: &TextBatch<B>) -> Vec<f32> {
    let graph = HostGraph::new(&model.params, false);
    vals(model.encode(&graph, batch).unwrap())
}

/// Last hidden state of the same weights without any module.
fn encode_bare(model: &Model<B>, batch: &TextBatch<B>) -> Vec<f32> {
    let graph = HostGraph::new(&model.params, false);
    let hooks = Hooks::new(&graph, &NoModules);
    vals(bert_last_hidden(model, &hooks, batch))
}

fn trainable(model: &Model<B>, groups: &[&str]) -> usize {
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    model.set_trainable(&groups).unwrap();
    model.params.borrow().trainable().map(|p| p.numel()).sum()
}

fn weight(model: &Model<B>, key: &str) -> Vec<f32> {
    let t: Tensor<B, 2> = model.params.borrow().tensor(key).unwrap();
    t.into_data().convert::<f32>().into_vec().unwrap()
}

/// Backbone dimensions: hidden, layers, heads * head_dim, intermediate.
struct Dims {
    h: usize,
    l: usize,
    kv: usize,
}

fn dims(model: &Model<B>) -> Dims {
    let i = model.info();
    Dims {
        h: i.hidden_size,
        l: i.num_layers,
        kv: i.num_heads * i.head_dim,
    }
}

/// One method: its module section, whether it starts as the identity, its trainable count.
struct Case {
    name: &'static str,
    modules: Value,
    identity: bool,
    groups: &'static [&'static str],
    count: fn(&Dims) -> usize,
}

fn serial(d: usize, b: usize) -> usize {
    // W_down [b, d] + b_down [b] + W_up [d, b] + b_up [d]
    b * d + b + d * b + d
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "houlsby",
            modules: json!([{ "plugin": "houlsby" }]),
            identity: true,
            groups: &["adapter"],
            count: |d| d.l * 2 * serial(d.h, 8),
        },
        Case {
            name: "parallel-adapter",
            modules: json!([{ "plugin": "parallel-adapter" }]),
            identity: true,
            groups: &["adapter"],
            count: |d| d.l * serial(d.h, 64),
        },
        Case {
            name: "meta-adapters",
            modules: json!([{ "plugin": "meta-adapters" }]),
            identity: true,
            groups: &["adapter", "meta_adapter"],
            count: |d| d.l * 2 * 3 * serial(d.h, 8),
        },
        Case {
            name: "meta-adapters (inner loop: adapter group only)",
            modules: json!([{ "plugin": "meta-adapters" }]),
            identity: true,
            groups: &["adapter"],
            count: |d| d.l * 2 * serial(d.h, 8),
        },
        Case {
            name: "lora",
            modules: json!([{ "plugin": "lora" }]),
            identity: true,
            groups: &["adapter"],
            // query and value, r = 8: A [r, in] + B [out, r]
            count: |d| d.l * 2 * (8 * d.h + d.h * 8),
        },
        Case {
            name: "adapter-bias (v = 0)",
            modules: json!([{ "plugin": "adapter-bias", "config": { "vector_init": 0.0 } }]),
            identity: true,
            groups: &["adapter"],
            // v [d] + L_alpha weight [1, d] + bias [1], + the output LayerNorm's weight and bias
            count: |d| d.l * ((d.h + d.h + 1) + 2 * d.h),
        },
        // With the authors' v = 1 the shift alpha_t * 1 is constant across features, which the
        // following LayerNorm removes: AdapterBias also starts as the identity (to rounding).
        Case {
            name: "adapter-bias",
            modules: json!([{ "plugin": "adapter-bias" }]),
            identity: true,
            groups: &["adapter"],
            count: |d| d.l * ((d.h + d.h + 1) + 2 * d.h),
        },
        Case {
            name: "prefix",
            modules: json!([{ "plugin": "prefix" }]),
            identity: false,
            groups: &["adapter"],
            count: |d| d.l * 2 * 10 * d.kv,
        },
        Case {
            name: "prefix (MLP)",
            modules: json!([{ "plugin": "prefix", "config": { "reparameterize": true, "prefix_length": 4, "reparam_hidden": 16 } }]),
            identity: false,
            groups: &["adapter"],
            // embedding [P, h], Linear(h, 16), Linear(16, L * 2 * kv)
            count: |d| 4 * d.h + (d.h * 16 + 16) + (16 * d.l * 2 * d.kv + d.l * 2 * d.kv),
        },
        Case {
            name: "lora + houlsby",
            modules: json!([{ "plugin": "lora", "config": { "rank": 4 } }, { "plugin": "houlsby" }]),
            identity: true,
            groups: &["adapter"],
            count: |d| d.l * 2 * 4 * (d.h + d.h) + d.l * 2 * serial(d.h, 8),
        },
    ]
}

fn check_cases(cfg: fn(Value) -> Value) -> Vec<(String, usize)> {
    let batch = batch();
    let mut counts = Vec::new();
    for case in cases() {
        let model = build(cfg(case.modules.clone()));
        let d = dims(&model);
        let got = trainable(&model, case.groups);
        let want = (case.count)(&d);
        assert_eq!(got, want, "{}: trainable parameters", case.name);
        let with = encode(&model, &batch);
        let bare = encode_bare(&model, &batch);
        let diff = max_diff(&with, &bare);
        if case.identity {
            // Exact zeros give exact identities; AdapterBias's v = 1 relies on LayerNorm's
            // centring, which rounds.
            let tol = if case.name == "adapter-bias" {
                2e-5
            } else {
                1e-6
            };
            assert!(
                diff < tol,
                "{}: differs from the backbone by {diff} at init",
                case.name
            );
        } else {
            assert!(
                diff > 1e-4,
                "{}: should change the output at init ({diff})",
                case.name
            );
        }
        assert!(with.iter().all(|x| x.is_finite()), "{}", case.name);
        counts.push((case.name.to_string(), got));
    }
    counts
}

#[test]
fn tiny_bert_identity_at_init_and_parameter_counts() {
    let counts = check_cases(tiny_bert_config);
    eprintln!("tiny BERT trainable parameters: {counts:?}");
}

#[test]
fn minilm_identity_at_init_and_parameter_counts() {
    require_minilm();
    let counts = check_cases(minilm_config);
    eprintln!("MiniLM trainable parameters: {counts:?}");
}

/// AdapterBias makes the output LayerNorms trainable through `unfreeze`, and nothing else of
/// the backbone.
#[test]
fn adapter_bias_unfreezes_the_output_layer_norms() {
    let model = build(tiny_bert_config(json!([{ "plugin": "adapter-bias" }])));
    model.set_trainable(&["adapter".into()]).unwrap();
    let store = model.params.borrow();
    let mut backbone: Vec<&str> = store
        .trainable()
        .filter(|p| p.group == "backbone")
        .map(|p| p.name.as_str())
        .collect();
    backbone.sort();
    assert_eq!(
        backbone,
        [
            "encoder.layer.0.output.LayerNorm.bias",
            "encoder.layer.0.output.LayerNorm.weight",
            "encoder.layer.1.output.LayerNorm.bias",
            "encoder.layer.1.output.LayerNorm.weight",
        ]
    );
}

/// AdapterBias computes `y + L_alpha(y) v`: with `L_alpha = 0` except its bias `c`, the shift is
/// `c v` on every token, i.e. the FFN output's bias grows by `c v`.
#[test]
fn adapter_bias_with_constant_alpha_is_a_bias_shift() {
    let model = build(tiny_bert_config(
        json!([{ "plugin": "adapter-bias", "config": { "layers": [1] } }]),
    ));
    let batch = batch();
    {
        let mut s = model.params.borrow_mut();
        let dev = Default::default();
        let h = 32;
        let z = Tensor::<B, 2>::zeros([1, h], &dev);
        s.assign(
            "adapter-bias.encoder.layer.1.ffn.alpha.weight",
            z.into_primitive().tensor(),
        )
        .unwrap();
        let c = Tensor::<B, 1>::from_data(TensorData::new(vec![0.5f32], [1]), &dev);
        s.assign(
            "adapter-bias.encoder.layer.1.ffn.alpha.bias",
            c.into_primitive().tensor(),
        )
        .unwrap();
        // A v that is not constant across features (a constant one is removed by LayerNorm).
        let v: Vec<f32> = (0..h).map(|i| (i as f32 - 15.5) / 8.0).collect();
        let v = Tensor::<B, 1>::from_data(TensorData::new(v, [h]), &dev);
        s.assign(
            "adapter-bias.encoder.layer.1.ffn.vector",
            v.clone().into_primitive().tensor(),
        )
        .unwrap();
    }
    let with = encode(&model, &batch);
    assert!(max_diff(&with, &encode_bare(&model, &batch)) > 1e-3);
    // The same shift folded into the backbone's bias: bias + 0.5 v.
    {
        let mut s = model.params.borrow_mut();
        let b: Tensor<B, 1> = s.tensor("encoder.layer.1.output.dense.bias").unwrap();
        let v: Tensor<B, 1> = s.tensor("adapter-bias.encoder.layer.1.ffn.vector").unwrap();
        s.assign(
            "encoder.layer.1.output.dense.bias",
            (b + v * 0.5).into_primitive().tensor(),
        )
        .unwrap();
    }
    let folded = encode_bare(&model, &batch);
    let d = max_diff(&with, &folded);
    assert!(
        d < 1e-5,
        "AdapterBias shift differs from a bias shift by {d}"
    );
}

/// Parallel adapter algebra: `y + W_up act(W_down x)` at the FFN equals adding the same
/// adapter applied to the FFN's input, checked against a serial Houlsby adapter whose input is
/// different (the outputs must differ) and against the identity with a zero `W_up` (covered
/// above); here: gradients reach the adapter and its output depends on `x`, not `y`.
#[test]
fn parallel_adapter_reads_the_block_input() {
    let cfg = |plugin: &str| {
        tiny_bert_config(
            json!([{ "plugin": plugin, "config": { "up_init_std": 0.5, "bottleneck": 4, "attention": false } }]),
        )
    };
    let batch = batch();
    let par = build(cfg("parallel-adapter"));
    let ser = build(cfg("houlsby"));
    // Same weights in both: copy the parallel adapter's into the serial one.
    for l in 0..2 {
        for n in ["down.weight", "down.bias", "up.weight", "up.bias"] {
            let src = format!("parallel-adapter.encoder.layer.{l}.ffn.{n}");
            let dst = format!("houlsby.encoder.layer.{l}.ffn.{n}");
            let v = par.params.borrow().value(&src).unwrap();
            ser.params.borrow_mut().assign(&dst, v).unwrap();
        }
    }
    let a = encode(&par, &batch);
    let b = encode(&ser, &batch);
    let base = encode_bare(&par, &batch);
    assert!(
        max_diff(&a, &base) > 1e-3,
        "the parallel adapter changed nothing"
    );
    assert!(
        max_diff(&a, &b) > 1e-4,
        "parallel and serial adapters with equal weights agree: the parallel one does not read x"
    );
}

/// Prefixes are prepended with the mask extended in front: a padded row equals the same row
/// alone, and the prefix changes both rows.
#[test]
fn prefix_padding_is_masked_and_rows_are_independent() {
    let model = build(tiny_bert_config(
        json!([{ "plugin": "prefix", "config": { "prefix_length": 3 } }]),
    ));
    let batch = batch();
    let all = encode(&model, &batch);
    let h = 32;
    let first = encode(&model, &row(&batch, 0, 8));
    let d = max_diff(&all[..8 * h], &first);
    assert!(d < 1e-5, "padded row 0 differs from row 0 alone by {d}");
    let second = encode(&model, &row(&batch, 1, 12));
    let d = max_diff(&all[12 * h..], &second);
    assert!(d < 1e-5, "row 1 differs from row 1 alone by {d}");
}

/// Prefix tuning runs on the blocked attention kernel, reading the keys and values its site
/// returns: the output and the gradients of the prefix parameters equal burn's generic
/// attention path, on the padded batch.
#[test]
fn prefix_on_the_attention_kernel_equals_the_generic_path() {
    let model = build(tiny_bert_config(
        json!([{ "plugin": "prefix", "config": { "prefix_length": 3, "init_std": 0.5 } }]),
    ));
    model.set_trainable(&["adapter".into()]).unwrap();
    let batch = batch();
    let run = || {
        let graph = HostGraph::new(&model.params, false);
        let out = model.encode(&graph, &batch).unwrap();
        let w = Tensor::<B, 3>::ones(out.dims(), &Default::default()).detach();
        let w = w.clone() + out.clone().detach().sin() * 0.5;
        let grads = (out.clone() * w).sum().backward();
        let mut all = vec![vals(out)];
        for l in [0, 1] {
            for kv in ["prefix_key", "prefix_value"] {
                let name = format!("prefix.encoder.layer.{l}.attention.self.kv.{kv}");
                let p: Tensor<B, 2> =
                    peft_host::bridge::value::ft(graph.param_value(&name).unwrap());
                all.push(
                    p.grad(&grads)
                        .unwrap()
                        .into_data()
                        .convert::<f32>()
                        .into_vec()
                        .unwrap(),
                );
            }
        }
        all
    };
    let fast = run();
    let generic = peft_host::nn::generic_ops(run);
    for (i, (a, b)) in fast.iter().zip(&generic).enumerate() {
        let d = max_diff(a, b);
        let big = b.iter().fold(1f32, |m, x| m.max(x.abs()));
        assert!(
            d < 1e-5 * big,
            "part {i}: kernel and generic path differ by {d}"
        );
    }
    assert!(
        fast[1].iter().any(|g| g.abs() > 1e-6),
        "no gradient reached the prefix"
    );
    // The no-grad pass (the untracked kernel) gives the same output.
    let infer = || {
        vals(
            model
                .encode(&HostGraph::inference(&model.params), &batch)
                .unwrap(),
        )
    };
    let (a, b) = (infer(), peft_host::nn::generic_ops(infer));
    let d = max_diff(&a, &b);
    assert!(
        d < 1e-5,
        "no-grad pass: kernel and generic path differ by {d}"
    );
    assert!(
        max_diff(&a, &fast[0]) < 1e-5,
        "no-grad and tracked passes differ"
    );
}

fn lora_merge_roundtrip(cfg: Value) {
    let model = build(cfg);
    let batch = batch();
    let key = "encoder.layer.0.attention.self.query.weight";
    let w0 = weight(&model, key);
    let unmerged = encode(&model, &batch);
    let base = encode_bare(&model, &batch);
    assert!(max_diff(&unmerged, &base) > 1e-4, "the LoRA update is zero");
    let lora = model
        .modules
        .modules
        .iter()
        .find(|m| m.plugin == "lora")
        .unwrap();
    let graph = HostGraph::new(&model.params, false);
    assert!(lora.call(&graph, "merge", "null").unwrap().is_some());
    assert_eq!(
        lora.call(&graph, "merged", "null").unwrap().as_deref(),
        Some("true")
    );
    assert!(
        lora.call(&graph, "merge", "null").is_err(),
        "merging twice is refused"
    );
    let w1 = weight(&model, key);
    assert!(max_diff(&w0, &w1) > 0.0, "merge left the weight unchanged");
    let merged = encode(&model, &batch);
    let d = max_diff(&merged, &unmerged);
    assert!(d < 1e-5, "merged output differs from unmerged by {d}");
    // The bare backbone now carries the update too.
    let d = max_diff(&encode_bare(&model, &batch), &unmerged);
    let others: Vec<_> = model
        .modules
        .modules
        .iter()
        .filter(|m| m.plugin != "lora")
        .collect();
    if others.is_empty() {
        assert!(
            d < 1e-5,
            "merged backbone differs from backbone + LoRA by {d}"
        );
    }
    assert!(lora.call(&graph, "unmerge", "null").unwrap().is_some());
    let w2 = weight(&model, key);
    let d = max_diff(&w0, &w2);
    assert!(d < 1e-6, "unmerge restores the weights only to {d}");
    let again = encode(&model, &batch);
    let d = max_diff(&again, &unmerged);
    assert!(d < 1e-5, "after unmerge the output differs by {d}");
}

#[test]
fn lora_merge_equals_unmerged_and_unmerge_restores_tiny() {
    lora_merge_roundtrip(tiny_bert_config(json!([
        { "plugin": "lora", "config": { "b_init_std": 0.1, "targets": ["query", "value", "output"] } }
    ])));
}

#[test]
fn lora_merge_equals_unmerged_and_unmerge_restores_minilm() {
    require_minilm();
    lora_merge_roundtrip(minilm_config(json!([
        { "plugin": "lora", "config": { "b_init_std": 0.05 } }
    ])));
}

#[test]
fn lora_and_houlsby_compose_and_lora_merges_inside_the_composition() {
    lora_merge_roundtrip(tiny_bert_config(json!([
        { "plugin": "lora", "config": { "rank": 4, "alpha": 16, "b_init_std": 0.1 } },
        { "plugin": "houlsby", "config": { "up_init_std": 0.05 } }
    ])));
}

/// LoRA's update is `(alpha / r) B A x`: doubling alpha doubles the change of a projection.
#[test]
fn lora_scale_is_alpha_over_r() {
    let mk = |alpha: f64| {
        build(tiny_bert_config(json!([
            { "plugin": "lora", "config": { "rank": 2, "alpha": alpha, "b_init_std": 0.1, "targets": ["value"], "layers": [1] } }
        ])))
    };
    let key = "encoder.layer.1.attention.self.value.weight";
    for alpha in [2.0, 4.0] {
        let model = mk(alpha);
        let w0 = weight(&model, key);
        let graph = HostGraph::new(&model.params, false);
        model.modules.modules[0]
            .call(&graph, "merge", "null")
            .unwrap();
        let w1 = weight(&model, key);
        // B A computed here: A [2, 32], B [32, 2].
        let a = weight(&model, "lora.encoder.layer.1.attention.self.value.lora_A");
        let b = weight(&model, "lora.encoder.layer.1.attention.self.value.lora_B");
        let mut ba = vec![0f32; 32 * 32];
        for o in 0..32 {
            for i in 0..32 {
                ba[o * 32 + i] = (0..2).map(|k| b[o * 2 + k] * a[k * 32 + i]).sum();
            }
        }
        let delta: Vec<f32> = w1.iter().zip(&w0).map(|(x, y)| x - y).collect();
        let want: Vec<f32> = ba.iter().map(|x| x * (alpha as f32 / 2.0)).collect();
        let d = max_diff(&delta, &want);
        assert!(
            d < 1e-6,
            "alpha {alpha}: merged delta differs from (alpha/r) B A by {d}"
        );
    }
}

/// Unknown targets fail with the backbone's roles in the message.
#[test]
fn lora_without_matching_targets_is_a_config_error() {
    let cfg: RunConfig = serde_json::from_value(tiny_bert_config(json!([
        { "plugin": "lora", "config": { "targets": ["q_proj"] } }
    ])))
    .unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let err = Model::<B>::build(&cfg, &registry, &Default::default(), 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("q_proj") && err.contains("query"), "{err}");
}

/// A T5-shaped encoder-decoder described by hand (the site kinds, roles and stacks a seq2seq
/// backbone declares), with just the backbone weights the plugins read at attach.
fn t5_like_info() -> (peft_api::BackboneInfo, Vec<String>) {
    use peft_api::{SiteInfo, SiteKind};
    let (d, inner, ff, layers) = (16, 16, 32, 2);
    let mut sites = Vec::new();
    let mut weights = Vec::new();
    let mut norms = std::collections::BTreeMap::new();
    for stack in ["encoder", "decoder"] {
        let attns: &[(&str, &str, &str)] = if stack == "encoder" {
            &[("layer.0.SelfAttention", "self_attention", "attention")]
        } else {
            &[
                ("layer.0.SelfAttention", "self_attention", "attention"),
                (
                    "layer.1.EncDecAttention",
                    "cross_attention",
                    "cross_attention",
                ),
            ]
        };
        for l in 0..layers {
            let p = format!("{stack}.block.{l}");
            let mut site = |name: String, kind, role: &str, a, b| {
                sites.push(SiteInfo {
                    name,
                    kind,
                    stack: stack.into(),
                    layer: Some(l),
                    role: role.into(),
                    in_features: a,
                    out_features: b,
                })
            };
            for (i, (a, kv, sub)) in attns.iter().enumerate() {
                for m in ["q", "k", "v"] {
                    site(format!("{p}.{a}.{m}"), SiteKind::Projection, m, d, inner);
                    weights.push(format!("{p}.{a}.{m}.weight"));
                }
                site(format!("{p}.{a}.kv"), SiteKind::AttentionKv, kv, d, inner);
                site(format!("{p}.{a}.o"), SiteKind::Projection, "o", inner, d);
                site(format!("{p}.{sub}"), SiteKind::Sublayer, sub, d, d);
                weights.push(format!("{p}.layer.{i}.layer_norm.weight"));
                norms.insert(
                    format!("{p}.{sub}"),
                    vec![format!("{p}.layer.{i}.layer_norm.weight")],
                );
            }
            let f = attns.len();
            site(
                format!("{p}.layer.{f}.DenseReluDense.wi"),
                SiteKind::Projection,
                "wi",
                d,
                ff,
            );
            site(
                format!("{p}.layer.{f}.DenseReluDense.wo"),
                SiteKind::Projection,
                "wo",
                ff,
                d,
            );
            site(format!("{p}.ffn"), SiteKind::Sublayer, "ffn", d, d);
            weights.push(format!("{p}.layer.{f}.layer_norm.weight"));
            norms.insert(
                format!("{p}.ffn"),
                vec![format!("{p}.layer.{f}.layer_norm.weight")],
            );
        }
    }
    let info = peft_api::BackboneInfo {
        name: "t5-like".into(),
        architecture: "t5".into(),
        hidden_size: d,
        num_layers: layers,
        num_decoder_layers: layers,
        num_heads: 2,
        head_dim: 8,
        intermediate_size: ff,
        vocab_size: 100,
        sites,
        norms,
    };
    (info, weights)
}

/// The plugins attach by site kind, role and stack, not by BERT's names: on a T5-shaped
/// backbone LoRA takes HF peft's T5 default targets (q, v), prefixes go to encoder self,
/// decoder self and decoder cross attention, AdapterBias finds T5's layer norms.
#[test]
fn plugins_attach_to_encoder_decoder_sites() {
    use peft_host::{
        modules::{Composition, ModuleRequest},
        params::ParamStore,
    };
    let (info, weights) = t5_like_info();
    let registry = Registry::with_static_plugins().unwrap();
    let attach = |plugin: &str, config: Value| {
        let mut store = ParamStore::<B>::new(Default::default(), 0);
        for w in &weights {
            let shape: &[usize] = if w.ends_with("layer_norm.weight") {
                &[16]
            } else {
                &[16, 16]
            };
            store
                .create(w, "backbone", "backbone", shape, &peft_api::Init::Ones)
                .unwrap();
        }
        let params = std::cell::RefCell::new(store);
        let req = ModuleRequest {
            plugin: plugin.into(),
            name: plugin.into(),
            config,
        };
        let comp = Composition::attach(&registry, &[req], &info, &params)
            .unwrap_or_else(|e| panic!("{plugin}: {e}"));
        let n: usize = params
            .borrow()
            .iter()
            .filter(|p| p.owner == plugin)
            .map(|p| p.numel())
            .sum();
        (comp.modules.into_iter().next().unwrap().plan, n)
    };
    let sites = |plan: &peft_api::AttachPlan| -> Vec<String> {
        plan.attachments.iter().map(|a| a.site.clone()).collect()
    };
    // 2 encoder layers x (q, v) + 2 decoder layers x 2 attentions x (q, v)
    let (plan, n) = attach("lora", Value::Null);
    assert_eq!(plan.attachments.len(), 12, "{:?}", sites(&plan));
    assert!(sites(&plan)
        .iter()
        .all(|s| s.ends_with(".q") || s.ends_with(".v")));
    assert_eq!(n, 12 * 8 * (16 + 16));
    let (plan, n) = attach("prefix", Value::Null);
    assert_eq!(
        sites(&plan),
        [
            "encoder.block.0.layer.0.SelfAttention.kv",
            "encoder.block.1.layer.0.SelfAttention.kv",
            "decoder.block.0.layer.0.SelfAttention.kv",
            "decoder.block.0.layer.1.EncDecAttention.kv",
            "decoder.block.1.layer.0.SelfAttention.kv",
            "decoder.block.1.layer.1.EncDecAttention.kv",
        ]
    );
    assert_eq!(n, 6 * 2 * 10 * 16);
    let (plan, _) = attach("adapter-bias", json!({ "attention": true }));
    let unfreeze: Vec<&str> = plan
        .attachments
        .iter()
        .flat_map(|a| a.unfreeze.iter().map(String::as_str))
        .collect();
    assert!(unfreeze.contains(&"decoder.block.1.layer.2.layer_norm.weight"));
    assert!(unfreeze.contains(&"decoder.block.1.layer.1.layer_norm.weight"));
    assert!(unfreeze.contains(&"encoder.block.0.layer.1.layer_norm.weight"));
    // encoder: attention + ffn per layer; decoder: attention + cross + ffn
    assert_eq!(unfreeze.len(), 2 * 2 + 2 * 3);
    let (plan, _) = attach("parallel-adapter", json!({ "stack": "decoder" }));
    assert_eq!(sites(&plan), ["decoder.block.0.ffn", "decoder.block.1.ffn"]);
    let (plan, n) = attach("meta-adapters", Value::Null);
    // every attention, cross-attention and ffn sublayer: 2 * 2 + 2 * 3
    assert_eq!(plan.attachments.len(), 10);
    assert_eq!(n, 10 * 3 * serial(16, 8));
}

/// In training mode (dropout on) every method's pass runs and its gradients reach the
/// parameters that are live at initialisation.
#[test]
fn training_pass_reaches_each_methods_parameters() {
    let cases = [
        (
            json!({ "plugin": "lora", "config": { "dropout": 0.1 } }),
            "lora.encoder.layer.1.attention.self.value.lora_B",
            2,
        ),
        (
            json!({ "plugin": "parallel-adapter", "config": { "dropout": 0.1 } }),
            "parallel-adapter.encoder.layer.0.ffn.up.weight",
            2,
        ),
        (
            json!({ "plugin": "meta-adapters" }),
            "meta-adapters.encoder.layer.0.attention.meta_out.up.weight",
            2,
        ),
        (
            json!({ "plugin": "adapter-bias" }),
            "adapter-bias.encoder.layer.1.ffn.alpha.weight",
            2,
        ),
        (
            json!({ "plugin": "adapter-bias" }),
            "encoder.layer.1.output.LayerNorm.weight",
            1,
        ),
        (
            json!({ "plugin": "prefix" }),
            "prefix.encoder.layer.0.attention.self.kv.prefix_value",
            2,
        ),
        (
            json!({ "plugin": "prefix", "config": { "reparameterize": true, "reparam_hidden": 8 } }),
            "prefix.reparam.embedding",
            2,
        ),
    ];
    let batch = batch();
    for (m, param, rank) in cases {
        let model = build(tiny_bert_config(json!([m])));
        model
            .set_trainable(&["adapter".into(), "meta_adapter".into()])
            .unwrap();
        let graph = HostGraph::new(&model.params, true);
        let h = model.encode(&graph, &batch).unwrap();
        let grads = (h.clone() * h).sum().backward();
        let store = model.params.borrow();
        let g: Vec<f32> = if rank == 1 {
            store
                .tensor::<1>(param)
                .unwrap()
                .grad(&grads)
                .unwrap()
                .into_data()
                .convert::<f32>()
                .into_vec()
                .unwrap()
        } else {
            store
                .tensor::<2>(param)
                .unwrap()
                .grad(&grads)
                .unwrap()
                .into_data()
                .convert::<f32>()
                .into_vec()
                .unwrap()
        };
        assert!(
            g.iter().any(|x| *x != 0.0),
            "{m}: zero gradient for {param}"
        );
        assert!(g.iter().all(|x| x.is_finite()), "{m}: {param}");
    }
}
