//! Attention under `medium` (`ScoreTerms::bf16`): both products on bf16-rounded operands.
use half::bf16;

use super::{attention_with, KvLayout, ScoreTerms, BF16_MIN_DH, BF16_MIN_ROWS};
use crate::nn::flash::{BC, BR};

/// `attention_with` on keys and values in the projections' layout.
fn attend(
    [q, k, v]: [&[f32]; 3],
    keep: &[bool],
    bts: [usize; 3],
    heads: usize,
    scale: f32,
    terms: ScoreTerms,
) -> Vec<f32> {
    attention_with(q, k, v, keep, bts, heads, scale, KvLayout::Time, terms).unwrap()
}

fn round(v: f32) -> f64 {
    f64::from(bf16::from_f32(v).to_f32())
}

/// The blocked algorithm in f64 on rounded operands, as the bf16 path runs it: scores from
/// rounded `q`, `k`; per key block of [`BC`] the online softmax (running maximum, sums of the
/// unrounded exponentials), those exponentials rounded to bf16 before they multiply the rounded
/// values. One (batch, head) of `[t, dh]`, `[s, dh]`, `[s, dh]`; `keep` per key; `pos` `[t, s]`.
#[allow(clippy::too_many_arguments)]
fn emulate(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    keep: &[bool],
    pos: Option<&[f32]>,
    causal: Option<usize>,
    [t, s, dh]: [usize; 3],
    scale: f64,
    round_p: bool,
) -> Vec<f64> {
    let mut out = vec![0f64; t * dh];
    for i in 0..t {
        let (mut m, mut l, mut acc) = (f64::NEG_INFINITY, 0f64, vec![0f64; dh]);
        for j0 in (0..s).step_by(BC) {
            let js = j0..(j0 + BC).min(s);
            let sc: Vec<f64> = js
                .clone()
                .map(|j| {
                    let dot: f64 = (0..dh)
                        .map(|d| round(q[i * dh + d]) * round(k[j * dh + d]))
                        .sum();
                    let x = dot * scale + pos.map_or(0.0, |p| f64::from(p[i * s + j]));
                    let hidden = causal.is_some_and(|off| j > i + off) || !keep[j];
                    if hidden {
                        f64::NEG_INFINITY
                    } else {
                        x
                    }
                })
                .collect();
            if sc.iter().all(|x| x.is_infinite()) {
                continue;
            }
            let m_new = sc.iter().cloned().fold(m, f64::max);
            let alpha = (m - m_new).exp();
            l *= alpha;
            acc.iter_mut().for_each(|a| *a *= alpha);
            for (x, j) in sc.iter().zip(js) {
                let p = (x - m_new).exp();
                l += p;
                let pr = if round_p { round(p as f32) } else { p };
                for d in 0..dh {
                    acc[d] += pr * round(v[j * dh + d]);
                }
            }
            m = m_new;
        }
        for d in 0..dh {
            out[i * dh + d] = acc[d] / l;
        }
    }
    out
}

