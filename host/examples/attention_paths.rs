//! Attention of one layer without gradients at MiniLM's shapes (batch 32 × 128 tokens, 12
//! heads of 32) and t5-small's (8 × 128, 8 heads of 64): f32 against the bf16 path that
//! `matmul_precision: medium` takes (`ScoreTerms::bf16`, on `vdpbf16ps` where the CPU has it).
//! GFLOP/s counts the two products. Two interleaved rounds, median of 7 runs each.
//! Heads narrower than `nn::attention::BF16_MIN_DH` keep f32 attention under `bf16` too (the
//! MiniLM line then times f32 twice; its doc gives what the bf16 path measured there).
//! `cargo run --release -p peft-host --example attention_paths` (`RAYON_NUM_THREADS=1`: one core).
#[path = "support/attention.rs"]
#[allow(dead_code)]
mod attention;
#[path = "support/timing.rs"]
#[allow(dead_code)]
mod timing;

use peft_host::nn::{dpbf16, ScoreTerms};

fn main() {
    println!("dpbf16 available: {}", dpbf16::available());
    // Optional argument `f32` or `bf16`: time only that path (for a profiler).
    let only = std::env::args().nth(1);
    for round in 0..2 {
        for (name, b, t, heads, dh) in [("MiniLM", 32, 128, 12, 32), ("t5-small", 8, 128, 8, 64)] {
            let mut line = format!("round {round} {name}:");
            for bf16 in [false, true] {
                if only
                    .as_deref()
                    .is_some_and(|o| o != if bf16 { "bf16" } else { "f32" })
                {
                    continue;
                }
                let terms = ScoreTerms {
                    bf16,
                    ..Default::default()
                };
                let (s, flop) = attention::layer_s(b, t, heads, dh, terms);
                let tag = if bf16 { "bf16" } else { "f32" };
                line += &format!(" {tag} {:.2} ms ({:.0} GFLOP/s)", s * 1e3, flop / s / 1e9);
            }
            println!("{line}");
        }
    }
}
