//! Helpers the kernel tests share: small deterministic tensors on the CPU autodiff backend, and
//! the exact reference and weight layouts the bf16 product tests (`amx`, `dpbf16`) check against.
use burn::tensor::{backend::Backend, Tensor, TensorData};
use half::bf16;

use super::amx::Bf16Mat;

pub type A = burn::backend::Autodiff<burn::backend::Flex>;

/// Each named pair of value lists has equal length and agrees to `tol`.
pub fn assert_close(pairs: &[(&str, &Vec<f32>, &Vec<f32>)], tol: f32) {
    for (name, x, y) in pairs {
        assert_eq!(x.len(), y.len(), "{name}: lengths");
        let d = x
            .iter()
            .zip(y.iter())
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(d < tol, "{name}: max abs diff {d}");
    }
}

/// A tracked leaf of smooth, distinct values.
pub fn leaf(seed: f32, shape: [usize; 3]) -> Tensor<A, 3> {
    let n = shape.iter().product::<usize>();
    let v: Vec<f32> = (0..n)
        .map(|i| (i as f32 * 0.61 + seed).sin() * 1.1)
        .collect();
    Tensor::<A, 3>::from_data(TensorData::new(v, shape), &Default::default()).require_grad()
}

pub fn vals<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

/// Deterministic values in [-1, 1) (xorshift).
pub fn values(seed: u64, len: usize) -> Vec<f32> {
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

/// `bias + x · b` in f64 and the bound `Σ|x||b|` per element, `b` given as `[k, n]` values.
pub fn reference(
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

/// `check(rows, cols, k, n)` on a seeded bf16 weight `[k, n]` read row-major and column-major
/// ([`both_layouts`]), at shapes with odd inner lengths and partial tiles and strips: what the
/// packing tests compare.
pub fn each_layout_pair(seed: u64, check: impl Fn(Bf16Mat<'_>, Bf16Mat<'_>, usize, usize)) {
    for (i, &(k, n)) in [(1, 1), (45, 19), (64, 48), (77, 97), (384, 96)]
        .iter()
        .enumerate()
    {
        let wq: Vec<bf16> = values(seed + i as u64, k * n)
            .iter()
            .map(|&v| bf16::from_f32(v))
            .collect();
        let mut wt = Vec::new();
        let [rows, cols] = both_layouts(&wq, &mut wt, k, n);
        check(rows, cols, k, n);
    }
}

/// The `[k, n]` weight `wq` (row-major) as a product reads it in both layouts: itself, and the
/// transpose of an `[n, k]` buffer (`wt`, filled here) — how the backbones hold it.
pub fn both_layouts<'a>(
    wq: &'a [bf16],
    wt: &'a mut Vec<bf16>,
    k: usize,
    n: usize,
) -> [Bf16Mat<'a>; 2] {
    wt.clear();
    wt.resize(k * n, bf16::ZERO);
    for q in 0..k {
        for c in 0..n {
            wt[c * k + q] = wq[q * n + c];
        }
    }
    [
        Bf16Mat::row_major(wq, k, n),
        Bf16Mat {
            data: wt,
            rows: k,
            cols: n,
            rs: 1,
            cs: k,
        },
    ]
}

/// Asserts `|y − want| ≤ 2^-bits · mag + 1e-6` element by element (`mag` = `Σ|x||b|` from
/// [`reference`]), naming `what` and the element on failure; returns the worst error as a
/// fraction of `mag`.
pub fn assert_within(y: &[f32], want: &[f64], mag: &[f64], bits: i32, what: &str) -> f64 {
    assert_eq!(y.len(), want.len(), "{what}: lengths");
    let mut worst = 0f64;
    for e in 0..y.len() {
        let err = (f64::from(y[e]) - want[e]).abs();
        let bound = mag[e] * 2f64.powi(-bits) + 1e-6;
        assert!(
            err <= bound,
            "{what} element {e}: {} vs {} (bound {bound:e})",
            y[e],
            want[e]
        );
        worst = worst.max(err / (mag[e] + 1e-30));
    }
    worst
}
