//! PHA (plugins/pha): parameter counts, gradients through the op API against the same model
//! written directly in burn, per-example generated adapters, retrieval and config errors.
use burn::tensor::{activation, Int, Tensor, TensorData};
use peft_host::{
    backbone::{Hooks, SiteModules},
    bridge::{
        value::{fp, ft},
        HostGraph, Value,
    },
    config::RunConfig,
    model::Model,
};
use peft_registry::Registry;
use peft_tests::*;
use pha::{Pha, PhaConfig};

/// Small PHA dimensions so that the test model stays tiny.
fn small() -> serde_json::Value {
    serde_json::json!({
        "num_tasks": 3, "z_dim": 8, "retriever_hidden": 12, "layer_embedding_dim": 6,
        "projector_dim": 10, "hyper_hidden": 14, "bottleneck": 4, "shared_bottleneck": 5
    })
}

/// A 4-layer tiny BERT without dropout, with PHA (split at 2 unless `pha` says otherwise).
fn model(pha: serde_json::Value) -> (RunConfig, Model<B>) {
    let mut cfg = tiny_bert_config(serde_json::json!([{ "plugin": "pha", "config": pha }]));
    cfg["backbone"]["config"]["num_hidden_layers"] = 4.into();
    cfg["backbone"]["config"]["hidden_dropout_prob"] = 0.0.into();
    cfg["backbone"]["config"]["attention_probs_dropout_prob"] = 0.0.into();
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let m = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    (cfg, m)
}

fn set_ids(graph: &HostGraph<'_, B>, ids: &[i64]) {
    let t = Tensor::<B, 1, Int>::from_data(
        TensorData::new(ids.to_vec(), [ids.len()]),
        &Default::default(),
    );
    graph
        .context
        .borrow_mut()
        .insert("task_ids".into(), Value::Int(t.into_primitive()));
}

#[test]
fn parameter_count_equals_the_formula() {
    for (split, pha) in [
        (2, small()),
        (1, {
            let mut c = small();
            c["split_layer"] = 1.into();
            c
        }),
    ] {
        let (_, m) = model(pha.clone());
        let counted: usize = m
            .params
            .borrow()
            .iter()
            .filter(|p| p.name.starts_with("pha."))
            .map(|p| p.numel())
            .sum();
        let c: PhaConfig = serde_json::from_value(pha).unwrap();
        assert_eq!(counted, Pha::parameter_count(&c, 32, split, 4 - split, 3));
        let plan = &m.modules.modules[0].plan;
        assert_eq!(
            plan.attachments.len(),
            4 + 1,
            "four FFN sites and the retriever"
        );
        assert!(plan
            .attachments
            .iter()
            .any(|a| a.site == format!("encoder.layer.{}.output", split - 1)));
    }
    // The defaults on MiniLM's shape (d 384, 6 layers, split 3), by hand: the hypernetwork's
    // two output layers dominate.
    let c = PhaConfig::default();
    let by_hand = 3 * (2 * 384 * 64 + 384 + 64)
        + (384 * 128 + 128 + 128 * 64 + 64)
        + 6 * 64
        + 3 * 64
        + (128 * 64 + 64)
        + (64 * 128 + 128 + 2 * (128 * 384 * 64 + 384 * 64));
    assert_eq!(Pha::parameter_count(&c, 384, 3, 3, 6), by_hand);
}

/// PHA written directly in burn: shared parallel adapters below the split, the retriever and
/// both losses at the split, generated adapters above it.
struct NativePha {
    ids: Vec<i64>,
    mask: Tensor<B, 2>,
    split: usize,
    selected: std::cell::RefCell<Option<Tensor<B, 2>>>,
}

fn lin2(x: Tensor<B, 2>, w: Tensor<B, 2>, b: Tensor<B, 1>) -> Tensor<B, 2> {
    x.matmul(w.transpose()) + b.unsqueeze::<2>()
}

fn l2norm(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let n = x.clone().powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-8);
    x / n
}

