//! Blocked (flash-style) attention for one (batch, head): queries in blocks of [`BR`] rows,
//! keys in blocks of [`BC`], an online softmax (running row maximum and sum, the accumulated
//! context rescaled when the maximum grows), so no more than a `BR × BC` block of scores ever
//! exists and the work per token stays in cache however long the sequence. The backward
//! recomputes each block's probabilities from the saved row log-sum-exp, as FlashAttention
//! does, instead of keeping the `[t, s]` probabilities. Dropout on the probabilities draws
//! each element's keep decision from a counter-based hash of (seed, head, row, key), so the
//! backward redraws exactly the forward's mask block by block.
use super::{
    dpbf16,
    gemm::{matmul, Mat, MatMut, Parallelism},
    math::{dot, draw, draw_runs, exp, max_plus, mix, simd_dispatch, sum},
};

/// Query rows per block.
pub(crate) const BR: usize = 128;
/// Keys per block: a `BR × BC` score block (64 KiB) stays in L2 with its operands.
pub(crate) const BC: usize = 256;

/// Dropout on the probabilities: keep with probability `1 - p`, scale kept by `1 / (1 - p)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dropout {
    /// A keep draw is a uniform `u32` at or above this.
    threshold: u32,
    pub(crate) inv_keep: f32,
    seed: u64,
}

impl Dropout {
    /// `None` for `p == 0`.
    pub(crate) fn new(p: f64, seed: u64) -> Option<Self> {
        (p > 0.0).then(|| Dropout {
            threshold: (p * 4_294_967_296.0).min(4_294_967_295.0) as u32,
            inv_keep: 1.0 / (1.0 - p as f32),
            seed,
        })
    }

