use half::bf16;

use super::{available, linear_vec, pack_b, round_bits, up, widen_bits, Bf16Mat, Terms, BLOCK, KB};
use crate::nn::test_support::{assert_within, both_layouts, each_layout_pair, reference, values};

/// The weight tiles are the same from either layout (a column-major operand takes its own
/// column-by-column path): odd inner lengths, partial tiles and strips. Plain Rust, so it runs
/// on any CPU.
#[test]
fn packing_reads_both_layouts_alike() {
    each_layout_pair(40, |rows, cols, k, n| {
        let (kp, np) = (up(k, KB), up(n, BLOCK));
        assert!(
            pack_b(rows, kp, np) == pack_b(cols, kp, np),
            "[{k}, {n}] packs differently by layout"
        );
    });
}

/// The split product equals the exact product of the f32 activations and the bf16 weight to
/// within 2⁻¹⁶ of `Σ|x||b|` (the split keeps 16 significant bits; f32 accumulation adds less),
/// at shapes that are and are not multiples of the tiles, with the weight read row-major and
/// column-major, each row starting from the bias.
#[test]
fn split_product_matches_the_exact_product() {
    // Without a bias the rows start at zero.
    if available() {
        let w = [bf16::from_f32(0.5); 2];
        let b = Bf16Mat::row_major(&w, 1, 2);
        assert_eq!(
            linear_vec(&[2.0, -4.0], b, None, 2, Terms::Two),
            Some(vec![1.0, 1.0, -2.0, -2.0])
        );
    }
    if !available() {
        eprintln!(
            "AMX is not available here (CPU, kernel or PEFT_AMX=0): checking the refusal only"
        );
        let w = vec![bf16::ONE; 4];
        let b = Bf16Mat::row_major(&w, 2, 2);
        assert!(linear_vec(&[1.0; 4], b, None, 2, Terms::Two).is_none());
        return;
    }
    for (i, &[m, k, n]) in [
        [64, 64, 64],
        [37, 45, 19],
        [33, 100, 70],
        [5, 384, 96],
        [96, 31, 33],
    ]
    .iter()
    .enumerate()
    {
        let x: Vec<f32> = values(3 * i as u64 + 1, m * k)
            .iter()
            .map(|v| v * 4.0)
            .collect();
        let wq: Vec<bf16> = values(3 * i as u64 + 2, k * n)
            .iter()
            .map(|&v| bf16::from_f32(v))
            .collect();
        let wf: Vec<f32> = wq.iter().map(|v| v.to_f32()).collect();
        let bias = values(3 * i as u64 + 3, n);
        let (want, mag) = reference(Some(&bias), &x, &wf, [m, k, n]);
        let mut wt = Vec::new();
        let views = both_layouts(&wq, &mut wt, k, n);
        for (layout, b) in ["row-major", "column-major"].iter().zip(views) {
            let y = linear_vec(&x, b, Some(&bias), m, Terms::Two).expect("AMX is available");
            let worst = assert_within(&y, &want, &mag, 16, &format!("{m}x{k}x{n} {layout}"));
            eprintln!("{m}x{k}x{n} {layout}: worst error {worst:.2e} of sum |x||b|");
            // One term (`matmul_precision: medium`): exactly the product of x rounded to
            // bf16, up to f32 accumulation.
            let xr: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
            let (want1, mag1) = reference(Some(&bias), &xr, &wf, [m, k, n]);
            let y1 = linear_vec(&x, b, Some(&bias), m, Terms::One).expect("AMX is available");
            assert_within(
                &y1,
                &want1,
                &mag1,
                18,
                &format!("one term, {m}x{k}x{n} {layout}"),
            );
        }
    }
}

/// The two bf16 terms keep 16 significant bits: `|x − hi − lo| ≤ 2⁻¹⁶·|x|` for normal values,
/// and NaN stays NaN (ties to even as in `bf16::round`).
#[test]
fn split_keeps_sixteen_bits() {
    for &v in &values(99, 10_000) {
        let x = v * 1000.0;
        let hi = round_bits(x);
        assert_eq!(hi, bf16::from_f32(x).to_bits(), "rounding of {x} as half's");
        let lo = round_bits(x - widen_bits(hi));
        let rest = (x - widen_bits(hi) - widen_bits(lo)).abs();
        assert!(rest <= x.abs() * 2f32.powi(-16), "{x}: residual {rest}");
    }
    assert!(widen_bits(round_bits(f32::NAN)).is_nan());
    assert!(widen_bits(round_bits(f32::from_bits(0x7f80_0001))).is_nan());
}
