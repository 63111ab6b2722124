use half::bf16;

use super::{available, linear_vec, round_bits, widen_bits, Bf16Mat, Terms};

/// Deterministic values in [-1, 1).
fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// `y0 + x · b` in f64 and the bound `Σ|x||b|` per element, `b` given as `[k, n]` values.
fn reference(y0: &[f32], x: &[f32], b: &[f32], [m, k, n]: [usize; 3]) -> (Vec<f64>, Vec<f64>) {
    let (mut y, mut mag) = (vec![0f64; m * n], vec![0f64; m * n]);
    for r in 0..m {
        for c in 0..n {
            let (mut s, mut a) = (f64::from(y0[r * n + c]), 0f64);
            for q in 0..k {
                let p = f64::from(x[r * k + q]) * f64::from(b[q * n + c]);
                s += p;
                a += p.abs();
            }
            y[r * n + c] = s;
            mag[r * n + c] = a;
        }
    }
    (y, mag)
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
        let b = Bf16Mat {
            data: &w,
            rows: 1,
            cols: 2,
            rs: 2,
            cs: 1,
        };
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
        let b = Bf16Mat {
            data: &w,
            rows: 2,
            cols: 2,
            rs: 2,
            cs: 1,
        };
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
        let y0: Vec<f32> = (0..m * n).map(|e| bias[e % n]).collect();
        let (want, mag) = reference(&y0, &x, &wf, [m, k, n]);
        // The weight as stored `[k, n]` row-major, and as the transpose of an `[n, k]` buffer.
        let mut wt = vec![bf16::ZERO; k * n];
        for q in 0..k {
            for c in 0..n {
                wt[c * k + q] = wq[q * n + c];
            }
        }
        let views = [
            Bf16Mat {
                data: &wq,
                rows: k,
                cols: n,
                rs: n,
                cs: 1,
            },
            Bf16Mat {
                data: &wt,
                rows: k,
                cols: n,
                rs: 1,
                cs: k,
            },
        ];
        for (layout, b) in ["row-major", "column-major"].iter().zip(views) {
            let y = linear_vec(&x, b, Some(&bias), m, Terms::Two).expect("AMX is available");
            let mut worst = 0f64;
            for e in 0..m * n {
                let err = (f64::from(y[e]) - want[e]).abs();
                let bound = mag[e] * 2f64.powi(-16) + 1e-6;
                assert!(
                    err <= bound,
                    "{m}x{k}x{n} {layout} element {e}: {} vs {} (bound {bound:e})",
                    y[e],
                    want[e]
                );
                worst = worst.max(err / (mag[e] + 1e-30));
            }
            eprintln!("{m}x{k}x{n} {layout}: worst error {worst:.2e} of sum |x||b|");
            // One term (`matmul_precision: medium`): exactly the product of x rounded to
            // bf16, up to f32 accumulation.
            let xr: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
            let (want1, mag1) = reference(&y0, &xr, &wf, [m, k, n]);
            let y1 = linear_vec(&x, b, Some(&bias), m, Terms::One).expect("AMX is available");
            for e in 0..m * n {
                let err = (f64::from(y1[e]) - want1[e]).abs();
                let bound = mag1[e] * 2f64.powi(-18) + 1e-6;
                assert!(err <= bound, "one term, {m}x{k}x{n} {layout} element {e}");
            }
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
