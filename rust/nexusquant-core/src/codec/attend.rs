//! Attention arithmetic straight on the codes: query–key dot products and weighted value sums
//! over coded head-vectors, without decoding them into `d` values each.
//!
//! A decoded head-vector is `x̂ = R⁻¹(m · P̂ / 4)` (`docs/codec.md` §7) with `R` orthonormal, so
//!
//! ```text
//! <q, x̂>       = m/4 · <R q, P̂>                 (one rotation per query, none per token)
//! Σ_t w_t x̂_t  = R⁻¹( Σ_t w_t m_t/4 · P̂_t )     (one inverse rotation per query)
//! ```
//!
//! Per token this leaves the lattice decode of the blocks (`VDEC`) and `d` multiply-adds per
//! query; the rotations, the per-token binary32 rows and the memory traffic of materialised
//! K/V go away. The results equal decode-then-multiply up to binary32 rounding (the sums are
//! taken in another order), not bit for bit. A NaN scale (a head-vector that held NaN/Inf)
//! gives NaN scores and poisons the value sums it takes part in, as its decoded NaN row would.
//!
//! Layouts (`n` tokens, `g` queries sharing the keys, e.g. the query heads of one KV head):
//! queries `g × d`; scores and weights token-major, `n × g` (`[t·g + j]`); value sums `g × d`.

use half::f16;

use super::decode::CodeLanes;
use super::lanes::{LaneF, LaneI, Simd, L};
use super::Codec;

/// `m/4` of up to [`L`] fp16 scales (NaN kept; lanes past the last token 0).
#[inline(always)]
fn quarter_scales<S: Simd>(scales: &[u16]) -> S::F {
    let mut mf = [0f32; L];
    for (m, &h) in mf.iter_mut().zip(scales) {
        *m = f16::from_bits(h).to_f32();
    }
    S::F::from_array(mf) * S::F::splat(0.25)
}

/// Scores `out[t·g + j] = <q_j, x̂_t>` of the rotated queries `rq` (`g × d`, each already
/// `R q_j`) against the `scales.len()` coded tokens. Lengths are the caller's responsibility.
#[inline(always)]
pub(crate) fn scores_rows<S: Simd>(
    codec: &Codec,
    rq: &[f32],
    codes: &[u8],
    scales: &[u16],
    out: &mut [f32],
) {
    let p = codec.params();
    let (d, b, cb) = (p.head_dim(), p.bits(), p.code_bytes());
    let g = rq.len() / d;
    let mut lanes = CodeLanes::new(cb);
    let mut acc = vec![S::F::splat(0.0); g];
    // The queries coordinate-major, each value in every lane: ql[i·g + j] = rq[j·d + i].
    let ql: Vec<S::F> = (0..d * g)
        .map(|e| S::F::splat(rq[(e % g) * d + e / g]))
        .collect();
    for ((cg, sg), og) in codes
        .chunks(L * cb)
        .zip(scales.chunks(L))
        .zip(out.chunks_mut(L * g))
    {
        lanes.load(cg, cb);
        acc.iter_mut().for_each(|a| *a = S::F::splat(0.0));
        for j in 0..d / 8 {
            let p = lanes.block::<S>(j, b);
            for (k, pk) in p.iter().enumerate() {
                let pf = pk.to_f32();
                let i = 8 * j + k;
                for (a, q) in acc.iter_mut().zip(&ql[i * g..(i + 1) * g]) {
                    *a = *a + pf * *q;
                }
            }
        }
        let m = quarter_scales::<S>(sg);
        for (qi, a) in acc.iter().enumerate() {
            let s = (*a * m).to_array();
            for (l, o) in og.chunks_mut(g).enumerate() {
                o[qi] = s[l];
            }
        }
    }
}

/// Rotated value sums `out[j·d + i] = Σ_t w[t·g + j] · m_t/4 · P̂_t[i]` (before `R⁻¹`) of the
/// `scales.len()` coded tokens; `out` is overwritten. Lengths are the caller's responsibility.
#[inline(always)]
pub(crate) fn values_rows<S: Simd>(
    codec: &Codec,
    weights: &[f32],
    codes: &[u8],
    scales: &[u16],
    out: &mut [f32],
) {
    let p = codec.params();
    let (d, b, cb) = (p.head_dim(), p.bits(), p.code_bytes());
    let g = out.len() / d;
    let mut lanes = CodeLanes::new(cb);
    // acc[j·d + i]: lane l holds token l's share of coordinate i of query j.
    let mut acc = vec![S::F::splat(0.0); g * d];
    let mut wl = vec![S::F::splat(0.0); g];
    for ((cg, sg), wg) in codes
        .chunks(L * cb)
        .zip(scales.chunks(L))
        .zip(weights.chunks(L * g))
    {
        lanes.load(cg, cb);
        let m = quarter_scales::<S>(sg);
        for (j, w) in wl.iter_mut().enumerate() {
            let mut a = [0f32; L];
            for (l, row) in wg.chunks(g).enumerate() {
                a[l] = row[j];
            }
            *w = S::F::from_array(a) * m;
        }
        for jb in 0..d / 8 {
            let p = lanes.block::<S>(jb, b);
            for (k, pk) in p.iter().enumerate() {
                let pf = pk.to_f32();
                let i = 8 * jb + k;
                for (q, w) in wl.iter().enumerate() {
                    let a = &mut acc[q * d + i];
                    *a = *a + pf * *w;
                }
            }
        }
    }
    for (o, a) in out.iter_mut().zip(&acc) {
        let lanes = a.to_array();
        *o = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
            + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
    }
}
