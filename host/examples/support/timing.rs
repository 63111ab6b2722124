//! Timing and shapes shared by the kernel examples (not an example itself: cargo builds only
//! the files directly in `examples/`).
use std::time::Instant;

/// Seconds of `f`: one warm-up call, then the median of 7 timed calls.
pub fn median_s(mut f: impl FnMut()) -> f64 {
    f();
    let mut v: Vec<f64> = (0..7)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[3]
}

/// `(m, k, n)` of the linears' products `[m, k] × [k, n]`: MiniLM at 4,096 tokens, t5-small's
/// encoder at 1,024 (these six first), then t5-small's decoder at 256 with its LM head and
/// bart-base's encoder at 1,024.
pub const LINEAR_SHAPES: [(usize, usize, usize); 13] = [
    (4096, 384, 384),
    (4096, 384, 1536),
    (4096, 1536, 384),
    (1024, 512, 512),
    (1024, 512, 2048),
    (1024, 2048, 512),
    (256, 512, 512),
    (256, 512, 2048),
    (256, 2048, 512),
    (256, 512, 32128),
    (1024, 768, 768),
    (1024, 768, 3072),
    (1024, 3072, 768),
];
