//! T5 v1.0, T5 v1.1 and BART (random-init tiny models) against the transformers fixtures, to
//! 1e-4: encoder and decoder last hidden states, logits, greedy decoding; cached incremental
//! decoding against the full decoder pass; loading errors.
use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
};

use burn::tensor::{Int, Tensor, TensorData};
use peft_api::{ApiError, SiteKind};
use peft_host::{
    backbone::{
        arch::Architecture,
        bart::Bart,
        t5::{relative_position_bucket, Seq2Seq, T5},
        weights::Checkpoint,
        Backbone, Hooks, NoModules, SiteModules, TextBatch,
    },
    bridge::{
        value::{fp, ft},
        HostGraph, Value,
    },
    params::ParamStore,
};
use peft_tests::*;

const TOL: f64 = 1e-4;

fn to_vec<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

fn ints(v: &serde_json::Value) -> (Vec<i64>, usize, usize) {
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

fn int_tensor(v: &serde_json::Value) -> Tensor<B, 2, Int> {
    let (flat, n, t) = ints(v);
    Tensor::from_data(TensorData::new(flat, [n, t]), &Default::default())
}

/// All numbers of a nested JSON array, row-major.
fn flat(v: &serde_json::Value) -> Vec<f64> {
    match v {
        serde_json::Value::Array(a) => a.iter().flat_map(flat).collect(),
        x => vec![x.as_f64().unwrap()],
    }
}

struct Fixture {
    name: &'static str,
    expected: serde_json::Value,
    batch: TextBatch<B>,
    decoder_input_ids: Tensor<B, 2, Int>,
}

fn load_fixture(name: &'static str) -> Fixture {
    let expected = read_json(&fixture(name).join("expected.json"));
    let batch = TextBatch {
        input_ids: int_tensor(&expected["input_ids"]),
        attention_mask: int_tensor(&expected["attention_mask"]),
        token_type_ids: None,
    };
    let decoder_input_ids = int_tensor(&expected["decoder_input_ids"]);
    Fixture {
        name,
        expected,
        batch,
        decoder_input_ids,
    }
}

fn store() -> std::cell::RefCell<ParamStore<B>> {
    std::cell::RefCell::new(ParamStore::new(Default::default(), 0))
}

/// Compares a `[batch, time, ...]` tensor with the fixture, every position (HF's values at
/// padded encoder positions are computed like the others, so they are compared too).
fn check(fx: &Fixture, what: &str, got: Tensor<B, 3>) -> f64 {
    let want = flat(&fx.expected[what]);
    let got = to_vec(got);
    let d = max_abs_diff(&got, &want);
    println!("{} {what}: max abs diff {d:.3e}", fx.name);
    assert!(d < TOL, "{} {what}: max abs diff {d}", fx.name);
    d
}

fn parity<M: Seq2Seq<B>>(fx: &Fixture, model: &M, params: &std::cell::RefCell<ParamStore<B>>) {
    let graph = HostGraph::new(params, false);
    let hooks = Hooks::new(&graph, &NoModules);
    let enc = model.encode(&hooks, &fx.batch).unwrap();
    check(fx, "encoder_last_hidden_state", enc.clone());
    let dec = model
        .decode(
            &hooks,
            &enc,
            &fx.batch.attention_mask,
            &fx.decoder_input_ids,
            None,
        )
        .unwrap();
    check(fx, "decoder_last_hidden_state", dec.clone());
    let logits = model.lm_logits(&hooks, dec.clone()).unwrap();
    check(fx, "logits", logits.clone());
    let direct = model
        .logits(&hooks, &fx.batch, &fx.decoder_input_ids)
        .unwrap();
    assert_eq!(to_vec(direct), to_vec(logits), "{}: logits()", fx.name);

    // Incremental decoding with the cache, one position at a time, equals the full pass.
    let [b, t] = fx.decoder_input_ids.dims();
    let mut cache = model.new_cache();
    let mut steps = Vec::new();
    for i in 0..t {
        let ids = fx.decoder_input_ids.clone().slice([0..b, i..i + 1]);
        let h = model
            .decode(
                &hooks,
                &enc,
                &fx.batch.attention_mask,
                &ids,
                Some(&mut cache),
            )
            .unwrap();
        steps.push(h);
    }
    assert_eq!(cache.len, t);
    let inc = to_vec(Tensor::cat(steps, 1));
    let full: Vec<f64> = to_vec(dec.clone()).iter().map(|&x| x as f64).collect();
    let d = max_abs_diff(&inc, &full);
    println!(
        "{} incremental vs full decoder: max abs diff {d:.3e}",
        fx.name
    );
    assert!(d < 1e-5, "{}: cached decoding differs by {d}", fx.name);

    // A prompt of 2 positions through the cache, then the rest one by one.
    let mut cache = model.new_cache();
    let mut steps = vec![model
        .decode(
            &hooks,
            &enc,
            &fx.batch.attention_mask,
            &fx.decoder_input_ids.clone().slice([0..b, 0..2]),
            Some(&mut cache),
        )
        .unwrap()];
    for i in 2..t {
        let ids = fx.decoder_input_ids.clone().slice([0..b, i..i + 1]);
        steps.push(
            model
                .decode(
                    &hooks,
                    &enc,
                    &fx.batch.attention_mask,
                    &ids,
                    Some(&mut cache),
                )
                .unwrap(),
        );
    }
    let d = max_abs_diff(&to_vec(Tensor::cat(steps, 1)), &full);
    assert!(
        d < 1e-5,
        "{}: cached decoding from a prompt differs by {d}",
        fx.name
    );

    let generated = model.greedy_generate(&hooks, &fx.batch, 6).unwrap();
    let (want, n, len) = ints(&fx.expected["greedy_generate"]);
    let want: Vec<Vec<i64>> = want.chunks(len).map(|r| r.to_vec()).collect();
    assert_eq!(want.len(), n);
    println!("{} greedy: {generated:?}", fx.name);
    assert_eq!(generated, want, "{}: greedy decoding", fx.name);
}

#[test]
fn t5_v1_0_matches_transformers() {
    let fx = load_fixture("t5-v1_0-tiny");
    let params = store();
    let model = T5::load(&fixture(fx.name), &mut params.borrow_mut()).unwrap();
    assert!(model.config.tie_word_embeddings && model.config.scales_decoder_outputs());
    assert!(!model.config.is_gated());
    parity(&fx, &model, &params);
}

#[test]
fn t5_v1_1_matches_transformers() {
    let fx = load_fixture("t5-v1_1-tiny");
    let params = store();
    let model = T5::load(&fixture(fx.name), &mut params.borrow_mut()).unwrap();
    assert!(model.config.is_gated());
    assert_eq!(model.config.activation(), "gelu_new");
    assert!(!model.config.scales_decoder_outputs());
    parity(&fx, &model, &params);
}

#[test]
fn bart_matches_transformers() {
    let fx = load_fixture("bart-tiny");
    let params = store();
    let model = Bart::load(&fixture(fx.name), &mut params.borrow_mut()).unwrap();
    parity(&fx, &model, &params);
}

/// Greedy decoding and the full pass agree beyond the fixture's 6 tokens (the cache's
/// position bookkeeping over longer sequences), for all three models.
#[test]
fn greedy_tokens_are_argmax_of_full_pass() {
    fn run<M: Seq2Seq<B>>(fx: &Fixture, model: &M, params: &std::cell::RefCell<ParamStore<B>>) {
        let graph = HostGraph::new(params, false);
        let hooks = Hooks::new(&graph, &NoModules);
        let gen = model.greedy_generate(&hooks, &fx.batch, 12).unwrap();
        let [b, _] = fx.batch.input_ids.dims();
        let t = gen[0].len();
        let ids: Vec<i64> = gen.iter().flatten().copied().collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, t]), &Default::default());
        let logits = model
            .logits(&hooks, &fx.batch, &ids.slice([0..b, 0..t - 1]))
            .unwrap();
        let v = logits.dims()[2];
        let logits = to_vec(logits);
        let eos = model.eos_token_id();
        for (i, row) in gen.iter().enumerate() {
            for s in 0..t - 1 {
                let l = &logits[(i * (t - 1) + s) * v..(i * (t - 1) + s + 1) * v];
                let best = (0..v)
                    .filter(|&j| Some(j as i64) != eos)
                    .max_by(|&a, &c| l[a].total_cmp(&l[c]).then(c.cmp(&a)))
                    .unwrap();
                assert_eq!(row[s + 1], best as i64, "{} row {i} step {s}", fx.name);
            }
        }
    }
    let fx = load_fixture("t5-v1_1-tiny");
    let params = store();
    let model = T5::load(&fixture(fx.name), &mut params.borrow_mut()).unwrap();
    run(&fx, &model, &params);
    let fx = load_fixture("bart-tiny");
    let params = store();
    let model = Bart::load(&fixture(fx.name), &mut params.borrow_mut()).unwrap();
    run(&fx, &model, &params);
}

