//! Plugins built as shared libraries and loaded at run time; refusals of incompatible ones.
use burn::tensor::Tensor;
use peft_host::{backbone::TextBatch, bridge::HostGraph, config::RunConfig, model::Model};
use peft_registry::{Origin, Registry, RegistryError};
use peft_tests::*;

fn tiny(modules: serde_json::Value) -> RunConfig {
    serde_json::from_value(tiny_bert_config(modules)).unwrap()
}

fn batch(model: &Model<B>) -> TextBatch<B> {
    let texts = vec![
        ("a plugin loaded at run time".to_string(), None),
        ("another, longer sentence to pad against".to_string(), None),
    ];
    model.tokenize(&texts, 32, &Default::default()).unwrap()
}

/// Output and gradient of the adapter's first weight, for a model built from `registry`.
fn forward_backward(registry: &Registry, cfg: &RunConfig) -> (Vec<f32>, Vec<f32>) {
    let model = Model::<B>::build(cfg, registry, &Default::default(), 0).unwrap();
    model.set_trainable(&["adapter".into()]).unwrap();
    let graph = HostGraph::new(&model.params, false);
    let b = batch(&model);
    let h = model.encode(&graph, &b).unwrap();
    let loss = h.clone().powf_scalar(2.0).sum();
    let grads = loss.backward();
    let w: Tensor<B, 2> = model
        .params
        .borrow()
        .tensor("houlsby.encoder.layer.0.ffn.up.weight")
        .unwrap();
    let g = w.grad(&grads).expect("adapter weight has a gradient");
    (
        h.into_data().convert::<f32>().into_vec().unwrap(),
        g.into_data().convert::<f32>().into_vec().unwrap(),
    )
}

#[test]
fn cdylib_loaded_from_a_folder_computes_like_the_built_in_plugin() {
    let dir = built_houlsby_dir();
    let mut dynamic = Registry::new();
    let errors = dynamic.load_dir(dir.path());
    assert!(errors.is_empty(), "{errors:?}");
    let e = dynamic.get("houlsby").unwrap();
    assert!(
        matches!(&e.origin, Origin::Dynamic { path } if path.starts_with(dir.path())),
        "{:?}",
        e.origin
    );
    assert_eq!(e.api_version, peft_api::API_VERSION);

    let cfg = tiny(serde_json::json!([{ "plugin": "houlsby", "config": { "up_init_std": 0.05 } }]));
    let static_ = Registry::with_static_plugins().unwrap();
    let (h_dyn, g_dyn) = forward_backward(&dynamic, &cfg);
    let (h_static, g_static) = forward_backward(&static_, &cfg);
    assert_eq!(
        h_dyn, h_static,
        "hidden states differ between the dynamic and the static plugin"
    );
    assert_eq!(
        g_dyn, g_static,
        "gradients differ between the dynamic and the static plugin"
    );
    assert!(g_dyn.iter().any(|&x| x != 0.0));
}

#[test]
fn duplicate_names_are_refused_naming_both_origins() {
    let dir = built_houlsby_dir();
    let mut r = Registry::with_static_plugins().unwrap();
    let errors = r.load_dir(dir.path());
    assert_eq!(errors.len(), 1, "{errors:?}");
    let msg = errors[0].to_string();
    assert!(
        matches!(errors[0], RegistryError::Duplicate { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("built in (crate peft-plugin-houlsby)")
            && msg.contains(dir.path().to_str().unwrap()),
        "{msg}"
    );
    // The built-in one is still there and usable.
    assert!(matches!(
        r.get("houlsby").unwrap().origin,
        Origin::Static { .. }
    ));
}

#[test]
fn plugin_built_against_api_1_0_loads_and_runs_in_a_1_1_host() {
    let (dir, path) = built_old_plugin("", "old_bias");
    let mut r = Registry::with_static_plugins().unwrap();
    let names = r.load_file(&path).unwrap();
    assert_eq!(names, vec!["old-bias".to_string()]);
    let e = r.get("old-bias").unwrap();
    assert_eq!(e.api_version.to_string(), "1.0");

    // It runs next to a 1.1 plugin, and a 1.1-only call is answered as unsupported.
    let cfg = tiny(serde_json::json!([{ "plugin": "old-bias" }, { "plugin": "houlsby" }]));
    let model = Model::<B>::build(&cfg, &r, &Default::default(), 0).unwrap();
    let graph = HostGraph::new(&model.params, false);
    let h = model.encode(&graph, &batch(&model)).unwrap();
    assert!(h
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap()
        .iter()
        .all(|x| x.is_finite()));
    let old = &model.modules.modules[0];
    assert_eq!(
        old.call(&graph, "merge", "null").unwrap(),
        None,
        "an API 1.0 plugin cannot know `merge`"
    );
    assert_eq!(
        graph.live_handles(),
        0,
        "handles leaked across the boundary"
    );
    drop(dir);
}

#[test]
fn library_with_a_mismatched_layout_is_refused_and_the_host_keeps_running() {
    let (_dir, path) = built_old_plugin("bad-layout", "bad_layout");
    let mut r = Registry::with_static_plugins().unwrap();
    let err = r.load_file(&path).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::Incompatible { .. }), "{msg}");
    assert!(
        msg.contains(path.to_str().unwrap()),
        "names the file: {msg}"
    );
    assert!(
        msg.contains("1.0.0") && msg.contains(&peft_api::API_VERSION.to_string()),
        "names both versions: {msg}"
    );
    assert!(msg.contains("layout"), "says what differs: {msg}");
    assert!(msg.len() < 1200, "summarised, not hundreds of lines: {msg}");
    assert!(r.get("houlsby").is_ok());
}

#[test]
fn library_of_another_major_version_is_refused() {
    let (_dir, path) = built_old_plugin("major2", "major2");
    let mut r = Registry::new();
    let err = r.load_file(&path).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::Incompatible { .. }), "{msg}");
    assert!(
        msg.contains("2.0.0") && msg.contains(path.to_str().unwrap()),
        "{msg}"
    );
}

#[test]
fn files_that_are_not_plugins_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join(dylib_name("garbage"));
    std::fs::write(&garbage, b"this is not a shared library").unwrap();
    let mut r = Registry::new();
    let err = r.load_file(&garbage).unwrap_err();
    assert!(err.to_string().contains("not a shared library"), "{err}");
    // A real shared library without a plugin symbol: the test binary's own libc.
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
    ]
    .into_iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists());
    if let Some(libc) = libc {
        let err = r.load_file(&libc).unwrap_err();
        assert!(matches!(err, RegistryError::NotAPlugin { .. }), "{err}");
    }
    // A folder mixing good and bad libraries loads the good ones.
    let good = built_houlsby_dir();
    std::fs::copy(&garbage, good.path().join(dylib_name("garbage"))).unwrap();
    let errors = r.load_dir(good.path());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(r.get("houlsby").is_ok());
}
