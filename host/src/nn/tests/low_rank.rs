use super::{rows_axpy, LOW_RANK, TASK_ELEMS};
use crate::nn::gemm::{matmul, Mat, MatMut, Parallelism};

fn val(n: usize, m: f32) -> Vec<f32> {
    (0..n).map(|k| (k as f32 * 0.37 + m).sin()).collect()
}

/// Equal within f32 summation-order rounding: 1e-6 of the largest magnitude (the sums of
/// these smooth, correlated rows reach ~150).
fn assert_near(got: &[f32], want: &[f32], ctx: &str) {
    assert_eq!(got.len(), want.len(), "{ctx}: lengths");
    let scale = want.iter().fold(1f32, |a, w| a.max(w.abs()));
    let d = got
        .iter()
        .zip(want)
        .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
    assert!(
        d <= 1e-6 * scale,
        "{ctx}: max abs diff {d} at scale {scale}"
    );
}

/// `bias rows + a · b` through the GEMM, `a` `[n, k]`, `b` `[k, w]` given by its strides.
fn reference(a: &[f32], b: Mat<'_>, bias: Option<&[f32]>, [n, k, w]: [usize; 3]) -> Vec<f32> {
    let mut y: Vec<f32> = (0..n * w).map(|e| bias.map_or(0.0, |b| b[e % w])).collect();
    matmul(
        &mut MatMut::dense(&mut y, n, w),
        1.0,
        Mat::rows(a, 0, n, k, k),
        b,
        1.0,
        Parallelism::None,
    );
    y
}

/// The row kernel equals the GEMM with and without a bias: widths from 1 to `LOW_RANK`
/// against a long side that is and is not a multiple of the 16 lanes, row counts within one
/// task, across several and with a partial last one, and no rows.
#[test]
fn row_kernel_equals_the_gemm() {
    for p in [1, 3, 8, LOW_RANK] {
        for q in [5, 16, 384, 397] {
            let per_task = (TASK_ELEMS / (q + p)).max(1);
            for n in [0, 1, 17, 3 * per_task + 5] {
                for with_bias in [false, true] {
                    let bq = val(q, 4.0);
                    let m = val(p * q, 0.3);
                    // rows_axpy: x [n, p] · m [p, q] → [n, q]
                    let x = val(n * p, 2.1);
                    let bias = with_bias.then_some(bq.as_slice());
                    let got = rows_axpy(&x, &m, bias, [n, p, q]);
                    let want = reference(&x, Mat::rows(&m, 0, p, q, q), bias, [n, p, q]);
                    let ctx = format!("rows_axpy p {p} q {q} n {n} bias {with_bias}");
                    assert_eq!(got.len(), n * q, "{ctx}");
                    assert_near(&got, &want, &ctx);
                }
            }
        }
    }
}