#[test]
fn relative_position_buckets_match_hf() {
    // Values of transformers' T5Attention._relative_position_bucket (32 buckets, distance 128),
    // from a Python port of it with float32 rounding; the fixtures' short sequences only reach
    // the exact buckets, this covers the logarithmic ones.
    let bi: Vec<usize> = [
        -200, -128, -64, -20, -9, -8, -7, -1, 0, 1, 7, 8, 9, 20, 64, 128, 200,
    ]
    .iter()
    .map(|&r| relative_position_bucket(r, true, 32, 128))
    .collect();
    assert_eq!(
        bi,
        [15, 15, 14, 10, 8, 8, 7, 1, 0, 17, 23, 24, 24, 26, 30, 31, 31]
    );
    let uni: Vec<usize> = [-200, -128, -20, -16, -15, -1, 0, 1, 5]
        .iter()
        .map(|&r| relative_position_bucket(r, false, 32, 128))
        .collect();
    assert_eq!(uni, [31, 31, 17, 16, 15, 1, 0, 0, 0]);
}

#[test]
fn sites_cover_both_stacks() {
    let fx = fixture("t5-v1_1-tiny");
    let params = store();
    let t5 = T5::load(&fx, &mut params.borrow_mut()).unwrap();
    let info = Backbone::<B>::info(&t5);
    let names: Vec<&str> = info.sites.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "encoder.block.0.layer.0.SelfAttention.q",
        "encoder.block.1.layer.0.SelfAttention.kv",
        "encoder.block.0.layer.1.DenseReluDense.wi_0",
        "encoder.block.0.attention",
        "encoder.block.0.ffn",
        "encoder.block.1.output",
        "decoder.block.0.layer.0.SelfAttention.v",
        "decoder.block.0.layer.1.EncDecAttention.q",
        "decoder.block.1.layer.1.EncDecAttention.kv",
        "decoder.block.1.layer.2.DenseReluDense.wo",
        "decoder.block.0.attention",
        "decoder.block.0.cross_attention",
        "decoder.block.0.ffn",
        "decoder.block.1.output",
    ] {
        assert!(names.contains(&want), "missing site {want}");
    }
    assert_eq!(info.architecture, "t5");
    assert_eq!(info.num_decoder_layers, 2);
    let params = store();
    let bart = Bart::load(&fixture("bart-tiny"), &mut params.borrow_mut()).unwrap();
    let info = Backbone::<B>::info(&bart);
    let names: Vec<&str> = info.sites.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "encoder.layers.0.self_attn.q_proj",
        "encoder.layers.0.self_attn.kv",
        "encoder.layers.1.fc1",
        "encoder.layers.0.attention",
        "decoder.layers.1.encoder_attn.v_proj",
        "decoder.layers.1.encoder_attn.kv",
        "decoder.layers.0.cross_attention",
        "decoder.layers.0.ffn",
        "decoder.layers.1.output",
    ] {
        assert!(names.contains(&want), "missing site {want}");
    }
    let stacks: Vec<&str> = info.sites.iter().map(|s| s.stack.as_str()).collect();
    assert!(stacks.contains(&"encoder") && stacks.contains(&"decoder"));
}

