use burn::tensor::Tensor;

use super::tracked;
use crate::nn::test_support::{assert_close, leaf, vals, A};

/// y, dx, dW (empty when W is frozen) and db of `x Wᵀ + b` for seeded `x` `[n, in]` and `b`,
/// under a seeded weighted sum: through the tracked op (`fused`) or burn's matmul.
type Outs = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

fn values_and_gradients(w: Tensor<A, 2>, n: usize, w_trains: bool, fused: bool) -> Outs {
    let [o, i] = w.dims();
    let w = if w_trains { w.require_grad() } else { w };
    let x = leaf(0.2, [1, n, i]).reshape([n, i]).detach().require_grad();
    let b = leaf(2.2, [1, 1, o]).reshape([o]).detach().require_grad();
    let y = if fused {
        tracked(x.clone(), w.clone(), Some(b.clone())).unwrap()
    } else {
        x.clone().matmul(w.clone().transpose()) + b.clone().unsqueeze::<2>()
    };
    let t = leaf(4.0, [1, n, o]).reshape([n, o]).detach();
    let g = (y.clone() * t).sum().backward();
    let dw = w.grad(&g).map(vals).unwrap_or_default();
    (
        vals(y),
        vals(x.grad(&g).unwrap()),
        dw,
        vals(b.grad(&g).unwrap()),
    )
}

fn assert_same(a: &Outs, b: &Outs) {
    assert_close(
        &[
            ("y", &a.0, &b.0),
            ("dx", &a.1, &b.1),
            ("dw", &a.2, &b.2),
            ("db", &a.3, &b.3),
        ],
        1e-5,
    );
}

/// Values and every gradient against burn's matmul + bias, with and without W training.
#[test]
fn tracked_linear_matches_burn_values_and_gradients() {
    let w = leaf(1.2, [1, 3, 5]).reshape([3, 5]).detach();
    for w_trains in [false, true] {
        let a = values_and_gradients(w.clone(), 7, w_trains, true);
        let b = values_and_gradients(w.clone(), 7, w_trains, false);
        assert_eq!(a.2.len(), if w_trains { 15 } else { 0 });
        assert_same(&a, &b);
    }
}

/// A weight whose input width differs from x's is an error, not a read past its end.
#[test]
fn tracked_linear_refuses_a_weight_that_does_not_fit() {
    let x = leaf(0.2, [1, 7, 5]).reshape([7, 5]);
    let w = leaf(1.2, [1, 3, 6]).reshape([3, 6]);
    assert!(tracked(x, w, None).is_err());
}

/// The few-rows product (decoding steps) equals the GEMM it replaces, across several output
/// chunks with a partial last one, for 1 to `SKINNY_ROWS` rows; and the tracked op switches
/// paths at that size without changing its values.
#[test]
fn skinny_product_equals_the_gemm() {
    use super::{skinny, SKINNY_ROWS};
    use crate::nn::gemm::{matmul, Mat, MatMut, Parallelism};
    let (i, o) = (37, 600);
    let val =
        |n: usize, m: f32| -> Vec<f32> { (0..n).map(|k| (k as f32 * 0.37 + m).sin()).collect() };
    let w = val(o * i, 0.3);
    for n in [1, 3, SKINNY_ROWS] {
        let x = val(n * i, 1.1);
        let mut a = val(n * o, 2.0);
        let mut b = a.clone();
        skinny(&mut a, &x, &w, [n, i, o]);
        matmul(
            &mut MatMut::dense(&mut b, n, o),
            1.0,
            Mat::rows(&x, 0, n, i, i),
            Mat::rows(&w, 0, o, i, i).t(),
            1.0,
            Parallelism::None,
        );
        assert_close(&[("y", &a, &b)], 1e-5);
    }
    // Through the tracked op on either side of the switch.
    for n in [SKINNY_ROWS, SKINNY_ROWS + 1] {
        let x = leaf(0.2, [1, n, 5]).reshape([n, 5]);
        let w = leaf(1.2, [1, 300, 5]).reshape([300, 5]);
        let y = vals(tracked(x.clone(), w.clone(), None).unwrap());
        let want = vals(x.matmul(w.transpose()));
        assert_close(&[("y", &y, &want)], 1e-5);
    }
}

/// A weight held column-major (`column_major`) is read in place, not copied: the tracked op
/// sees that layout; its values and every gradient equal the row-major weight's, on either
/// side of the few-rows switch, frozen and training.
#[test]
fn column_major_weight_gives_the_row_major_values_and_gradients() {
    use super::{column_major, SKINNY_ROWS};
    use crate::nn::{
        autodiff::{ad, Buf},
        bf16::WeightBuf,
    };
    let w0 = leaf(1.2, [1, 40, 9]).reshape([40, 9]).detach();
    let held = column_major(w0.clone());
    let p = ad(held.clone()).unwrap().primitive;
    assert!(
        Buf::transposed_source(&p).is_some(),
        "held weight is a transposed view"
    );
    assert!(WeightBuf::new(p).col_major());
    assert_eq!(vals(held.clone()), vals(w0.clone()), "same values");
    for n in [3, SKINNY_ROWS + 5] {
        for w_trains in [false, true] {
            let a = values_and_gradients(held.clone(), n, w_trains, true);
            let b = values_and_gradients(w0.clone(), n, w_trains, true);
            assert_eq!(a.2.len(), if w_trains { 360 } else { 0 });
            assert_same(&a, &b);
        }
    }
}

