//! `init_from`: a run's modules and heads started from a saved adapter folder — every tensor
//! whose name is a parameter of the run, shapes checked; unused ones reported; a folder of
//! which nothing fits, or one made on another backbone, refused.
use peft_host::{config::RunConfig, heads::Head, model::Model, serve};
use peft_registry::Registry;
use peft_tests::*;
use serde_json::json;

fn build(modules: serde_json::Value) -> (RunConfig, Model<B>) {
    let cfg: RunConfig = serde_json::from_value(tiny_bert_config(modules)).unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    Head::OptionScoring
        .create(&mut model.params.borrow_mut(), 32)
        .unwrap();
    (cfg, model)
}

/// Every module and head parameter set to distinct values (LoRA's B and adapters' up start at 0).
fn fill(model: &Model<B>, salt: usize) {
    let mut store = model.params.borrow_mut();
    let names: Vec<(String, Vec<usize>)> = store
        .iter()
        .filter(|p| p.owner != "backbone")
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    for (k, (name, shape)) in names.into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let v = (0..n)
            .map(|i| ((i * 7919 + k * 104729 + salt) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let prim = peft_host::params::from_values::<B>(&shape, v, &Default::default()).unwrap();
        store.assign(&name, prim).unwrap();
    }
}

fn values(model: &Model<B>) -> Vec<(String, Vec<f32>)> {
    let store = model.params.borrow();
    store
        .iter()
        .filter(|p| p.owner != "backbone")
        .map(|p| {
            let v = peft_host::run::priming::param_values(model, &p.name).unwrap();
            (p.name.clone(), v)
        })
        .collect()
}

fn task() -> peft_host::data::Task {
    peft_host::data::Task {
        name: "toy".into(),
        kind: peft_host::data::TaskKind::Classification,
        labels: vec!["no".into(), "yes".into()],
        train: vec![],
        eval: vec![],
        eval_split: "dev".into(),
        metric: "accuracy".into(),
    }
}

#[test]
fn init_from_loads_every_matching_tensor_and_reports_the_rest() {
    let houlsby = json!([{ "plugin": "houlsby", "config": { "bottleneck": 4 } }]);
    let both = json!([{ "plugin": "houlsby", "config": { "bottleneck": 4 } },
                      { "plugin": "lora", "config": { "rank": 2 } }]);
    let (cfg, trained) = build(both);
    fill(&trained, 1);
    let dir = tempfile::tempdir().unwrap();
    let t = task();
    serve::folder::save(&trained, &cfg, &[(&t, &Head::OptionScoring)], dir.path()).unwrap();

    // A run with the same houlsby instance and the option head: those load, lora is unused.
    let (cfg2, fresh) = build(houlsby);
    let before = values(&fresh);
    let r = serve::init::init_from(&fresh, &cfg2, dir.path()).unwrap();
    let after = values(&fresh);
    let want: std::collections::BTreeMap<_, _> = values(&trained).into_iter().collect();
    assert_eq!(
        r.tensors,
        after.len(),
        "every parameter of the run came from the folder"
    );
    for ((name, a), (_, b)) in after.iter().zip(&before) {
        assert_eq!(a, &want[name], "{name} not loaded");
        assert_ne!(a, b, "{name} did not change");
    }
    assert!(
        !r.unused.is_empty() && r.unused.iter().all(|n| n.starts_with("lora.")),
        "{:?}",
        r.unused
    );

    // Nothing fits: a prefix run from a folder of houlsby tensors without a head.
    let (cfg3, other) = build(json!([{ "plugin": "prefix", "config": { "prefix_length": 2 } }]));
    let (cfg4, no_head) = {
        let cfg: RunConfig = serde_json::from_value(tiny_bert_config(
            json!([{ "plugin": "houlsby", "config": { "bottleneck": 4 } }]),
        ))
        .unwrap();
        let m = Model::<B>::build(
            &cfg,
            &Registry::with_static_plugins().unwrap(),
            &Default::default(),
            0,
        )
        .unwrap();
        (cfg, m)
    };
    let bare = tempfile::tempdir().unwrap();
    serve::folder::save(&no_head, &cfg4, &[], bare.path()).unwrap();
    let err = format!(
        "{:#}",
        serve::init::init_from(&other, &cfg3, bare.path()).unwrap_err()
    );
    assert!(
        err.contains("no tensor of the folder is a parameter of this run"),
        "{err}"
    );

    // A shape that differs: houlsby with another bottleneck.
    let (cfg5, wide) = build(json!([{ "plugin": "houlsby", "config": { "bottleneck": 8 } }]));
    let err = format!(
        "{:#}",
        serve::init::init_from(&wide, &cfg5, dir.path()).unwrap_err()
    );
    assert!(
        err.contains("has shape") && err.contains("houlsby"),
        "{err}"
    );

    // Another backbone (other hidden size).
    let mut big = tiny_bert_config(json!([{ "plugin": "houlsby", "config": { "bottleneck": 4 } }]));
    big["backbone"]["config"]["hidden_size"] = 64.into();
    let cfg6: RunConfig = serde_json::from_value(big).unwrap();
    let m6 = Model::<B>::build(
        &cfg6,
        &Registry::with_static_plugins().unwrap(),
        &Default::default(),
        0,
    )
    .unwrap();
    let err = format!(
        "{:#}",
        serve::init::init_from(&m6, &cfg6, dir.path()).unwrap_err()
    );
    assert!(
        err.contains("init_from a folder trained on backbone"),
        "{err}"
    );
}
