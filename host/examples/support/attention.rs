//! One attention layer as the attention examples time it (not an example itself).
use peft_host::nn::{attention_with, KvLayout, ScoreTerms};

/// `n` values of a sine wave with phase `m`: smooth, non-constant inputs.
pub fn wave(n: usize, m: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.37 + m).sin()).collect()
}

/// Seconds of one layer's attention without gradients (median of 7, [`super::timing`]):
/// `b` sequences of `t` tokens, `heads` heads of `dh`, every key kept, `[b, t, heads·dh]`
/// operands. Returns them with the FLOP of its two products.
pub fn layer_s(b: usize, t: usize, heads: usize, dh: usize, terms: ScoreTerms) -> (f64, f64) {
    let h = heads * dh;
    let (q, k, v) = (
        wave(b * t * h, 0.1),
        wave(b * t * h, 0.7),
        wave(b * t * h, 1.9),
    );
    let keep = vec![true; b * t];
    let scale = 1.0 / (dh as f32).sqrt();
    let s = super::timing::median_s(|| {
        let out = attention_with(
            &q,
            &k,
            &v,
            &keep,
            [b, t, t],
            heads,
            scale,
            KvLayout::Time,
            terms.clone(),
        );
        std::hint::black_box(out.unwrap());
    });
    (s, 4.0 * (b * heads * t * t * dh) as f64)
}
