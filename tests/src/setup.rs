//! Set-up shared by the integration tests: tensor read-outs, the last BERT hidden state and
//! parameter gradients, deterministic parameter values, training with default options and a
//! word-level tokenizer for tiny encoder-decoders.
use burn::tensor::{backend::Backend, Tensor, TensorData};
use peft_host::{
    backbone::{Hooks, SiteModules},
    bridge::{value::fp, HostGraph, Value},
    config::RunConfig,
    data::{Example, Task},
    heads::{Head, Output},
    model::Model,
    train::{TaskRun, TrainReport},
};

use crate::B;

/// A tensor's values as `f32`, flattened.
pub fn vals<BK: Backend, const D: usize>(t: Tensor<BK, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

/// The largest absolute difference between two equally long slices.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The last hidden state of a BERT backbone's encoder under `hooks`.
pub fn bert_last_hidden(
    model: &Model<B>,
    hooks: &Hooks<'_, '_, B>,
    batch: &peft_host::backbone::TextBatch<B>,
) -> Tensor<B, 3> {
    model
        .backbone
        .as_bert()
        .unwrap()
        .encode_all(hooks, batch)
        .unwrap()
        .pop()
        .unwrap()
}

/// The gradients of the named rank-1 or rank-2 parameters, flattened, in `names` order.
pub fn param_grads(
    model: &Model<B>,
    names: &[String],
    grads: &<B as burn::tensor::backend::AutodiffBackend>::Gradients,
) -> Vec<Vec<f32>> {
    let store = model.params.borrow();
    names
        .iter()
        .map(|n| match store.get(n).unwrap().shape.len() {
            1 => vals(store.tensor::<1>(n).unwrap().grad(grads).unwrap()),
            _ => vals(store.tensor::<2>(n).unwrap().grad(grads).unwrap()),
        })
        .collect()
}

/// The names of the parameters that train, in the store's order.
pub fn trainable_names(model: &Model<B>) -> Vec<String> {
    model
        .params
        .borrow()
        .trainable()
        .map(|p| p.name.clone())
        .collect()
}

/// The last hidden state of `model` (BERT) on `batch` with `modules` at its sites, and the
/// gradients of `names` under the probe loss `sum(h²) + sum(tanh h)` (dropout off: its masks
/// come from the backend's global generator, so two passes would differ).
pub fn bert_probe(
    model: &Model<B>,
    modules: &dyn SiteModules<B>,
    batch: &peft_host::backbone::TextBatch<B>,
    names: &[String],
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let graph = HostGraph::new(&model.params, false);
    let hooks = Hooks::new(&graph, modules);
    let h = bert_last_hidden(model, &hooks, batch);
    let loss = (h.clone() * h.clone()).sum() + h.clone().tanh().sum();
    let grads = loss.backward();
    (vals(h), param_grads(model, names, &grads))
}

/// A float tensor of the pass context (what a context encoder generated).
pub fn float_value(v: &Value<B>) -> burn::tensor::ops::FloatTensor<B> {
    match v {
        Value::Float(f) => f.clone(),
        Value::Int(_) => panic!("expected a float context tensor"),
    }
}

/// The mean loss `head` gives on `batch` (a text-to-text head answers with its loss).
pub fn text_to_text_loss(
    head: &Head,
    model: &Model<B>,
    graph: &HostGraph<'_, B>,
    task: &Task,
    batch: &[&Example],
    max_length: usize,
) -> Tensor<B, 1> {
    match head
        .forward(model, graph, task, batch, max_length, &Default::default())
        .unwrap()
    {
        Output::Loss(l) => l.mean(),
        _ => panic!("text-to-text answers with its loss"),
    }
}

/// Checks that every trainable parameter is in `group` and gets a finite, not all-zero
/// gradient; returns how many there are (so a test can pin the count).
pub fn assert_gradient_reaches_every_trainable(
    model: &Model<B>,
    group: &str,
    grads: &<B as burn::tensor::backend::AutodiffBackend>::Gradients,
) -> usize {
    let names = trainable_names(model);
    for p in model.params.borrow().trainable() {
        assert_eq!(p.group, group, "{}", p.name);
    }
    for (name, g) in names.iter().zip(param_grads(model, &names, grads)) {
        assert!(g.iter().any(|&x| x != 0.0), "no gradient reaches {name}");
        assert!(g.iter().all(|x| x.is_finite()), "{name}");
    }
    names.len()
}

/// Gives every parameter under `prefix` a deterministic non-zero value (up sides start at
/// zero, which would hide most gradients and make every adapter a no-op).
pub fn randomise(model: &Model<B>, prefix: &str) {
    let mut store = model.params.borrow_mut();
    let names: Vec<(String, Vec<usize>)> = store
        .iter()
        .filter(|p| p.name.starts_with(prefix))
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    for (k, (name, shape)) in names.into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (((i * 7919 + k * 104729) % 1000) as f32 / 1000.0 - 0.5) * 0.4)
            .collect();
        let t = Tensor::<B, 1>::from_data(TensorData::new(v, [n]), &Default::default());
        let value = match shape.as_slice() {
            [_] => fp(t),
            [a, b] => fp(t.reshape([*a, *b])),
            other => panic!("unexpected shape {other:?}"),
        };
        store.assign(&name, value).unwrap();
    }
}

