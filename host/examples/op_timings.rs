//! Times the ops of a MiniLM layer at batch 32 x seq 128, to find where a forward spends its
//! time: `cargo run --release -p peft-host --example op_timings`.
use std::time::Instant;

use burn::tensor::{activation, backend::Backend, Distribution, Tensor};

fn time<F: FnMut()>(name: &str, mut f: F) {
    f();
    let n = 5;
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    println!(
        "{name:<48} {:>8.2} ms",
        start.elapsed().as_secs_f64() * 1e3 / n as f64
    );
}

fn run<B: Backend>(label: &str) {
    println!("== {label}");
    let d = Default::default();
    let x = Tensor::<B, 2>::random([4096, 384], Distribution::Normal(0.0, 1.0), &d);
    let w = Tensor::<B, 2>::random([1536, 384], Distribution::Normal(0.0, 1.0), &d);
    let wt = w.clone().transpose().into_data();
    let wt = Tensor::<B, 2>::from_data(wt, &d);
    time("matmul x[4096,384] @ W^T (transposed view)", || {
        let _ = x.clone().matmul(w.clone().transpose()).into_data();
    });
    time("matmul x[4096,384] @ W' (contiguous [384,1536])", || {
        let _ = x.clone().matmul(wt.clone()).into_data();
    });
    let q = Tensor::<B, 4>::random([32, 12, 128, 32], Distribution::Normal(0.0, 1.0), &d);
    let k = q.clone();
    time("scores q @ k^T [32,12,128,32]", || {
        let _ = q.clone().matmul(k.clone().swap_dims(2, 3)).into_data();
    });
    let s = Tensor::<B, 4>::random([32, 12, 128, 128], Distribution::Normal(0.0, 1.0), &d);
    time("softmax [32,12,128,128]", || {
        let _ = activation::softmax(s.clone(), 3).into_data();
    });
    time("probs @ v", || {
        let _ = s.clone().matmul(q.clone()).into_data();
    });
    let h = Tensor::<B, 3>::random([32, 128, 1536], Distribution::Normal(0.0, 1.0), &d);
    time("gelu [32,128,1536]", || {
        let _ = activation::gelu(h.clone()).into_data();
    });
    let y = Tensor::<B, 3>::random([32, 128, 384], Distribution::Normal(0.0, 1.0), &d);
    time("layer norm (var_mean_bias) [32,128,384]", || {
        let (var, mean) = y.clone().var_mean_bias(2);
        let _ = ((y.clone() - mean) / (var + 1e-12).sqrt()).into_data();
    });
    time("reshape+swap_dims (split heads) [32,128,384]", || {
        let _ = y
            .clone()
            .reshape([32, 128, 12, 32])
            .swap_dims(1, 2)
            .into_data();
    });
    time("add [32,128,384]", || {
        let _ = (y.clone() + y.clone()).into_data();
    });
}

/// The `gemm` crate called directly on `[4096,384] @ [384,1536]`, W stored `[1536,384]` as
/// nn.Linear keeps it (read transposed) and stored `[384,1536]`.
fn raw_gemm() {
    println!("== gemm crate, direct");
    let (m, k, n) = (4096usize, 384usize, 1536usize);
    let x: Vec<f32> = (0..m * k).map(|i| (i % 97) as f32 * 0.01).collect();
    let w: Vec<f32> = (0..n * k).map(|i| (i % 89) as f32 * 0.01).collect();
    let mut y = vec![0f32; m * n];
    for (name, rhs_cs, rhs_rs) in [
        ("W^T view (W [n,k])", k as isize, 1isize),
        ("W' contiguous [k,n]", 1, n as isize),
    ] {
        // SAFETY: every view stays inside its buffer: y is m x n row-major (strides 1, n) in
        // m*n floats, x is m x k (1, k) in m*k, and w read as k x n with strides (k, 1) or
        // (1, n) spans exactly its n*k floats; y aliases neither input.
        time(&format!("gemm x @ {name}"), || unsafe {
            gemm::gemm(
                m,
                n,
                k,
                y.as_mut_ptr(),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                rhs_cs,
                rhs_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            )
        });
    }
}

fn main() {
    raw_gemm();
    run::<burn::backend::Flex>("Flex");
    run::<burn::backend::Autodiff<burn::backend::Flex>>("Autodiff<Flex> (no grad)");
}
