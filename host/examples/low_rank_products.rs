//! Time of the modules' up-projections on the row kernel (`nn::low_rank`) against the GEMM
//! path it replaces (the bias rows written first, then the product added to them): `[m, r] ×
//! [r, k]` with a bias at MiniLM's 4,096 tokens (k = 384) and t5-small's 1,024 (k = 512),
//! rank 8 as an adapter or LoRA runs them, and ranks 16 and 1 at MiniLM's shape. Two interleaved rounds of 25 calls each (median); the second
//! round is printed, then the ratio in each round.
//! `cargo run --release -p peft-host --example low_rank_products`.
use std::time::Instant;

use peft_host::nn::{
    gemm::{matmul, Mat, MatMut, Parallelism},
    low_rank::rows_axpy,
};

fn median_ms(mut f: impl FnMut()) -> f64 {
    f();
    let mut v: Vec<f64> = (0..25)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[12]
}

fn val(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

/// The replaced path: `y = bias rows; y += x · Wᵀ` through the GEMM (`W` `[o, i]` row-major).
fn gemm_path(x: &[f32], w: &[f32], b: &[f32], [n, i, o]: [usize; 3]) -> Vec<f32> {
    let mut y: Vec<f32> = b.iter().copied().cycle().take(n * o).collect();
    matmul(
        &mut MatMut::dense(&mut y, n, o),
        1.0,
        Mat::rows(x, 0, n, i, i),
        Mat::rows(w, 0, o, i, i).t(),
        1.0,
        Parallelism::Rayon(0),
    );
    y
}

fn main() {
    let shapes = [
        (4096, 8, 384),
        (1024, 8, 512),
        (4096, 16, 384),
        (4096, 1, 384),
    ];
    let mut rounds = Vec::new();
    for _ in 0..2 {
        let mut rows = Vec::new();
        for &(n, i, o) in &shapes {
            let (x, w, b) = (val(n * i, 1), val(o * i, 2), val(o, 3));
            let wt = peft_host::nn::linear::transposed(&w, o, i);
            let g = median_ms(|| drop(std::hint::black_box(gemm_path(&x, &w, &b, [n, i, o]))));
            let r = median_ms(|| {
                drop(std::hint::black_box(rows_axpy(
                    &x,
                    &wt,
                    Some(&b),
                    [n, i, o],
                )))
            });
            rows.push((n, i, o, g, r));
        }
        rounds.push(rows);
    }
    println!("| [m, k] × [k, n] | GEMM path ms | row kernels ms | ratio (round 1 / 2) | row kernels GB/s |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (k, &(n, i, o, g, r)) in rounds[1].iter().enumerate() {
        let first = rounds[0][k];
        let bytes = 4.0 * (n * i + n * o) as f64;
        println!(
            "| {n}×{i}×{o} | {g:.3} | {r:.3} | {:.2} / {:.2} | {:.1} |",
            first.4 / first.3,
            r / g,
            bytes / (r * 1e6)
        );
    }
}