impl SiteModules<B> for NativePha {
    fn is_attached(&self, site: &str) -> bool {
        site.ends_with(".ffn") || site == format!("encoder.layer.{}.output", self.split - 1)
    }
    fn call(
        &self,
        g: &HostGraph<'_, B>,
        site: &str,
        inputs: Vec<Value<B>>,
    ) -> Result<Vec<Value<B>>, peft_api::ApiError> {
        let p1 = |n: &str| ft::<B, 1>(g.param_value(&format!("pha.{n}")).unwrap());
        let p2 = |n: &str| ft::<B, 2>(g.param_value(&format!("pha.{n}")).unwrap());
        let float = |v: &Value<B>| match v {
            Value::Float(f) => ft::<B, 3>(f.clone()),
            _ => panic!("float expected"),
        };
        let layer: usize = site.split('.').nth(2).unwrap().parse().unwrap();
        if site.ends_with(".output") {
            let h = float(&inputs[0]);
            let [n, _, d] = h.dims();
            let m = self.mask.clone().unsqueeze_dim::<3>(2);
            let pooled = ((h * m.clone()).sum_dim(1) / m.sum_dim(1)).reshape([n, d]);
            let z = lin2(
                activation::relu(lin2(
                    pooled,
                    p2("retriever.fc1.weight"),
                    p1("retriever.fc1.bias"),
                )),
                p2("retriever.fc2.weight"),
                p1("retriever.fc2.bias"),
            );
            let k = p2("prototypes");
            let idx = Tensor::<B, 1, Int>::from_data(
                TensorData::new(self.ids.clone(), [n]),
                &Default::default(),
            );
            *self.selected.borrow_mut() = Some(k.clone().select(0, idx.clone()));
            let tau = 0.1;
            let zn = l2norm(z);
            // InfoNCE with positives of the same task, the anchor itself left out.
            let mut diag = vec![0f32; n * n];
            let mut w = vec![0f32; n * n];
            let counts: Vec<usize> = (0..n)
                .map(|i| {
                    (0..n)
                        .filter(|&j| j != i && self.ids[j] == self.ids[i])
                        .count()
                })
                .collect();
            let anchors = counts.iter().filter(|&&c| c > 0).count();
            for i in 0..n {
                diag[i * n + i] = -1e9;
                for j in 0..n {
                    if j != i && self.ids[j] == self.ids[i] {
                        w[i * n + j] = 1.0 / (counts[i] * anchors) as f32;
                    }
                }
            }
            let t2 = |v: Vec<f32>| {
                Tensor::<B, 2>::from_data(TensorData::new(v, [n, n]), &Default::default())
            };
            let sim = zn.clone().matmul(zn.clone().transpose()) / tau + t2(diag);
            let l_ir = (activation::log_softmax(sim, 1) * t2(w)).sum().neg();
            let logits = zn.matmul(l2norm(k).transpose()) / tau;
            let l_pro = activation::log_softmax(logits, 1)
                .gather(1, idx.unsqueeze_dim::<2>(1))
                .neg()
                .mean();
            g.aux_losses.borrow_mut().push((0.1, fp(l_ir)));
            g.aux_losses.borrow_mut().push((0.1, fp(l_pro)));
            return Ok(inputs);
        }
        let (x, y) = (float(&inputs[0]), float(&inputs[1]));
        let [n, t, d] = x.dims();
        let out = if layer < self.split {
            let pre = format!("shared.{site}");
            let x2 = x.reshape([n * t, d]);
            let a = activation::relu(lin2(
                x2,
                p2(&format!("{pre}.down.weight")),
                p1(&format!("{pre}.down.bias")),
            ));
            y + lin2(
                a,
                p2(&format!("{pre}.up.weight")),
                p1(&format!("{pre}.up.bias")),
            )
            .reshape([n, t, d])
        } else {
            let row = layer - self.split;
            let e = p2("layer_embeddings").narrow(0, row, 1).repeat_dim(0, n);
            let k = self.selected.borrow().clone().unwrap();
            let mixed = lin2(
                Tensor::cat(vec![k, e], 1),
                p2("projector.weight"),
                p1("projector.bias"),
            );
            let hid = activation::relu(lin2(mixed, p2("hyper.fc.weight"), p1("hyper.fc.bias")));
            let b = 4;
            let down = lin2(hid.clone(), p2("hyper.down.weight"), p1("hyper.down.bias"))
                .reshape([n, d, b]);
            let up = lin2(hid, p2("hyper.up.weight"), p1("hyper.up.bias")).reshape([n, b, d]);
            y + activation::relu(x.matmul(down)).matmul(up)
        };
        Ok(vec![Value::Float(fp(out))])
    }
}

