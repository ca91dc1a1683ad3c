//! The AVX2 backend: one AVX2 instruction per lane operation.
//!
//! # Safety
//! Every operation here executes AVX2 instructions. The dispatcher
//! ([`kernel`](super::super::kernel)) instantiates kernels with [`Avx2`] only inside
//! `#[target_feature(enable = "avx2,f16c")]` functions that it calls after
//! `is_x86_feature_detected!` confirmed both features, so these instructions only ever run on
//! CPUs that have them. That is the single invariant the `unsafe` blocks below rely on.

use core::arch::x86_64::*;
use core::ops::{Add, BitAnd, BitOr, Mul, Shl, Shr, Sub};

use super::{LaneF, LaneI, LaneM, Simd, L};

/// Runs AVX2 intrinsics. See the module's safety note.
macro_rules! avx {
    ($e:expr) => {
        // SAFETY: only reached on CPUs with AVX2 (module doc).
        unsafe { $e }
    };
}

/// The AVX2 backend. Only the dispatcher names it (see the module's safety note).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2;

/// `L` binary32 values.
#[derive(Clone, Copy, Debug)]
pub(crate) struct F(__m256);

/// `L` 32-bit integers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct I(__m256i);

/// `L` lane masks (all ones or all zeros per lane).
#[derive(Clone, Copy, Debug)]
pub(crate) struct M(__m256i);

impl Simd for Avx2 {
    type F = F;
    type I = I;
    type M = M;

    #[inline(always)]
    fn transpose(r: [F; 8]) -> [F; 8] {
        avx!({
            let r = super::arr8(|l| r[l].0);
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            [
                F(_mm256_permute2f128_ps::<0x20>(u0, u4)),
                F(_mm256_permute2f128_ps::<0x20>(u1, u5)),
                F(_mm256_permute2f128_ps::<0x20>(u2, u6)),
                F(_mm256_permute2f128_ps::<0x20>(u3, u7)),
                F(_mm256_permute2f128_ps::<0x31>(u0, u4)),
                F(_mm256_permute2f128_ps::<0x31>(u1, u5)),
                F(_mm256_permute2f128_ps::<0x31>(u2, u6)),
                F(_mm256_permute2f128_ps::<0x31>(u3, u7)),
            ]
        })
    }

    /// `_mm256_i32gather_epi32` (byte offsets), after checking every word lies in `bytes`.
    #[inline(always)]
    fn gather_u32(bytes: &[u8], first: usize, stride: usize) -> I {
        let last = (L - 1) * stride;
        assert!(
            last <= i32::MAX as usize && first + last + 4 <= bytes.len(),
            "gather_u32 out of bounds"
        );
        let s = stride as i32;
        avx!({
            let index = _mm256_setr_epi32(0, s, 2 * s, 3 * s, 4 * s, 5 * s, 6 * s, 7 * s);
            // In bounds: checked above.
            I(_mm256_i32gather_epi32::<1>(
                bytes.as_ptr().add(first).cast(),
                index,
            ))
        })
    }

    /// `_mm256_cvtph_ps` (exact, as `half` does with F16C).
    #[inline(always)]
    fn load_f16(src: &[half::f16], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "slices must have the same length");
        let mut s8 = src.chunks_exact(8);
        let mut d8 = dst.chunks_exact_mut(8);
        for (s, d) in (&mut s8).zip(&mut d8) {
            avx!({
                let h = _mm_loadu_si128(s.as_ptr().cast());
                _mm256_storeu_ps(d.as_mut_ptr(), _mm256_cvtph_ps(h));
            });
        }
        for (s, d) in s8.remainder().iter().zip(d8.into_remainder()) {
            *d = s.to_f32();
        }
    }
}