/// `prime` on the default device with default options.
pub fn prime_default(
    cfg: &RunConfig,
    registry: &peft_registry::Registry,
    data: &std::path::Path,
    out: &std::path::Path,
) -> anyhow::Result<peft_host::run::priming::PrimeReport> {
    peft_host::run::priming::prime::<B>(
        cfg,
        registry,
        data,
        out,
        &Default::default(),
        &Default::default(),
    )
}

/// `train_tasks` on the default device with default options.
pub fn train_runs(model: &Model<B>, runs: &[TaskRun<'_>], cfg: &RunConfig) -> TrainReport {
    peft_host::train::train_tasks(model, runs, cfg, &Default::default(), &Default::default())
        .unwrap()
}

/// Builds `cfg`'s model with the built-in plugins and trains it on `task` with `cfg.task`'s
/// head; also returns the mean loss of the first and of the last `k` steps.
pub fn train_one_task(
    cfg: &RunConfig,
    task: &peft_host::data::Task,
    k: usize,
) -> (TrainReport, f64, f64) {
    let registry = peft_registry::Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(cfg, &registry, &Default::default(), 0).unwrap();
    let head = peft_host::heads::Head::resolve(&cfg.task, task, "head").unwrap();
    let r = train_runs(&model, &[TaskRun { task, head }], cfg);
    let mean = |s: &[(usize, f64)]| s.iter().map(|x| x.1).sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&r.losses[..k]), mean(&r.losses[r.losses.len() - k..]));
    (r, first, last)
}

/// A word-level `tokenizer.json` (lower-cased, whitespace and punctuation split) over the words
/// of `texts`, with the special tokens first and `template` around every sequence: what a tiny
/// encoder-decoder of 256 tokens can read.
pub fn word_tokenizer(
    dir: &std::path::Path,
    specials: &[&str],
    template: &[&str],
    texts: &[String],
) -> std::path::PathBuf {
    let mut vocab = serde_json::Map::new();
    for (i, s) in specials.iter().enumerate() {
        vocab.insert(s.to_string(), i.into());
    }
    for t in texts {
        for w in t
            .to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let n = vocab.len();
            vocab.entry(w.to_string()).or_insert(n.into());
        }
    }
    assert!(vocab.len() <= 256, "{} words", vocab.len());
    let piece = |p: &str| match p {
        "$A" => serde_json::json!({ "Sequence": { "id": "A", "type_id": 0 } }),
        s => serde_json::json!({ "SpecialToken": { "id": s, "type_id": 0 } }),
    };
    let special_tokens: serde_json::Map<String, serde_json::Value> = template
        .iter()
        .filter(|p| **p != "$A")
        .map(|s| {
            let id = specials.iter().position(|x| x == s).unwrap();
            (
                s.to_string(),
                serde_json::json!({ "id": s, "ids": [id], "tokens": [s] }),
            )
        })
        .collect();
    let added: Vec<_> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({ "id": i, "content": s, "single_word": false, "lstrip": false,
                                          "rstrip": false, "normalized": false, "special": true })
        })
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": { "type": "Lowercase" },
        "pre_tokenizer": { "type": "Whitespace" },
        "post_processor": { "type": "TemplateProcessing",
            "single": template.iter().map(|p| piece(p)).collect::<Vec<_>>(),
            "pair": template.iter().map(|p| piece(p)).collect::<Vec<_>>(),
            "special_tokens": special_tokens },
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": specials[specials.len() - 1] }
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, tok.to_string()).unwrap();
    path
}
