use burn::tensor::{Tensor, TensorData};

use super::{
    attention, attention_with, flash_backward, flash_forward, Dims, KvLayout, Masks, ScoreTerms,
};
use crate::nn::attention_tracked::{tracked, tracked_split, tracked_split_with};
use crate::nn::{
    attention_dense,
    flash::{Dropout, BC, BR},
    test_support::{assert_close, leaf, vals, A},
};

/// The kernel against a plain loop over the definition, with a padded key.
#[test]
fn attention_matches_the_definition() {
    let (b, t, s, heads, dh) = (2, 3, 4, 2, 3);
    let h = heads * dh;
    let val = |i: usize, m: f32| (i as f32 * 0.37 + m).sin() * 1.3;
    let q: Vec<f32> = (0..b * t * h).map(|i| val(i, 0.1)).collect();
    let k: Vec<f32> = (0..b * s * h).map(|i| val(i, 0.7)).collect();
    let v: Vec<f32> = (0..b * s * h).map(|i| val(i, 1.9)).collect();
    let keep = [true, true, true, false, true, true, true, true];
    let scale = 0.5;
    let got = attention(&q, &k, &v, &keep, [b, t, s], heads, scale).unwrap();
    for bi in 0..b {
        for hi in 0..heads {
            for i in 0..t {
                let sc: Vec<f64> = (0..s)
                    .map(|j| {
                        let dot: f64 = (0..dh)
                            .map(|d| {
                                q[(bi * t + i) * h + hi * dh + d] as f64
                                    * k[(bi * s + j) * h + hi * dh + d] as f64
                            })
                            .sum();
                        if keep[bi * s + j] {
                            dot * scale as f64
                        } else {
                            f64::NEG_INFINITY
                        }
                    })
                    .collect();
                let max = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..dh {
                    let want: f64 = (0..s)
                        .map(|j| e[j] / z * v[(bi * s + j) * h + hi * dh + d] as f64)
                        .sum();
                    let have = got[(bi * t + i) * h + hi * dh + d] as f64;
                    assert!((have - want).abs() < 1e-5, "{have} vs {want}");
                }
            }
        }
    }
}

/// burn's own ops: split heads, scores with the additive mask, softmax, merge; `k`, `v` may
/// have another length than `q`.
fn reference(
    q: Tensor<A, 3>,
    k: Tensor<A, 3>,
    v: Tensor<A, 3>,
    keep: &[bool],
    heads: usize,
) -> Tensor<A, 3> {
    let [b, t, h] = q.dims();
    let s = k.dims()[1];
    let dh = h / heads;
    let split = |x: Tensor<A, 3>, n: usize| x.reshape([b, n, heads, dh]).swap_dims(1, 2);
    let m: Vec<f32> = keep
        .iter()
        .map(|&k| if k { 0.0 } else { f32::MIN })
        .collect();
    let mask = Tensor::<A, 2>::from_data(TensorData::new(m, [b, s]), &Default::default())
        .unsqueeze_dim::<3>(1)
        .unsqueeze_dim::<4>(1);
    let scores = split(q, t).matmul(split(k, s).swap_dims(2, 3)) / (dh as f64).sqrt() + mask;
    burn::tensor::activation::softmax(scores, 3)
        .matmul(split(v, s))
        .swap_dims(1, 2)
        .reshape([b, t, h])
}

/// One comparison of the tracked kernel with burn's ops: output and gradients of q, k, v.
#[allow(clippy::too_many_arguments)]
fn compare(
    b: usize,
    t: usize,
    s: usize,
    heads: usize,
    h: usize,
    keep: &[bool],
    split: bool,
    tol: f32,
) {
    let w = leaf(3.0, [b, t, h]).detach();
    let run = |fused: bool| {
        let (q, k, v) = (
            leaf(0.1, [b, t, h]),
            leaf(0.7, [b, s, h]),
            leaf(1.9, [b, s, h]),
        );
        let scale = 1.0 / ((h / heads) as f32).sqrt();
        let out = if !fused {
            reference(q.clone(), k.clone(), v.clone(), keep, heads)
        } else if split {
            // The layout a key/value site returns: [b, heads, s, dh].
            let dh = h / heads;
            let sp = |x: Tensor<A, 3>| x.reshape([b, s, heads, dh]).swap_dims(1, 2);
            tracked_split(q.clone(), sp(k.clone()), sp(v.clone()), keep, scale, 0.0, 0).unwrap()
        } else {
            tracked(q.clone(), k.clone(), v.clone(), keep, heads, scale, 0.0, 0).unwrap()
        };
        let g = (out.clone() * w.clone()).sum().backward();
        let grad = |x: &Tensor<A, 3>| vals(x.grad(&g).unwrap());
        (vals(out), grad(&q), grad(&k), grad(&v))
    };
    let (a, b2) = (run(true), run(false));
    // Relative to the largest reference value: long sums (dk, dv over many queries) grow.
    for (name, x, y) in [
        ("out", &a.0, &b2.0),
        ("dq", &a.1, &b2.1),
        ("dk", &a.2, &b2.2),
        ("dv", &a.3, &b2.3),
    ] {
        let big = y.iter().fold(1f32, |m, v| m.max(v.abs()));
        let d = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(
            d < tol * big,
            "{name}: max abs diff {d} (largest value {big})"
        );
    }
}

