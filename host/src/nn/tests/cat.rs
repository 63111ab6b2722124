use burn::tensor::Tensor;

use super::tracked;
use crate::nn::test_support::{assert_close, leaf, vals, A};

/// The inputs of one case as views of tracked leaves — a head split (`swap_dims`), a
/// broadcast (`expand` of a permuted leaf), a flipped one (negative strides), a narrowed
/// block and a contiguous one — concatenated along `dim` by the op or by burn's `cat`, then
/// scored against fixed weights: the values and every leaf's gradient.
fn run(dim: usize, parts: &[&str], with_op: bool) -> (Vec<f32>, Vec<Vec<f32>>) {
    let (b, heads, dh) = (3, 4, 5);
    // Each part is `[b, heads, len, dh]` along dim 2; along another dim the parts are
    // transposed so that `dim` is the one they differ in.
    let mut leaves = Vec::new();
    let mut xs: Vec<Tensor<A, 4>> = Vec::new();
    for (k, part) in parts.iter().enumerate() {
        let len = 2 + k;
        let seed = 0.3 + k as f32;
        let x = match *part {
            "split" => {
                let p = leaf(seed, [b, len, heads * dh]);
                leaves.push(p.clone());
                p.reshape([b, len, heads, dh]).swap_dims(1, 2)
            }
            "broadcast" => {
                let p = leaf(seed, [1, len, heads * dh]);
                leaves.push(p.clone());
                p.reshape([1, len, heads, dh])
                    .swap_dims(1, 2)
                    .expand([b, heads, len, dh])
            }
            "flipped" => {
                let p = leaf(seed, [b * heads, len, dh]);
                leaves.push(p.clone());
                p.reshape([b, heads, len, dh]).flip([2, 3])
            }
            "narrowed" => {
                let p = leaf(seed, [b * heads, len + 3, dh + 2]);
                leaves.push(p.clone());
                p.reshape([b, heads, len + 3, dh + 2])
                    .narrow(2, 1, len)
                    .narrow(3, 2, dh)
            }
            _ => {
                let p = leaf(seed, [b * heads, len, dh]);
                leaves.push(p.clone());
                p.reshape([b, heads, len, dh])
            }
        };
        // Bring the varying dim (2) to `dim`.
        xs.push(if dim == 2 { x } else { x.swap_dims(2, dim) });
    }
    let y = if with_op {
        tracked(&xs, dim).unwrap().expect("the op applies")
    } else {
        Tensor::cat(xs, dim)
    };
    let n = y.shape().num_elements();
    let w: Vec<f32> = (0..n).map(|i| (i as f32 * 0.77).cos()).collect();
    let w = Tensor::<A, 1>::from_floats(w.as_slice(), &Default::default()).reshape(y.dims());
    let g = (y.clone() * w).sum().backward();
    let grads = leaves.iter().map(|l| vals(l.grad(&g).unwrap())).collect();
    (vals(y), grads)
}

/// Values and gradients equal burn's `cat` (to rounding: the gradients are the same
/// products summed in the same order) for 2, 3 and 4 inputs of every layout, along the first,
/// a middle and the last dim — prefix tuning's case (a broadcast then a head split, dim 2)
/// among them.
#[test]
fn cat_equals_burns_cat() {
    let cases: [&[&str]; 5] = [
        &["broadcast", "split"],
        &["split", "broadcast", "flipped"],
        &["narrowed", "contiguous", "split", "broadcast"],
        &["flipped", "narrowed"],
        &["contiguous", "contiguous"],
    ];
    for dim in [0, 1, 2, 3] {
        for parts in cases {
            let (a, b) = (run(dim, parts, true), run(dim, parts, false));
            let ctx = format!("dim {dim}, {parts:?}");
            assert_close(&[(&format!("{ctx}: values"), &a.0, &b.0)], 1e-6);
            for (k, (ga, gb)) in a.1.iter().zip(&b.1).enumerate() {
                assert_close(&[(&format!("{ctx}: grad of input {k}"), ga, gb)], 1e-5);
            }
        }
    }
}

/// One input or five: nothing done (burn's `cat` runs).
#[test]
fn other_counts_are_left_to_burn() {
    let x = leaf(0.1, [2, 3, 4]);
    assert!(tracked(std::slice::from_ref(&x), 1).unwrap().is_none());
    assert!(tracked(&vec![x; 5], 1).unwrap().is_none());
}
