use half::bf16;

use super::{available, linear_vec, Bf16Mat, MC, MR, NR};

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

/// `bias + x · b` in f64 and `Σ|x||b|` per element, `b` given as `[k, n]` values.
fn reference(
    bias: Option<&[f32]>,
    x: &[f32],
    b: &[f32],
    [m, k, n]: [usize; 3],
) -> (Vec<f64>, Vec<f64>) {
    let (mut y, mut mag) = (vec![0f64; m * n], vec![0f64; m * n]);
    for r in 0..m {
        for c in 0..n {
            let (mut s, mut a) = (bias.map_or(0.0, |v| f64::from(v[c])), 0f64);
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
        let b = Bf16Mat {
            data: &w,
            rows: 2,
            cols: 2,
            rs: 2,
            cs: 1,
        };
        assert!(linear_vec(&[1.0; 4], b, None, 2).is_none());
        return;
    }
    // Exact small case: rounding to bf16 happens (1 + 2⁻¹⁰ rounds to 1), sums are exact.
    let w = [bf16::from_f32(0.5), bf16::from_f32(2.0)];
    let b = Bf16Mat {
        data: &w,
        rows: 1,
        cols: 2,
        rs: 2,
        cs: 1,
    };
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
            for bias in [Some(&bias[..]), None] {
                let (want, mag) = reference(bias, &xr, &wf, [m, k, n]);
                let y = linear_vec(&x, b, bias, m).expect("AVX512-BF16 is available");
                let mut worst = 0f64;
                for e in 0..m * n {
                    let err = (f64::from(y[e]) - want[e]).abs();
                    let bound = mag[e] * 2f64.powi(-18) + 1e-6;
                    assert!(
                        err <= bound,
                        "{m}x{k}x{n} {layout} bias {} element {e}: {} vs {} (bound {bound:e})",
                        bias.is_some(),
                        y[e],
                        want[e]
                    );
                    worst = worst.max(err / (mag[e] + 1e-30));
                }
                eprintln!("{m}x{k}x{n} {layout}: worst error {worst:.2e} of sum |x||b|");
            }
        }
    }
}
