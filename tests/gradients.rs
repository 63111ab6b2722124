//! Gradients computed through the op API equal the same computation written directly in burn.
use burn::tensor::{activation, Tensor, TensorData};
use peft_api::Ctx;
use peft_host::{
    backbone::SiteModules,
    bridge::{
        value::{fp, ft},
        HostGraph, Value,
    },
    config::RunConfig,
    model::Model,
};
use peft_registry::Registry;
use peft_tests::*;

const TOL: f32 = 1e-6;

/// The Houlsby adapter written directly in burn, reading the plugin's parameters.
struct NativeHoulsby;

impl SiteModules<B> for NativeHoulsby {
    fn is_attached(&self, site: &str) -> bool {
        site.ends_with(".attention") || site.ends_with(".ffn")
    }
    fn call(
        &self,
        g: &HostGraph<'_, B>,
        site: &str,
        inputs: Vec<Value<B>>,
    ) -> Result<Vec<Value<B>>, peft_api::ApiError> {
        let Value::Float(y) = inputs.into_iter().nth(1).unwrap() else {
            panic!()
        };
        let y = ft::<B, 3>(y);
        let p = |n: &str| g.param_value(&format!("houlsby.{site}.{n}")).unwrap();
        let [b, t, d] = y.dims();
        let y2 = y.clone().reshape([b * t, d]);
        let h = activation::relu(
            y2.matmul(ft::<B, 2>(p("down.weight")).transpose())
                + ft::<B, 1>(p("down.bias")).unsqueeze::<2>(),
        );
        let up = h.matmul(ft::<B, 2>(p("up.weight")).transpose())
            + ft::<B, 1>(p("up.bias")).unsqueeze::<2>();
        Ok(vec![Value::Float(fp(y + up.reshape([b, t, d])))])
    }
}

#[test]
fn houlsby_through_the_op_api_matches_native_burn() {
    let cfg: RunConfig = serde_json::from_value(tiny_bert_config(serde_json::json!([
        { "plugin": "houlsby", "config": { "up_init_std": 0.05, "bottleneck": 4 } }
    ])))
    .unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    model.set_trainable(&["adapter".into()]).unwrap();
    let batch = model
        .tokenize(
            &[
                ("gradients must agree".into(), None),
                ("to one part in a million".into(), None),
            ],
            16,
            &Default::default(),
        )
        .unwrap();
    let names = trainable_names(&model);
    assert_eq!(names.len(), 2 * 2 * 4, "2 layers x 2 positions x 4 tensors");

    let run = |modules: &dyn SiteModules<B>| bert_probe(&model, modules, &batch, &names);
    let (h_api, g_api) = run(&model.modules);
    let (h_native, g_native) = run(&NativeHoulsby);
    assert!(
        max_diff(&h_api, &h_native) < TOL,
        "outputs differ by {}",
        max_diff(&h_api, &h_native)
    );
    for ((n, a), b) in names.iter().zip(&g_api).zip(&g_native) {
        let d = max_diff(a, b);
        assert!(d < TOL, "gradient of {n} differs by {d}");
        assert!(a.iter().any(|&x| x != 0.0), "gradient of {n} is zero");
    }
}