#[test]
fn gradients_through_the_op_api_match_native_burn() {
    let (_, m) = model(small());
    randomise(&m, "pha.");
    m.set_trainable(&[
        "adapter".into(),
        "retriever".into(),
        "prototype".into(),
        "hyper".into(),
    ])
    .unwrap();
    let texts: Vec<(String, Option<String>)> = [
        "gradients must agree",
        "to one part in a million",
        "a third sentence that is longer than the others",
        "and a fourth",
        "five",
    ]
    .iter()
    .map(|s| (s.to_string(), None))
    .collect();
    let batch = m.tokenize(&texts, 16, &Default::default()).unwrap();
    let ids = vec![0i64, 1, 0, 2, 1];
    let names = trainable_names(&m);
    assert_eq!(
        names.len(),
        2 * 4 + 4 + 1 + 1 + 2 + 6,
        "every PHA tensor trains"
    );
    let run = |modules: &dyn SiteModules<B>| -> (Vec<f32>, Vec<Vec<f32>>) {
        let graph = HostGraph::new(&m.params, true);
        set_ids(&graph, &ids);
        graph.context.borrow_mut().insert(
            "attention_mask".into(),
            Value::Int(batch.attention_mask.clone().into_primitive()),
        );
        let hooks = Hooks::new(&graph, modules);
        let h = bert_last_hidden(&m, &hooks, &batch);
        let mut loss = (h.clone() * h.clone()).sum() * 0.01 + h.clone().tanh().sum();
        let aux: Vec<_> = graph.aux_losses.borrow_mut().drain(..).collect();
        assert_eq!(aux.len(), 2, "L_IR and L_Pro");
        for (w, l) in aux {
            loss = loss + ft::<B, 1>(l) * w;
        }
        let grads = loss.backward();
        (vals(h), param_grads(&m, &names, &grads))
    };
    let (h_api, g_api) = run(&m.modules);
    let native = NativePha {
        ids: ids.clone(),
        mask: batch.attention_mask.clone().float(),
        split: 2,
        selected: Default::default(),
    };
    let (h_native, g_native) = run(&native);
    let dh = max_diff(&h_api, &h_native);
    assert!(dh < 1e-5, "outputs differ by {dh}");
    for ((n, a), b) in names.iter().zip(&g_api).zip(&g_native) {
        let scale = b.iter().fold(1.0f32, |s, x| s.max(x.abs()));
        let d = max_diff(a, b);
        assert!(
            d < 1e-4 * scale,
            "gradient of {n} differs by {d} (scale {scale})"
        );
        assert!(a.iter().any(|&x| x != 0.0), "gradient of {n} is zero");
    }
    // Prototypes of tasks in the batch get gradients; with ids {0, 1, 2} all three do.
    assert!(names.iter().any(|n| n == "pha.prototypes"));
}

/// One batch mixing tasks equals each example run alone with its own task's adapters.
#[test]
fn per_example_generated_adapters_equal_each_example_alone() {
    let (_, m) = model(small());
    randomise(&m, "pha.");
    let texts: Vec<(String, Option<String>)> = [
        "one short",
        "a rather longer sentence here",
        "three words only",
    ]
    .iter()
    .map(|s| (s.to_string(), None))
    .collect();
    let ids = [2i64, 0, 1];
    let pooled = |texts: &[(String, Option<String>)], ids: &[i64]| {
        let graph = HostGraph::inference(&m.params);
        set_ids(&graph, ids);
        let tb = m.tokenize(texts, 16, &Default::default()).unwrap();
        vals(m.pooled(&graph, &tb).unwrap())
    };
    let together = pooled(&texts, &ids);
    let d = 32;
    for i in 0..3 {
        let alone = pooled(&texts[i..i + 1], &ids[i..i + 1]);
        let diff = max_diff(&together[i * d..(i + 1) * d], &alone);
        assert!(diff < 1e-5, "example {i} differs by {diff}");
        // Another task's adapter gives another answer: the check above is not vacuous.
        let other = pooled(&texts[i..i + 1], &[(ids[i] + 1) % 3]);
        assert!(
            max_diff(&other, &alone) > 1e-3,
            "example {i}: task ids change nothing"
        );
    }
}

