use super::{gelu, tracked};
use crate::nn::test_support::leaf;
use crate::nn::test_support::vals;

#[test]
fn tracked_gelu_matches_burn_values_and_gradients() {
    let run = |fused: bool| {
        let x = leaf(0.3, [2, 3, 50]) * 4.0;
        let x = x.detach().require_grad();
        let y = if fused {
            tracked(x.clone()).unwrap()
        } else {
            burn::tensor::activation::gelu(x.clone())
        };
        let g = (y.clone() * y.clone()).sum().backward();
        (vals(y), vals(x.grad(&g).unwrap()))
    };
    let (a, b) = (run(true), run(false));
    for (x, y) in a.0.iter().zip(&b.0).chain(a.1.iter().zip(&b.1)) {
        assert!((x - y).abs() < 1e-5 * y.abs().max(1.0), "{x} vs {y}");
    }
}

#[test]
fn gelu_matches_the_exact_definition() {
    let mut x: Vec<f32> = (-800..=800).map(|i| i as f32 / 100.0).collect();
    let want: Vec<f64> = x
        .iter()
        .map(|&v| 0.5 * v as f64 * (1.0 + libm::erf(v as f64 / 2f64.sqrt())))
        .collect();
    gelu(&mut x);
    for (a, b) in x.iter().zip(&want) {
        assert!((*a as f64 - b).abs() < 2e-6, "{a} vs {b}");
    }
}
