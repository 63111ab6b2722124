use half::bf16;

use super::{available, linear_vec, linear_vec_then, pack_b, Bf16Mat, Epilogue, MC, MR, NR};
use crate::nn::test_support::{assert_within, both_layouts, each_layout_pair, reference, values};

/// The packed weight is the same from either layout (a column-major operand takes its own
/// column-by-column path): odd inner lengths, partial strips. Plain Rust, so it runs on any CPU.
#[test]
fn packing_reads_both_layouts_alike() {
    each_layout_pair(60, |rows, cols, k, n| {
        let pairs = k.div_ceil(2);
        assert!(
            pack_b(rows, pairs) == pack_b(cols, pairs),
            "[{k}, {n}] packs differently by layout"
        );
    });
}

/// The `vdpbf16ps` product equals the exact product of the activations rounded to bf16 and the
/// bf16 weight to within 2⁻¹⁸ of `Σ|x||b|` (bf16 × bf16 is exact in f32; only the f32
/// accumulation rounds), at shapes below, at and beyond one microkernel (8 × 48), one row block
/// (the largest, and the smaller one a long inner dimension gets), odd inner lengths, the weight row-major and
/// column-major, with and without a bias.
#[test]
fn product_equals_the_exact_product_of_the_rounded_activations() {
    if !available() {
        eprintln!("AVX512-BF16 is not available here (CPU or PEFT_DPBF16=0): checking the refusal");
        let w = vec![bf16::ONE; 4];
        let b = Bf16Mat::row_major(&w, 2, 2);
        assert!(linear_vec(&[1.0; 4], b, None, 2).is_none());
        return;
    }
    // Exact small case: rounding to bf16 happens (1 + 2⁻¹⁰ rounds to 1), sums are exact.
    let w = [bf16::from_f32(0.5), bf16::from_f32(2.0)];
    let b = Bf16Mat::row_major(&w, 1, 2);
    assert_eq!(
        linear_vec(&[1.0 + 2f32.powi(-10), -4.0], b, Some(&[1.0, -1.0]), 2),
        Some(vec![1.5, 1.0, -1.0, -9.0])
    );
    let shapes = [
        [MR, 2, NR],
        [3, 5, 7],
        [37, 45, 19],
        [MC + 9, 257, NR + 1],
        [64, 515, 3 * NR],
        [300, 1537, 20],
        [150, 384, 100],
    ];
    for (i, &[m, k, n]) in shapes.iter().enumerate() {
        let x: Vec<f32> = values(5 * i as u64 + 1, m * k)
            .iter()
            .map(|v| v * 4.0)
            .collect();
        let xr: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        let wq: Vec<bf16> = values(5 * i as u64 + 2, k * n)
            .iter()
            .map(|&v| bf16::from_f32(v))
            .collect();
        let wf: Vec<f32> = wq.iter().map(|v| v.to_f32()).collect();
        let bias = values(5 * i as u64 + 3, n);
        let mut wt = Vec::new();
        let views = both_layouts(&wq, &mut wt, k, n);
        for (layout, b) in ["row-major", "column-major"].iter().zip(views) {
            for bias in [Some(&bias[..]), None] {
                let (want, mag) = reference(bias, &xr, &wf, [m, k, n]);
                let y = linear_vec(&x, b, bias, m).expect("AVX512-BF16 is available");
                let what = format!("{m}x{k}x{n} {layout} bias {}", bias.is_some());
                let worst = assert_within(&y, &want, &mag, 18, &what);
                eprintln!("{m}x{k}x{n} {layout}: worst error {worst:.2e} of sum |x||b|");
            }
        }
    }
}

