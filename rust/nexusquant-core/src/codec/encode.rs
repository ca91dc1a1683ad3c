//! Encoding head-vectors (`docs/codec.md` §6).
//!
//! [`encode_vector`] is the spec written out literally, one head-vector at a time: the oracle.
//! `encode_rows` is the batched kernel: `L` head-vectors per pass, one per SIMD lane, with
//! results identical to [`encode_vector`] bit for bit (tested on random and special inputs).

use core::array::from_fn;

use half::f16;

use super::e8::{cell_valid, code_lanes, coords, qe8, qe8_lanes, vdec};
use super::element::Element;
use super::fold::{block_order, fold, BlockFold};
use super::lanes::{arr8, LaneF, LaneI, LaneM, Simd, L};
use super::pack::pack;
use super::params::{CodecError, ALPHA};
use super::Codec;

/// The scale of a head-vector with a NaN or infinite value: fp16 quiet NaN.
pub const NAN_SCALE: u16 = 0x7E00;

/// `m` rounded to fp16 (to nearest even), ±Inf saturated to ±65504; with its binary32 value.
#[inline(always)]
fn scale_to_fp16(m: f32) -> (u16, f32) {
    let mut h = f16::from_f32(m);
    if h.is_infinite() {
        h = if h.is_sign_negative() {
            f16::MIN
        } else {
            f16::MAX
        };
    }
    (h.to_bits(), h.to_f32())
}

/// The nearest point of `E8 + ¼` to `z`: its code, its codebook point `P̂` (quarter-units) and
/// whether that point is the nearest one (`P̂ == 2Y + 1`, no overload).
fn nearest_shifted(z: &[f32; 8], b: u32) -> ([u8; 8], [i32; 8], bool) {
    let mask = (1i32 << b) - 1;
    let y = qe8(&z.map(|x| x - 0.25));
    let code = coords(&y).map(|c| (c & mask) as u8);
    let p = vdec(&code, b);
    let inside = p.iter().zip(&y).all(|(&p, &y)| p == 2 * y + 1);
    (code, p, inside)
}

/// One block's code and codebook point `P̂` (quarter-units) for `z`, with the overload retries.
fn quantize_block(z: &[f32; 8], b: u32) -> ([u8; 8], [i32; 8]) {
    let (mut code, mut p, inside) = nearest_shifted(z, b);
    if !inside {
        for s in 1..=16u8 {
            let beta = f32::from(16 - s) / 16.0;
            let inside;
            (code, p, inside) = nearest_shifted(&z.map(|x| x * beta), b);
            if inside {
                break;
            }
        }
    }
    (code, p)
}

