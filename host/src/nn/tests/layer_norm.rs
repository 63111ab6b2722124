use burn::tensor::{Tensor, TensorData};

use super::{layer_norm, tracked};
use crate::nn::test_support::{assert_close, leaf, vals, A};

/// A tracked weight and bias `[d]` of smooth, distinct values.
fn weight_and_bias(d: usize) -> (Tensor<A, 1>, Tensor<A, 1>) {
    let wv: Vec<f32> = (0..d).map(|i| 1.0 + (i as f32 * 0.3).cos() * 0.2).collect();
    let bv: Vec<f32> = (0..d).map(|i| (i as f32 * 0.7).sin() * 0.1).collect();
    let t = |v: Vec<f32>| {
        Tensor::<A, 1>::from_data(TensorData::new(v, [d]), &Default::default()).require_grad()
    };
    (t(wv), t(bv))
}

/// Values and the gradients of input, weight and bias against burn's layer norm.
#[test]
fn tracked_layer_norm_matches_burn_values_and_gradients() {
    let d = 40;
    let run = |fused: bool| {
        let x = (leaf(0.3, [2, 3, d]) * 3.0 + 0.5).detach().require_grad();
        let (w, b) = weight_and_bias(d);
        let y = if fused {
            tracked(x.clone(), w.clone(), b.clone(), 1e-12).unwrap()
        } else {
            layer_norm(x.clone(), Some(w.clone()), Some(b.clone()), 1e-12)
        };
        let t = leaf(9.0, [2, 3, d]).detach();
        let g = (y.clone() * t).sum().backward();
        (
            vals(y),
            vals(x.grad(&g).unwrap()),
            vals(w.grad(&g).unwrap()),
            vals(b.grad(&g).unwrap()),
        )
    };
    let (a, b) = (run(true), run(false));
    assert_close(
        &[
            ("y", &a.0, &b.0),
            ("dx", &a.1, &b.1),
            ("dw", &a.2, &b.2),
            ("db", &a.3, &b.3),
        ],
        1e-4,
    );
}

/// A weight of another width than the input is an error, not a short read.
#[test]
fn tracked_layer_norm_refuses_a_weight_of_another_width() {
    let x = leaf(0.3, [2, 3, 8]);
    let w = Tensor::<A, 1>::ones([6], &Default::default());
    let b = Tensor::<A, 1>::zeros([8], &Default::default());
    let e = tracked(x, w, b, 1e-12).unwrap_err();
    assert!(e.message.contains("must be [8]"), "{}", e.message);
}

/// The no-grad kernel equals burn's layer norm (and the tracked op's forward).
#[test]
fn no_grad_rows_kernel_matches_burn() {
    let d = 40;
    let x = (leaf(0.3, [2, 3, d]) * 3.0 + 0.5).detach();
    let wv: Vec<f32> = (0..d).map(|i| 1.0 + (i as f32 * 0.3).cos() * 0.2).collect();
    let bv: Vec<f32> = (0..d).map(|i| (i as f32 * 0.7).sin() * 0.1).collect();
    let dev = Default::default();
    let w = Tensor::<A, 1>::from_data(TensorData::new(wv.clone(), [d]), &dev);
    let b = Tensor::<A, 1>::from_data(TensorData::new(bv.clone(), [d]), &dev);
    let want = vals(layer_norm(x.clone(), Some(w), Some(b), 1e-12));
    let mut got = vals(x);
    super::layer_norm_rows(&mut got, &wv, &bv, 1e-12);
    assert_close(&[("y", &got, &want)], 1e-5);
}