// ---- sites ----

/// Attached everywhere: records the sites called, passes values through, and optionally
/// prepends `prefix` fixed positions at key/value sites (prefix tuning).
struct Recorder {
    kinds: HashMap<String, SiteKind>,
    called: RefCell<BTreeSet<String>>,
    prefix: usize,
}

impl Recorder {
    fn new(info: &peft_api::BackboneInfo, prefix: usize) -> Self {
        Recorder {
            kinds: info
                .sites
                .iter()
                .map(|s| (s.name.clone(), s.kind))
                .collect(),
            called: Default::default(),
            prefix,
        }
    }
}

fn fixed(shape: [usize; 4], seed: f32) -> Tensor<B, 4> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (0.37 * i as f32 + seed).sin()).collect();
    Tensor::from_data(TensorData::new(v, shape), &Default::default())
}

impl SiteModules<B> for Recorder {
    fn is_attached(&self, _: &str) -> bool {
        true
    }
    fn call(
        &self,
        _: &HostGraph<'_, B>,
        site: &str,
        inputs: Vec<Value<B>>,
    ) -> Result<Vec<Value<B>>, ApiError> {
        self.called.borrow_mut().insert(site.to_string());
        match self.kinds.get(site) {
            None => Err(ApiError::invalid(format!("site `{site}` is not declared"))),
            Some(SiteKind::Projection | SiteKind::Sublayer) => Ok(vec![inputs[1].clone()]),
            Some(SiteKind::AttentionKv) if self.prefix > 0 => {
                let mut it = inputs.into_iter().map(|v| match v {
                    Value::Float(p) => ft::<B, 4>(p),
                    Value::Int(_) => panic!("int keys"),
                });
                let (k, v) = (it.next().unwrap(), it.next().unwrap());
                let [b, h, _, d] = k.dims();
                let seed = site.len() as f32;
                let pk = fixed([b, h, self.prefix, d], seed);
                let pv = fixed([b, h, self.prefix, d], seed + 1.0);
                Ok(vec![
                    Value::Float(fp(Tensor::cat(vec![pk, k], 2))),
                    Value::Float(fp(Tensor::cat(vec![pv, v], 2))),
                ])
            }
            Some(_) => Ok(inputs),
        }
    }
}