/// A chain of the API's composite ops against burn's own, values and input gradients.
#[test]
fn composite_ops_match_burn() {
    let registry_store = std::cell::RefCell::new(peft_host::params::ParamStore::<B>::new(
        Default::default(),
        7,
    ));
    let data_x: Vec<f32> = (0..2 * 3 * 8)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
        .collect();
    let data_w: Vec<f32> = (0..5 * 8)
        .map(|i| ((i * 13 % 17) as f32 - 8.0) / 9.0)
        .collect();
    let labels: Vec<i64> = vec![0, 4, 2, 1, 3, 4];

    // Through the op API.
    let graph = HostGraph::new(&registry_store, true);
    let (loss_v, gx, gw) = {
        let ctx = Ctx::new(graph.as_abi());
        let x = ctx
            .from_data(&[2, 3, 8], data_x.clone())
            .unwrap()
            .require_grad()
            .unwrap();
        let w = ctx
            .from_data(&[5, 8], data_w.clone())
            .unwrap()
            .require_grad()
            .unwrap();
        let y = x
            .clone()
            .layer_norm(None, None, 1e-5)
            .unwrap()
            .gelu()
            .unwrap();
        let logits = y
            .clone()
            .linear(w.clone(), None)
            .unwrap()
            .softmax(-1)
            .unwrap()
            .log()
            .unwrap();
        let logits = logits.reshape(&[6, 5]).unwrap();
        let ce = logits
            .cross_entropy(ctx.from_ints(&[6], labels.clone()).unwrap(), 0.1)
            .unwrap();
        let cos = y
            .clone()
            .cosine_similarity(
                y.clone().mul_scalar(2.0).unwrap().add_scalar(0.5).unwrap(),
                -1,
                1e-8,
            )
            .unwrap()
            .mean()
            .unwrap();
        let rms = x
            .clone()
            .rms_norm(None, 1e-6)
            .unwrap()
            .silu()
            .unwrap()
            .mean()
            .unwrap();
        let loss = (ce + cos + rms).ok().unwrap();
        let loss_v = loss.to_vec().unwrap();
        let grads = ctx.grad(loss, vec![x, w]).unwrap();
        let gx = grads[0].to_vec().unwrap();
        let gw = grads[1].to_vec().unwrap();
        (loss_v, gx, gw)
    };
    assert_eq!(graph.live_handles(), 0, "every handle is released");

    // Directly in burn.
    let dev = Default::default();
    let x = Tensor::<B, 3>::from_data(TensorData::new(data_x, [2, 3, 8]), &dev).require_grad();
    let w = Tensor::<B, 2>::from_data(TensorData::new(data_w, [5, 8]), &dev).require_grad();
    let (var, mean) = x.clone().var_mean_bias(2);
    let y = activation::gelu((x.clone() - mean) / (var + 1e-5).sqrt());
    let logits = activation::softmax(y.clone().matmul(w.clone().transpose().unsqueeze::<3>()), 2)
        .log()
        .reshape([6, 5]);
    let logp = activation::log_softmax(logits, 1);
    let y_idx = Tensor::<B, 1, burn::tensor::Int>::from_data(TensorData::new(labels, [6]), &dev);
    let nll = logp
        .clone()
        .gather(1, y_idx.unsqueeze_dim::<2>(1))
        .neg()
        .reshape([6]);
    let smooth = logp.mean_dim(1).neg().reshape([6]);
    let ce = (nll * 0.9 + smooth * 0.1).mean();
    let z = y.clone() * 2.0 + 0.5;
    let cos = ((y.clone() * z.clone()).sum_dim(2)
        / (y.powf_scalar(2.0).sum_dim(2).sqrt() * z.powf_scalar(2.0).sum_dim(2).sqrt()))
    .mean();
    let rms =
        activation::silu(x.clone() / (x.clone().powf_scalar(2.0).mean_dim(2) + 1e-6).sqrt()).mean();
    let loss = ce + cos + rms;
    let want_loss = vals(loss.clone());
    let g = loss.backward();
    let want_gx = vals(x.grad(&g).unwrap());
    let want_gw = vals(w.grad(&g).unwrap());

    assert!(
        max_diff(&loss_v, &want_loss) < TOL,
        "loss {loss_v:?} vs {want_loss:?}"
    );
    assert!(
        max_diff(&gx, &want_gx) < TOL,
        "dx differs by {}",
        max_diff(&gx, &want_gx)
    );
    assert!(
        max_diff(&gw, &want_gw) < TOL,
        "dw differs by {}",
        max_diff(&gw, &want_gw)
    );
}

/// Errors from the host reach the plugin as values; a shape mismatch never panics.
#[test]
fn op_errors_are_values_not_panics() {
    let store = std::cell::RefCell::new(peft_host::params::ParamStore::<B>::new(
        Default::default(),
        7,
    ));
    let graph = HostGraph::new(&store, false);
    {
        let ctx = Ctx::new(graph.as_abi());
        let a = ctx.from_data(&[2, 3], vec![0.0; 6]).unwrap();
        let b = ctx.from_data(&[4, 5], vec![0.0; 20]).unwrap();
        let err = a.clone().matmul(b.clone()).unwrap_err();
        assert!(
            err.message.contains("inner sizes") && err.message.contains("[2, 3]"),
            "{err:?}"
        );
        let poisoned = &a + &b;
        let err = poisoned.relu().unwrap_err();
        assert!(err.message.contains("do not broadcast"), "{err:?}");
        let err = a.clone().reshape(&[7, -1]).unwrap_err();
        assert!(err.message.contains("cannot infer"), "{err:?}");
        let err = ctx.param("nope").unwrap_err();
        assert!(err.message.contains("no parameter named `nope`"), "{err:?}");
        let err = ctx
            .exec_raw(peft_api::OpCode(9999), &[], &Default::default())
            .unwrap_err();
        assert_eq!(err.kind, peft_api::ErrorKind::UNKNOWN_OP);
    }
    assert_eq!(graph.live_handles(), 0);
}

/// `ATTENTION` (API 1.2) through the op API — the fused kernel in a training graph, its
/// no-gradient pass, and burn's ops with the kernels off — against the composed attention
/// written in burn: the same outputs and the same gradients for q, k and v, with padded keys
/// in one batch and keys that outnumber the queries.
#[test]
fn attention_through_the_op_api_matches_native_burn() {
    attention_op_matches_native_burn(None);
}