/// `LN(a + r)` in one kernel: values and the gradients of both summands, weight and bias
/// against burn's add and layer norm; the no-grad rows give the same values.
#[test]
fn layer_norm_of_a_sum_matches_burn_values_and_gradients() {
    let d = 40;
    let run = |fused: bool| {
        let a = (leaf(0.3, [2, 3, d]) * 3.0 + 0.5).detach().require_grad();
        let r = (leaf(1.7, [2, 3, d]) * 2.0).detach().require_grad();
        let (w, b) = weight_and_bias(d);
        let y = if fused {
            super::tracked_add(a.clone(), r.clone(), w.clone(), b.clone(), 1e-12).unwrap()
        } else {
            layer_norm(
                a.clone() + r.clone(),
                Some(w.clone()),
                Some(b.clone()),
                1e-12,
            )
        };
        let t = leaf(9.0, [2, 3, d]).detach();
        let g = (y.clone() * t).sum().backward();
        let rows = super::add_layer_norm_rows(
            vals(a.clone()),
            &vals(r.clone()),
            &vals(w.clone()),
            &vals(b.clone()),
            1e-12,
        );
        (
            vals(y),
            vals(a.grad(&g).unwrap()),
            vals(r.grad(&g).unwrap()),
            vals(w.grad(&g).unwrap()),
            vals(b.grad(&g).unwrap()),
            rows,
        )
    };
    let (f, g) = (run(true), run(false));
    assert_close(
        &[
            ("y", &f.0, &g.0),
            ("da", &f.1, &g.1),
            ("dr", &f.2, &g.2),
            ("dw", &f.3, &g.3),
            ("db", &f.4, &g.4),
            ("no-grad rows", &f.5, &g.0),
        ],
        1e-4,
    );
}

/// `LN(dropout(a) + r)` in one op equals the separate tracked dropout (same `p`, same seed)
/// followed by the tracked `LN(a + r)` bit for bit: the output and the gradients of `a`, `r`,
/// the weight and the bias, over enough rows that the row blocks and the backward's chunks of
/// the mask do not line up with each other; `p = 0` is `LN(a + r)`; a bad `p` is an error.
#[test]
fn dropout_add_layer_norm_equals_dropout_then_layer_norm_bit_for_bit() {
    let (rows, d) = (7 * 131, 40);
    let value = |seed: f32| {
        let v: Vec<f32> = (0..rows * d)
            .map(|i| ((i as f32 * 0.61 + seed).sin() * 2.3) + seed * 0.1)
            .collect();
        Tensor::<A, 3>::from_data(TensorData::new(v, [7, 131, d]), &Default::default())
            .require_grad()
    };
    for p in [0.1, 0.0] {
        let run = |fused: bool| {
            let (a, r) = (value(0.3), value(1.7));
            let (w, b) = weight_and_bias(d);
            let y = if fused {
                super::tracked_dropout_add(
                    a.clone(),
                    r.clone(),
                    w.clone(),
                    b.clone(),
                    (p, 99),
                    1e-12,
                )
                .unwrap()
            } else {
                let dropped = crate::nn::dropout::tracked(a.clone(), p, 99).unwrap();
                super::tracked_add(dropped, r.clone(), w.clone(), b.clone(), 1e-12).unwrap()
            };
            let t = value(9.0).detach();
            let g = (y.clone() * t).sum().backward();
            [
                vals(y),
                vals(a.grad(&g).unwrap()),
                vals(r.grad(&g).unwrap()),
                vals(w.grad(&g).unwrap()),
                vals(b.grad(&g).unwrap()),
            ]
        };
        let (f, c) = (run(true), run(false));
        for (name, (x, y)) in ["y", "da", "dr", "dw", "db"].iter().zip(f.iter().zip(&c)) {
            assert!(x == y, "p = {p}: {name} differs");
        }
        let zeros = f[1].iter().filter(|&&x| x == 0.0).count() as f64 / f[1].len() as f64;
        assert!((zeros - p).abs() < 0.02, "p = {p}: {zeros} of da dropped");
    }
    let (w, b) = weight_and_bias(d);
    let err = super::tracked_dropout_add(value(0.3), value(1.7), w, b, (1.0, 1), 1e-12);
    assert!(err.is_err());
}