/// The tracked kernel's output and its gradients of q, k and v equal burn's, with a padded
/// key, for keys as long as the queries and for longer keys (cross-attention, a prefix), with
/// the keys in either layout.
#[test]
fn tracked_attention_matches_burn_values_and_gradients() {
    let (b, t, heads, h) = (2, 5, 2, 8);
    for s in [5, 7] {
        let mut keep = vec![true; b * s];
        keep[4] = false;
        for split in [false, true] {
            compare(b, t, s, heads, h, &keep, split, 1e-5);
        }
    }
}

/// Several query and key blocks (online softmax across blocks), `s != t`, a whole key block
/// dropped in one batch (skipped), scattered padding in the other, and a batch with no key
/// kept at all (uniform, as HF's all-`finfo.min` mask gives), in both layouts.
#[test]
fn blocked_attention_matches_burn_across_blocks_and_masks() {
    let (heads, h) = (2, 8);
    let (t, s) = (BR + 7, 2 * BC + 9);
    let mut keep = vec![true; 3 * s];
    // Batch 0: only the first key block; batch 1: scattered; batch 2: nothing kept.
    keep[BC..s].fill(false);
    keep[s..2 * s]
        .iter_mut()
        .step_by(5)
        .for_each(|k| *k = false);
    keep[2 * s..].fill(false);
    for split in [false, true] {
        compare(3, t, s, heads, h, &keep, split, 1e-5);
    }
    // Queries longer than keys, one short key block.
    compare(
        1,
        2 * BR + 3,
        3,
        heads,
        h,
        &[true, false, true],
        false,
        1e-5,
    );
}

