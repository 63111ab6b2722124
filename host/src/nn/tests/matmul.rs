use burn::tensor::{Tensor, TensorData};

use super::tracked;
use crate::nn::test_support::{assert_close, vals, values, A};

fn leaf<const D: usize>(seed: u64, shape: [usize; D]) -> Tensor<A, D> {
    let n = shape.iter().product();
    Tensor::<A, D>::from_data(TensorData::new(values(seed, n), shape), &Default::default())
        .require_grad()
}

/// Values and both gradients of the kernel against burn's matmul (the kernels off), through a
/// weighted sum so that every output element's gradient differs.
fn check<const D: usize>(sa: [usize; D], sb: [usize; D], transpose_b: bool) {
    let run = |kernel: bool| {
        let a = leaf(1, sa);
        let b0 = if transpose_b {
            let mut st = sb;
            st.swap(D - 1, D - 2);
            leaf::<D>(2, st)
        } else {
            leaf(2, sb)
        };
        let b = if transpose_b {
            b0.clone().swap_dims(D - 1, D - 2)
        } else {
            b0.clone()
        };
        let y = if kernel {
            tracked(a.clone(), b).unwrap().expect("the kernel applies")
        } else {
            crate::nn::generic_ops(|| a.clone().matmul(b))
        };
        let n: usize = y.dims().iter().product();
        let w = Tensor::<A, 1>::from_data(TensorData::new(values(3, n), [n]), &Default::default());
        let loss = (y.clone().reshape([n]) * w).sum();
        let g = loss.backward();
        (
            vals(y),
            vals(a.grad(&g).unwrap()),
            vals(b0.grad(&g).unwrap()),
        )
    };
    let (k, r) = (run(true), run(false));
    let what = format!("{sa:?} @ {sb:?}");
    assert_close(
        &[
            (&format!("{what} y"), &k.0, &r.0),
            (&format!("{what} dA"), &k.1, &r.1),
            (&format!("{what} dB"), &k.2, &r.2),
        ],
        1e-5,
    );
}

#[test]
fn batched_products_and_gradients_equal_burns() {
    // One GEMM per batch item, several items across threads.
    check([3, 5, 20], [3, 20, 7], false);
    // Inner width 4: the row kernel; four leading dims flattened.
    check([2, 2, 9, 4], [2, 2, 4, 11], false);
    // The row kernel's parallel tasks (1,092 rows here) starting inside a batch item.
    check([3, 700, 4], [3, 4, 11], false);
    // One item: the GEMM on all threads; a narrow output.
    check([1, 6, 33], [1, 33, 2], false);
    // A transposed view as the right operand (read through a contiguous copy).
    check([2, 8, 24], [2, 24, 17], true);
    // Plain 2-D.
    check([13, 40], [40, 9], false);
}

#[test]
fn broadcast_leading_dims_are_left_to_burn() {
    let (a, b) = (leaf(1, [2, 3, 4]), leaf(2, [1, 4, 5]));
    assert!(tracked(a, b).unwrap().is_none());
}