    /// The stream of (batch, head) `bh`.
    pub(crate) fn stream(&self, bh: usize) -> u64 {
        mix(self.seed ^ (bh as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    /// Each element of the `rows × cols` block at (`i0`, `j0`) of a `[t, s]` matrix: `inv_keep`
    /// where kept, else 0 (row-major into `z`).
    pub(crate) fn factors(
        &self,
        stream: u64,
        z: &mut [f32],
        cols: usize,
        s: usize,
        i0: usize,
        j0: usize,
    ) {
        fill_factors(z, cols, s, i0 * s + j0, stream, *self);
    }
}

simd_dispatch! {
    /// Dropout factors of a block: element (r, c) is (row `i0 + r`, key `j0 + c`) of `[t, s]`.
    /// `first` is the index of element (0, 0) in `[t, s]`.
    fn fill_factors(z: &mut [f32], cols: usize, s: usize, first: usize, stream: u64, d: Dropout) {
        for (r, row) in z.chunks_exact_mut(cols).enumerate() {
            draw_runs(stream, (first + r * s) as u64, cols, |at, n, keys, lo| {
                for (c, x) in row[at..at + n].iter_mut().enumerate() {
                    let h = draw(keys, lo.wrapping_add(c as u32));
                    *x = if h >= d.threshold { d.inv_keep } else { 0.0 };
                }
            });
        }
    }
}

simd_dispatch! {
    /// One key block of the online softmax: `x` holds scores (rows of `cols`); after the call it
    /// holds `exp(score - m_new)` on kept keys (0 on dropped ones), `m` the new row maxima,
    /// `l` the running sums rescaled by `alpha = exp(m_old - m_new)`, which the caller also
    /// applies to its accumulated context. `bias` is 0 on kept keys and −∞ on dropped ones,
    /// `kf` 1 and 0; the block has at least one kept key, so every new maximum is finite.
    fn online_block(x: &mut [f32], cols: usize, bias: &[f32], kf: &[f32], m: &mut [f32], l: &mut [f32], alpha: &mut [f32]) {
        for (r, row) in x.chunks_exact_mut(cols).enumerate() {
            let m_new = m[r].max(max_plus(row, bias));
            let a = exp(m[r] - m_new);
            for (x, k) in row.iter_mut().zip(kf) {
                *x = exp(*x - m_new) * k;
            }
            alpha[r] = a;
            l[r] = l[r] * a + sum(row);
            m[r] = m_new;
        }
    }
}

simd_dispatch! {
    /// The probabilities of a block again from its scores and the rows' log-sum-exp.
    fn recompute(x: &mut [f32], cols: usize, lse: &[f32], kf: &[f32]) {
        for (row, &m) in x.chunks_exact_mut(cols).zip(lse) {
            for (x, k) in row.iter_mut().zip(kf) {
                *x = exp(*x - m) * k;
            }
        }
    }
}

simd_dispatch! {
    /// `dp ← p ∘ (dp ∘ z − D)` row by row (`z` empty: no dropout): the softmax's backward.
    fn softmax_grad(dp: &mut [f32], p: &[f32], z: &[f32], cols: usize, dvec: &[f32]) {
        for (r, (row, pr)) in dp.chunks_exact_mut(cols).zip(p.chunks_exact(cols)).enumerate() {
            let d = dvec[r];
            if z.is_empty() {
                for (x, &pj) in row.iter_mut().zip(pr) {
                    *x = pj * (*x - d);
                }
            } else {
                let zr = &z[r * cols..(r + 1) * cols];
                for ((x, &pj), &zj) in row.iter_mut().zip(pr).zip(zr) {
                    *x = pj * (*x * zj - d);
                }
            }
        }
    }
}

fn mul_into(u: &mut [f32], p: &[f32], z: &[f32]) {
    for ((u, p), z) in u.iter_mut().zip(p).zip(z) {
        *u = p * z;
    }
}

/// One (batch, head)'s operands, row-major views: `q` `[t, dh]`, `k`, `v` `[s, dh]`; the
/// batch's key mask as `bias` (0 / −∞) and `kf` (1 / 0), both all-kept when `uniform` (no key
/// of the batch is kept: every probability is `1 / s`, as an all-`finfo.min` mask gives).
/// `pos` `[t, s]` is added to the scaled scores (T5's relative position bias); with `causal`
/// = `Some(off)` query `i` sees key `j` only when `j <= i + off` (the others get `f32::MIN`,
/// HF's additive causal mask, so they get probability 0), and key blocks no query of a row
/// block sees are skipped.
pub(crate) struct Head<'a> {
    pub q: Mat<'a>,
    pub k: Mat<'a>,
    pub v: Mat<'a>,
    pub bias: &'a [f32],
    pub kf: &'a [f32],
    pub uniform: bool,
    pub scale: f32,
    pub drop: Option<(Dropout, u64)>,
    pub pos: Option<Mat<'a>>,
    pub causal: Option<usize>,
    /// Both products on operands rounded to bf16 (`q`, `k`, `v` and the probabilities; sums
    /// in f32), as `torch.autocast` runs attention: `matmul_precision: medium` without
    /// gradients. On `vdpbf16ps` where the CPU has it ([`Head::forward_bf16`]); elsewhere the
    /// caller passes rounded `q`, `k`, `v` and the f32 path rounds the probabilities, so the
    /// values do not depend on the CPU beyond summation order.
    pub bf16: bool,
}

/// Lanes of the online softmax's chunks (one AVX-512 register of f32).
const LANES: usize = 16;

/// A key block's masks padded to whole chunks: bias −∞ and kept 0 past the block's keys.
#[derive(Default)]
struct PadMasks {
    bias: Vec<f32>,
    kf: Vec<f32>,
}

impl PadMasks {
    /// `bias` and `kf` as they are when `ld` is their length, else padded copies.
    fn masks<'a>(
        &'a mut self,
        bias: &'a [f32],
        kf: &'a [f32],
        ld: usize,
    ) -> (&'a [f32], &'a [f32]) {
        if ld == bias.len() {
            return (bias, kf);
        }
        self.bias.clear();
        self.bias.extend_from_slice(bias);
        self.bias.resize(ld, f32::NEG_INFINITY);
        self.kf.clear();
        self.kf.extend_from_slice(kf);
        self.kf.resize(ld, 0.0);
        (&self.bias, &self.kf)
    }
}

/// Per-thread buffers, reused across heads.
#[derive(Default)]
pub(crate) struct Scratch {
    s: Vec<f32>,
    pad: PadMasks,
    p: Vec<f32>,
    z: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    alpha: Vec<f32>,
    d: Vec<f32>,
    /// The bf16 path's rounded query block and probabilities, and its dense `[BR, dh]`
    /// accumulator.
    qa: Vec<u16>,
    pa: Vec<u16>,
    o: Vec<f32>,
    /// The bf16 path's packed keys and values.
    kp: dpbf16::PanelBuf,
    vp: dpbf16::PanelBuf,
}

impl Scratch {
    /// Grows the buffers to what `t` queries and `s` keys use (short sequences use less than
    /// a whole block: rayon makes one `Scratch` per piece of work it splits off).
    fn ensure(&mut self, t: usize, s: usize) {
        let (br, bc) = (BR.min(t), BC.min(s).next_multiple_of(LANES));
        for b in [&mut self.s, &mut self.p, &mut self.z] {
            if b.len() < br * bc {
                b.resize(br * bc, 0.0);
            }
        }
        for b in [&mut self.m, &mut self.l, &mut self.alpha] {
            if b.len() < br {
                b.resize(br, 0.0);
            }
        }
        if self.d.len() < t {
            self.d.resize(t, 0.0);
        }
    }
}

impl Head<'_> {
    fn t(&self) -> usize {
        self.q.nrows()
    }
    fn s(&self) -> usize {
        self.k.nrows()
    }