/// Encodes one head-vector `x` (binary32, `d` values) into `codes_out` (`d·b/8` bytes) and
/// returns its fp16 scale bits, literally as `docs/codec.md` §6 writes it.
///
/// This is the reference implementation; batched calls ([`Codec::encode_into`]) give the same
/// bytes many times faster.
///
/// A head-vector whose squared norm underflows so far that `ss / d` rounds to zero (a finite
/// `ss > 0` with `rms == 0`) is encoded as a zero vector (scale `+0.0`, zero codes): its scale
/// would round to fp16 zero anyway, and `A / rms` would otherwise be infinite.
///
/// # Errors
/// [`CodecError::Length`] when `x` or `codes_out` has the wrong length.
pub fn encode_vector(codec: &Codec, x: &[f32], codes_out: &mut [u8]) -> Result<u16, CodecError> {
    let p = codec.params();
    let (d, b) = (p.head_dim(), p.bits());
    check_len("x", "head_dim", d, x.len())?;
    check_len(
        "codes_out",
        "head_dim·bits/8 bytes",
        p.code_bytes(),
        codes_out.len(),
    )?;
    codes_out.fill(0);
    if x.iter().any(|v| !v.is_finite()) {
        return Ok(NAN_SCALE);
    }
    let mut v = x.to_vec();
    codec.rotation().forward(&mut v);
    let ss = fold(&v.iter().map(|a| a * a).collect::<Vec<_>>());
    if !ss.is_finite() {
        return Ok(NAN_SCALE);
    }
    if ss == 0.0 {
        return Ok(0);
    }
    let rms = (ss / d as f32).sqrt();
    if rms == 0.0 {
        return Ok(0);
    }
    let mut best: Option<(f32, u16, Vec<u8>)> = None;
    for &alpha in &ALPHA[b as usize - 1][..codec.candidates()] {
        let u = alpha / rms;
        let mut codes = vec![0u8; d];
        let mut yhat = vec![0.0f32; d];
        for j in 0..d / 8 {
            let z: [f32; 8] = from_fn(|i| v[8 * j + i] * u);
            let (code, p) = quantize_block(&z, b);
            codes[8 * j..8 * j + 8].copy_from_slice(&code);
            for i in 0..8 {
                yhat[8 * j + i] = p[i] as f32 * 0.25;
            }
        }
        let num = fold(&v.iter().zip(&yhat).map(|(a, y)| a * y).collect::<Vec<_>>());
        let den = fold(&yhat.iter().map(|y| y * y).collect::<Vec<_>>());
        let m = if den == 0.0 { 0.0 } else { num / den };
        let (mh, mf) = scale_to_fp16(m);
        let err = fold(
            &v.iter()
                .zip(&yhat)
                .map(|(a, y)| {
                    let r = a - mf * y;
                    r * r
                })
                .collect::<Vec<_>>(),
        );
        if best.as_ref().map_or(true, |(e, _, _)| err < *e) {
            best = Some((err, mh, codes));
        }
    }
    let (_, mh, codes) = best.expect("at least one candidate");
    pack(&codes, b, codes_out);
    Ok(mh)
}

pub(crate) fn check_len(
    name: &'static str,
    rule: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), CodecError> {
    if expected == got {
        Ok(())
    } else {
        Err(CodecError::Length {
            name,
            rule,
            expected,
            got,
        })
    }
}

/// Working memory of the batched encoder, sized for one head dimension.
struct Scratch<S: Simd> {
    /// The rotated vectors, coordinate-major: `v[i]` holds coordinate `i` of each lane.
    v: Vec<S::F>,
    /// The three candidates' lattice points `Y` (half-units), `ys[t · d/8 + j][k][l]`:
    /// coordinate `k` of block `j`, lane `l`. Every kept `Y` is valid, so its codebook point is
    /// `P̂ = 2Y + 1` (quarter-units) and its code `COORDS(Y) & (q - 1)`.
    ys: Vec<[[i32; L]; 8]>,
    /// The current candidate's reconstruction `ŷ = P̂ / 4 = Y / 2 + ¼`.
    yhat: Vec<S::F>,
    /// The blocks of the group whose nearest point is overloaded, for the retries.
    queue: Vec<Pending>,
    /// The blocks in the order the `FOLD` sums take them ([`block_order`]).
    order: Vec<usize>,
    /// The group's head-vectors in binary32, row after row.
    rows: Vec<f32>,
    /// Each lane's packed codes, `d·b/8 + 8` bytes per lane (8-byte stores may run over).
    bytes: Vec<u8>,
}

/// A block whose nearest point is overloaded: its scaled values `z` and where its results go
/// (`at = t · d/8 + j`, lane `lane`).
#[derive(Clone, Copy)]
struct Pending {
    z: [f32; 8],
    at: u32,
    lane: u8,
}

/// Encodes the rows of `x` (`n·d` values) into `codes` (`n·d·b/8` bytes) and `scales` (`n`),
/// [`L`] rows at a time. Lengths are the caller's responsibility (checked by
/// [`Codec::encode_into`]).
#[inline(always)]
pub(crate) fn encode_rows<S: Simd, T: Element>(
    codec: &Codec,
    x: &[T],
    codes: &mut [u8],
    scales: &mut [u16],
) {
    let p = codec.params();
    let (d, cb) = (p.head_dim(), p.code_bytes());
    let zero = S::F::splat(0.0);
    let mut s = Scratch::<S> {
        v: vec![zero; d],
        ys: vec![[[0; L]; 8]; 3 * d / 8],
        yhat: vec![zero; d],
        queue: Vec::with_capacity(3 * d),
        order: block_order(d),
        rows: vec![0.0; L * d],
        bytes: vec![0; L * (cb + 8)],
    };
    for ((xg, cg), sg) in x
        .chunks(L * d)
        .zip(codes.chunks_mut(L * cb))
        .zip(scales.chunks_mut(L))
    {
        encode_group::<S, T>(codec, xg, cg, sg, &mut s);
    }
}

