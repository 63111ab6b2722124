//! `backbone.matmul_precision: "medium"` (its own test binary: the setting is process-wide, as
//! PyTorch's `set_float32_matmul_precision`, and would race with the bf16 tests' `high`).
//! The activations of every product with a bf16-held weight are rounded to bf16 — one tile
//! product on AMX, the same rounded values on the f32 path elsewhere — so MiniLM's output moves
//! by about as much again as the weights' rounding moved it, and not more.
use burn::tensor::Tensor;
use peft_host::{
    backbone::{Hooks, NoModules},
    bridge::HostGraph,
    config::{MatmulPrecision, RunConfig},
    model::Model,
    nn::{
        self,
        value::{fp, ft},
    },
};
use peft_registry::Registry;
use peft_tests::*;

fn last_hidden(model: &Model<B>) -> Vec<f32> {
    let sentences: Vec<(String, Option<String>)> = [
        "medium precision rounds the activations of the frozen products to bf16",
        "short",
    ]
    .map(|s| (s.to_string(), None))
    .to_vec();
    let batch = model.tokenize(&sentences, 64, &Default::default()).unwrap();
    vals(
        model
            .encode(&HostGraph::inference(&model.params), &batch)
            .unwrap(),
    )
}

#[test]
fn medium_precision_rounds_the_activations_and_stays_close() {
    require_minilm();
    let build = |backbone: serde_json::Value| {
        let cfg: RunConfig =
            serde_json::from_value(serde_json::json!({ "backbone": backbone })).unwrap();
        Model::<B>::build(&cfg, &Registry::new(), &Default::default(), 0).unwrap()
    };
    let exact = last_hidden(&build("all-MiniLM-L6-v2".into()));
    let high_model = build(serde_json::json!({"name": "all-MiniLM-L6-v2", "dtype": "bf16"}));
    assert_eq!(nn::bf16::matmul_precision(), MatmulPrecision::High);
    let high = last_hidden(&high_model);
    let medium_model = build(serde_json::json!(
        {"name": "all-MiniLM-L6-v2", "dtype": "bf16", "matmul_precision": "medium"}
    ));
    assert_eq!(nn::bf16::matmul_precision(), MatmulPrecision::Medium);
    let medium = last_hidden(&medium_model);
    // Process-wide: the first model now computes as the second.
    assert_eq!(last_hidden(&high_model), medium);
    // Attention's products on bf16 operands (heads of 64 and more; MiniLM's 32 keep f32):
    // asked for under medium, without gradients, on a bf16-held backbone only.
    let f32_model = build("all-MiniLM-L6-v2".into());
    nn::bf16::set_matmul_precision(MatmulPrecision::Medium);
    let asks = |model: &Model<B>, no_grad: bool| {
        let graph = if no_grad {
            HostGraph::inference(&model.params)
        } else {
            HostGraph::new(&model.params, true)
        };
        Hooks::new(&graph, &NoModules).bf16_attention()
    };
    assert!(asks(&medium_model, true));
    assert!(
        !asks(&medium_model, false),
        "with gradients attention stays f32"
    );
    assert!(
        !asks(&f32_model, true),
        "an f32 backbone holds no bf16 weight"
    );
    nn::bf16::set_matmul_precision(MatmulPrecision::High);
    assert!(!asks(&medium_model, true), "under high attention stays f32");
    nn::bf16::set_matmul_precision(MatmulPrecision::Medium);

    let scale = exact.iter().fold(0f32, |m, x| m.max(x.abs()));
    let mean = |a: &[f32], b: &[f32]| {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
    };
    let (weights, both) = (max_diff(&high, &exact), max_diff(&medium, &exact));
    println!(
        "MiniLM last hidden state against f32 (largest |value| {scale:.2}): bf16 weights {weights:.3e} max, {:.3e} mean; medium precision {both:.3e} max, {:.3e} mean; medium against high {:.3e} max",
        mean(&high, &exact),
        mean(&medium, &exact),
        max_diff(&medium, &high)
    );
    assert!(
        max_diff(&medium, &high) > 0.0,
        "medium must round the activations"
    );
    assert!(both < 0.05 * scale, "medium moved the output by {both}");
    assert!(
        mean(&medium, &exact) < 4.0 * mean(&high, &exact),
        "medium's error should be of the weights' rounding's order"
    );

    // A BERT intermediate layer under medium without gradients: the product then bias and
    // GELU in one pass, on `vdpbf16ps` or on the f32 GEMM (the bf16 weight widened), the same
    // values as the two apart; AMX runs them apart.
    let device = Default::default();
    let w = nn::bf16::tensor::<B, 2>(&seeded(11, 1536 * 384, 0.05), [1536, 384], &device);
    let b = burn::tensor::Tensor::<B, 1>::from_floats(&seeded(12, 1536, 0.5)[..], &device);
    let x = burn::tensor::Tensor::<B, 1>::from_floats(&seeded(13, 2 * 40 * 384, 1.0)[..], &device)
        .reshape([2, 40, 384]);
    let fused = nn::linear::gelu_product::<B>(&x, fp(w.clone()), fp(b.clone())).unwrap();
    let path = nn::bf16::ProductPath::current();
    assert_eq!(
        fused.is_some(),
        path != nn::bf16::ProductPath::Amx,
        "fused everywhere but on AMX (path {})",
        path.as_str()
    );
    if let Some(fused) = fused {
        let y = ft::<B, 3>(nn::linear::<B>(fp(x), fp(w), Some(fp(b))).unwrap());
        let mut apart = nn::to_vec(y).unwrap();
        nn::gelu(&mut apart);
        assert_eq!(vals(fused), apart);
    }

    // A trainable f32 weight under medium, where its product runs on the GEMM: rounded to bf16
    // for the call, as autocast casts weights — the output and the input's gradient of the same
    // weight held in bf16, bit for bit; its own gradient stays the f32 `dyᵀ·x`. Under high, and
    // for a LoRA-sized weight (the low-rank kernels), the f32 product.
    let (n, i) = (40, 64);
    let xv = seeded(21, n * i, 1.0);
    let pass = |w: Tensor<B, 2>, o: usize| {
        let x = Tensor::<B, 1>::from_floats(&xv[..], &device)
            .reshape([n, i])
            .require_grad();
        let y = ft::<B, 2>(nn::linear::<B>(fp(x.clone()), fp(w.clone()), None).unwrap());
        let dy = Tensor::<B, 1>::from_floats(&seeded(22, n * o, 1.0)[..], &device).reshape([n, o]);
        let g = (y.clone() * dy.clone()).sum().backward();
        let want_dw = vals(dy.inner().transpose().matmul(x.clone().inner()));
        (
            vals(y),
            vals(x.grad(&g).unwrap()),
            w.grad(&g).map(vals),
            want_dw,
        )
    };
    for o in [96, 8] {
        let wv = seeded(23 + o as u64, o * i, 0.3);
        let trainable = || {
            Tensor::<B, 1>::from_floats(&wv[..], &device)
                .reshape([o, i])
                .require_grad()
        };
        let (y, dx, dw, want_dw) = pass(trainable(), o);
        let dw = dw.expect("the weight trains");
        let scale = want_dw.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            max_diff(&dw, &want_dw) < 1e-5 * scale,
            "dW must stay the f32 dyᵀ·x (o = {o}): off by {}",
            max_diff(&dw, &want_dw)
        );
        // burn's generic ops (`PEFT_CPU_KERNELS=0`, and other devices) round the same way; the
        // weight's gradient is f32 too but, as under autocast, reads the rounded input.
        let (y_gen, _, dw_gen, _) = nn::generic_ops(|| pass(trainable(), o));
        let want_dw_gen = if o > nn::low_rank::LOW_RANK {
            let xr =
                Tensor::<B, 1>::from_floats(&nn::bf16::rounded(&xv)[..], &device).reshape([n, i]);
            let dy =
                Tensor::<B, 1>::from_floats(&seeded(22, n * o, 1.0)[..], &device).reshape([n, o]);
            vals(dy.transpose().matmul(xr))
        } else {
            want_dw
        };
        let y_scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            max_diff(&y_gen, &y) < 1e-5 * y_scale,
            "generic ops under medium (o = {o}): off by {}",
            max_diff(&y_gen, &y)
        );
        let dw_gen = dw_gen.expect("the weight trains on generic ops");
        assert!(
            max_diff(&dw_gen, &want_dw_gen) < 1e-5 * scale,
            "dW on generic ops (o = {o}): off by {}",
            max_diff(&dw_gen, &want_dw_gen)
        );
        nn::bf16::set_matmul_precision(MatmulPrecision::High);
        let (y_high, dx_high, ..) = pass(trainable(), o);
        nn::bf16::set_matmul_precision(MatmulPrecision::Medium);
        // Bit for bit: the rounded weight's values and dx where the product is GEMM-sized, the
        // f32 ones (as under high) where it is low-rank.
        let (want, what) = if o > nn::low_rank::LOW_RANK {
            assert!(max_diff(&y, &y_high) > 0.0, "medium rounds the weight");
            let (y_held, dx_held, ..) = pass(nn::bf16::tensor::<B, 2>(&wv, [o, i], &device), o);
            ((y_held, dx_held), "the same weight held in bf16")
        } else {
            ((y_high, dx_high), "the f32 product (low-rank)")
        };
        for (got, want, name) in [(&y, &want.0, "y"), (&dx, &want.1, "dx")] {
            assert!(
                got == want,
                "{name} (o = {o}) must equal {what}'s: off by {}",
                max_diff(got, want)
            );
        }
    }
    nn::bf16::set_matmul_precision(MatmulPrecision::High);
}

/// `n` values in `[-scale, scale)` from a seed.
fn seeded(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let h =
                (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            ((h >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}
