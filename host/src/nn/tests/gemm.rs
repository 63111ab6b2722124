use crate::nn::gemm::{matmul, product, Mat, MatMut, Parallelism};

/// A strided product (transposed operand, accumulation into a block of a larger buffer)
/// against a plain triple loop.
#[test]
fn matmul_matches_the_definition_on_strided_views() {
    let (m, n, k) = (3, 4, 5);
    let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.3).sin()).collect();
    // b stored transposed: [n, k], read as [k, n].
    let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.7).cos()).collect();
    // dst: columns 2..6 of a [m, 8] buffer, pre-filled with ones, accumulated into.
    let mut dst = vec![1f32; m * 8];
    let mut view = MatMut::new(&mut dst, 2, m, n, 8, 1);
    matmul(
        &mut view,
        1.0,
        Mat::rows(&a, 0, m, k, k),
        Mat::rows(&bt, 0, n, k, k).t(),
        0.5,
        Parallelism::None,
    );
    for i in 0..m {
        for j in 0..8 {
            let want = if (2..6).contains(&j) {
                let jj = j - 2;
                1.0 + 0.5 * (0..k).map(|l| a[i * k + l] * bt[jj * k + l]).sum::<f32>()
            } else {
                1.0
            };
            assert!((dst[i * 8 + j] - want).abs() < 1e-5, "({i}, {j})");
        }
    }
}

#[test]
#[should_panic(expected = "outside")]
fn a_view_past_the_end_is_refused() {
    let v = vec![0f32; 10];
    let _ = Mat::rows(&v, 2, 3, 3, 3);
}

#[test]
#[should_panic(expected = "matmul")]
fn mismatched_inner_sizes_are_refused() {
    let (a, b) = (vec![0f32; 6], vec![0f32; 6]);
    let mut c = vec![0f32; 4];
    matmul(
        &mut MatMut::dense(&mut c, 2, 2),
        0.0,
        Mat::rows(&a, 0, 2, 3, 3),
        Mat::rows(&b, 0, 2, 3, 3),
        1.0,
        Parallelism::None,
    );
}

#[test]
fn blocks_partition_the_matrix() {
    let mut v = vec![0f32; 4 * 6];
    let blocks = MatMut::blocks(&mut v, 4, 6, 2, 3);
    assert_eq!(blocks.len(), 4);
    for (i, mut blk) in blocks.into_iter().enumerate() {
        // blk += (i + 1) · 1·1ᵀ over its 2x3 elements.
        let a = vec![(i + 1) as f32; 2];
        let b = vec![1f32; 3];
        matmul(
            &mut blk,
            1.0,
            Mat::rows(&a, 0, 2, 1, 1),
            Mat::rows(&b, 0, 1, 3, 3),
            1.0,
            Parallelism::None,
        );
    }
    let want: Vec<f32> = (0..24)
        .map(|e| {
            let (r, c) = (e / 6, e % 6);
            ((r / 2) * 2 + c / 3 + 1) as f32
        })
        .collect();
    assert_eq!(v, want);
}

/// [`product`] writes the same values as [`matmul`] over a zeroed buffer, bit for bit, on
/// plain, transposed and strided operands, a depth past one GEMM block and k = 0 (zeros).
#[test]
fn product_equals_matmul_into_zeros() {
    for (m, k, n) in [(1, 1, 1), (7, 0, 5), (33, 17, 65), (130, 600, 70)] {
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        // b [k, n] with rows 2n apart, after 3 leading values.
        let b: Vec<f32> = (0..3 + k * 2 * n)
            .map(|i| (i as f32 * 0.11).cos())
            .collect();
        let bm = Mat::rows(&b, 3, k, n, 2 * n);
        // a row-major, and the same shape read transposed from a [k, m] buffer.
        for am in [Mat::rows(&a, 0, m, k, k), Mat::rows(&a, 0, k, m, m).t()] {
            let mut want = vec![0f32; m * n];
            let par = Parallelism::Rayon(0);
            matmul(&mut MatMut::dense(&mut want, m, n), 0.0, am, bm, 0.5, par);
            let got = product(am, bm, 0.5, par);
            assert_eq!(got.len(), want.len());
            for (e, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "[{m}x{k}x{n}] element {e}");
            }
        }
    }
}
