use burn::tensor::{Tensor, TensorData};

use super::{rms_norm_rows, tracked};
use crate::nn::{
    layer_norm::rms_norm,
    test_support::{assert_close, leaf, vals, A},
};

/// Values and the gradients of input and weight against burn's ops (`nn::rms_norm`), and the
/// no-grad rows equal the tracked output.
#[test]
fn tracked_rms_norm_matches_burn_values_and_gradients() {
    let d = 40;
    let wv: Vec<f32> = (0..d).map(|i| 1.0 + (i as f32 * 0.3).cos() * 0.2).collect();
    let run = |fused: bool| {
        let x = (leaf(0.3, [2, 3, d]) * 3.0 + 0.5).detach().require_grad();
        let w = Tensor::<A, 1>::from_data(TensorData::new(wv.clone(), [d]), &Default::default())
            .require_grad();
        let y = if fused {
            tracked(x.clone(), w.clone(), 1e-6).unwrap()
        } else {
            rms_norm(x.clone(), Some(w.clone()), 1e-6)
        };
        let t = leaf(9.0, [2, 3, d]).detach();
        let g = (y.clone() * t).sum().backward();
        (
            vals(y),
            vals(x.grad(&g).unwrap()),
            vals(w.grad(&g).unwrap()),
        )
    };
    let (a, b) = (run(true), run(false));
    assert_close(
        &[("y", &a.0, &b.0), ("dx", &a.1, &b.1), ("dw", &a.2, &b.2)],
        1e-4,
    );
    let mut rows = vals((leaf(0.3, [2, 3, d]) * 3.0 + 0.5).detach());
    rms_norm_rows(&mut rows, &wv, 1e-6);
    assert_close(&[("no-grad rows", &rows, &a.0)], 1e-6);
}

/// A weight of another width than the input is an error, not a short read.
#[test]
fn tracked_rms_norm_refuses_a_weight_of_another_width() {
    let x = leaf(0.3, [2, 3, 8]);
    let w = Tensor::<A, 1>::ones([6], &Default::default());
    let e = tracked(x, w, 1e-6).unwrap_err();
    assert!(e.message.contains("[8]"), "{}", e.message);
}