/// The bias rows a linear starts from: `n` copies of the row, any `n` (several tasks and a
/// partial last one), and nothing for an empty row or no rows.
#[test]
fn repeat_rows_writes_every_row() {
    use super::{repeat_rows, FILL_ROWS};
    let row: Vec<f32> = (0..7).map(|k| k as f32 - 3.0).collect();
    for n in [1, FILL_ROWS, 3 * FILL_ROWS + 5] {
        let y = repeat_rows(&row, n);
        assert_eq!(y.len(), n * 7);
        assert!(y.chunks_exact(7).all(|r| r == row.as_slice()));
    }
    assert!(repeat_rows(&row, 0).is_empty());
    assert!(repeat_rows(&[], 9).is_empty());
}

/// A low-rank weight (`nn::low_rank`: an adapter's down- and up-projection, LoRA's `A` and
/// `B`) gives burn's values and every gradient through the row kernels, row-major and held
/// column-major, frozen and training, with few rows and many.
#[test]
fn low_rank_weights_give_burns_values_and_gradients() {
    use crate::nn::low_rank::LOW_RANK;
    for (o, i) in [
        (8, 37),
        (37, 8),
        (LOW_RANK, LOW_RANK + 1),
        (LOW_RANK + 1, 1),
        (2, 3),
    ] {
        assert_matches_burn(o, i, &[4, 150], 1.7);
    }
}

/// A seeded `[o, i]` weight, row- and column-major, at each row count of `rows`, frozen and
/// training: values and every gradient equal burn's matmul + bias.
fn assert_matches_burn(o: usize, i: usize, rows: &[usize], seed: f32) {
    use super::column_major;
    let w0 = leaf(seed, [1, o, i]).reshape([o, i]).detach();
    for w in [w0.clone(), column_major(w0.clone())] {
        for &n in rows {
            for w_trains in [false, true] {
                let a = values_and_gradients(w.clone(), n, w_trains, true);
                let b = values_and_gradients(w0.clone(), n, w_trains, false);
                assert_eq!(a.2.len(), if w_trains { o * i } else { 0 });
                assert_same(&a, &b);
            }
        }
    }
}

/// Without gradients on the f32 GEMM, `gelu_product` (the product written once, then the bias
/// and GELU in one pass) gives bit for bit what `linear` then `gelu` give, for a row-major and
/// a column-major weight, across several row chunks and a partial last one.
#[test]
fn f32_gelu_product_equals_the_linear_then_gelu() {
    use super::{column_major, gelu_product, linear};
    use crate::nn::value::{fp, ft};
    let x = leaf(0.7, [3, 41, 24]).detach();
    let w0 = leaf(1.9, [1, 37, 24]).reshape([37, 24]).detach();
    let b = leaf(2.6, [1, 1, 37]).reshape([37]).detach();
    for w in [w0.clone(), column_major(w0)] {
        let fused = gelu_product::<A>(&x, fp(w.clone()), fp(b.clone()))
            .unwrap()
            .expect("the f32 path applies at these shapes");
        let y = ft::<A, 3>(linear::<A>(fp(x.clone()), fp(w), Some(fp(b.clone()))).unwrap());
        let mut want = vals(y);
        crate::nn::gelu(&mut want);
        let got = vals(fused);
        assert_eq!(got.len(), 3 * 41 * 37);
        let same = got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "fused bias + GELU differs from linear then gelu");
    }
}

/// Between the few-rows switch and `RELAYOUT_ROWS`, the forward of a row-major weight and the
/// backward of a column-major one multiply a transposed copy: values and every gradient still
/// equal burn's matmul + bias, frozen and training.
#[test]
fn relaid_weights_give_burns_values_and_gradients() {
    use super::{RELAYOUT_ROWS, SKINNY_ROWS};
    let n = 3 * SKINNY_ROWS + 7;
    assert!(n < RELAYOUT_ROWS);
    // Both aspects: a wide input relays a row-major weight in the forward, a wide output a
    // column-major one in the backward.
    for [o, i] in [[45, 38], [38, 45]] {
        assert_matches_burn(o, i, &[n], 0.4);
    }
}

/// The blocked, banded transpose moves every element, at sizes that are and are not
/// multiples of its block.
#[test]
fn transposed_moves_every_element() {
    use super::transposed;
    for (rows, cols) in [(1, 1), (1, 40), (33, 70), (70, 33), (64, 64), (0, 5)] {
        let v: Vec<f32> = (0..rows * cols).map(|k| k as f32).collect();
        let t = transposed(&v, rows, cols);
        assert_eq!(t.len(), rows * cols);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(
                    t[c * rows + r],
                    v[r * cols + c],
                    "({r}, {c}) of {rows}x{cols}"
                );
            }
        }
    }
}