/// Every declared site is called by a forward pass plus greedy decoding, under its declared
/// name; identity modules change nothing; with prefix keys/values at every kv site, cached
/// decoding still equals the full pass.
fn sites_check<M: Seq2Seq<B>>(fx: &Fixture, model: &M, params: &std::cell::RefCell<ParamStore<B>>) {
    let info = Backbone::<B>::info(model).clone();
    let graph = HostGraph::new(params, false);
    let bare = Hooks::new(&graph, &NoModules);
    let want = to_vec(
        model
            .logits(&bare, &fx.batch, &fx.decoder_input_ids)
            .unwrap(),
    );

    let rec = Recorder::new(&info, 0);
    let hooks = Hooks::new(&graph, &rec);
    let got = to_vec(
        model
            .logits(&hooks, &fx.batch, &fx.decoder_input_ids)
            .unwrap(),
    );
    assert_eq!(
        got, want,
        "{}: identity modules changed the logits",
        fx.name
    );
    model.greedy_generate(&hooks, &fx.batch, 3).unwrap();
    let declared: BTreeSet<String> = info.sites.iter().map(|s| s.name.clone()).collect();
    assert_eq!(*rec.called.borrow(), declared, "{}: sites called", fx.name);

    let rec = Recorder::new(&info, 3);
    let hooks = Hooks::new(&graph, &rec);
    let enc = model.encode(&hooks, &fx.batch).unwrap();
    let mask = &fx.batch.attention_mask;
    let full = model
        .decode(&hooks, &enc, mask, &fx.decoder_input_ids, None)
        .unwrap();
    let [b, t] = fx.decoder_input_ids.dims();
    let mut cache = model.new_cache();
    let steps: Vec<_> = (0..t)
        .map(|i| {
            let ids = fx.decoder_input_ids.clone().slice([0..b, i..i + 1]);
            model
                .decode(&hooks, &enc, mask, &ids, Some(&mut cache))
                .unwrap()
        })
        .collect();
    let full: Vec<f64> = to_vec(full).iter().map(|&x| x as f64).collect();
    let d = max_abs_diff(&to_vec(Tensor::cat(steps, 1)), &full);
    assert!(
        d < 1e-5,
        "{}: cached decoding with prefixes differs by {d}",
        fx.name
    );
    let logits = to_vec(
        model
            .logits(&hooks, &fx.batch, &fx.decoder_input_ids)
            .unwrap(),
    );
    let w: Vec<f64> = want.iter().map(|&x| x as f64).collect();
    assert!(
        max_abs_diff(&logits, &w) > 1e-3,
        "{}: prefixes had no effect",
        fx.name
    );
    model.greedy_generate(&hooks, &fx.batch, 4).unwrap();
}

#[test]
fn every_site_is_called_and_prefixes_work_with_the_cache() {
    for name in ["t5-v1_0-tiny", "t5-v1_1-tiny"] {
        let fx = load_fixture(name);
        let params = store();
        let model = T5::load(&fixture(name), &mut params.borrow_mut()).unwrap();
        sites_check(&fx, &model, &params);
    }
    let fx = load_fixture("bart-tiny");
    let params = store();
    let model = Bart::load(&fixture(fx.name), &mut params.borrow_mut()).unwrap();
    sites_check(&fx, &model, &params);
}

// ---- loading errors ----

/// Writes a safetensors file (F32) of the given tensors.
fn write_safetensors(path: &Path, tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, (shape, values)) in tensors {
        let start = data.len();
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h);
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

/// A copy of a fixture's folder whose safetensors file `edit` changed.
fn edited_copy(
    name: &str,
    edit: impl FnOnce(&mut BTreeMap<String, (Vec<usize>, Vec<f32>)>),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture(name).join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let mut tensors = Checkpoint::read(&fixture(name).join("model.safetensors"))
        .unwrap()
        .tensors;
    edit(&mut tensors);
    write_safetensors(&dir.path().join("model.safetensors"), &tensors);
    dir
}

