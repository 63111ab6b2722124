//! T5's and BART's attention on the blocked CPU kernel (relative position bias, causal and
//! cross attention, prefixes, the decoding cache) against burn's generic ops
//! (`nn::generic_ops`), on the tiny fixtures with sequences longer than one kernel block:
//! the teacher-forced logits and every trainable parameter's gradient (prefix and LoRA at every
//! attention layer of both stacks), the no-grad pass, and greedy decoding through the cache.
//! Parity with transformers itself is `parity_seq2seq.rs` (which runs on the kernel path).
use burn::tensor::{Int, Tensor, TensorData};
use peft_host::{
    backbone::TextBatch,
    bridge::{value::ft, HostGraph},
    config::RunConfig,
    model::Model,
};
use peft_registry::Registry;
use peft_tests::*;
use serde_json::json;

/// Source and target lengths: past the kernel's 128-query and 256-key blocks on T5 (relative
/// positions, any length); BART's tiny fixture has 64 learned positions (the kernel's blocks
/// are covered by `nn::attention`'s own tests).
fn lengths(name: &str) -> (usize, usize) {
    if name.starts_with("bart") {
        (60, 50)
    } else {
        (270, 140)
    }
}

fn model(name: &str) -> Model<B> {
    with_modules(
        name,
        json!([
            { "name": "pre", "plugin": "prefix", "config": { "prefix_length": 3, "init_std": 0.5 } },
            { "name": "lo", "plugin": "lora", "config": { "rank": 2, "b_init_std": 0.05 } }
        ]),
    )
}

fn with_modules(name: &str, modules: serde_json::Value) -> Model<B> {
    let cfg: RunConfig = serde_json::from_value(json!({
        "backbone": { "name": name, "path": fixture(name) },
        "modules": modules
    }))
    .unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap()
}

fn ids(b: usize, t: usize, vocab: usize, mul: usize) -> Vec<i64> {
    (0..b * t)
        .map(|k| 3 + ((k * mul) % (vocab - 3)) as i64)
        .collect()
}

/// Two rows, the second padded after two thirds of the source.
fn batch(vocab: usize, (src, tgt): (usize, usize)) -> (TextBatch<B>, Tensor<B, 2, Int>) {
    let dev = Default::default();
    let mk =
        |v: Vec<i64>, t: usize| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [2, t]), &dev);
    let mask: Vec<i64> = (0..2 * src)
        .map(|k| i64::from(k < src || k - src < 2 * src / 3))
        .collect();
    let tb = TextBatch {
        input_ids: mk(ids(2, src, vocab, 7919), src),
        attention_mask: mk(mask, src),
        token_type_ids: None,
    };
    (tb, mk(ids(2, tgt, vocab, 104_729), tgt))
}

fn vals<K: burn::tensor::backend::Backend, const D: usize>(t: Tensor<K, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

fn check(name: &str, what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{name} {what}: lengths");
    let big = b.iter().fold(1f32, |m, x| m.max(x.abs()));
    let d = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    println!("{name} {what}: max abs diff {d:.2e} (largest {big:.2})");
    assert!(
        d < 2e-5 * big,
        "{name} {what}: kernel and generic path differ by {d}"
    );
}

#[test]
fn t5_and_bart_attention_on_the_kernel_equal_burns_ops() {
    for name in ["t5-v1_0-tiny", "t5-v1_1-tiny", "bart-tiny"] {
        let model = model(name);
        model.set_trainable(&["adapter".into()]).unwrap();
        let vocab = model.info().vocab_size;
        let (tb, dec) = batch(vocab, lengths(name));
        let trainable: Vec<(String, usize)> = model
            .params
            .borrow()
            .trainable()
            .map(|p| (p.name.clone(), p.shape.len()))
            .collect();
        assert!(trainable.len() >= 8, "{name}: trainable {trainable:?}");
        let run = || {
            let graph = HostGraph::new(&model.params, false);
            let logits: Tensor<B, 3> = model.seq2seq_logits(&graph, &tb, &dec).unwrap();
            let w = (logits.clone().detach() * 0.3).sin().detach();
            let grads = (logits.clone() * w).sum().backward();
            let mut all = vec![vals(logits)];
            for (n, rank) in &trainable {
                let v = graph.param_value(n).unwrap();
                let g = match rank {
                    2 => vals(ft::<B, 2>(v).grad(&grads).unwrap()),
                    3 => vals(ft::<B, 3>(v).grad(&grads).unwrap()),
                    4 => vals(ft::<B, 4>(v).grad(&grads).unwrap()),
                    r => panic!("{n}: rank {r}"),
                };
                all.push(g);
            }
            all
        };
        let fast = run();
        let generic = peft_host::nn::generic_ops(run);
        check(name, "logits", &fast[0], &generic[0]);
        for (i, (n, _)) in trainable.iter().enumerate() {
            check(name, &format!("d {n}"), &fast[i + 1], &generic[i + 1]);
            assert!(
                fast[i + 1].iter().any(|g| g.abs() > 0.0),
                "{name}: no gradient reached {n}"
            );
        }
        // The no-grad kernel gives the tracked pass's logits.
        let infer = || {
            vals(
                model
                    .seq2seq_logits(&HostGraph::inference(&model.params), &tb, &dec)
                    .unwrap(),
            )
        };
        check(name, "no-grad logits", &infer(), &fast[0]);
        check(
            name,
            "no-grad generic",
            &peft_host::nn::generic_ops(infer),
            &fast[0],
        );
        // Greedy decoding through the cache (one query per step, prefixed keys) picks the
        // same tokens on both paths.
        let gen = || {
            model
                .generate(&HostGraph::inference(&model.params), &tb, 6)
                .unwrap()
        };
        assert_eq!(
            gen(),
            peft_host::nn::generic_ops(gen),
            "{name}: greedy tokens"
        );
    }
}

/// Without a key/value site the no-grad kernel reads the keys and values where the
/// projections wrote them (the head split read as `[b, s, h]`, no copy per decoding step):
/// the same logits as burn's ops and as the tracked pass, the same greedy tokens.
#[test]
fn bare_encoder_decoders_read_keys_in_place_and_agree() {
    for name in ["t5-v1_0-tiny", "t5-v1_1-tiny", "bart-tiny"] {
        let model = with_modules(name, json!([]));
        let (tb, dec) = batch(model.info().vocab_size, lengths(name));
        let infer = || {
            vals(
                model
                    .seq2seq_logits(&HostGraph::inference(&model.params), &tb, &dec)
                    .unwrap(),
            )
        };
        let tracked = vals(
            model
                .seq2seq_logits(&HostGraph::new(&model.params, false), &tb, &dec)
                .unwrap(),
        );
        let fast = infer();
        check(
            name,
            "bare no-grad vs generic",
            &fast,
            &peft_host::nn::generic_ops(infer),
        );
        check(name, "bare no-grad vs tracked", &fast, &tracked);
        let gen = || {
            model
                .generate(&HostGraph::inference(&model.params), &tb, 8)
                .unwrap()
        };
        assert_eq!(
            gen(),
            peft_host::nn::generic_ops(gen),
            "{name}: greedy tokens"
        );
    }
}
