//! Products whose inner width is at most [`LOW_RANK`]: the modules' up-projections (an
//! adapter's bottleneck back to the hidden size, LoRA's `B`, a meta-adapter's), `[tokens, 8] ×
//! [8, 384]`, and the input gradient of their down-projections (`dy [tokens, 8] · W [8, 384]`).
//! Through the GEMM such a product first wrote its output as bias rows (or zeros), then read and
//! wrote all of it again around eight multiply-adds per element, with the GEMM's packing on
//! top: 1.6–2.8 ms for `[4096, 8] × [8, 384]` here, against 0.1–0.4 ms when each output row is
//! summed in registers from the input row and stored once (`examples/low_rank_products.rs`).
//! The down-projections themselves (`[4096, 384] × [384, 8]`: a narrow output, a long inner
//! dimension) stay on the GEMM, which ran them faster than row-dot kernels tried here.
//!
//! [`rows_axpy`]: `y_r = bias + Σ_k x[r, k] m_k` for `x` `[n, p]`, `m` `[p, q]`, `p` small.
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::math::simd_dispatch;

/// A linear whose inner width is at most this takes [`rows_axpy`].
pub const LOW_RANK: usize = 16;

/// Elements read and written per parallel task (whole rows).
const TASK_ELEMS: usize = 1 << 14;

/// Width of the column blocks [`rows_axpy`] keeps in registers.
const LANES: usize = 16;

/// `y_r = bias + Σ_k x[r, k] m_k` for the rows of `x` `[n, p]` and `m` `[p, q]`: `[n, q]`.
pub fn rows_axpy(x: &[f32], m: &[f32], bias: Option<&[f32]>, [n, p, q]: [usize; 3]) -> Vec<f32> {
    rows_axpy_batched(x, m, bias, [1, n, p, q])
}

/// [`rows_axpy`] for a batch of products `x[i] · m[i]` (`x` `[batch, n, p]`, `m` `[batch, p,
/// q]`, the same `bias` for all) in one parallel pass over all `batch · n` output rows.
pub fn rows_axpy_batched(
    x: &[f32],
    m: &[f32],
    bias: Option<&[f32]>,
    [batch, n, p, q]: [usize; 4],
) -> Vec<f32> {
    assert_eq!(
        x.len(),
        batch * n * p,
        "rows_axpy: x is not [{batch}, {n}, {p}]"
    );
    assert_eq!(
        m.len(),
        batch * p * q,
        "rows_axpy: m is not [{batch}, {p}, {q}]"
    );
    assert!(
        bias.is_none_or(|b| b.len() == q),
        "rows_axpy: bias is not [{q}]"
    );
    fill(batch * n, q, p + q, |first, out| {
        // The chunk's rows, split where a batch item ends (each item has its own `m`).
        let (mut row, mut out) = (first, out);
        while !out.is_empty() {
            let item = row / n;
            let rows = (n - row % n).min(out.len() / q);
            let (seg, rest) = out.split_at_mut(rows * q);
            axpy_rows(seg, &x[row * p..], &m[item * p * q..], bias, p, q);
            (row, out) = (row + rows, rest);
        }
    })
}

/// An `[n, w]` output written by rayon's threads straight into fresh memory, `rows(first,
/// chunk)` writing every element of the whole rows in `chunk` that start at row `first`;
/// `row_elems` (a row's input and output) sizes the tasks.
fn fill(
    n: usize,
    w: usize,
    row_elems: usize,
    rows: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let len = n * w;
    let mut y = Vec::with_capacity(len);
    if len == 0 {
        return y;
    }
    let per_task = (TASK_ELEMS / row_elems.max(1)).max(1);
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(per_task * w)
        .enumerate()
        .for_each(|(t, chunk)| rows(t * per_task, chunk));
    // SAFETY: the `len` elements of spare capacity (asked for above) were all written: the
    // chunks cover `..len` exactly and `axpy_rows` writes every element of each
    // (one per row and output column, checked by `tests/low_rank.rs` against the GEMM).
    unsafe { y.set_len(len) };
    y
}

simd_dispatch! {
    /// The rows of `out` (`q` wide) from the rows of `x` (`p` wide, at least as many): blocks
    /// of 64 columns (then 16) summed in registers over the `p` rows of `m` and stored once,
    /// the blocks' chains of multiply-adds overlapping.
    fn axpy_rows(out: &mut [MaybeUninit<f32>], x: &[f32], m: &[f32], bias: Option<&[f32]>, p: usize, q: usize) {
        let (wide, full) = (q - q % (4 * LANES), q - q % LANES);
        for (yr, xr) in out.chunks_exact_mut(q).zip(x.chunks_exact(p)) {
            for c in (0..wide).step_by(4 * LANES) {
                axpy_block::<4>(&mut yr[c..c + 4 * LANES], xr, &m[c..], bias.map(|b| &b[c..]), q);
            }
            for c in (wide..full).step_by(LANES) {
                axpy_block::<1>(&mut yr[c..c + LANES], xr, &m[c..], bias.map(|b| &b[c..]), q);
            }
            for c in full..q {
                let mut s = bias.map_or(0.0, |b| b[c]);
                for (k, &a) in xr.iter().enumerate() {
                    s += a * m[k * q + c];
                }
                yr[c].write(s);
            }
        }
    }
}

/// `y = bias + Σ_k x[k] m[k·q ..]` over `G` blocks of 16 columns (`m` and `bias` start at the
/// block's first column; `m`'s rows are `q` apart).
#[inline(always)]
fn axpy_block<const G: usize>(
    y: &mut [MaybeUninit<f32>],
    x: &[f32],
    m: &[f32],
    bias: Option<&[f32]>,
    q: usize,
) {
    let mut acc = [[0f32; LANES]; G];
    if let Some(b) = bias {
        for (t, a) in acc.iter_mut().enumerate() {
            a.copy_from_slice(&b[t * LANES..(t + 1) * LANES]);
        }
    }
    for (k, &xk) in x.iter().enumerate() {
        let mk = &m[k * q..k * q + G * LANES];
        for (t, a) in acc.iter_mut().enumerate() {
            for l in 0..LANES {
                a[l] += xk * mk[t * LANES + l];
            }
        }
    }
    let y = &mut y[..G * LANES];
    for t in 0..G {
        for l in 0..LANES {
            y[t * LANES + l].write(acc[t][l]);
        }
    }
}

#[cfg(test)]
#[path = "tests/low_rank.rs"]
mod tests;
