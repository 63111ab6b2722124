use crate::nn::math::{erf, exp};

#[test]
fn exp_matches_f64_to_3e7_relative() {
    let mut worst = 0.0f64;
    for i in -8000..=8000 {
        let x = i as f32 / 100.0;
        let want = (x as f64).exp();
        worst = worst.max(((exp(x) as f64) - want).abs() / want);
    }
    assert!(worst < 3e-7, "max relative error {worst}");
    assert!(exp(-1e4) < 1e-37 && exp(-1e4) >= 0.0);
}

/// Below the clamp `exp` is exactly 0, never a tiny normal whose products with gradients are
/// subnormal (the slow path of the FPU): a causally hidden score is `f32::MIN`.
#[test]
fn exp_of_a_hidden_score_is_exactly_zero() {
    for x in [f32::MIN, -1e4, -87.5, f32::NEG_INFINITY] {
        assert_eq!(exp(x), 0.0, "exp({x})");
    }
    let tiny = exp(-86.9);
    assert!(tiny.is_normal() && (tiny as f64 - (-86.9f64).exp()).abs() < 1e-43);
}

/// A&S 7.1.26 is 1.5e-7 in exact arithmetic; in f32 the cancellation in `1 − poly·e` near 0
/// adds about as much again: the worst, 5.3e-7, is at x = −0.045 (4.7e-7 there with the
/// degree-6 Taylor `exp` before the minimax one).
#[test]
fn erf_matches_libm_to_6e7() {
    let mut worst = 0.0f64;
    for i in -6000..=6000 {
        let x = i as f64 / 1000.0;
        worst = worst.max((erf(x as f32) as f64 - libm::erf(x)).abs());
    }
    assert!(worst < 6e-7, "max |erf - libm::erf| = {worst}");
}

/// Every tier `simd_dispatch!` compiles its loops for gives the same bits: GELU and its
/// backward, layer norm with the residual and dropout (values and gradients), attention with
/// dropout (the online softmax, its recomputation and gradient) and the cross entropy, each
/// run at the baseline, AVX2 and AVX-512 tiers the CPU has.
#[test]
fn every_simd_tier_gives_the_same_bits() {
    use crate::nn::math::{simd_tier, test_cap, SimdTier};
    use crate::nn::test_support::{leaf, vals, A};
    use burn::tensor::{Int, Tensor, TensorData};

    let run = || {
        let mut out: Vec<Vec<f32>> = Vec::new();
        let (b, t, h, heads) = (2, 37, 24, 3);
        let x = leaf(0.3, [b, t, h]);
        let r = leaf(1.1, [b, t, h]);
        let w = Tensor::<A, 1>::from_data(
            TensorData::new((0..h).map(|i| 1.0 + 0.01 * i as f32).collect(), [h]),
            &Default::default(),
        )
        .require_grad();
        let bias = Tensor::<A, 1>::from_data(
            TensorData::new((0..h).map(|i| 0.1 - 0.01 * i as f32).collect(), [h]),
            &Default::default(),
        )
        .require_grad();
        let g = crate::nn::gelu::tracked(x.clone()).unwrap();
        let n = crate::nn::layer_norm::tracked_dropout_add(
            g,
            r.clone(),
            w.clone(),
            bias.clone(),
            (0.1, 7),
            1e-12,
        )
        .unwrap();
        let keep = vec![true; b * t];
        let a = crate::nn::attention_tracked::tracked(
            n.clone(),
            n.clone(),
            x.clone(),
            &keep,
            heads,
            0.35,
            0.1,
            5,
        )
        .unwrap();
        let logits = a.clone().reshape([b * t, h]);
        let y: Vec<i64> = (0..(b * t) as i64).map(|i| (i * 7) % h as i64).collect();
        let y = Tensor::<A, 1, Int>::from_data(TensorData::new(y, [b * t]), &Default::default());
        let l = crate::nn::cross_entropy::cross_entropy(logits, y, 0.1).unwrap();
        out.push(vals(a));
        out.push(vals(l.clone()));
        let grads = l.sum().backward();
        for p in [&x, &r] {
            out.push(vals(p.grad(&grads).unwrap()));
        }
        out.push(vals(w.grad(&grads).unwrap()));
        out.push(vals(bias.grad(&grads).unwrap()));
        let mut plain: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 4.0).collect();
        crate::nn::gelu::gelu(&mut plain);
        out.push(plain);
        out
    };
    let widest = simd_tier();
    let want = test_cap::with(SimdTier::Baseline, run);
    for tier in [SimdTier::Avx2, SimdTier::Avx512] {
        if tier.rank() > widest.rank() {
            continue;
        }
        let got = test_cap::with(tier, run);
        for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
            let gb: Vec<u32> = g.iter().map(|v| v.to_bits()).collect();
            let wb: Vec<u32> = w.iter().map(|v| v.to_bits()).collect();
            assert!(
                gb == wb,
                "{tier:?}: output {i} differs from the baseline tier's"
            );
        }
    }
}
