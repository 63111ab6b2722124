//! Where attention's time goes as the sequence grows at a fixed 4,096 tokens (MiniLM's 12
//! heads of 32, f32, no gradients): the whole layer at sequence 64 / 128 / 256 / 512, then the
//! blocked kernel's two products alone, one block on one core, at the shapes `nn::flash` uses
//! (`BR` = 128 query rows, up to `BC` = 256 keys, operands strided as in `[b, t, 384]`),
//! against a large GEMM on the same core. GFLOP/s count the two products only, so the gap
//! between a layer's rate and its products' rate is the online softmax and the bookkeeping.
//! Two interleaved rounds, median of 7 runs each.
//! `cargo run --release -p peft-host --example attention_curve` (`-- layer 512`: only that layer,
//! for `perf record`).
#[path = "support/attention.rs"]
#[allow(dead_code)]
mod attention;
#[path = "support/timing.rs"]
#[allow(dead_code)]
mod timing;

use attention::wave;
use peft_host::nn::{
    gemm::{matmul, Mat, MatMut, Parallelism},
    ScoreTerms,
};

const HEADS: usize = 12;
const DH: usize = 32;
const H: usize = HEADS * DH;

/// One layer's attention over `4096 / t` sequences of `t` tokens, all cores.
fn layer(t: usize) -> (f64, f64) {
    attention::layer_s(4096 / t, t, HEADS, DH, ScoreTerms::default())
}

/// The scores product `q[br, 32] · k[bc, 32]ᵀ` and the context product `p[br, bc] · v[bc, 32]`
/// of one block, one core, in GFLOP/s.
fn block_products(br: usize, bc: usize) -> (f64, f64) {
    let (q, k, v) = (wave(br * H, 0.1), wave(bc * H, 0.7), wave(bc * H, 1.9));
    let mut s = vec![0.0f32; br * bc];
    let mut o = vec![0.0f32; br * DH];
    let flop = 2.0 * (br * bc * DH) as f64;
    let t_s = timing::median_s(|| {
        for _ in 0..64 {
            let mut d = MatMut::dense(&mut s, br, bc);
            let k = Mat::rows(&k, 0, bc, DH, H);
            matmul(
                &mut d,
                0.0,
                Mat::rows(&q, 0, br, DH, H),
                k.t(),
                1.0,
                Parallelism::None,
            );
        }
        std::hint::black_box(&s);
    }) / 64.0;
    let t_o = timing::median_s(|| {
        for _ in 0..64 {
            let mut d = MatMut::new(&mut o, 0, br, DH, DH, 1);
            let p = Mat::rows(&s, 0, br, bc, bc);
            matmul(
                &mut d,
                1.0,
                p,
                Mat::rows(&v, 0, bc, DH, H),
                1.0,
                Parallelism::None,
            );
        }
        std::hint::black_box(&o);
    }) / 64.0;
    (flop / t_s / 1e9, flop / t_o / 1e9)
}

/// `[512, 384] · [384, 1536]` on one core (bench's GEMM rate in a one-thread pool), in GFLOP/s.
fn big_gemm() -> f64 {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool")
        .install(|| peft_host::bench::gemm_rate(512, 384, 1536, 7))
}

fn main() {
    // `layer T`: only the layer at sequence T, three times (for a sampling profiler).
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [what, t] = args.as_slice() {
        assert_eq!(what, "layer", "usage: attention_curve [layer T]");
        let t: usize = t.parse().expect("T: a sequence length dividing 4096");
        for _ in 0..3 {
            let (s, flop) = layer(t);
            println!("t={t} {:.2} ms ({:.0} GFLOP/s)", s * 1e3, flop / s / 1e9);
        }
        return;
    }
    for round in 0..2 {
        let mut line = format!("round {round} layer (all cores):");
        for t in [64, 128, 256, 512] {
            let (s, flop) = layer(t);
            line += &format!(" t={t} {:.2} ms ({:.0} GFLOP/s)", s * 1e3, flop / s / 1e9);
        }
        println!("{line}");
        let mut line = format!(
            "round {round} one core: GEMM 512x384x1536 {:.0} GFLOP/s;",
            big_gemm()
        );
        for (br, bc) in [(128, 64), (128, 128), (128, 256)] {
            let (sc, pv) = block_products(br, bc);
            line += &format!(" {br}x{bc} block: q·kᵀ {sc:.0}, p·v {pv:.0};");
        }
        println!("{line}");
    }
}