/// The bf16 path (on `vdpbf16ps` where the CPU has it, else the f32 path on rounded operands:
/// run the test with `PEFT_DPBF16=0` too) equals the emulation, across key blocks (the online
/// rescaling of rounded probabilities), with a padded key, T5's position bias and a causal
/// mask: mean error under 3e-6, worst under 1e-3 (the kernel's f32 exponentials round to
/// another bf16 neighbour than f64's now and then: one probability off by 2⁻⁸). It is not an
/// f32 result: against the emulation without rounding the probabilities the mean error is
/// over 1e-5 (measured ~6e-5, against ~4e-7), against f32 attention the worst over 2e-4.
#[test]
fn bf16_attention_equals_the_rounded_blocked_algorithm() {
    let (b, heads, dh) = (2, 2, BF16_MIN_DH);
    let h = heads * dh;
    for (t, s, causal, with_pos) in [
        (BR + 5, 2 * BC + 37, None, false),
        (40, 300, None, true),
        (BR + 3, BR + 3, Some(0), true),
        (BF16_MIN_ROWS, 37, None, false),
    ] {
        let val = |n: usize, m: f32, a: f32| -> Vec<f32> {
            (0..n).map(|i| (i as f32 * 0.37 + m).sin() * a).collect()
        };
        let (q, k, v) = (
            val(b * t * h, 0.1, 1.5),
            val(b * s * h, 0.7, 1.5),
            val(b * s * h, 1.9, 1.0),
        );
        let pos = with_pos.then(|| val(heads * t * s, 4.1, 0.7));
        let mut keep = vec![true; b * s];
        if causal.is_none() {
            keep[s + 5] = false;
        }
        let scale = 1.0 / (dh as f32).sqrt();
        let run = |bf16| {
            let terms = ScoreTerms {
                pos: pos.clone(),
                causal,
                bf16,
            };
            attend([&q, &k, &v], &keep, [b, t, s], heads, scale, terms)
        };
        let (got, f32s) = (run(true), run(false));
        let (mut worst, mut unrounded, mut vs_f32) = (0f64, f64::INFINITY, 0f64);
        let (mut sum, mut sum_plain, mut n) = (0f64, 0f64, 0usize);
        for bi in 0..b {
            for hi in 0..heads {
                // This head's operands, contiguous.
                let take = |x: &[f32], n: usize| -> Vec<f32> {
                    (0..n)
                        .flat_map(|r| x[(bi * n + r) * h + hi * dh..][..dh].to_vec())
                        .collect()
                };
                let (qh, kh, vh) = (take(&q, t), take(&k, s), take(&v, s));
                let ph = pos.as_ref().map(|p| &p[hi * t * s..(hi + 1) * t * s]);
                let dims = [t, s, dh];
                let keep = &keep[bi * s..(bi + 1) * s];
                let want = emulate(&qh, &kh, &vh, keep, ph, causal, dims, scale.into(), true);
                let plain = emulate(&qh, &kh, &vh, keep, ph, causal, dims, scale.into(), false);
                let mut d_plain = 0f64;
                for i in 0..t {
                    for d in 0..dh {
                        let e = (bi * t + i) * h + hi * dh + d;
                        let y = f64::from(got[e]);
                        worst = worst.max((y - want[i * dh + d]).abs());
                        d_plain = d_plain.max((y - plain[i * dh + d]).abs());
                        sum += (y - want[i * dh + d]).abs();
                        sum_plain += (y - plain[i * dh + d]).abs();
                        n += 1;
                        vs_f32 = vs_f32.max((y - f64::from(f32s[e])).abs());
                    }
                }
                unrounded = unrounded.min(d_plain);
            }
        }
        let (mean, mean_plain) = (sum / n as f64, sum_plain / n as f64);
        eprintln!(
            "t={t} s={s}: worst {worst:.2e} mean {mean:.2e}; unrounded p worst {unrounded:.2e} \
             mean {mean_plain:.2e}; f32 {vs_f32:.2e}"
        );
        assert!(
            mean < 3e-6 && worst < 1e-3,
            "t={t} s={s}: {mean:e} (worst {worst:e}) from the emulation"
        );
        assert!(
            mean_plain > 1e-5,
            "t={t} s={s}: probabilities not rounded? {mean_plain:e}"
        );
        assert!(
            vs_f32 > 2e-4,
            "t={t} s={s}: operands not rounded? {vs_f32:e}"
        );
    }
}

/// Heads narrower than [`BF16_MIN_DH`] and fewer queries than [`BF16_MIN_ROWS`] (a decoding
/// step) keep f32 attention: the same values with and without `bf16`.
#[test]
fn narrow_heads_and_decoding_steps_keep_f32_attention() {
    for (t, s, dh) in [
        (9, 9, BF16_MIN_DH / 2),
        (1, 40, BF16_MIN_DH),
        (BF16_MIN_ROWS - 1, 20, BF16_MIN_DH),
    ] {
        let (b, heads) = (2, 3);
        let h = heads * dh;
        let val = |n: usize, m: f32| -> Vec<f32> {
            (0..n).map(|i| (i as f32 * 0.37 + m).sin()).collect()
        };
        let (q, k, v) = (
            val(b * t * h, 0.1),
            val(b * s * h, 0.7),
            val(b * s * h, 1.9),
        );
        let keep = vec![true; b * s];
        let run = |bf16| {
            let terms = ScoreTerms {
                bf16,
                ..Default::default()
            };
            attend([&q, &k, &v], &keep, [b, t, s], heads, 0.3, terms)
        };
        assert_eq!(run(true), run(false), "t={t} s={s} dh={dh}");
    }
}
