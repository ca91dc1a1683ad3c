//! Decoding head-vectors (`docs/codec.md` §7).
//!
//! [`decode_vector`] is the spec written out literally (the oracle); `decode_rows` is the
//! batched kernel, `L` head-vectors per pass, bit-identical to it.

use half::f16;

use super::e8::{vdec, vdec_lanes};
use super::element::Element;
use super::encode::check_len;
use super::lanes::{arr8, LaneF, LaneI, LaneM, Simd, L};
use super::pack::unpack;
use super::params::CodecError;
use super::Codec;

/// Decodes one head-vector from `codes` (`d·b/8` bytes) and its fp16 scale bits into `out`
/// (`d` binary32 values), literally as `docs/codec.md` §7 writes it. A NaN scale gives all
/// quiet NaN (`f32::NAN`).
///
/// # Errors
/// [`CodecError::Length`] when `codes` or `out` has the wrong length.
pub fn decode_vector(
    codec: &Codec,
    codes: &[u8],
    scale: u16,
    out: &mut [f32],
) -> Result<(), CodecError> {
    let p = codec.params();
    let (d, b) = (p.head_dim(), p.bits());
    check_len(
        "codes",
        "head_dim·bits/8 bytes",
        p.code_bytes(),
        codes.len(),
    )?;
    check_len("out", "head_dim", d, out.len())?;
    let mf = f16::from_bits(scale).to_f32();
    if mf.is_nan() {
        out.fill(f32::NAN);
        return Ok(());
    }
    let mut c = vec![0u8; d];
    unpack(codes, b, &mut c);
    for (block, o) in c.chunks_exact(8).zip(out.chunks_exact_mut(8)) {
        let p = vdec(block.try_into().expect("blocks of 8"), b);
        for (x, &pi) in o.iter_mut().zip(&p) {
            *x = (pi as f32 * 0.25) * mf;
        }
    }
    codec.rotation().inverse(out);
    Ok(())
}

/// Working memory of the batched decoder, sized for one head dimension.
struct Scratch<S: Simd> {
    /// The vectors being decoded, coordinate-major.
    v: Vec<S::F>,
    /// The group's code bytes, lane by lane.
    lanes: CodeLanes,
}

/// Code bytes of up to [`L`] head-vectors, `d·b/8 + 8` per lane so that every block is one
/// 8-byte load; lanes past the last vector hold zeros. Shared by the decoder and the attention
/// kernels ([`attend`](super::attend)).
pub(crate) struct CodeLanes {
    bytes: Vec<u8>,
    stride: usize,
}

impl CodeLanes {
    pub(crate) fn new(cb: usize) -> Self {
        Self {
            bytes: vec![0; L * (cb + 8)],
            stride: cb + 8,
        }
    }

    /// Copies the codes of `codes.len() / cb` (at most [`L`]) head-vectors into the lanes.
    #[inline(always)]
    pub(crate) fn load(&mut self, codes: &[u8], cb: usize) {
        let n = codes.len() / cb;
        for l in 0..L {
            let dst = &mut self.bytes[l * self.stride..l * self.stride + cb];
            if l < n {
                dst.copy_from_slice(&codes[l * cb..(l + 1) * cb]);
            } else {
                dst.fill(0);
            }
        }
    }

    /// `P̂` of block `j` (quarter-units) for every lane.
    #[inline(always)]
    pub(crate) fn block<S: Simd>(&self, j: usize, b: u32) -> [S::I; 8] {
        let at = j * b as usize;
        let mask = S::I::splat((1 << b) - 1);
        let c: [S::I; 8] = if b <= 4 {
            // The block's 8b bits are one 32-bit word (the bits past it are masked off).
            let w = S::gather_u32(&self.bytes, at, self.stride);
            arr8(|k| (w >> (b * k as u32)) & mask)
        } else {
            let mut lo = [0i32; L];
            let mut hi = [0i32; L];
            for l in 0..L {
                let src = &self.bytes[l * self.stride + at..l * self.stride + at + 8];
                let w = u64::from_le_bytes(src.try_into().expect("8 bytes"));
                lo[l] = w as u32 as i32;
                hi[l] = (w >> (4 * b)) as u32 as i32;
            }
            let (lo, hi) = (S::I::from_array(lo), S::I::from_array(hi));
            arr8(|k| {
                let (word, k) = if k < 4 { (lo, k) } else { (hi, k - 4) };
                (word >> (b * k as u32)) & mask
            })
        };
        vdec_lanes::<S>(&c, b)
    }
}

