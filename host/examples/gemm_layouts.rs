//! GFLOP/s of the one GEMM wrapper (`nn::gemm::matmul`) on a linear layer's shapes, for the two
//! layouts a weight `W` `[out, in]` can be held in: row-major (as HF stores it) and
//! column-major (the contiguous `[in, out]` buffer, what `nn::linear::column_major` makes), in
//! the forward `x · Wᵀ` and in the backward's `dy · W`; and what `nn::linear` does below
//! `RELAYOUT_ROWS` rows when a weight is held in the slow layout for a product: transpose a
//! copy, then multiply (the copy's time included). Two interleaved rounds, the median of 7
//! runs each; the second round is printed.
//! `cargo run --release -p peft-host --example gemm_layouts`.
#[path = "support/timing.rs"]
mod timing;

use peft_host::nn::{
    gemm::{matmul, Mat, MatMut, Parallelism},
    linear::transposed,
};

use timing::median_s;

fn main() {
    // The linear shapes, then a HyperT5 hypermodel's (MiniLM-sized, 8 texts of 64 tokens).
    let hyper = [(512, 384, 384), (512, 384, 1536), (512, 1536, 384)];
    let shapes: Vec<_> = timing::LINEAR_SHAPES.into_iter().chain(hyper).collect();
    let par = Parallelism::Rayon(0);
    for round in 0..2 {
        if round == 1 {
            println!("| x [n, in] | W [out, in] | x·Wᵀ, W row-major | x·Wᵀ, W column-major | x·Wᵀ, row-major W copied | dy·W, W row-major | dy·W, W column-major | dy·W, column-major W copied | dW = dyᵀ·x | dW, dy copied transposed |");
            println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        }
        for &(n, i, o) in &shapes {
            let x: Vec<f32> = (0..n * i).map(|k| (k as f32 * 0.1).sin()).collect();
            let dy: Vec<f32> = (0..n * o).map(|k| (k as f32 * 0.2).sin()).collect();
            let w: Vec<f32> = (0..o * i).map(|k| (k as f32 * 0.3).sin()).collect();
            let mut wt = vec![0f32; o * i];
            for a in 0..o {
                for b in 0..i {
                    wt[b * o + a] = w[a * i + b];
                }
            }
            let (mut y, mut dx) = (vec![0f32; n * o], vec![0f32; n * i]);
            let gflop = 2.0 * (n * i * o) as f64 / 1e9;
            let (xm, dym) = (Mat::rows(&x, 0, n, i, i), Mat::rows(&dy, 0, n, o, o));
            // The same [out, in] weight over either buffer.
            let (rm, cm) = (Mat::rows(&w, 0, o, i, i), Mat::new(&wt, 0, o, i, 1, o));
            let mut fwd = |wm: Mat<'_>| {
                median_s(|| matmul(&mut MatMut::dense(&mut y, n, o), 0.0, xm, wm.t(), 1.0, par))
            };
            let (a, b) = (fwd(rm), fwd(cm));
            // The row-major weight copied column-major first (nn::linear's forward relayout).
            let a2 = median_s(|| {
                let t = transposed(&w, o, i);
                let tm = Mat::new(&t, 0, o, i, 1, o);
                matmul(&mut MatMut::dense(&mut y, n, o), 0.0, xm, tm.t(), 1.0, par)
            });
            let mut bwd = |wm: Mat<'_>| {
                median_s(|| matmul(&mut MatMut::dense(&mut dx, n, i), 0.0, dym, wm, 1.0, par))
            };
            let (c, d) = (bwd(rm), bwd(cm));
            // The column-major weight copied row-major first (the backward's relayout).
            let d2 = median_s(|| {
                let t = transposed(&wt, i, o);
                let tm = Mat::rows(&t, 0, o, i, i);
                matmul(&mut MatMut::dense(&mut dx, n, i), 0.0, dym, tm, 1.0, par)
            });
            // The weight's gradient dyᵀ · x, dy read transposed in place or copied first.
            let mut dw = vec![0f32; o * i];
            let e = median_s(|| {
                matmul(
                    &mut MatMut::dense(&mut dw, o, i),
                    0.0,
                    dym.t(),
                    xm,
                    1.0,
                    par,
                )
            });
            let e2 = median_s(|| {
                let t = transposed(&dy, n, o);
                let tm = Mat::rows(&t, 0, o, n, n);
                matmul(&mut MatMut::dense(&mut dw, o, i), 0.0, tm, xm, 1.0, par)
            });
            if round == 1 {
                let r = [a, b, a2, c, d, d2, e, e2].map(|s| format!("{:.0}", gflop / s));
                println!("| [{n}, {i}] | [{o}, {i}] | {} |", r.join(" | "));
            }
        }
    }
}
