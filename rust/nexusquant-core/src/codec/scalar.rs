//! The scalar baseline the E8 codec is measured against (benchmarks and evaluation only).
//!
//! Same rotation `R`, then per head-vector a symmetric uniform mid-rise quantizer at `b` bits:
//! `2^b` levels `±(k + ½)Δ`, `k = 0 … 2^(b-1) - 1`, with the step `Δ = 2·clip / 2^b` stored as
//! one fp16 scale. `clip` is the best of [`CLIP_CANDIDATES`] fractions of the vector's largest
//! `|value|` (least squared error, with `Δ` already rounded to fp16). Same rate as the E8 codec:
//! `b` bits per element plus 16 bits per head-vector. Not part of the format.

use half::f16;

use super::lanes::{arr8, LaneF, LaneM, Simd, L};
use super::Codec;

/// Clipping ratios searched: `clip = absmax · r / CLIP_CANDIDATES`, `r = 1 … CLIP_CANDIDATES`.
pub const CLIP_CANDIDATES: u32 = 32;

/// `Δ · (clamp(floor(v / Δ), lo, hi) + ½)`, given `inv = 1 / Δ`. A zero `Δ` gives zero.
#[inline(always)]
fn level<S: Simd>(v: S::F, delta: S::F, inv: S::F, lo: S::F, hi: S::F) -> S::F {
    let k = (v * inv).floor().max(lo).min(hi);
    (k + S::F::splat(0.5)) * delta
}

/// Encodes and decodes the rows of `x` into `out` with the baseline, [`L`] rows at a time.
/// Non-finite rows come out as NaN, zero rows as zero.
#[inline(always)]
pub(crate) fn scalar_rows<S: Simd>(codec: &Codec, x: &[f32], out: &mut [f32]) {
    let p = codec.params();
    let (d, b) = (p.head_dim(), p.bits());
    let h = (1u32 << (b - 1)) as f32;
    let (lo, hi) = (S::F::splat(-h), S::F::splat(h - 1.0));
    let levels = S::F::splat((1u32 << b) as f32);
    let zero = S::F::splat(0.0);
    let mut v = vec![zero; d];
    let mut rows = vec![0f32; L * d];
    for (xg, og) in x.chunks(L * d).zip(out.chunks_mut(L * d)) {
        let n = xg.len() / d;
        rows[..n * d].copy_from_slice(xg);
        rows[n * d..].fill(0.0);
        let mut finite = S::M::splat(true);
        for k in 0..d / 8 {
            let r: [S::F; 8] = arr8(|l| {
                let at = l * d + 8 * k;
                S::F::from_array(rows[at..at + 8].try_into().expect("8 values"))
            });
            let t = S::transpose(r);
            for i in 0..8 {
                finite = finite & t[i].is_finite();
                v[8 * k + i] = t[i];
            }
        }
        for vi in v.iter_mut() {
            *vi = finite.select(*vi, zero);
        }
        codec.rotation().forward_lanes::<S>(&mut v);
        let mut absmax = zero;
        for vi in &v {
            absmax = vi.abs().max(absmax);
        }
        let mut best_err = S::F::splat(f32::INFINITY);
        let mut best_delta = zero;
        for r in 1..=CLIP_CANDIDATES {
            let ratio = S::F::splat(r as f32 / CLIP_CANDIDATES as f32);
            let raw = (S::F::splat(2.0) * absmax * ratio).div(levels).to_array();
            let mut delta = [0f32; L];
            for (dl, &x) in delta.iter_mut().zip(&raw) {
                *dl = f16::from_f32(x).to_f32();
            }
            let delta = S::F::from_array(delta);
            let inv = S::F::splat(1.0).div(delta);
            let mut err = zero;
            for &vi in &v {
                let e = vi - level::<S>(vi, delta, inv, lo, hi);
                err = err + e * e;
            }
            let better = err.lt(best_err);
            best_err = better.select(err, best_err);
            best_delta = better.select(delta, best_delta);
        }
        let inv = S::F::splat(1.0).div(best_delta);
        for vi in v.iter_mut() {
            *vi = level::<S>(*vi, best_delta, inv, lo, hi);
        }
        codec.rotation().inverse_lanes::<S>(&mut v);
        for k in 0..d / 8 {
            let r: [S::F; 8] = arr8(|i| v[8 * k + i]);
            let t = S::transpose(r);
            for l in 0..8 {
                rows[l * d + 8 * k..l * d + 8 * k + 8].copy_from_slice(&t[l].to_array());
            }
        }
        for l in 0..n {
            let o = &mut og[l * d..(l + 1) * d];
            if finite.get(l) {
                o.copy_from_slice(&rows[l * d..(l + 1) * d]);
            } else {
                o.fill(f32::NAN);
            }
        }
    }
}