impl LaneF<Avx2> for F {
    #[inline(always)]
    fn splat(x: f32) -> F {
        F(avx!(_mm256_set1_ps(x)))
    }
    #[inline(always)]
    fn from_array(a: [f32; L]) -> F {
        F(avx!(_mm256_loadu_ps(a.as_ptr())))
    }
    #[inline(always)]
    fn to_array(self) -> [f32; L] {
        let mut a = [0.0; L];
        avx!(_mm256_storeu_ps(a.as_mut_ptr(), self.0));
        a
    }
    /// `_mm256_cvtps_ph` with round-to-nearest-even, the instruction `half` uses with F16C (and
    /// the kernels only run where F16C is present, see the module's safety note).
    #[inline(always)]
    fn store_f16(self, dst: &mut [half::f16]) {
        let dst = &mut dst[..L];
        avx!({
            let h = _mm256_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(self.0);
            _mm_storeu_si128(dst.as_mut_ptr().cast(), h);
        });
    }
    #[inline(always)]
    fn div(self, rhs: F) -> F {
        F(avx!(_mm256_div_ps(self.0, rhs.0)))
    }
    #[inline(always)]
    fn sqrt(self) -> F {
        F(avx!(_mm256_sqrt_ps(self.0)))
    }
    #[inline(always)]
    fn round_even(self) -> F {
        F(avx!(_mm256_round_ps::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(self.0)))
    }
    #[inline(always)]
    fn floor(self) -> F {
        F(avx!(_mm256_round_ps::<
            { _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC },
        >(self.0)))
    }
    #[inline(always)]
    fn abs(self) -> F {
        F(avx!(_mm256_and_ps(
            self.0,
            _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF))
        )))
    }
    #[inline(always)]
    fn max(self, rhs: F) -> F {
        // (self > rhs) ? self : rhs, as the portable backend.
        F(avx!(_mm256_max_ps(self.0, rhs.0)))
    }
    #[inline(always)]
    fn min(self, rhs: F) -> F {
        F(avx!(_mm256_min_ps(self.0, rhs.0)))
    }
    #[inline(always)]
    fn xor_sign(self, bits: u32) -> F {
        F(avx!(_mm256_xor_ps(
            self.0,
            _mm256_castsi256_ps(_mm256_set1_epi32(bits as i32))
        )))
    }
    #[inline(always)]
    fn lt(self, rhs: F) -> M {
        M(avx!(_mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(
            self.0, rhs.0
        ))))
    }
    #[inline(always)]
    fn le(self, rhs: F) -> M {
        M(avx!(_mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(
            self.0, rhs.0
        ))))
    }
    #[inline(always)]
    fn ge(self, rhs: F) -> M {
        M(avx!(_mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(
            self.0, rhs.0
        ))))
    }
    #[inline(always)]
    fn eq(self, rhs: F) -> M {
        M(avx!(_mm256_castps_si256(_mm256_cmp_ps::<_CMP_EQ_OQ>(
            self.0, rhs.0
        ))))
    }
    #[inline(always)]
    fn is_finite(self) -> M {
        self.abs().lt(F::splat(f32::INFINITY))
    }
    #[inline(always)]
    fn to_int_exact(self) -> I {
        // Integral inputs convert exactly whatever the rounding mode.
        I(avx!(_mm256_cvtps_epi32(self.0)))
    }
}

impl LaneI<Avx2> for I {
    #[inline(always)]
    fn splat(x: i32) -> I {
        I(avx!(_mm256_set1_epi32(x)))
    }
    #[inline(always)]
    fn from_array(a: [i32; L]) -> I {
        I(avx!(_mm256_loadu_si256(a.as_ptr().cast())))
    }
    #[inline(always)]
    fn to_array(self) -> [i32; L] {
        let mut a = [0; L];
        avx!(_mm256_storeu_si256(a.as_mut_ptr().cast(), self.0));
        a
    }
    #[inline(always)]
    fn to_f32(self) -> F {
        F(avx!(_mm256_cvtepi32_ps(self.0)))
    }
    #[inline(always)]
    fn abs(self) -> I {
        I(avx!(_mm256_abs_epi32(self.0)))
    }
    #[inline(always)]
    fn max(self, rhs: I) -> I {
        I(avx!(_mm256_max_epi32(self.0, rhs.0)))
    }
    #[inline(always)]
    fn min(self, rhs: I) -> I {
        I(avx!(_mm256_min_epi32(self.0, rhs.0)))
    }
    #[inline(always)]
    fn mul(self, rhs: I) -> I {
        I(avx!(_mm256_mullo_epi32(self.0, rhs.0)))
    }
    #[inline(always)]
    fn gt(self, rhs: I) -> M {
        M(avx!(_mm256_cmpgt_epi32(self.0, rhs.0)))
    }
    #[inline(always)]
    fn eq(self, rhs: I) -> M {
        M(avx!(_mm256_cmpeq_epi32(self.0, rhs.0)))
    }
}