    /// Whether key block `j0..j0 + bc` has a kept key (else it adds nothing).
    fn live(&self, j0: usize, bc: usize) -> bool {
        self.uniform || self.kf[j0..j0 + bc].iter().any(|&k| k != 0.0)
    }

    /// Whether some query of rows `i0..i0 + br` may see key `j0` or later (always without
    /// a causal mask).
    fn reaches(&self, i0: usize, br: usize, j0: usize) -> bool {
        self.causal.is_none_or(|off| j0 <= i0 + br - 1 + off)
    }

    /// `scale · q[i0..] k[j0..]ᵀ + pos` into `x` (`br` rows of `bc` scores, `ld` apart:
    /// the columns past `bc` are set to 0), or zeros when the batch is uniform; causally
    /// hidden keys get `f32::MIN`.
    #[allow(clippy::too_many_arguments)]
    fn scores(&self, x: &mut [f32], i0: usize, br: usize, j0: usize, bc: usize, ld: usize) {
        if self.uniform {
            x.fill(0.0);
        } else {
            let mut sm = MatMut::new(x, 0, br, bc, ld, 1);
            let (q, k) = (self.q.sub_rows(i0, br), self.k.sub_rows(j0, bc));
            matmul(&mut sm, 0.0, q, k.t(), self.scale, Parallelism::None);
            if ld > bc {
                x.chunks_exact_mut(ld).for_each(|row| row[bc..].fill(0.0));
            }
        }
        self.score_terms(x, i0, br, j0, bc, ld);
    }

    /// The position bias (unless uniform) and the causal mask on a block of scaled scores
    /// (rows `ld` apart).
    #[allow(clippy::too_many_arguments)]
    fn score_terms(&self, x: &mut [f32], i0: usize, br: usize, j0: usize, bc: usize, ld: usize) {
        if let (Some(pos), false) = (&self.pos, self.uniform) {
            for (r, row) in x.chunks_exact_mut(ld).take(br).enumerate() {
                let p = &pos.row(i0 + r)[j0..j0 + bc];
                row.iter_mut().zip(p).for_each(|(x, p)| *x += p);
            }
        }
        if let Some(off) = self.causal {
            for (r, row) in x.chunks_exact_mut(ld).enumerate() {
                // Keys `j0 + c` with `c >= first` lie after what query `i0 + r` may see.
                let first = (i0 + r + off + 1).saturating_sub(j0).min(bc);
                row[first..bc].fill(f32::MIN);
            }
        }
    }