/// The encoder-decoders' terms: a per-head score bias `[heads, t, s]` (T5's relative
/// positions) and a causal mask whose offset counts prepended and cached keys, across several
/// query and key blocks (whole blocks skipped above the diagonal), with a padded key — the
/// tracked kernel's output and q, k, v gradients and the no-grad kernel's output against
/// burn's ops with the same terms added to the scores.
#[test]
fn score_bias_and_causal_mask_match_burn_across_blocks() {
    let (b, heads, dh) = (2, 2, 4);
    let h = heads * dh;
    for (t, s, causal, with_pos) in [
        (BR + 9, 3 + 2 + BR + 9, Some(3 + 2), true), // prefix 3, 2 cached positions
        (2 * BR + 3, 2 * BR + 3, Some(0), false),    // plain decoder self-attention
        (BR + 1, BC + 40, None, true),               // T5's encoder: bias, no causal mask
        (1, 2 * BC + 5, Some(2 * BC + 4), true),     // one decoding step, long cache
    ] {
        let val = |n: usize, m: f32| -> Vec<f32> {
            (0..n).map(|i| (i as f32 * 0.37 + m).sin() * 0.7).collect()
        };
        let pos = with_pos.then(|| val(heads * t * s, 4.1));
        let mut keep = vec![true; b * s];
        if causal.is_none() {
            keep[s + 7] = false;
        }
        let scale = 0.6;
        let terms = ScoreTerms {
            pos: pos.clone(),
            causal,
            bf16: false,
        };
        // burn's ops with the terms written out as an additive `[1 or b, heads, t, s]` tensor.
        let mut add = vec![0f32; b * heads * t * s];
        for bi in 0..b {
            for hi in 0..heads {
                for i in 0..t {
                    for j in 0..s {
                        let e = ((bi * heads + hi) * t + i) * s + j;
                        if let Some(p) = &pos {
                            add[e] += p[(hi * t + i) * s + j];
                        }
                        let hidden = causal.is_some_and(|off| j > i + off);
                        if hidden || !keep[bi * s + j] {
                            add[e] = f32::MIN;
                        }
                    }
                }
            }
        }
        let add =
            Tensor::<A, 4>::from_data(TensorData::new(add, [b, heads, t, s]), &Default::default());
        let w = leaf(3.0, [b, t, h]).detach();
        let sp = |x: Tensor<A, 3>| x.reshape([b, s, heads, dh]).swap_dims(1, 2);
        let run = |fused: bool| {
            let (q, k, v) = (
                leaf(0.1, [b, t, h]),
                leaf(0.7, [b, s, h]),
                leaf(1.9, [b, s, h]),
            );
            let out = if fused {
                tracked_split_with(
                    q.clone(),
                    sp(k.clone()),
                    sp(v.clone()),
                    &keep,
                    scale,
                    0.0,
                    0,
                    terms.clone(),
                )
                .unwrap()
            } else {
                let qs = q.clone().reshape([b, t, heads, dh]).swap_dims(1, 2);
                let scores = qs.matmul(sp(k.clone()).swap_dims(2, 3)) * scale as f64 + add.clone();
                burn::tensor::activation::softmax(scores, 3)
                    .matmul(sp(v.clone()))
                    .swap_dims(1, 2)
                    .reshape([b, t, h])
            };
            let g = (out.clone() * w.clone()).sum().backward();
            let grad = |x: &Tensor<A, 3>| vals(x.grad(&g).unwrap());
            (vals(out), grad(&q), grad(&k), grad(&v))
        };
        let (a, r) = (run(true), run(false));
        let big = |v: &Vec<f32>| v.iter().fold(1f32, |m, x| m.max(x.abs()));
        for (name, x, y) in [
            ("out", &a.0, &r.0),
            ("dq", &a.1, &r.1),
            ("dk", &a.2, &r.2),
            ("dv", &a.3, &r.3),
        ] {
            let d = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(d < 1e-5 * big(y), "t={t} s={s} {name}: max abs diff {d}");
        }
        // The no-grad kernel (keys split by head, as the tracked one read them).
        let kv = |seed| vals(sp(leaf(seed, [b, s, h])));
        let q = vals(leaf(0.1, [b, t, h]));
        let out = attention_with(
            &q,
            &kv(0.7),
            &kv(1.9),
            &keep,
            [b, t, s],
            heads,
            scale,
            KvLayout::Heads,
            terms,
        )
        .unwrap();
        let d = out
            .iter()
            .zip(&r.0)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(
            d < 1e-5 * big(&r.0),
            "t={t} s={s} no-grad: max abs diff {d}"
        );
    }
    // A bias of the wrong size is an error naming the shape it needs.
    let q = vec![0f32; 2 * 3 * 4];
    let terms = ScoreTerms {
        pos: Some(vec![0.0; 5]),
        causal: None,
        bf16: false,
    };
    let err = attention_with(
        &q,
        &q,
        &q,
        &[true; 6],
        [2, 3, 3],
        2,
        1.0,
        KvLayout::Time,
        terms,
    )
    .unwrap_err();
    assert!(err.message.contains("score bias"), "{}", err.message);
}

/// The blocked kernel against the dense one it replaced (whole `[t, s]` probabilities), with
/// dropout on (the same hashed mask), forward and backward, over several blocks.
#[test]
fn blocked_attention_equals_the_dense_kernel_with_dropout() {
    let (b, heads, h) = (2, 3, 12);
    let (t, s) = (BR + 5, BC + 20);
    let val =
        |n: usize, m: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * 0.37 + m).sin()).collect() };
    let (q, k, v, g) = (
        val(b * t * h, 0.1),
        val(b * s * h, 0.7),
        val(b * s * h, 1.9),
        val(b * t * h, 2.3),
    );
    let mut keep = vec![true; b * s];
    keep[3] = false;
    keep[s + BC + 1] = false;
    for layout in [KvLayout::Time, KvLayout::Heads] {
        let mut d = Dims::check(
            q.len(),
            k.len(),
            v.len(),
            keep.len(),
            [b, t, s],
            heads,
            h,
            0.4,
        )
        .unwrap();
        d.layout = layout;
        d.drop = Dropout::new(0.2, 77);
        let masks = Masks::new(&keep, &d);
        let mut lse = vec![0f32; b * heads * t];
        let o = flash_forward(&q, &k, &v, &masks, d, Some(&mut lse));
        let mut probs = vec![0f32; b * heads * t * s];
        let o_ref = attention_dense::forward(&q, &k, &v, &keep, d, Some(&mut probs));
        let super::Grads { dq, dk, dv, .. } =
            flash_backward(&q, &k, &v, &o, &lse, &g, &masks, d, false);
        let (rq, rk, rv) = attention_dense::backward(&q, &k, &v, &probs, &g, d);
        assert_close(
            &[
                ("out", &o, &o_ref),
                ("dq", &dq, &rq),
                ("dk", &dk, &rk),
                ("dv", &dv, &rv),
            ],
            1e-5,
        );
        // Dropout did act.
        d.drop = None;
        let plain = flash_forward(&q, &k, &v, &masks, d, None);
        assert!(plain.iter().zip(&o).any(|(a, b)| (a - b).abs() > 1e-3));
    }
}