impl LaneM<Avx2> for M {
    #[inline(always)]
    fn splat(b: bool) -> M {
        M(avx!(_mm256_set1_epi32(-i32::from(b))))
    }
    #[inline(always)]
    fn bits(self) -> u32 {
        avx!(_mm256_movemask_ps(_mm256_castsi256_ps(self.0))) as u32
    }
    #[inline(always)]
    fn not(self) -> M {
        M(avx!(_mm256_xor_si256(self.0, _mm256_set1_epi32(-1))))
    }
    #[inline(always)]
    fn and_not(self, rhs: M) -> M {
        M(avx!(_mm256_andnot_si256(rhs.0, self.0)))
    }
    #[inline(always)]
    fn select(self, a: F, b: F) -> F {
        F(avx!(_mm256_blendv_ps(
            b.0,
            a.0,
            _mm256_castsi256_ps(self.0)
        )))
    }
    #[inline(always)]
    fn select_i(self, a: I, b: I) -> I {
        I(avx!(_mm256_blendv_epi8(b.0, a.0, self.0)))
    }
}

impl Add for F {
    type Output = F;
    #[inline(always)]
    fn add(self, rhs: F) -> F {
        F(avx!(_mm256_add_ps(self.0, rhs.0)))
    }
}

impl Sub for F {
    type Output = F;
    #[inline(always)]
    fn sub(self, rhs: F) -> F {
        F(avx!(_mm256_sub_ps(self.0, rhs.0)))
    }
}

impl Mul for F {
    type Output = F;
    #[inline(always)]
    fn mul(self, rhs: F) -> F {
        F(avx!(_mm256_mul_ps(self.0, rhs.0)))
    }
}

impl Add for I {
    type Output = I;
    #[inline(always)]
    fn add(self, rhs: I) -> I {
        I(avx!(_mm256_add_epi32(self.0, rhs.0)))
    }
}

impl Sub for I {
    type Output = I;
    #[inline(always)]
    fn sub(self, rhs: I) -> I {
        I(avx!(_mm256_sub_epi32(self.0, rhs.0)))
    }
}

impl BitAnd for I {
    type Output = I;
    #[inline(always)]
    fn bitand(self, rhs: I) -> I {
        I(avx!(_mm256_and_si256(self.0, rhs.0)))
    }
}

impl BitOr for I {
    type Output = I;
    #[inline(always)]
    fn bitor(self, rhs: I) -> I {
        I(avx!(_mm256_or_si256(self.0, rhs.0)))
    }
}

impl Shl<u32> for I {
    type Output = I;
    #[inline(always)]
    fn shl(self, s: u32) -> I {
        I(avx!(_mm256_sll_epi32(self.0, _mm_cvtsi32_si128(s as i32))))
    }
}

impl Shr<u32> for I {
    type Output = I;
    /// Arithmetic shift: `floor(x / 2^s)`.
    #[inline(always)]
    fn shr(self, s: u32) -> I {
        I(avx!(_mm256_sra_epi32(self.0, _mm_cvtsi32_si128(s as i32))))
    }
}

impl BitAnd for M {
    type Output = M;
    #[inline(always)]
    fn bitand(self, rhs: M) -> M {
        M(avx!(_mm256_and_si256(self.0, rhs.0)))
    }
}

impl BitOr for M {
    type Output = M;
    #[inline(always)]
    fn bitor(self, rhs: M) -> M {
        M(avx!(_mm256_or_si256(self.0, rhs.0)))
    }
}