    /// The context into `out` (`[t, dh]`, zeroed by the caller) and, when given, each row's
    /// log-sum-exp into `lse` (`[t]`) for the backward.
    pub(crate) fn forward(
        &self,
        out: &mut MatMut<'_>,
        mut lse: Option<&mut [f32]>,
        sc: &mut Scratch,
    ) {
        if self.bf16 && lse.is_none() && self.drop.is_none() && dpbf16::available() {
            return self.forward_bf16(out, sc);
        }
        let (t, s) = (self.t(), self.s());
        sc.ensure(t, s);
        for i0 in (0..t).step_by(BR) {
            let br = BR.min(t - i0);
            sc.m[..br].fill(f32::NEG_INFINITY);
            sc.l[..br].fill(0.0);
            let mut acc = out.sub_rows(i0, br);
            let mut first = true;
            for j0 in (0..s).step_by(BC) {
                let bc = BC.min(s - j0);
                if !self.live(j0, bc) || !self.reaches(i0, br, j0) {
                    continue;
                }
                // Rows padded to whole 16-lane chunks (the padding masked out: bias −∞, kept
                // 0, score 0) so that the online softmax never runs a partial chunk: a block
                // of 138 keys (a prefix's 10 before 128) took longer than one of 144.
                let ld = bc.next_multiple_of(LANES);
                let x = &mut sc.s[..br * ld];
                self.scores(x, i0, br, j0, bc, ld);
                let (bias, kf) = sc
                    .pad
                    .masks(&self.bias[j0..j0 + bc], &self.kf[j0..j0 + bc], ld);
                online_block(
                    x,
                    ld,
                    bias,
                    kf,
                    &mut sc.m[..br],
                    &mut sc.l[..br],
                    &mut sc.alpha[..br],
                );
                if let Some((d, stream)) = &self.drop {
                    let z = &mut sc.z[..br * bc];
                    d.factors(*stream, z, bc, s, i0, j0);
                    for (x, z) in x.chunks_exact_mut(ld).zip(z.chunks_exact(bc)) {
                        x.iter_mut().zip(z).for_each(|(x, z)| *x *= z);
                    }
                }
                if self.bf16 {
                    // Without `vdpbf16ps`: the probabilities rounded as the bf16 path rounds
                    // them (after their sum was taken).
                    x.iter_mut()
                        .for_each(|v| *v = half::bf16::from_f32(*v).to_f32());
                }
                // The first live block writes the accumulator; later ones rescale it first.
                if !first {
                    let alpha = &sc.alpha;
                    acc.for_each_row(|r, row| row.iter_mut().for_each(|y| *y *= alpha[r]));
                }
                let pm = Mat::rows(x, 0, br, bc, ld);
                let keep = if first { 0.0 } else { 1.0 };
                first = false;
                matmul(
                    &mut acc,
                    keep,
                    pm,
                    self.v.sub_rows(j0, bc),
                    1.0,
                    Parallelism::None,
                );
            }
            let l = &sc.l;
            acc.for_each_row(|r, row| {
                let inv = 1.0 / l[r];
                row.iter_mut().for_each(|y| *y *= inv);
            });
            if let Some(lse) = lse.as_deref_mut() {
                for r in 0..br {
                    lse[i0 + r] = sc.m[r] + sc.l[r].ln();
                }
            }
        }
    }

    /// [`Head::forward`] with both products on `vdpbf16ps`: the head's keys and values rounded
    /// and packed once, each query block rounded once, each block of probabilities rounded
    /// after the online softmax has summed it in f32 (as PyTorch's CPU flash attention does
    /// for bf16), the context accumulated in f32.
    fn forward_bf16(&self, out: &mut MatMut<'_>, sc: &mut Scratch) {
        let (t, s) = (self.t(), self.s());
        let dh = self.q.ncols();
        sc.ensure(t, s);
        let keys = dpbf16::Panel::transposed(self.k, s, dh, &mut sc.kp);
        let values = dpbf16::Panel::rows(self.v, s, dh, &mut sc.vp);
        sc.o.resize(BR.min(t) * dh, 0.0);
        for i0 in (0..t).step_by(BR) {
            let br = BR.min(t - i0);
            sc.m[..br].fill(f32::NEG_INFINITY);
            sc.l[..br].fill(0.0);
            let lq = dpbf16::round_rows(&mut sc.qa, br, dh, |r| self.q.row(i0 + r));
            let o = &mut sc.o[..br * dh];
            o.fill(0.0);
            for j0 in (0..s).step_by(BC) {
                let bc = BC.min(s - j0);
                if !self.live(j0, bc) || !self.reaches(i0, br, j0) {
                    continue;
                }
                let x = &mut sc.s[..br * bc];
                if self.uniform {
                    x.fill(0.0);
                } else {
                    let pairs = 0..dh.div_ceil(2);
                    dpbf16::panel_product(x, &sc.qa, lq, br, &keys, pairs, j0..j0 + bc, false);
                    x.iter_mut().for_each(|v| *v *= self.scale);
                }
                self.score_terms(x, i0, br, j0, bc, bc);
                let (bias, kf) = (&self.bias[j0..j0 + bc], &self.kf[j0..j0 + bc]);
                let (m, l, alpha) = (&mut sc.m[..br], &mut sc.l[..br], &mut sc.alpha[..br]);
                online_block(x, bc, bias, kf, m, l, alpha);
                for (row, a) in o.chunks_exact_mut(dh).zip(alpha.iter()) {
                    row.iter_mut().for_each(|y| *y *= a);
                }
                let lp = dpbf16::round_rows(&mut sc.pa, br, bc, |r| &x[r * bc..(r + 1) * bc]);
                // Key block j0 starts at pair j0 / 2 (BC is even); an odd last block's
                // missing partner is zero in both operands.
                let pairs = j0 / 2..(j0 + bc).div_ceil(2);
                dpbf16::panel_product(o, &sc.pa, lp, br, &values, pairs, 0..dh, true);
            }
            let l = &sc.l;
            out.sub_rows(i0, br).for_each_row(|r, row| {
                let inv = 1.0 / l[r];
                for (y, &v) in row.iter_mut().zip(&o[r * dh..(r + 1) * dh]) {
                    *y = v * inv;
                }
            });
        }
    }