/// `ATTENTION_BIAS` (API 1.3): a trainable `[heads, t, s]` score bias (its gradient summed
/// over the batch) and a causal mask, through the op API, against burn's composed ops.
#[test]
fn attention_with_a_trainable_bias_through_the_op_api_matches_native_burn() {
    attention_op_matches_native_burn(Some(None));
    attention_op_matches_native_burn(Some(Some(2)));
}

/// `ATTENTION` (`bias` `None`) or `ATTENTION_BIAS` with that causal offset: output and
/// gradients through the kernel, through burn's ops, and the no-gradient pass, against the
/// attention written out in burn.
fn attention_op_matches_native_burn(bias: Option<Option<usize>>) {
    let (b, t, s, h, heads, scale) = (2, 5, 7, 8, 2, 0.35f32);
    let data = |n: usize, m: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i * m) % 29) as f32 - 14.0) / 9.0)
            .collect()
    };
    let (dq, dk, dv, dw, db) = (
        data(b * t * h, 7),
        data(b * s * h, 11),
        data(b * s * h, 13),
        data(b * t * h, 17),
        data(heads * t * s, 19),
    );
    // Batch 1 sees only its first four keys.
    let keep: Vec<f32> = (0..b * s)
        .map(|i| if i >= s && i % s >= 4 { 0.0 } else { 1.0 })
        .collect();

    let through_api = |training: bool| {
        let store = std::cell::RefCell::new(peft_host::params::ParamStore::<B>::new(
            Default::default(),
            7,
        ));
        let graph = if training {
            HostGraph::new(&store, true)
        } else {
            HostGraph::inference(&store)
        };
        let out = {
            let ctx = Ctx::new(graph.as_abi());
            let leaf = |shape: &[usize], v: &Vec<f32>| {
                let x = ctx.from_data(shape, v.clone()).unwrap();
                if training {
                    x.require_grad().unwrap()
                } else {
                    x
                }
            };
            let (q, k, v) = (
                leaf(&[b, t, h], &dq),
                leaf(&[b, s, h], &dk),
                leaf(&[b, s, h], &dv),
            );
            let m = ctx.from_data(&[b, s], keep.clone()).unwrap();
            let mut wrt = vec![q.clone(), k.clone(), v.clone()];
            let y = match bias {
                None => q.attention(k, v, Some(m), heads, scale as f64),
                Some(causal) => {
                    let p = leaf(&[heads, t, s], &db);
                    wrt.push(p.clone());
                    q.attention_bias(k, v, p, Some(m), heads, scale as f64, causal)
                }
            }
            .unwrap();
            let w = ctx.from_data(&[b, t, h], dw.clone()).unwrap();
            let loss = y.clone().mul(w).unwrap().sum().unwrap();
            let y = y.to_vec().unwrap();
            let grads = if training {
                let g = ctx.grad(loss, wrt).unwrap();
                g.iter().map(|x| x.to_vec().unwrap()).collect()
            } else {
                Vec::new()
            };
            (y, grads)
        };
        assert_eq!(graph.live_handles(), 0, "every handle is released");
        out
    };

    // Directly in burn.
    let dev = Default::default();
    let leaf = |shape: [usize; 3], v: &Vec<f32>| {
        Tensor::<B, 3>::from_data(TensorData::new(v.clone(), shape), &dev).require_grad()
    };
    let (q, k, v, p) = (
        leaf([b, t, h], &dq),
        leaf([b, s, h], &dk),
        leaf([b, s, h], &dv),
        leaf([heads, t, s], &db),
    );
    let split = |x: Tensor<B, 3>, n: usize| x.reshape([b, n, heads, h / heads]).swap_dims(1, 2);
    let causal = bias.flatten();
    let mask: Vec<f32> = (0..b * t * s)
        .map(|e| {
            let (bi, i, j) = (e / (t * s), e / s % t, e % s);
            let hidden = causal.is_some_and(|off| j > i + off);
            if keep[bi * s + j] == 0.0 || hidden {
                f32::MIN
            } else {
                0.0
            }
        })
        .collect();
    let mask =
        Tensor::<B, 3>::from_data(TensorData::new(mask, [b, t, s]), &dev).unsqueeze_dim::<4>(1);
    let mut scores =
        split(q.clone(), t).matmul(split(k.clone(), s).swap_dims(2, 3)) * scale as f64 + mask;
    if bias.is_some() {
        scores = scores + p.clone().unsqueeze_dim::<4>(0);
    }
    let y = activation::softmax(scores, 3)
        .matmul(split(v.clone(), s))
        .swap_dims(1, 2)
        .reshape([b, t, h]);
    let w = Tensor::<B, 3>::from_data(TensorData::new(dw.clone(), [b, t, h]), &dev);
    let want_y = vals(y.clone());
    let g = (y * w).sum().backward();
    let mut want_grads: Vec<Vec<f32>> = [q, k, v].map(|x| vals(x.grad(&g).unwrap())).into();
    if bias.is_some() {
        want_grads.push(vals(p.grad(&g).unwrap()));
    }

    for (what, (y, grads)) in [
        ("the kernel", through_api(true)),
        (
            "burn's ops",
            peft_host::nn::generic_ops(|| through_api(true)),
        ),
    ] {
        assert!(
            max_diff(&y, &want_y) < 1e-5,
            "{what} ({bias:?}): output differs by {}",
            max_diff(&y, &want_y)
        );
        assert_eq!(grads.len(), want_grads.len());
        for (name, (got, want)) in ["dq", "dk", "dv", "dbias"]
            .iter()
            .zip(grads.iter().zip(&want_grads))
        {
            let d = max_diff(got, want);
            assert!(d < 1e-5, "{what} ({bias:?}): {name} differs by {d}");
        }
    }
    let (y, _) = through_api(false);
    assert!(
        max_diff(&y, &want_y) < 1e-5,
        "no-gradient pass ({bias:?}): output differs by {}",
        max_diff(&y, &want_y)
    );
}

