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

#[test]
fn erf_matches_libm_to_5e7() {
    let mut worst = 0.0f64;
    for i in -6000..=6000 {
        let x = i as f64 / 1000.0;
        worst = worst.max((erf(x as f32) as f64 - libm::erf(x)).abs());
    }
    assert!(worst < 5e-7, "max |erf - libm::erf| = {worst}");
}