fn t5_error(dir: &Path) -> String {
    let params = store();
    let err = T5::load(dir, &mut params.borrow_mut())
        .err()
        .expect("loading should fail");
    format!("{err:#}")
}

#[test]
fn rewritten_checkpoint_loads() {
    let dir = edited_copy("t5-v1_0-tiny", |_| {});
    let params = store();
    T5::load(dir.path(), &mut params.borrow_mut()).unwrap();
}

/// An untied LM head (`tie_word_embeddings: false`, as google/t5-v1_1-* ship) is read from
/// `lm_head.weight`; here a copy of the shared embeddings, so the fixture's logits still hold.
#[test]
fn untied_lm_head_loads_from_lm_head_weight() {
    let dir = edited_copy("t5-v1_1-tiny", |t| {
        let shared = t["shared.weight"].clone();
        t.insert("lm_head.weight".into(), shared);
    });
    let cfg = dir.path().join("config.json");
    let mut c = read_json(&cfg);
    c["tie_word_embeddings"] = false.into();
    c.as_object_mut().unwrap().remove("scale_decoder_outputs");
    std::fs::write(&cfg, serde_json::to_string(&c).unwrap()).unwrap();
    let fx = load_fixture("t5-v1_1-tiny");
    let params = store();
    let model = T5::load(dir.path(), &mut params.borrow_mut()).unwrap();
    assert!(!model.config.scales_decoder_outputs());
    let graph = HostGraph::new(&params, false);
    let hooks = Hooks::new(&graph, &NoModules);
    let logits = model
        .logits(&hooks, &fx.batch, &fx.decoder_input_ids)
        .unwrap();
    check(&fx, "logits", logits);

    // Without the tensor, the error names it.
    let dir2 = edited_copy("t5-v1_1-tiny", |_| {});
    std::fs::write(
        dir2.path().join("config.json"),
        serde_json::to_string(&c).unwrap(),
    )
    .unwrap();
    let msg = t5_error(dir2.path());
    assert!(msg.contains("tensor `lm_head.weight` is missing"), "{msg}");
}

#[test]
fn missing_tensor_is_named() {
    let key = "decoder.block.1.layer.1.EncDecAttention.v.weight";
    let dir = edited_copy("t5-v1_0-tiny", |t| {
        t.remove(key);
    });
    let msg = t5_error(dir.path());
    assert!(msg.contains(&format!("tensor `{key}` is missing")), "{msg}");
    assert!(msg.contains("model.safetensors"), "{msg}");

    // BART: a missing tensor under the `model.` prefix is named by its key.
    let dir = edited_copy("bart-tiny", |t| {
        t.remove("model.encoder.layers.1.fc2.bias");
    });
    let params = store();
    let err = Bart::load(dir.path(), &mut params.borrow_mut())
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("tensor `encoder.layers.1.fc2.bias` is missing"),
        "{msg}"
    );
}

#[test]
fn missing_final_logits_bias_is_zero() {
    let dir = edited_copy("bart-tiny", |t| {
        t.remove("final_logits_bias");
    });
    let params = store();
    Bart::load(dir.path(), &mut params.borrow_mut()).unwrap();
    let bias = params.borrow().tensor::<2>("final_logits_bias").unwrap();
    assert_eq!(bias.dims(), [1, 256]);
    assert!(to_vec(bias).iter().all(|&x| x == 0.0));
}

#[test]
fn wrong_shape_is_reported() {
    let key = "encoder.block.0.layer.1.DenseReluDense.wi.weight";
    let dir = edited_copy("t5-v1_0-tiny", |t| {
        let e = t.get_mut(key).unwrap();
        e.0 = vec![64, 64];
        e.1.truncate(64 * 64);
    });
    let msg = t5_error(dir.path());
    assert!(
        msg.contains(&format!(
            "tensor `{key}` has shape [64, 64], expected [128, 64]"
        )),
        "{msg}"
    );
}

#[test]
fn truncated_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("t5-v1_1-tiny").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(fixture("t5-v1_1-tiny").join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let msg = t5_error(dir.path());
    assert!(
        msg.contains("not a valid safetensors file (corrupt or truncated?)"),
        "{msg}"
    );
    // A file cut inside its header too.
    std::fs::write(dir.path().join("model.safetensors"), &bytes[..100]).unwrap();
    let msg = t5_error(dir.path());
    assert!(msg.contains("corrupt or truncated"), "{msg}");
}

#[test]
fn missing_weights_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("bart-tiny").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let params = store();
    let err = Bart::load(dir.path(), &mut params.borrow_mut())
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("model.safetensors: cannot read"), "{msg}");
}
