use burn::tensor::{DType, Tensor, TensorData};
use half::bf16;

use super::{round, rounded, tensor, to_f32, widen};
use crate::nn::{
    linear::tracked,
    test_support::{leaf, vals, A},
};

/// Rounding is to the nearest bf16 with ties to even, widening is exact, and the relative
/// error of a normal value is at most 2⁻⁸ (half a unit in the last of 8 significant bits).
#[test]
fn rounding_is_nearest_even_and_widening_exact() {
    // 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷: ties go to the even one, 1.
    let half_ulp = 1.0 + 2f32.powi(-8);
    // 1 + 3·2⁻⁸ lies halfway between 1 + 2⁻⁷ and 1 + 2·2⁻⁷: to the even one, 1 + 2·2⁻⁷.
    let three = 1.0 + 3.0 * 2f32.powi(-8);
    let above = f32::from_bits(half_ulp.to_bits() + 1);
    let x = [
        half_ulp,
        three,
        above,
        -half_ulp,
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    let r = rounded(&x);
    assert_eq!(r[0], 1.0);
    assert_eq!(r[1], 1.0 + 2.0 * 2f32.powi(-7));
    assert_eq!(r[2], 1.0 + 2f32.powi(-7), "just above the tie rounds up");
    assert_eq!(r[3], -1.0);
    assert_eq!(r[4].to_bits(), 0.0f32.to_bits());
    assert_eq!(r[5].to_bits(), (-0.0f32).to_bits());
    assert_eq!(r[6], f32::INFINITY);
    assert_eq!(r[7], f32::NEG_INFINITY);
    assert!(rounded(&[f32::NAN])[0].is_nan());

    let v: Vec<f32> = (0..10_000)
        .map(|i| ((i as f32) * 0.7318).sin() * 10f32.powi(i % 9 - 4))
        .collect();
    let r = rounded(&v);
    for (a, b) in v.iter().zip(&r) {
        assert!((a - b).abs() <= a.abs() * 2f32.powi(-8), "{a} -> {b}");
    }
    // A bf16 value survives the round trip bit for bit.
    let b: Vec<bf16> = round(&v);
    assert_eq!(round(&widen(&b)), b);
}

/// A bf16 tensor holds the rounded values and widens back to them.
#[test]
fn bf16_tensors_hold_the_rounded_values() {
    let v: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).cos() / 3.0).collect();
    let t = tensor::<A, 2>(&v, [3, 4], &Default::default());
    assert_eq!(t.dtype(), DType::BF16);
    let w = to_f32(t);
    assert_eq!(w.dtype(), DType::F32);
    assert_eq!(vals(w), rounded(&v));
}

/// The tracked linear with a bf16 weight equals the f32 linear with the rounded weight, bit
/// for bit (the same f32 values reach the same GEMM), values and gradients; through burn's
/// generic path too.
#[test]
fn linear_with_a_bf16_weight_equals_the_rounded_f32_weight() {
    let device = Default::default();
    let w_vals: Vec<f32> = (0..6 * 9).map(|i| (i as f32 * 0.77).sin() * 0.4).collect();
    let run = |bf: bool| {
        let x = leaf(0.3, [1, 11, 9])
            .reshape([11, 9])
            .detach()
            .require_grad();
        let w = if bf {
            tensor::<A, 2>(&w_vals, [6, 9], &device)
        } else {
            Tensor::<A, 2>::from_data(TensorData::new(rounded(&w_vals), [6, 9]), &device)
        };
        let b = leaf(1.7, [1, 1, 6]).reshape([6]).detach().require_grad();
        let y = tracked(x.clone(), w, Some(b.clone())).unwrap();
        let t = leaf(2.5, [1, 11, 6]).reshape([11, 6]).detach();
        let g = (y.clone() * t).sum().backward();
        (
            vals(y),
            vals(x.grad(&g).unwrap()),
            vals(b.grad(&g).unwrap()),
        )
    };
    let (a, b) = (run(true), run(false));
    assert_eq!(a, b);
    assert!(
        a.1.iter().any(|&v| v != 0.0),
        "dx flows through the bf16 weight"
    );

    // burn's generic path (kernels off) widens the weight before its matmul.
    let x = leaf(0.3, [1, 11, 9]).reshape([11, 9]);
    let generic = |w: Tensor<A, 2>| {
        crate::nn::generic_ops(|| {
            let y = crate::nn::linear::<A>(
                crate::nn::value::fp(x.clone()),
                crate::nn::value::fp(w),
                None,
            )
            .unwrap();
            vals(crate::nn::value::ft::<A, 2>(y))
        })
    };
    let gb = generic(tensor::<A, 2>(&w_vals, [6, 9], &device));
    let gf = generic(Tensor::from_data(
        TensorData::new(rounded(&w_vals), [6, 9]),
        &device,
    ));
    assert_eq!(gb, gf);
}

/// A bf16 weight held column-major by `column_major` (what a bf16 backbone's projections are
/// on the CPU) stays bf16, is read in place and gives exactly the row-major bf16 weight's
/// product and gradients.
#[test]
fn column_major_bf16_weight_equals_the_row_major_one() {
    use super::WeightBuf;
    use crate::nn::{autodiff::ad, linear::column_major};
    let (o, i, n) = (24, 10, 20);
    let v: Vec<f32> = (0..o * i).map(|k| (k as f32 * 0.31).sin()).collect();
    let row = tensor::<A, 2>(&v, [o, i], &Default::default());
    let col = column_major(row.clone());
    let p = ad(col.clone()).unwrap().primitive;
    assert_eq!(p.dtype(), DType::BF16);
    assert!(WeightBuf::new(p).col_major(), "read in place, column-major");
    assert_eq!(vals(to_f32(col.clone())), vals(to_f32(row.clone())));
    let run = |w: Tensor<A, 2>| {
        let x = leaf(0.4, [1, n, i]).reshape([n, i]).detach().require_grad();
        let y = tracked(x.clone(), w, None).unwrap();
        let g = (y.clone() * leaf(1.0, [1, n, o]).reshape([n, o]))
            .sum()
            .backward();
        (vals(y), vals(x.grad(&g).unwrap()))
    };
    let (a, b) = (run(col), run(row));
    crate::nn::test_support::assert_close(&[("y", &a.0, &b.0), ("dx", &a.1, &b.1)], 1e-6);
}