/// Decodes `scales.len()` rows of `codes` into `out`, [`L`] rows at a time. Lengths are the
/// caller's responsibility (checked by [`Codec::decode_into`]).
///
/// With a `centre` (`d` values), a scale whose sign bit is set marks a centred row: it decodes
/// with `|scale|` and then gets `centre` added (see [`Codec::decode_groups_centred_into`]).
#[inline(always)]
pub(crate) fn decode_rows<S: Simd, T: Element>(
    codec: &Codec,
    codes: &[u8],
    scales: &[u16],
    out: &mut [T],
    centre: Option<&[f32]>,
) {
    let p = codec.params();
    let (d, cb) = (p.head_dim(), p.code_bytes());
    let mut s = Scratch::<S> {
        v: vec![S::F::splat(0.0); d],
        lanes: CodeLanes::new(cb),
    };
    for ((cg, sg), og) in codes
        .chunks(L * cb)
        .zip(scales.chunks(L))
        .zip(out.chunks_mut(L * d))
    {
        decode_group::<S, T>(codec, cg, sg, og, &mut s, centre);
    }
}

/// Decodes up to [`L`] rows (`scales.len()` of them).
#[inline(always)]
fn decode_group<S: Simd, T: Element>(
    codec: &Codec,
    codes: &[u8],
    scales: &[u16],
    out: &mut [T],
    s: &mut Scratch<S>,
    centre: Option<&[f32]>,
) {
    let p = codec.params();
    let (d, b, cb) = (p.head_dim(), p.bits(), p.code_bytes());
    let n = scales.len();

    let mut mf = [0f32; L];
    let mut centred = [0f32; L];
    for ((m, c), &h) in mf.iter_mut().zip(centred.iter_mut()).zip(scales) {
        if centre.is_some() && h & 0x8000 != 0 {
            *m = f16::from_bits(h & 0x7FFF).to_f32();
            *c = 1.0;
        } else {
            *m = f16::from_bits(h).to_f32();
        }
    }
    let mf = S::F::from_array(mf);
    let nan = mf.eq(mf).not();
    let mf = nan.select(S::F::splat(0.0), mf);
    s.lanes.load(codes, cb);
    let quarter = S::F::splat(0.25);
    for j in 0..d / 8 {
        let p = s.lanes.block::<S>(j, b);
        for (v, p) in s.v[8 * j..8 * j + 8].iter_mut().zip(&p) {
            *v = (p.to_f32() * quarter) * mf;
        }
    }
    codec.rotation().inverse_lanes::<S>(&mut s.v);
    if let Some(centre) = centre {
        // Only flagged lanes change: the others stay bit-identical to a plain decode.
        let flag = S::F::from_array(centred).eq(S::F::splat(1.0));
        for (v, &c) in s.v.iter_mut().zip(centre) {
            *v = flag.select(*v + S::F::splat(c), *v);
        }
    }

    // Back to rows, 8 coordinates of every lane at a time, straight into `out`.
    for k in 0..d / 8 {
        let r: [S::F; 8] = arr8(|i| s.v[8 * k + i]);
        let t = S::transpose(r);
        for (l, t) in t.iter().enumerate().take(n) {
            let dst = &mut out[l * d + 8 * k..l * d + 8 * k + 8];
            match T::as_f16_mut(dst) {
                Some(h) => t.store_f16(h),
                None => T::store(&t.to_array(), dst),
            }
        }
    }
    for l in 0..n {
        if nan.get(l) {
            out[l * d..(l + 1) * d].fill(T::NAN);
        }
    }
}