/// Shapes the per-head offsets cannot serve are an error, not a read out of bounds: k and v
/// of different lengths, another width or batch, a mask of the wrong size, heads that do not
/// divide the width.
#[test]
fn tracked_attention_refuses_shapes_that_do_not_fit() {
    let q = leaf(0.1, [2, 5, 8]);
    let k = |s: usize, h: usize| leaf(0.7, [2, s, h]);
    let keep = vec![true; 2 * 5];
    let err = |r: Result<Tensor<A, 3>, peft_api::ApiError>| r.unwrap_err().message.to_string();
    let m = err(tracked(q.clone(), k(5, 8), k(3, 8), &keep, 2, 0.5, 0.0, 0));
    assert!(m.contains("do not fit"), "{m}");
    let m = err(tracked(q.clone(), k(5, 6), k(5, 6), &keep, 2, 0.5, 0.0, 0));
    assert!(m.contains("do not fit"), "{m}");
    let m = err(tracked(q.clone(), k(7, 8), k(7, 8), &keep, 2, 0.5, 0.0, 0));
    assert!(m.contains("mask"), "{m}");
    let m = err(tracked(q.clone(), k(5, 8), k(5, 8), &keep, 3, 0.5, 0.0, 0));
    assert!(m.contains("heads"), "{m}");
    let m = err(tracked(q, k(5, 8), k(5, 8), &keep, 2, 0.5, 1.0, 0));
    assert!(m.contains("dropout"), "{m}");
    // The no-grad kernel checks the same.
    let (q, kv) = (vec![0f32; 2 * 5 * 8], vec![0f32; 2 * 3 * 8]);
    assert!(attention(&q, &kv, &kv, &keep, [2, 5, 5], 2, 0.5).is_err());
}

/// With dropout on the probabilities, the gradient still is the derivative of what the
/// forward computed (same seed, same mask): a central difference along a direction agrees.
#[test]
fn tracked_attention_dropout_gradient_is_consistent() {
    let (b, t, heads, h) = (1, 6, 2, 4);
    let keep = [true; 6];
    let dir = leaf(5.0, [b, t, h]).detach();
    let loss = |q: Tensor<A, 3>| {
        let (k, v) = (leaf(0.7, [b, t, h]).detach(), leaf(1.9, [b, t, h]).detach());
        let out = tracked(q, k, v, &keep, heads, 0.5, 0.3, 1234).unwrap();
        (out.clone() * out).sum()
    };
    let q = leaf(0.1, [b, t, h]);
    let g = loss(q.clone()).backward();
    let analytic: f32 = vals(q.grad(&g).unwrap())
        .iter()
        .zip(vals(dir.clone()))
        .map(|(a, b)| a * b)
        .sum();
    let eps = 1e-2;
    let at = |s: f64| vals(loss(q.clone().detach() + dir.clone() * s))[0];
    let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f32);
    assert!(
        (analytic - numeric).abs() < 2e-2 * analytic.abs().max(1.0),
        "{analytic} vs {numeric}"
    );
    // Dropout did act: without it the loss differs.
    let plain = {
        let (k, v) = (leaf(0.7, [b, t, h]).detach(), leaf(1.9, [b, t, h]).detach());
        let out = tracked(q.clone().detach(), k, v, &keep, heads, 0.5, 0.0, 1234).unwrap();
        vals((out.clone() * out).sum())[0]
    };
    assert!((plain - at(0.0)).abs() > 1e-4);
}
