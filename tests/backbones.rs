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

/// Scales the FFN's intermediate activation (the `Hidden` site `encoder.layer.{l}.intermediate`)
/// by a constant, as (IA)³ does per feature.
struct ScaleIntermediate(f64);

impl peft_host::backbone::SiteModules<B> for ScaleIntermediate {
    fn is_attached(&self, site: &str) -> bool {
        site.ends_with(".intermediate")
    }
    fn call(
        &self,
        _: &HostGraph<'_, B>,
        _: &str,
        inputs: Vec<peft_host::bridge::Value<B>>,
    ) -> Result<Vec<peft_host::bridge::Value<B>>, peft_api::ApiError> {
        use peft_host::bridge::{value::*, Value};
        let Some(Value::Float(h)) = inputs.into_iter().next() else {
            panic!("a hidden site passes one float tensor")
        };
        Ok(vec![Value::Float(fp(ft::<B, 3>(h) * self.0))])
    }
}

/// The FFN intermediate site sits between the activation and the output projection: scaling
/// it by `c` equals scaling `output.dense.weight` by `c` (the bias untouched), and every
/// layer's site is called.
#[test]
fn ffn_intermediate_site_scales_what_the_output_projection_reads() {
    use peft_host::backbone::{Hooks, NoModules};
    let cfg: RunConfig = serde_json::from_value(tiny_bert_config(serde_json::json!([]))).unwrap();
    let model = Model::<B>::build(&cfg, &Registry::new(), &Default::default(), 0).unwrap();
    let batch = model
        .tokenize(
            &[("scale the activations".into(), None)],
            16,
            &Default::default(),
        )
        .unwrap();
    let encode = |modules: &dyn peft_host::backbone::SiteModules<B>| -> Vec<f32> {
        let graph = HostGraph::new(&model.params, false);
        let hooks = Hooks::new(&graph, modules);
        let h = model
            .backbone
            .as_bert()
            .unwrap()
            .encode_all(&hooks, &batch)
            .unwrap();
        h.last()
            .unwrap()
            .clone()
            .into_data()
            .convert::<f32>()
            .into_vec()
            .unwrap()
    };
    let bare = encode(&NoModules);
    let scaled = encode(&ScaleIntermediate(0.5));
    let layers = model.backbone.as_bert().unwrap().config.num_hidden_layers;
    for l in 0..layers {
        let key = format!("encoder.layer.{l}.output.dense.weight");
        let w = model.params.borrow().tensor::<2>(&key).unwrap();
        let half = peft_host::bridge::value::fp(w.detach() * 0.5);
        model.params.borrow_mut().assign(&key, half).unwrap();
    }
    let folded = encode(&NoModules);
    let d = scaled
        .iter()
        .zip(&folded)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(d < 1e-5, "scaling the site and the weight differ by {d}");
    assert!(
        bare.iter().zip(&scaled).any(|(x, y)| (x - y).abs() > 1e-3),
        "the site was not called"
    );
}