/// Without task ids each example uses its nearest prototype; `retrieve` picks one for all.
#[test]
fn retrieval_picks_the_nearest_prototype_and_is_used() {
    let (_, m) = model(small());
    randomise(&m, "pha.");
    let texts: Vec<(String, Option<String>)> = ["a few shots", "of a new task"]
        .iter()
        .map(|s| (s.to_string(), None))
        .collect();
    let tb = m.tokenize(&texts, 16, &Default::default()).unwrap();
    let graph = HostGraph::inference(&m.params);
    let plain = vals(m.pooled(&graph, &tb).unwrap());
    let answer = m.modules.modules[0]
        .call(&graph, "retrieve", "{}")
        .unwrap()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let cos = floats(&answer["cosines"]);
    assert_eq!(cos.len(), 3);
    let picked = answer["picked"].as_u64().unwrap() as usize;
    assert!(cos.iter().all(|&c| c <= cos[picked]));
    assert_eq!(answer["examples"], 2);
    // The same pass with every example on the picked prototype.
    let with_retrieved = {
        let graph = HostGraph::inference(&m.params);
        vals(m.pooled(&graph, &tb).unwrap())
    };
    let explicit = {
        let graph = HostGraph::inference(&m.params);
        set_ids(&graph, &[picked as i64; 2]);
        vals(m.pooled(&graph, &tb).unwrap())
    };
    assert!(max_diff(&with_retrieved, &explicit) < 1e-6);
    let _ = plain;
    let bad = m.modules.modules[0].call(&graph, "use_prototype", r#"{"index": 7}"#);
    assert!(bad.unwrap_err().to_string().contains("out of range"));
}

#[test]
fn bad_settings_are_named() {
    let registry = Registry::with_static_plugins().unwrap();
    let build = |pha: serde_json::Value| {
        let cfg: RunConfig = serde_json::from_value(tiny_bert_config(
            serde_json::json!([{ "plugin": "pha", "config": pha }]),
        ))
        .unwrap();
        Model::<B>::build(&cfg, &registry, &Default::default(), 0)
            .err()
            .map(|e| e.to_string())
    };
    let e = build(serde_json::json!({ "num_tasks": 2, "split_layer": 2 })).unwrap();
    assert!(e.contains("/split_layer must be in 1..2"), "{e}");
    let e = build(serde_json::json!({})).unwrap();
    assert!(e.contains("/num_tasks is not set"), "{e}");
    let e = build(serde_json::json!({ "num_tasks": 2, "temperature": 0.0 })).unwrap();
    assert!(e.contains("/temperature"), "{e}");
    // A task id beyond the prototypes.
    let (_, m) = model(small());
    let graph = HostGraph::inference(&m.params);
    set_ids(&graph, &[5]);
    let tb = m
        .tokenize(&[("x".into(), None)], 8, &Default::default())
        .unwrap();
    let e = m.pooled(&graph, &tb).unwrap_err().to_string();
    assert!(e.contains("task id 5 out of range"), "{e}");
}

/// Train-step cost at batch 32 x 128 on MiniLM: forward, backward and AdamW, every trainable
/// group of the method, six tasks mixed in the batch for PHA. Run one method per process to
/// read its peak memory (`/usr/bin/time -v`):
/// `PHA_BENCH=pha cargo test --release -p peft-tests --test pha step_cost -- --ignored --nocapture`
/// (and `PHA_BENCH=houlsby`).
#[test]
#[ignore = "measurement on the real MiniLM weights; run by hand"]
fn step_cost_at_32x128() {
    require_minilm();
    let method = std::env::var("PHA_BENCH").unwrap_or_else(|_| "pha".into());
    let (module, groups) = match method.as_str() {
        "pha" => (
            serde_json::json!({ "plugin": "pha", "config": { "num_tasks": 6 } }),
            vec!["adapter", "retriever", "prototype", "hyper", "head"],
        ),
        other => (
            serde_json::json!({ "plugin": other }),
            vec!["adapter", "head"],
        ),
    };
    let cfg: RunConfig = serde_json::from_value(serde_json::json!({
        "backbone": "all-MiniLM-L6-v2", "modules": [module]
    }))
    .unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let dev = Default::default();
    let m = Model::<B>::build(&cfg, &registry, &dev, 2).unwrap();
    let groups: Vec<String> = groups.into_iter().map(String::from).collect();
    m.set_trainable(&groups).unwrap();
    let (n, t) = (32, 128);
    let ids: Vec<i64> = (0..n * t)
        .map(|i| 1000 + (i as i64 * 7919) % 29000)
        .collect();
    let mk = |v: Vec<i64>| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [n, t]), &dev);
    let tb = peft_host::backbone::TextBatch {
        input_ids: mk(ids),
        attention_mask: mk(vec![1; n * t]),
        token_type_ids: None,
    };
    let task_ids: Vec<i64> = (0..n as i64).map(|i| i % 6).collect();
    let mut opt = peft_host::train::optim::AdamW::<B>::new(1e-4, 0.0);
    let mut times = Vec::new();
    for run in 0..6 {
        let start = std::time::Instant::now();
        let graph = HostGraph::new(&m.params, true);
        set_ids(&graph, &task_ids);
        let logits = m.logits(&graph, &tb).unwrap();
        let mut loss = activation::log_softmax(logits, 1).mean().neg();
        for (w, l) in graph.aux_losses.borrow_mut().drain(..) {
            loss = loss + ft::<B, 1>(l) * w;
        }
        let grads = loss.backward();
        drop(graph);
        let mut store = m.params.borrow_mut();
        for p in store.trainable_mut() {
            let g = match p.shape.len() {
                1 => ft::<B, 1>(p.value.clone())
                    .grad(&grads)
                    .map(|g| g.into_primitive().tensor()),
                _ => ft::<B, 2>(p.value.clone())
                    .grad(&grads)
                    .map(|g| g.into_primitive().tensor()),
            };
            if let Some(g) = g {
                opt.step(p, g).unwrap();
            }
        }
        if run > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let trainable: usize = m.params.borrow().trainable().map(|p| p.numel()).sum();
    println!(
        "{method}: train step at {n} x {t}: median {:.3} s over {} steps, {trainable} trainable",
        times[times.len() / 2],
        times.len()
    );
}