    /// Accumulates the gradients of `q`, `k`, `v` (`dq` `[t, dh]`, `dk`, `dv` `[s, dh]`, zeroed
    /// by the caller) from the output `o`, its gradient `g` (both `[t, dh]`) and `lse`; and,
    /// when given, the score gradient into `dpos` (`[t, s]` row-major: what an additive score
    /// bias such as a trainable position bias receives).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward(
        &self,
        o: Mat<'_>,
        g: Mat<'_>,
        lse: &[f32],
        dq: &mut MatMut<'_>,
        dk: &mut MatMut<'_>,
        dv: &mut MatMut<'_>,
        mut dpos: Option<&mut [f32]>,
        sc: &mut Scratch,
    ) {
        let (t, s) = (self.t(), self.s());
        sc.ensure(t, s);
        // D_i = Σ_j P_ij dP_ij = dO_i · O_i (dropout included: O is the dropped output).
        for i in 0..t {
            sc.d[i] = dot(g.row(i), o.row(i));
        }
        for j0 in (0..s).step_by(BC) {
            let bc = BC.min(s - j0);
            if !self.live(j0, bc) {
                continue;
            }
            let kf = &self.kf[j0..j0 + bc];
            let (kb, vb) = (self.k.sub_rows(j0, bc), self.v.sub_rows(j0, bc));
            let mut dkb = dk.sub_rows(j0, bc);
            let mut dvb = dv.sub_rows(j0, bc);
            for i0 in (0..t).step_by(BR) {
                let br = BR.min(t - i0);
                if !self.reaches(i0, br, j0) {
                    continue;
                }
                let (qb, gb) = (self.q.sub_rows(i0, br), g.sub_rows(i0, br));
                let p = &mut sc.p[..br * bc];
                self.scores(p, i0, br, j0, bc, bc);
                recompute(p, bc, &lse[i0..i0 + br], kf);
                let z: &[f32] = match &self.drop {
                    Some((d, stream)) => {
                        let z = &mut sc.z[..br * bc];
                        d.factors(*stream, z, bc, s, i0, j0);
                        z
                    }
                    None => &[],
                };
                // dv += Uᵀ dO with U = P ∘ z (the dropped probabilities).
                let u: &[f32] = if z.is_empty() {
                    p
                } else {
                    let u = &mut sc.s[..br * bc];
                    mul_into(u, p, z);
                    u
                };
                matmul(
                    &mut dvb,
                    1.0,
                    Mat::rows(u, 0, br, bc, bc).t(),
                    gb,
                    1.0,
                    Parallelism::None,
                );
                // dU = dO vᵀ, then dS = P ∘ (dU ∘ z − D).
                let dp = &mut sc.s[..br * bc];
                let mut dpm = MatMut::dense(dp, br, bc);
                matmul(&mut dpm, 0.0, gb, vb.t(), 1.0, Parallelism::None);
                softmax_grad(dp, &sc.p[..br * bc], z, bc, &sc.d[i0..i0 + br]);
                if let Some(dpos) = dpos.as_deref_mut() {
                    for (r, ds) in dp.chunks_exact(bc).enumerate() {
                        let row = &mut dpos[(i0 + r) * s + j0..][..bc];
                        row.iter_mut().zip(ds).for_each(|(x, d)| *x += d);
                    }
                }
                // A uniform batch's scores still pass their gradient on, as HF's additive
                // `finfo.min` mask does (the softmax's backward sees uniform probabilities).
                let ds = Mat::rows(dp, 0, br, bc, bc);
                let mut dqb = dq.sub_rows(i0, br);
                matmul(&mut dqb, 1.0, ds, kb, self.scale, Parallelism::None);
                matmul(&mut dkb, 1.0, ds.t(), qb, self.scale, Parallelism::None);
            }
        }
    }
}
