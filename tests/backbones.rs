//! Backbone behaviour shared by every architecture: dropout only in training mode, and loading
//! errors a user can act on.
use peft_host::{bridge::HostGraph, config::RunConfig, model::Model};
use peft_registry::Registry;
use peft_tests::*;

fn hidden(model: &Model<B>, training: bool) -> Vec<f32> {
    let batch = model
        .tokenize(
            &[("dropout only when training".into(), None)],
            16,
            &Default::default(),
        )
        .unwrap();
    let graph = HostGraph::new(&model.params, training);
    model
        .encode(&graph, &batch)
        .unwrap()
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap()
}

#[test]
fn eval_mode_is_deterministic_and_training_mode_applies_dropout() {
    let mut cfg = tiny_bert_config(serde_json::json!([]));
    cfg["backbone"]["config"]["hidden_dropout_prob"] = 0.1.into();
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let model = Model::<B>::build(&cfg, &Registry::new(), &Default::default(), 0).unwrap();
    let (a, b) = (hidden(&model, false), hidden(&model, false));
    assert_eq!(a, b, "eval mode must be deterministic");
    let inference: Vec<f32> = {
        let batch = model
            .tokenize(
                &[("dropout only when training".into(), None)],
                16,
                &Default::default(),
            )
            .unwrap();
        let g = HostGraph::inference(&model.params);
        model
            .encode(&g, &batch)
            .unwrap()
            .into_data()
            .convert::<f32>()
            .into_vec()
            .unwrap()
    };
    let d = a
        .iter()
        .zip(&inference)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(
        d < 1e-5,
        "the no-grad inference path differs from eval mode by {d}"
    );
    let t = hidden(&model, true);
    assert_ne!(a, t, "training mode must apply dropout");
}

#[test]
fn unknown_architecture_is_refused_by_name() {
    let mut cfg = tiny_bert_config(serde_json::json!([]));
    cfg["backbone"]["architecture"] = "gpt-neox".into();
    let cfg: RunConfig = serde_json::from_value(cfg).unwrap();
    let err = Model::<B>::build(&cfg, &Registry::new(), &Default::default(), 0)
        .err()
        .expect("refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("architecture `gpt-neox` is not supported") && msg.contains("bert, t5, bart"),
        "{msg}"
    );
}

#[test]
fn missing_model_names_the_fix() {
    let cfg: RunConfig =
        serde_json::from_value(serde_json::json!({"backbone": "no-such-model"})).unwrap();
    let err = Model::<B>::build(&cfg, &Registry::new(), &Default::default(), 0)
        .err()
        .expect("refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("backbone `no-such-model` is not installed")
            && msg.contains("scripts/setup.sh"),
        "{msg}"
    );
}