/// `ATTENTION`'s bad arguments come back as errors naming what is wrong.
#[test]
fn attention_rejects_bad_shapes_and_head_counts() {
    let store = std::cell::RefCell::new(peft_host::params::ParamStore::<B>::new(
        Default::default(),
        7,
    ));
    let graph = HostGraph::new(&store, false);
    {
        let ctx = Ctx::new(graph.as_abi());
        let x = |shape: &[usize]| {
            let n = shape.iter().product();
            ctx.from_data(shape, vec![0.5; n]).unwrap()
        };
        let err = x(&[2, 3, 8])
            .attention(x(&[2, 4, 8]), x(&[2, 4, 8]), None, 3, 1.0)
            .unwrap_err();
        assert!(
            err.message
                .contains("heads = 3 does not divide the width 8"),
            "{err:?}"
        );
        let err = x(&[2, 3, 8])
            .attention(x(&[2, 4, 6]), x(&[2, 4, 6]), None, 2, 1.0)
            .unwrap_err();
        assert!(err.message.contains("do not fit"), "{err:?}");
        let err = x(&[2, 3, 8])
            .attention(x(&[2, 4, 8]), x(&[2, 4, 8]), Some(x(&[2, 3])), 2, 1.0)
            .unwrap_err();
        assert!(
            err.message
                .contains("keep [2, 3] does not fit [b, s] = [2, 4]"),
            "{err:?}"
        );
        let err = x(&[2, 3, 8])
            .attention_bias(
                x(&[2, 4, 8]),
                x(&[2, 4, 8]),
                x(&[2, 4, 3]),
                None,
                2,
                1.0,
                None,
            )
            .unwrap_err();
        assert!(
            err.message
                .contains("bias [2, 4, 3] does not fit [heads, t, s] = [2, 3, 4]"),
            "{err:?}"
        );
    }
    assert_eq!(graph.live_handles(), 0);
}

/// A pass emulating an older host tells plugins that version and refuses the ops it lacks with
/// `UNKNOWN_OP`, as that host would; only an older minor of the same major can be emulated.
#[test]
fn an_emulated_older_host_refuses_newer_ops() {
    use peft_api::{ApiVersion, ErrorKind};
    let store = std::cell::RefCell::new(peft_host::params::ParamStore::<B>::new(
        Default::default(),
        7,
    ));
    let v = |minor| ApiVersion { major: 1, minor };
    let graph = HostGraph::new(&store, false).emulating(v(1)).unwrap();
    {
        let ctx = Ctx::new(graph.as_abi());
        assert_eq!(ctx.graph().version(), v(1));
        let x = || ctx.from_data(&[1, 2, 4], vec![0.5; 8]).unwrap();
        let err = x().attention(x(), x(), None, 2, 1.0).unwrap_err();
        assert_eq!(err.kind, ErrorKind::UNKNOWN_OP, "{err:?}");
        assert!(err.message.contains("peft-api 1.1"), "{err:?}");
        // What 1.1 had still runs.
        assert_eq!(x().mse(x()).unwrap().to_vec().unwrap(), [0.0]);
    }
    assert_eq!(graph.live_handles(), 0);
    for bad in [
        ApiVersion {
            major: 1,
            minor: 99,
        },
        ApiVersion { major: 2, minor: 0 },
    ] {
        let err = HostGraph::new(&store, false).emulating(bad).err().unwrap();
        assert!(err.message.contains("cannot emulate"), "{err:?}");
    }
}