/// Lane-wise nearest point of `E8 + ¼` to `z`: `Y = QE8(z - ¼)` (its point is `P = 2Y + 1`,
/// quarter-units), and the lanes where `P` is valid (`VDEC(COORDS(Y)) == P`: no overload),
/// decided by [`cell_valid`].
#[inline(always)]
fn nearest_lanes<S: Simd>(z: &[S::F; 8], b: u32) -> ([S::I; 8], S::M) {
    let quarter = S::F::splat(0.25);
    let y = qe8_lanes::<S>(&arr8(|i| z[i] - quarter));
    let valid = cell_valid::<S>(&y, b);
    (y, valid)
}

/// The overload retries of §6 step 4 for every block in `queue`, [`L`] blocks at a time, each
/// lane with its own `s`: a lane whose block found its first valid `s` writes its `Y` to `ys`
/// and takes the next block of the queue. Every block thus goes through
/// exactly the `s` the spec tries for it, with no lane idling while others retry.
#[inline(always)]
fn drain_retries<S: Simd>(queue: &[Pending], b: u32, ys: &mut [[[i32; L]; 8]]) {
    let mut z = [[0f32; L]; 8];
    let mut step = [0i32; L];
    let mut item = [0usize; L];
    let mut active = 0u32;
    let mut next = 0;
    let sixteen = S::I::splat(16);
    let sixteenth = S::F::splat(1.0 / 16.0);
    loop {
        let mut free = !active & ((1 << L) - 1);
        while free != 0 && next < queue.len() {
            let l = free.trailing_zeros() as usize;
            free &= free - 1;
            let q = &queue[next];
            for (zi, &qi) in z.iter_mut().zip(&q.z) {
                zi[l] = qi;
            }
            step[l] = 1;
            item[l] = next;
            active |= 1 << l;
            next += 1;
        }
        if active == 0 {
            return;
        }
        // β = (16 − s)/16: the division by 16 is exact, as is this product.
        let beta = (sixteen - S::I::from_array(step)).to_f32() * sixteenth;
        let zs: [S::F; 8] = arr8(|i| S::F::from_array(z[i]) * beta);
        let (y, valid) = nearest_lanes::<S>(&zs, b);
        let mut done = valid.bits() & active;
        if done != 0 {
            let y = arr8(|k| y[k].to_array());
            active &= !done;
            while done != 0 {
                let l = done.trailing_zeros() as usize;
                done &= done - 1;
                let q = &queue[item[l]];
                let (at, lane) = (q.at as usize, usize::from(q.lane));
                for k in 0..8 {
                    ys[at][k][lane] = y[k][l];
                }
            }
        }
        // Idle lanes compute the trivial β = 0 until they are refilled.
        for (l, st) in step.iter_mut().enumerate() {
            *st = if active >> l & 1 == 1 { *st + 1 } else { 16 };
        }
        debug_assert!(step.iter().all(|&st| st <= 16), "s = 16 is always valid");
    }
}

