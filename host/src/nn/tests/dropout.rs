use burn::tensor::Tensor;

use super::tracked;
use crate::nn::test_support::{vals, A};

/// Inverted dropout: about p of the elements zeroed, the rest scaled by 1/(1 - p), the
/// gradient the same mask; the same seed draws the same mask.
#[test]
fn tracked_dropout_masks_scales_and_differentiates() {
    let x = Tensor::<A, 3>::ones([4, 50, 500], &Default::default()).require_grad();
    let y = tracked(x.clone(), 0.3, 77).unwrap();
    let g = y.clone().sum().backward();
    let (out, grad) = (vals(y), vals(x.grad(&g).unwrap()));
    let zeros = out.iter().filter(|v| **v == 0.0).count() as f64 / out.len() as f64;
    assert!((zeros - 0.3).abs() < 0.01, "dropped fraction {zeros}");
    assert!(out
        .iter()
        .all(|v| *v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
    assert_eq!(out, grad, "d(sum)/dx is the scaled mask");
    let again = vals(tracked(x.clone(), 0.3, 77).unwrap());
    assert_eq!(out, again);
    assert_ne!(out, vals(tracked(x.clone(), 0.3, 78).unwrap()));
    assert!(tracked(x, 1.0, 1).is_err());
}

/// The counter-based draws behind every mask: the kept fraction, pairs of neighbours, of
/// elements a row apart (384 and 1536, MiniLM's widths) and of two seeds at the same element
/// each kept as often as independent draws are, within 5 standard deviations.
#[test]
fn mask_draws_are_uniform_and_independent() {
    let n = 1 << 20;
    let ones = vec![1f32; n];
    let kept = |seed: u64| {
        let mut out = vec![0f32; n];
        super::Mask::new(0.5, seed).apply(&mut out, &ones, 0);
        out.iter().map(|v| *v != 0.0).collect::<Vec<bool>>()
    };
    let (a, b) = (kept(7), kept(8));
    let frac = |hits: usize, of: usize| hits as f64 / of as f64;
    let check = |what: &str, f: f64, want: f64, of: usize| {
        let sd = (want * (1.0 - want) / of as f64).sqrt();
        assert!(
            (f - want).abs() < 5.0 * sd,
            "{what}: {f} vs {want} (sd {sd})"
        );
    };
    check("kept", frac(a.iter().filter(|k| **k).count(), n), 0.5, n);
    for lag in [1, 2, 384, 1536] {
        let both = (0..n - lag).filter(|&i| a[i] && a[i + lag]).count();
        check(&format!("lag {lag}"), frac(both, n - lag), 0.25, n - lag);
    }
    let both = (0..n).filter(|&i| a[i] && b[i]).count();
    check("two seeds", frac(both, n), 0.25, n);
}

/// A run of indices across a multiple of 2³² draws as its two parts drawn apart, and the part
/// past it is not the draws of the same low words below it (the high word keys the draw).
#[test]
fn a_run_across_two_to_the_32_draws_as_its_parts() {
    let m = super::Mask::new(0.5, 3);
    let ones = vec![1f32; 4096];
    let first = (1u64 << 32) - 1000;
    let mut whole = vec![0f32; 4096];
    m.apply(&mut whole, &ones, first);
    let mut parts = vec![0f32; 4096];
    let (lo, hi) = parts.split_at_mut(1000);
    m.apply(lo, &ones[..1000], first);
    m.apply(hi, &ones[1000..], 1 << 32);
    assert_eq!(whole, parts);
    let mut low_words = vec![0f32; 3096];
    m.apply(&mut low_words, &ones[..3096], 0);
    assert_ne!(&whole[1000..], &low_words[..]);
}
