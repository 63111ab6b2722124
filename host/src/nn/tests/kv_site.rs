use burn::tensor::Tensor;

use super::tracked;
use crate::nn::test_support::{assert_close, leaf, vals};

/// A projection split by head, prefixed along time (what prefix tuning's site does) and
/// scored: the projection's and the prefix's gradients with and without the op.
fn run(with_op: bool) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (b, s, heads, dh, p) = (3, 7, 4, 5, 2);
    let proj = leaf(0.2, [b, s, heads * dh]);
    let prefix = leaf(0.9, [1, p, heads * dh]);
    let k = proj.clone().reshape([b, s, heads, dh]).swap_dims(1, 2);
    // The op applies (it leaves anything but a split view alone).
    let view = crate::nn::autodiff::ad(k.clone()).unwrap().primitive;
    assert!(crate::nn::autodiff::Buf::split_heads_source(&view).is_some());
    let k = if with_op { tracked(k).unwrap() } else { k };
    let pre = prefix
        .clone()
        .reshape([1, p, heads, dh])
        .swap_dims(1, 2)
        .expand([b, heads, p, dh]);
    let kv = Tensor::cat(vec![pre, k], 2);
    let w = leaf(0.4, [b * heads, p + s, dh])
        .reshape([b, heads, p + s, dh])
        .detach();
    let y = (kv.clone() * w).sum();
    let g = y.backward();
    (
        vals(kv),
        vals(proj.grad(&g).unwrap()),
        vals(prefix.grad(&g).unwrap()),
    )
}

#[test]
fn kv_site_op_keeps_values_and_gradients() {
    let (a, b) = (run(true), run(false));
    assert_close(
        &[
            ("values", &a.0, &b.0),
            ("projection grad", &a.1, &b.1),
            ("prefix grad", &a.2, &b.2),
        ],
        1e-6,
    );
}
