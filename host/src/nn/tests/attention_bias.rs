//! `tracked_biased`: attention with a tracked additive score bias `[heads, t, s]` against
//! burn's composed ops, values and the gradients of q, k, v and the bias, across the
//! kernel's blocks, with padded keys, a batch with no key kept, and a causal mask.
use burn::tensor::{Tensor, TensorData};

use super::tracked_biased;
use crate::nn::{
    flash::{BC, BR},
    test_support::{leaf, vals, A},
};

#[test]
fn a_tracked_score_bias_gets_the_score_gradient_summed_over_the_batch() {
    let (b, heads, dh) = (3, 2, 4);
    let h = heads * dh;
    for (t, s, causal) in [
        (5, 7, None),
        (BR + 9, BC + 40, None),
        (2 * BR + 3, 2 * BR + 3, Some(0)),
        (BR + 2, BR + 6, Some(4)),
    ] {
        let mut keep = vec![true; b * s];
        keep[s + 3] = false;
        if causal.is_none() {
            // The last batch keeps no key: it attends uniformly, and its score gradient
            // still reaches the bias (as through HF's additive `finfo.min` mask).
            keep[2 * s..].fill(false);
        }
        let scale = 0.45;
        let mut add = vec![0f32; b * heads * t * s];
        for bi in 0..b {
            for i in 0..t {
                for j in 0..s {
                    let hidden = causal.is_some_and(|off| j > i + off);
                    if hidden || !keep[bi * s + j] {
                        for hi in 0..heads {
                            add[((bi * heads + hi) * t + i) * s + j] = f32::MIN;
                        }
                    }
                }
            }
        }
        let add =
            Tensor::<A, 4>::from_data(TensorData::new(add, [b, heads, t, s]), &Default::default());
        let w = leaf(3.0, [b, t, h]).detach();
        let run = |fused: bool| {
            let (q, k, v, pos) = (
                leaf(0.1, [b, t, h]),
                leaf(0.7, [b, s, h]),
                leaf(1.9, [b, s, h]),
                leaf(4.1, [heads, t, s]),
            );
            let out = if fused {
                tracked_biased(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    &keep,
                    heads,
                    scale,
                    pos.clone(),
                    causal,
                )
                .unwrap()
            } else {
                let sp = |x: Tensor<A, 3>, n| x.reshape([b, n, heads, dh]).swap_dims(1, 2);
                let scores = sp(q.clone(), t).matmul(sp(k.clone(), s).swap_dims(2, 3))
                    * scale as f64
                    + pos.clone().unsqueeze_dim::<4>(0)
                    + add.clone();
                burn::tensor::activation::softmax(scores, 3)
                    .matmul(sp(v.clone(), s))
                    .swap_dims(1, 2)
                    .reshape([b, t, h])
            };
            let g = (out.clone() * w.clone()).sum().backward();
            let grad = |x: &Tensor<A, 3>| vals(x.grad(&g).unwrap());
            [vals(out), grad(&q), grad(&k), grad(&v), grad(&pos)]
        };
        let (a, r) = (run(true), run(false));
        for (name, x, y) in ["out", "dq", "dk", "dv", "dbias"]
            .iter()
            .zip(&a)
            .zip(&r)
            .map(|((n, x), y)| (n, x, y))
        {
            let big = y.iter().fold(1f32, |m, x| m.max(x.abs()));
            let d = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(
                d < 1e-5 * big,
                "t={t} s={s} causal={causal:?} {name}: max abs diff {d}"
            );
        }
    }
}

#[test]
fn a_score_bias_of_the_wrong_shape_is_refused() {
    let (q, k, v) = (
        leaf(0.1, [2, 3, 8]),
        leaf(0.7, [2, 5, 8]),
        leaf(1.9, [2, 5, 8]),
    );
    let err = tracked_biased(q, k, v, &[true; 10], 2, 0.5, leaf(4.1, [2, 5, 3]), None).unwrap_err();
    assert!(
        err.to_string().contains("[heads, t, s] = [2, 3, 5]"),
        "{err}"
    );
}
