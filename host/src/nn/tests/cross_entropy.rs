use burn::tensor::{Int, Tensor, TensorData};

use super::cross_entropy;
use crate::nn::{
    generic_ops,
    test_support::{assert_close, leaf, vals, A},
};

/// Loss values and logits' gradients, with per-row loss weights so that the backward's
/// incoming gradient differs by row.
fn run(rows: usize, c: usize, eps: f32, kernel: bool) -> (Vec<f32>, Vec<f32>) {
    let f = || {
        let x = (leaf(0.7, [1, rows, c]).reshape([rows, c]) * 6.0)
            .detach()
            .require_grad();
        let y: Vec<i64> = (0..rows as i64).map(|r| (r * 7919) % c as i64).collect();
        let y = Tensor::<A, 1, Int>::from_data(TensorData::new(y, [rows]), &Default::default());
        let w: Vec<f32> = (0..rows).map(|r| 0.5 + r as f32 / rows as f32).collect();
        let w = Tensor::<A, 1>::from_data(TensorData::new(w, [rows]), &Default::default());
        let l = cross_entropy(x.clone(), y, eps).unwrap();
        let g = (l.clone() * w).sum().backward();
        (vals(l), vals(x.grad(&g).unwrap()))
    };
    if kernel {
        f()
    } else {
        generic_ops(f)
    }
}

#[test]
fn fused_cross_entropy_matches_log_softmax_and_gather() {
    for (rows, c) in [(3, 50), (17, 1037), (4, 16)] {
        for eps in [0.0, 0.1] {
            let (a, b) = (run(rows, c, eps, true), run(rows, c, eps, false));
            assert_close(&[("loss", &a.0, &b.0)], 1e-4);
            assert_close(&[("grad", &a.1, &b.1)], 1e-6);
        }
    }
}

#[test]
fn fused_cross_entropy_is_minus_log_softmax_in_f64() {
    let (rows, c) = (5, 333);
    let (l, _) = run(rows, c, 0.0, true);
    let x = vals(leaf(0.7, [1, rows, c]).reshape::<2, _>([rows, c]) * 6.0);
    for r in 0..rows {
        let row: Vec<f64> = x[r * c..(r + 1) * c].iter().map(|&v| v as f64).collect();
        let m = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let t = (r * 7919) % c;
        assert!((l[r] as f64 - (lse - row[t])).abs() < 1e-5, "row {r}");
    }
}

#[test]
fn a_target_outside_the_classes_is_an_error() {
    let x = Tensor::<A, 2>::zeros([2, 4], &Default::default());
    let y =
        Tensor::<A, 1, Int>::from_data(TensorData::new(vec![1i64, 4], [2]), &Default::default());
    let e = cross_entropy(x, y, 0.0).unwrap_err().to_string();
    assert!(e.contains("target 4 at row 1"), "{e}");
}