/// Attention's panels: `Panel::transposed` (keys, `b = srcᵀ`) and `Panel::rows` (values) under
/// `panel_product` equal the exact product of the rounded operands within 2⁻¹⁸ of `Σ|a||b|`,
/// over pair and column sub-ranges (a key block of a longer head), odd inner lengths, rows
/// that do not fill a microkernel, columns that do not fill a strip, and with accumulation.
#[test]
fn panel_products_equal_the_exact_product_of_the_rounded_operands() {
    use super::{panel_product, round_rows, Panel, PANEL_NR};
    use crate::nn::gemm::Mat;
    if !available() {
        eprintln!("AVX512-BF16 is not available here (CPU or PEFT_DPBF16=0): nothing to check");
        return;
    }
    let round = |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect() };
    // [m, k, n]: the whole panel; then the sub-range (pairs, columns) multiplied.
    for (i, &[m, k, n]) in [[13, 32, 96], [MR, 7, 33], [130, 64, 300], [1, 31, 5]]
        .iter()
        .enumerate()
    {
        let a = values(7 * i as u64 + 1, m * k);
        let src = values(7 * i as u64 + 2, k * n); // `b` row-major [k, n]
        let mut srct = vec![0f32; k * n]; // its transpose [n, k]
        for q in 0..k {
            for c in 0..n {
                srct[c * k + q] = src[q * n + c];
            }
        }
        let (mut b1, mut b2) = (Default::default(), Default::default());
        let panels = [
            (
                "rows",
                Panel::rows(Mat::rows(&src, 0, k, n, n), k, n, &mut b1),
            ),
            (
                "transposed",
                Panel::transposed(Mat::rows(&srct, 0, n, k, k), n, k, &mut b2),
            ),
        ];
        let (ar, br) = (round(&a), round(&src));
        let pairs_all = k.div_ceil(2);
        for (name, panel) in &panels {
            for (p, c) in [
                (0..pairs_all, 0..n),
                (
                    pairs_all / 2..pairs_all,
                    PANEL_NR.min(n - 1) / PANEL_NR * PANEL_NR..n,
                ),
            ] {
                let (q0, q1) = (2 * p.start, (2 * p.end).min(k));
                let kk = q1 - q0;
                let mut ap = Vec::new();
                let lda = round_rows(&mut ap, m, kk, |r| &a[r * k + q0..r * k + q1]);
                // The reference over the same sub-ranges.
                let asub: Vec<f32> = (0..m)
                    .flat_map(|r| ar[r * k + q0..r * k + q1].to_vec())
                    .collect();
                let bsub: Vec<f32> = (q0..q1)
                    .flat_map(|q| br[q * n + c.start..q * n + c.end].to_vec())
                    .collect();
                let nc = c.len();
                let start = values(7 * i as u64 + 3, m * nc);
                for accumulate in [false, true] {
                    let mut y = start.clone();
                    panel_product(&mut y, &ap, lda, m, panel, p.clone(), c.clone(), accumulate);
                    let (mut want, mag) = reference(None, &asub, &bsub, [m, kk, nc]);
                    if accumulate {
                        want.iter_mut()
                            .zip(&start)
                            .for_each(|(w, &s)| *w += f64::from(s));
                    }
                    let what =
                        format!("{name} {m}x{k}x{n} pairs {p:?} cols {c:?} acc {accumulate}");
                    assert_within(&y, &want, &mag, 18, &what);
                }
            }
        }
    }
}

/// The GELU epilogue gives exactly the product followed by `nn::gelu` (the same stored values,
/// the same GELU), over several row blocks and tasks, partial strips and panels, both weight
/// layouts, with and without a bias.
#[test]
fn gelu_epilogue_equals_the_product_then_gelu() {
    if !available() {
        eprintln!("AVX512-BF16 is not available here (CPU or PEFT_DPBF16=0): nothing to check");
        return;
    }
    for (i, &[m, k, n]) in [[3, 5, 7], [2 * MC + 13, 96, 2 * NR + 5], [MR, 384, 1536]]
        .iter()
        .enumerate()
    {
        let x: Vec<f32> = values(7 * i as u64 + 1, m * k)
            .iter()
            .map(|v| v * 3.0)
            .collect();
        let wq: Vec<bf16> = values(7 * i as u64 + 2, k * n)
            .iter()
            .map(|&v| bf16::from_f32(v))
            .collect();
        let bias = values(7 * i as u64 + 3, n);
        let mut wt = Vec::new();
        for b in both_layouts(&wq, &mut wt, k, n) {
            for bias in [Some(&bias[..]), None] {
                let mut want = linear_vec(&x, b, bias, m).expect("available");
                crate::nn::gelu(&mut want);
                let got = linear_vec_then(&x, b, bias, m, Epilogue::Gelu).expect("available");
                assert_eq!(got, want, "{m}x{k}x{n} bias {}", bias.is_some());
                assert!(
                    got.iter().any(|&v| v < 0.0),
                    "GELU's negative lobe is present"
                );
            }
        }
    }
}
