//! The element types the codec reads and writes: `f32`, `f16` and `bf16`.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// A floating-point type of head-vector values: `f32`, `half::f16` or `half::bf16`.
///
/// Inputs are widened to binary32 exactly; outputs are rounded from binary32 to nearest, ties
/// to even. Sealed: the codec is specified for these three only.
pub trait Element: Copy + Default + Send + Sync + 'static + sealed::Sealed {
    /// The dtype's name as numpy and torch spell it (`"float32"`, `"float16"`, `"bfloat16"`).
    const NAME: &'static str;
    /// The quiet NaN written for every value of a head-vector whose scale is NaN.
    const NAN: Self;
    /// Widens `src` into `dst` (same length).
    fn load(src: &[Self], dst: &mut [f32]);
    /// Rounds `src` into `dst` (same length), to nearest, ties to even.
    fn store(src: &[f32], dst: &mut [Self]);
    /// `dst` as fp16 values when `Self` is `f16`, for the batched kernels' inlined F16C path.
    #[doc(hidden)]
    #[inline(always)]
    fn as_f16_mut(dst: &mut [Self]) -> Option<&mut [f16]> {
        let _ = dst;
        None
    }
    /// `src` as fp16 values when `Self` is `f16`, for the batched kernels' inlined F16C path.
    #[doc(hidden)]
    #[inline(always)]
    fn as_f16(src: &[Self]) -> Option<&[f16]> {
        let _ = src;
        None
    }
}

impl Element for f32 {
    const NAME: &'static str = "float32";
    const NAN: Self = f32::NAN;
    #[inline]
    fn load(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    #[inline]
    fn store(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
}

impl Element for f16 {
    const NAME: &'static str = "float16";
    const NAN: Self = f16::NAN;
    #[inline]
    fn load(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
    #[inline]
    fn store(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src);
    }
    #[inline(always)]
    fn as_f16_mut(dst: &mut [Self]) -> Option<&mut [f16]> {
        Some(dst)
    }
    #[inline(always)]
    fn as_f16(src: &[Self]) -> Option<&[f16]> {
        Some(src)
    }
}

impl Element for bf16 {
    const NAME: &'static str = "bfloat16";
    const NAN: Self = bf16::NAN;
    #[inline]
    fn load(src: &[Self], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "slices must have the same length");
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits(u32::from(s.to_bits()) << 16);
        }
    }
    #[inline]
    fn store(src: &[f32], dst: &mut [Self]) {
        assert_eq!(src.len(), dst.len(), "slices must have the same length");
        for (d, s) in dst.iter_mut().zip(src) {
            *d = bf16::from_bits(f32_to_bf16_bits(*s));
        }
    }
}

/// binary32 → bfloat16 bits, round to nearest even; NaN stays NaN (quieted). Branch-free so
/// that the loop vectorises; equal to `half::bf16::from_f32`.
#[inline(always)]
fn f32_to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
    let nan = (b >> 16) | 0x0040;
    (if b & 0x7FFF_FFFF > 0x7F80_0000 {
        nan
    } else {
        rounded
    }) as u16
}

#[cfg(test)]
mod tests {
    use super::super::signs::SplitMix64;
    use super::*;

    #[test]
    fn bf16_rounding_matches_half() {
        let mut rng = SplitMix64::new(2);
        let specials = [
            0.0f32,
            -0.0,
            1.0,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7F80_0001),
            f32::from_bits(0xFFC0_1234),
            f32::from_bits(0x3F80_8000),
            f32::from_bits(0x3F81_8000),
            f32::from_bits(0x0000_8000),
            f32::MIN_POSITIVE,
        ];
        let randoms = (0..200_000).map(|_| f32::from_bits(rng.next() as u32));
        for x in specials.into_iter().chain(randoms) {
            assert_eq!(
                f32_to_bf16_bits(x),
                bf16::from_f32(x).to_bits(),
                "{:#x}",
                x.to_bits()
            );
        }
    }

    #[test]
    fn round_trips_and_names() {
        let v = [1.5f32, -2.25, 65504.0, 1e-3];
        let mut h = [f16::ZERO; 4];
        f16::store(&v, &mut h);
        let mut w = [0.0f32; 4];
        f16::load(&h, &mut w);
        assert_eq!(w[..3], v[..3]);
        assert_eq!(w[3], f16::from_f32(1e-3).to_f32());
        let mut b = [bf16::ZERO; 4];
        bf16::store(&v, &mut b);
        bf16::load(&b, &mut w);
        assert_eq!(w[..2], v[..2]);
        assert_eq!(w[2], bf16::from_f32(65504.0).to_f32());
        assert_eq!(
            (f32::NAME, f16::NAME, bf16::NAME),
            ("float32", "float16", "bfloat16")
        );
        assert!(f32::NAN.is_nan() && f16::NAN.is_nan() && bf16::NAN.is_nan());
    }
}
