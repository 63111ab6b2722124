//! GFLOP/s of the one GEMM wrapper (`nn::gemm::matmul`) on a linear layer's shapes, for the
//! operand layouts a linear can use: `x · Wᵀ` with W as stored (`[out, in]`, what `nn::linear`
//! does), the transposed product `(W · xᵀ)ᵀ`, and `x · W'` with W' stored `[in, out]`; on one
//! thread and on all of rayon's. `cargo run --release -p peft-host --example gemm_layouts`.
use std::time::Instant;

use peft_host::nn::gemm::{matmul, Mat, MatMut, Parallelism};

fn median_s(mut f: impl FnMut()) -> f64 {
    f();
    let mut v: Vec<f64> = (0..5)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[2]
}

fn main() {
    let shapes = [
        (1024, 512, 512),
        (1024, 512, 2048),
        (1024, 2048, 512),
        (256, 512, 32128),
        (1024, 768, 768),
        (4096, 384, 1536),
        (4096, 1536, 384),
    ];
    println!("| x [n, in] | W [out, in] | x·Wᵀ | (W·xᵀ)ᵀ | x·W' | x·W', 1 thread |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for (n, i, o) in shapes {
        let x: Vec<f32> = (0..n * i).map(|k| (k as f32 * 0.1).sin()).collect();
        let w: Vec<f32> = (0..o * i).map(|k| (k as f32 * 0.3).sin()).collect();
        let mut wt = vec![0f32; o * i];
        for a in 0..o {
            for b in 0..i {
                wt[b * o + a] = w[a * i + b];
            }
        }
        let mut y = vec![0f32; n * o];
        let gflop = 2.0 * (n * i * o) as f64 / 1e9;
        let (xm, wm, wtm) = (
            Mat::rows(&x, 0, n, i, i),
            Mat::rows(&w, 0, o, i, i),
            Mat::rows(&wt, 0, i, o, o),
        );
        let par = Parallelism::Rayon(0);
        let a = median_s(|| matmul(&mut MatMut::dense(&mut y, n, o), 0.0, xm, wm.t(), 1.0, par));
        let b = median_s(|| {
            matmul(
                &mut MatMut::new(&mut y, 0, o, n, 1, o),
                0.0,
                wm,
                xm.t(),
                1.0,
                par,
            )
        });
        let c = median_s(|| matmul(&mut MatMut::dense(&mut y, n, o), 0.0, xm, wtm, 1.0, par));
        let d = median_s(|| {
            matmul(
                &mut MatMut::dense(&mut y, n, o),
                0.0,
                xm,
                wtm,
                1.0,
                Parallelism::None,
            )
        });
        println!(
            "| [{n}, {i}] | [{o}, {i}] | {:.0} | {:.0} | {:.0} | {:.0} |",
            gflop / a,
            gflop / b,
            gflop / c,
            gflop / d
        );
    }
}