/// Encodes up to [`L`] rows (`scales.len()` of them).
#[inline(always)]
fn encode_group<S: Simd, T: Element>(
    codec: &Codec,
    x: &[T],
    codes: &mut [u8],
    scales: &mut [u16],
    s: &mut Scratch<S>,
) {
    let p = codec.params();
    let (d, b, cb) = (p.head_dim(), p.bits(), p.code_bytes());
    let nb = d / 8;
    let n = scales.len();
    let zero = S::F::splat(0.0);

    // Step 1: widen to binary32 and transpose into lanes; note non-finite rows.
    for (l, row) in s.rows.chunks_exact_mut(d).enumerate() {
        if l < n {
            let src = &x[l * d..(l + 1) * d];
            match T::as_f16(src) {
                Some(h) => S::load_f16(h, row),
                None => T::load(src, row),
            }
        } else {
            row.fill(0.0);
        }
    }
    let mut finite = S::M::splat(true);
    for k in 0..nb {
        let r: [S::F; 8] = arr8(|l| {
            let at = l * d + 8 * k;
            S::F::from_array(s.rows[at..at + 8].try_into().expect("8 values"))
        });
        let t = S::transpose(r);
        for (v, t) in s.v[8 * k..8 * k + 8].iter_mut().zip(t) {
            finite = finite & t.is_finite();
            *v = t;
        }
    }

    // Steps 2-3: rotate, squared norm, rms. Special lanes are zeroed so that every lane
    // computes on finite values; their results are replaced at the end.
    codec.rotation().forward_lanes::<S>(&mut s.v);
    let mut acc = BlockFold::<S>::new();
    for (at, &j) in s.order.iter().enumerate() {
        let sq = if j < nb {
            let v = &s.v[8 * j..8 * j + 8];
            arr8(|i| v[i] * v[i])
        } else {
            [zero; 8]
        };
        acc.push(at, sq);
    }
    let ss = acc.finish(s.order.len());
    let rms = ss.div(S::F::splat(d as f32)).sqrt();
    let nan = finite.not() | ss.is_finite().not();
    let zero_vec = (ss.eq(zero) | rms.eq(zero)).and_not(nan);
    let special = nan | zero_vec;
    let rms = if special.any() {
        for vi in s.v.iter_mut() {
            *vi = special.select(zero, *vi);
        }
        special.select(S::F::splat(1.0), rms)
    } else {
        rms
    };

    // Step 4: the candidate clipping factors (three unless the codec tries fewer). First the
    // nearest point of every block of every candidate, queueing the overloaded blocks for the
    // retries; then the queue, full lanes at a time; then each candidate's scale and error.
    let candidates = codec.candidates();
    s.queue.clear();
    for (t, &alpha) in ALPHA[b as usize - 1][..candidates].iter().enumerate() {
        let u = S::F::splat(alpha).div(rms);
        let ys = &mut s.ys[t * nb..(t + 1) * nb];
        for (j, (vb, yb)) in s.v.chunks_exact(8).zip(ys.iter_mut()).enumerate() {
            let at = t * nb + j;
            let z: [S::F; 8] = arr8(|i| vb[i] * u);
            let (y, valid) = nearest_lanes::<S>(&z, b);
            *yb = arr8(|k| y[k].to_array());
            let mut pending = valid.not().bits();
            if pending != 0 {
                let zl = arr8(|i| z[i].to_array());
                while pending != 0 {
                    let l = pending.trailing_zeros() as usize;
                    pending &= pending - 1;
                    s.queue.push(Pending {
                        z: arr8(|i| zl[i][l]),
                        at: at as u32,
                        lane: l as u8,
                    });
                }
            }
        }
    }
    drain_retries::<S>(&s.queue, b, &mut s.ys);
    let mut best_err = zero;
    let mut best_t = S::I::splat(0);
    let mut best_mh = [0u16; L];
    for t in 0..candidates {
        let ys = &s.ys[t * nb..(t + 1) * nb];
        // ŷ = Y / 2 + ¼ is exact in binary32 for these small integers. The sums go block by
        // block in `FOLD`'s order, padding blocks as +0.0 (see `BlockFold`).
        let (half, quarter) = (S::F::splat(0.5), S::F::splat(0.25));
        let (mut num, mut den) = (BlockFold::<S>::new(), BlockFold::<S>::new());
        for (at, &j) in s.order.iter().enumerate() {
            let (a, b) = if j < nb {
                let (y, v) = (&ys[j], &s.v[8 * j..8 * j + 8]);
                let yh: [S::F; 8] = arr8(|i| S::I::from_array(y[i]).to_f32() * half + quarter);
                s.yhat[8 * j..8 * j + 8].copy_from_slice(&yh);
                (arr8(|i| v[i] * yh[i]), arr8(|i| yh[i] * yh[i]))
            } else {
                ([zero; 8], [zero; 8])
            };
            num.push(at, a);
            den.push(at, b);
        }
        let blocks = s.order.len();
        let (num, den) = (num.finish(blocks), den.finish(blocks));
        let m = den.eq(zero).select(zero, num.div(den)).to_array();
        let mut mh = [0u16; L];
        let mut mf = [0f32; L];
        for l in 0..L {
            (mh[l], mf[l]) = scale_to_fp16(m[l]);
        }
        if candidates == 1 {
            // Nothing to choose between: the error is not needed.
            best_mh = mh;
            break;
        }
        let mf = S::F::from_array(mf);
        let mut sq = BlockFold::<S>::new();
        for (at, &j) in s.order.iter().enumerate() {
            let rr = if j < nb {
                let (v, y) = (&s.v[8 * j..8 * j + 8], &s.yhat[8 * j..8 * j + 8]);
                arr8(|i| {
                    let r = v[i] - mf * y[i];
                    r * r
                })
            } else {
                [zero; 8]
            };
            sq.push(at, rr);
        }
        let err = sq.finish(blocks);
        let better = if t == 0 {
            S::M::splat(true)
        } else {
            err.lt(best_err)
        };
        best_err = better.select(err, best_err);
        best_t = better.select_i(S::I::splat(t as i32), best_t);
        for (l, h) in best_mh.iter_mut().enumerate() {
            if better.get(l) {
                *h = mh[l];
            }
        }
    }

    // Step 5: pack the kept candidate's codes of every lane. Codes 0-3 and 4-7 of a block each
    // fit in 32 bits (4·b <= 32), and a whole block does for b <= 4. Each lane's block is stored
    // as 4 or 8 bytes at its offset; the next block's store overwrites the bytes past it.
    let (is1, is2) = (best_t.eq(S::I::splat(1)), best_t.eq(S::I::splat(2)));
    let stride = cb + 8;
    let half_bits = 4 * b;
    for j in 0..nb {
        let y: [S::I; 8] = if candidates == 1 {
            arr8(|k| S::I::from_array(s.ys[j][k]))
        } else {
            let (y0, y1, y2) = (&s.ys[j], &s.ys[nb + j], &s.ys[2 * nb + j]);
            arr8(|k| {
                let (y0, y1, y2) = (
                    S::I::from_array(y0[k]),
                    S::I::from_array(y1[k]),
                    S::I::from_array(y2[k]),
                );
                is2.select_i(y2, is1.select_i(y1, y0))
            })
        };
        let c = code_lanes::<S>(&y, b);
        let lo = ((c[0] | (c[1] << b)) | (c[2] << (2 * b))) | (c[3] << (3 * b));
        let hi = ((c[4] | (c[5] << b)) | (c[6] << (2 * b))) | (c[7] << (3 * b));
        let at = j * b as usize;
        if b <= 4 {
            let w = (lo | (hi << half_bits)).to_array();
            for (row, w) in s.bytes.chunks_exact_mut(stride).zip(&w).take(n) {
                row[at..at + 4].copy_from_slice(&w.to_le_bytes());
            }
        } else {
            let (lo, hi) = (lo.to_array(), hi.to_array());
            for l in 0..n {
                let w = u64::from(lo[l] as u32) | (u64::from(hi[l] as u32) << half_bits);
                s.bytes[l * stride + at..l * stride + at + 8].copy_from_slice(&w.to_le_bytes());
            }
        }
    }
    for l in 0..n {
        let row = &mut codes[l * cb..(l + 1) * cb];
        if special.get(l) {
            row.fill(0);
            scales[l] = if nan.get(l) { NAN_SCALE } else { 0 };
        } else {
            row.copy_from_slice(&s.bytes[l * stride..l * stride + cb]);
            scales[l] = best_mh[l];
        }
    }
}
