//! all-MiniLM-L6-v2 (real weights) against the PyTorch/transformers fixture, to 1e-4.
use burn::tensor::{Int, Tensor, TensorData};
use peft_host::{
    backbone::{Hooks, NoModules, TextBatch},
    bridge::HostGraph,
    config::RunConfig,
    model::{mean_pool, Model},
};
use peft_tests::*;

const TOL: f64 = 1e-4;

fn model() -> Model<B> {
    require_minilm();
    let cfg: RunConfig =
        serde_json::from_value(serde_json::json!({"backbone": "all-MiniLM-L6-v2"})).unwrap();
    let registry = peft_registry::Registry::new();
    Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap()
}

fn to_vec<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

#[test]
fn sentences_match_transformers() {
    let fx = read_json(&fixture("minilm-parity.json"));
    let model = model();
    let dev = Default::default();
    for s in fx["sentences"].as_array().unwrap() {
        let text = s["text"].as_str().unwrap().to_string();
        let batch = model.tokenize(&[(text.clone(), None)], 512, &dev).unwrap();
        let ids: Vec<i64> = batch
            .input_ids
            .clone()
            .into_data()
            .convert::<i64>()
            .into_vec()
            .unwrap();
        let want: Vec<i64> = s["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(ids, want, "token ids of {text:?}");

        let params = &model.params;
        let graph = HostGraph::new(params, false);
        let hooks = Hooks::new(&graph, &NoModules);
        let all = model
            .backbone
            .as_bert()
            .unwrap()
            .encode_all(&hooks, &batch)
            .unwrap();
        // Per-layer slices: token 0, first 8 features, after the embeddings and each layer.
        for (l, want) in s["hidden_states_token0_first8"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let got = to_vec(all[l].clone().slice([0..1, 0..1, 0..8]));
            let d = max_abs_diff(&got, &floats(want));
            assert!(d < TOL, "{text:?} layer {l}: max abs diff {d}");
        }
        let last = all.last().unwrap().clone();
        let got = to_vec(last.clone().slice([0..1, 0..1, 0..8]));
        assert!(max_abs_diff(&got, &floats(&s["last_hidden_state_token0_first8"])) < TOL);
        let mean: f64 = to_vec(last.clone()).iter().map(|&x| x as f64).sum::<f64>()
            / (last.dims().iter().product::<usize>() as f64);
        assert!(
            (mean - s["last_hidden_state_mean"].as_f64().unwrap()).abs() < TOL,
            "mean of {text:?}"
        );
        let pooled = to_vec(mean_pool(last, &batch.attention_mask));
        let d = max_abs_diff(&pooled, &floats(&s["mean_pooled"]));
        assert!(d < TOL, "{text:?} mean pooled: max abs diff {d}");
    }
}

/// Runs the no-grad inference path (the fused CPU attention and GELU kernels, inner-backend
/// layer norm) on a padded batch.
#[test]
fn padded_batch_matches_unpadded() {
    let fx = read_json(&fixture("minilm-parity.json"));
    let model = model();
    let dev = Default::default();
    let rows = |k: &str| -> (Vec<i64>, usize, usize) {
        let a = fx["padded_batch"][k].as_array().unwrap();
        let t = a[0].as_array().unwrap().len();
        (
            a.iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()))
                .collect(),
            a.len(),
            t,
        )
    };
    let (ids, n, t) = rows("input_ids");
    let (mask, _, _) = rows("attention_mask");
    let mk = |v: Vec<i64>| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [n, t]), &dev);
    let batch = TextBatch {
        input_ids: mk(ids),
        attention_mask: mk(mask),
        token_type_ids: None,
    };
    let graph = HostGraph::inference(&model.params);
    let hooks = Hooks::new(&graph, &NoModules);
    let h = bert_last_hidden(&model, &hooks, &batch);
    let pooled = to_vec(mean_pool(h, &batch.attention_mask));
    for (i, s) in fx["sentences"].as_array().unwrap().iter().enumerate() {
        let want = floats(&s["mean_pooled"]);
        let d = max_abs_diff(&pooled[i * 384..(i + 1) * 384], &want);
        assert!(d < TOL, "row {i} of the padded batch: max abs diff {d}");
    }
}

/// Truncation is HF's `longest_first`: a long pair keeps its second segment (an option, a
/// hypothesis) and both `[SEP]`s, and is exactly `max_length` long.
#[test]
fn long_pairs_truncate_longest_first() {
    let model = model();
    let dev = Default::default();
    let long = "the quick brown fox jumps over the lazy dog ".repeat(20);
    let short = "a dog sleeps".to_string();
    let ids = |texts: &[(String, Option<String>)], max: usize| -> Vec<i64> {
        let b = model.tokenize(texts, max, &dev).unwrap();
        b.input_ids.into_data().convert::<i64>().into_vec().unwrap()
    };
    let pair = ids(&[(long.clone(), Some(short.clone()))], 32);
    assert_eq!(pair.len(), 32);
    // [CLS] first... [SEP] a dog sleeps [SEP]: the short segment survives whole.
    let tail = ids(&[(short.clone(), None)], 32);
    let sep = *tail.last().unwrap();
    assert_eq!(pair[0], tail[0], "[CLS] first");
    assert_eq!(
        &pair[32 - tail.len() + 1..],
        &tail[1..],
        "second segment kept whole"
    );
    assert_eq!(pair[32 - tail.len()], sep, "[SEP] between the segments");
    // A single long sentence keeps its final [SEP].
    let single = ids(&[(long, None)], 16);
    assert_eq!(single.len(), 16);
    assert_eq!(*single.last().unwrap(), sep);
    // Short inputs are untouched.
    assert_eq!(ids(&[(short, None)], 512), tail);
}

/// The no-grad embedding sum (one pass over the gathered rows) gives the tracked path's
/// values exactly (the same additions in the same order), with token types and without.
#[test]
fn inference_embeddings_equal_the_tracked_path() {
    let model = model();
    let dev = Default::default();
    let (n, t) = (3, 7);
    let ids: Vec<i64> = (0..n * t)
        .map(|i| 101 + (i as i64 * 977) % 20_000)
        .collect();
    let types: Vec<i64> = (0..n * t).map(|i| ((i / 4) % 2) as i64).collect();
    let mk = |v: Vec<i64>| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [n, t]), &dev);
    for token_type_ids in [Some(mk(types)), None] {
        let batch = TextBatch {
            input_ids: mk(ids.clone()),
            attention_mask: mk(vec![1; n * t]),
            token_type_ids,
        };
        let with_types = batch.token_type_ids.is_some();
        let embeddings = |graph: &HostGraph<'_, B>| {
            let hooks = Hooks::new(graph, &NoModules);
            let bert = model.backbone.as_bert().unwrap();
            to_vec(bert.encode_all(&hooks, &batch).unwrap()[0].clone())
        };
        let tracked = embeddings(&HostGraph::new(&model.params, false));
        let inference = embeddings(&HostGraph::inference(&model.params));
        let tracked: Vec<f64> = tracked.iter().map(|&x| f64::from(x)).collect();
        let d = max_abs_diff(&inference, &tracked);
        assert!(d < 1e-6, "token types {with_types}: max abs diff {d}");
    }
}
