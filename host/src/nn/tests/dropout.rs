use burn::tensor::Tensor;

use super::tracked;
use crate::nn::test_support::{vals, A};

/// Inverted dropout: about p of the elements zeroed, the rest scaled by 1/(1 - p), the
/// gradient the same mask; the same seed draws the same mask.
#[test]
fn tracked_dropout_masks_scales_and_differentiates() {
    let x = Tensor::<A, 3>::ones([4, 50, 500], &Default::default()).require_grad();
    let y = tracked(x.clone(), 0.3, 77).unwrap();
    let g = y.clone().sum().backward();
    let (out, grad) = (vals(y), vals(x.grad(&g).unwrap()));
    let zeros = out.iter().filter(|v| **v == 0.0).count() as f64 / out.len() as f64;
    assert!((zeros - 0.3).abs() < 0.01, "dropped fraction {zeros}");
    assert!(out
        .iter()
        .all(|v| *v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
    assert_eq!(out, grad, "d(sum)/dx is the scaled mask");
    let again = vals(tracked(x.clone(), 0.3, 77).unwrap());
    assert_eq!(out, again);
    assert_ne!(out, vals(tracked(x.clone(), 0.3, 78).unwrap()));
    assert!(tracked(x, 1.0, 1).is_err());
}
