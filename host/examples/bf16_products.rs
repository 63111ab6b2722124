//! GFLOP/s of a product with a bf16-held weight on each path this CPU has, against the f32
//! GEMM on the same shapes: the forward `x · Wᵀ` of MiniLM's and t5-small's linears (4,096 and
//! 1,024 tokens) and a HyperT5 hypermodel's (512), the weight column-major as the backbones hold it
//! and row-major as a trainable one is (rounded under `medium`). Paths: f32 (the f32 GEMM
//! over f32 weights), `vdpbf16ps` (`nn::dpbf16`, `matmul_precision: medium` without AMX) and
//! AMX with one and two terms where the CPU has it. Two interleaved rounds, median of 7 runs
//! each; the second round is printed.
//! `cargo run --release -p peft-host --example bf16_products`.
#[path = "support/timing.rs"]
mod timing;

use half::bf16;
use peft_host::nn::{
    amx::{self, Bf16Mat, Terms},
    dpbf16,
    gemm::{matmul, Mat, MatMut, Parallelism},
};

use timing::median_s;

fn main() {
    // MiniLM's and t5-small's encoder products.
    let mut shapes = timing::LINEAR_SHAPES[..6].to_vec();
    // A HyperT5 hypermodel's (eight 64-token contexts through MiniLM-sized layers).
    shapes.extend([(512, 384, 384), (512, 384, 1536), (512, 1536, 384)]);
    println!(
        "dpbf16 available: {}, AMX available: {}",
        dpbf16::available(),
        amx::available()
    );
    let mut rows = Vec::new();
    for round in 0..2 {
        rows.clear();
        for &(m, k, n) in &shapes {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            // W [n, k] stored column-major: the contiguous [k, n] buffer.
            let wt: Vec<f32> = (0..k * n)
                .map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5)
                .collect();
            let wb: Vec<bf16> = wt.iter().map(|&v| bf16::from_f32(v)).collect();
            let bias = vec![0.1f32; n];
            let flop = 2.0 * (m * k * n) as f64;
            let mut y = vec![0f32; m * n];
            let f32_s = median_s(|| {
                matmul(
                    &mut MatMut::dense(&mut y, m, n),
                    0.0,
                    Mat::rows(&x, 0, m, k, k),
                    Mat::rows(&wt, 0, k, n, n),
                    1.0,
                    Parallelism::Rayon(0),
                )
            });
            let b = Bf16Mat::row_major(&wb, k, n);
            // Into a buffer allocated once, as the f32 GEMM's (a fresh output's page faults
            // would be counted otherwise).
            let mut yu = vec![std::mem::MaybeUninit::new(0f32); m * n];
            let dp = dpbf16::available()
                .then(|| median_s(|| assert!(dpbf16::linear(&mut yu, &x, b, Some(&bias), m))));
            // The same weight held row-major ([n, k], a trainable weight rounded under
            // `medium`): `Wᵀ` is read down its columns.
            let wr: Vec<bf16> = (0..n * k).map(|j| wb[(j % k) * n + j / k]).collect();
            let br = Bf16Mat {
                data: &wr,
                rows: k,
                cols: n,
                rs: 1,
                cs: k,
            };
            let dp_r = dpbf16::available()
                .then(|| median_s(|| assert!(dpbf16::linear(&mut yu, &x, br, Some(&bias), m))));
            let amx1 = amx::available()
                .then(|| median_s(|| drop(amx::linear_vec(&x, b, Some(&bias), m, Terms::One))));
            let amx2 = amx::available()
                .then(|| median_s(|| drop(amx::linear_vec(&x, b, Some(&bias), m, Terms::Two))));
            let g =
                |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{:.0}", flop / s / 1e9));
            rows.push(format!(
                "| {m}x{k}x{n} | {:.0} | {} | {} | {} | {} |",
                flop / f32_s / 1e9,
                g(dp),
                g(dp_r),
                g(amx1),
                g(amx2)
            ));
        }
        if round == 0 {
            rows.iter().for_each(|r| eprintln!("(first round) {r}"));
        }
    }
    println!("| [m, k] x [k, n] | f32 GEMM | vdpbf16ps (medium) | vdpbf16ps, W row-major | AMX one term | AMX two terms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    rows.iter().for_each(|r| println!("{r}"));
}
