//! The portable backend: arrays and element-wise loops, for any CPU.

use core::ops::{Add, BitAnd, BitOr, Mul, Shl, Shr, Sub};

use super::{LaneF, LaneI, LaneM, Simd, L};

/// The portable backend.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Portable;

/// `1.5 × 2^23`: adding it to an integral `x` with `|x| < 2^22` is exact and leaves
/// `0x4B40_0000 + x` in the bits.
const MAGIC: f32 = 12_582_912.0;
const MAGIC_BITS: i32 = 0x4B40_0000;

/// `L` binary32 values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct F([f32; L]);

/// `L` 32-bit integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct I([i32; L]);

/// `L` lane masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct M([bool; L]);

#[inline(always)]
fn map<T: Copy, U: Copy + Default>(a: [T; L], f: impl Fn(T) -> U) -> [U; L] {
    let mut out = [U::default(); L];
    for (o, x) in out.iter_mut().zip(a) {
        *o = f(x);
    }
    out
}

#[inline(always)]
fn zip<T: Copy, U: Copy, V: Copy + Default>(a: [T; L], b: [U; L], f: impl Fn(T, U) -> V) -> [V; L] {
    let mut out = [V::default(); L];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = f(x, y);
    }
    out
}

impl Simd for Portable {
    type F = F;
    type I = I;
    type M = M;

    #[inline(always)]
    fn transpose(r: [F; 8]) -> [F; 8] {
        super::arr8(|i| F(super::arr8(|l| r[l].0[i])))
    }

    fn load_f16(src: &[half::f16], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }

    fn gather_u32(bytes: &[u8], first: usize, stride: usize) -> I {
        I(core::array::from_fn(|l| {
            let at = first + l * stride;
            i32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
        }))
    }
}

impl LaneF<Portable> for F {
    #[inline(always)]
    fn splat(x: f32) -> F {
        F([x; L])
    }
    #[inline(always)]
    fn from_array(a: [f32; L]) -> F {
        F(a)
    }
    #[inline(always)]
    fn to_array(self) -> [f32; L] {
        self.0
    }
    #[inline(always)]
    fn store_f16(self, dst: &mut [half::f16]) {
        for (d, &x) in dst[..L].iter_mut().zip(&self.0) {
            *d = half::f16::from_f32(x);
        }
    }
    #[inline(always)]
    fn div(self, rhs: F) -> F {
        F(zip(self.0, rhs.0, |a, b| a / b))
    }
    #[inline(always)]
    fn sqrt(self) -> F {
        F(map(self.0, f32::sqrt))
    }
    #[inline(always)]
    fn round_even(self) -> F {
        F(map(self.0, f32::round_ties_even))
    }
    #[inline(always)]
    fn floor(self) -> F {
        F(map(self.0, f32::floor))
    }
    #[inline(always)]
    fn abs(self) -> F {
        F(map(self.0, f32::abs))
    }
    #[inline(always)]
    fn max(self, rhs: F) -> F {
        F(zip(self.0, rhs.0, |a, b| if a > b { a } else { b }))
    }
    #[inline(always)]
    fn min(self, rhs: F) -> F {
        F(zip(self.0, rhs.0, |a, b| if a < b { a } else { b }))
    }
    #[inline(always)]
    fn xor_sign(self, bits: u32) -> F {
        F(map(self.0, |a| f32::from_bits(a.to_bits() ^ bits)))
    }
    #[inline(always)]
    fn lt(self, rhs: F) -> M {
        M(zip(self.0, rhs.0, |a, b| a < b))
    }
    #[inline(always)]
    fn le(self, rhs: F) -> M {
        M(zip(self.0, rhs.0, |a, b| a <= b))
    }
    #[inline(always)]
    fn ge(self, rhs: F) -> M {
        M(zip(self.0, rhs.0, |a, b| a >= b))
    }
    #[inline(always)]
    fn eq(self, rhs: F) -> M {
        M(zip(self.0, rhs.0, |a, b| a == b))
    }
    #[inline(always)]
    fn is_finite(self) -> M {
        M(map(self.0, f32::is_finite))
    }
    #[inline(always)]
    fn to_int_exact(self) -> I {
        I(map(self.0, |a| {
            ((a + MAGIC).to_bits() as i32).wrapping_sub(MAGIC_BITS)
        }))
    }
}

impl LaneI<Portable> for I {
    #[inline(always)]
    fn splat(x: i32) -> I {
        I([x; L])
    }
    #[inline(always)]
    fn from_array(a: [i32; L]) -> I {
        I(a)
    }
    #[inline(always)]
    fn to_array(self) -> [i32; L] {
        self.0
    }
    #[inline(always)]
    fn to_f32(self) -> F {
        F(map(self.0, |a| a as f32))
    }
    #[inline(always)]
    fn abs(self) -> I {
        I(map(self.0, i32::wrapping_abs))
    }
    #[inline(always)]
    fn max(self, rhs: I) -> I {
        I(zip(self.0, rhs.0, i32::max))
    }
    #[inline(always)]
    fn min(self, rhs: I) -> I {
        I(zip(self.0, rhs.0, i32::min))
    }
    #[inline(always)]
    fn mul(self, rhs: I) -> I {
        I(zip(self.0, rhs.0, i32::wrapping_mul))
    }
    #[inline(always)]
    fn gt(self, rhs: I) -> M {
        M(zip(self.0, rhs.0, |a, b| a > b))
    }
    #[inline(always)]
    fn eq(self, rhs: I) -> M {
        M(zip(self.0, rhs.0, |a, b| a == b))
    }
}

impl LaneM<Portable> for M {
    #[inline(always)]
    fn splat(b: bool) -> M {
        M([b; L])
    }
    #[inline(always)]
    fn bits(self) -> u32 {
        self.0
            .iter()
            .enumerate()
            .fold(0, |acc, (l, &b)| acc | (u32::from(b) << l))
    }
    #[inline(always)]
    fn not(self) -> M {
        M(map(self.0, |a| !a))
    }
    #[inline(always)]
    fn and_not(self, rhs: M) -> M {
        M(zip(self.0, rhs.0, |a, b| a & !b))
    }
    #[inline(always)]
    fn select(self, a: F, b: F) -> F {
        let mut out = [0.0; L];
        for (l, o) in out.iter_mut().enumerate() {
            *o = if self.0[l] { a.0[l] } else { b.0[l] };
        }
        F(out)
    }
    #[inline(always)]
    fn select_i(self, a: I, b: I) -> I {
        let mut out = [0; L];
        for (l, o) in out.iter_mut().enumerate() {
            *o = if self.0[l] { a.0[l] } else { b.0[l] };
        }
        I(out)
    }
}

impl Add for F {
    type Output = F;
    #[inline(always)]
    fn add(self, rhs: F) -> F {
        F(zip(self.0, rhs.0, |a, b| a + b))
    }
}

impl Sub for F {
    type Output = F;
    #[inline(always)]
    fn sub(self, rhs: F) -> F {
        F(zip(self.0, rhs.0, |a, b| a - b))
    }
}

impl Mul for F {
    type Output = F;
    #[inline(always)]
    fn mul(self, rhs: F) -> F {
        F(zip(self.0, rhs.0, |a, b| a * b))
    }
}

impl Add for I {
    type Output = I;
    #[inline(always)]
    fn add(self, rhs: I) -> I {
        I(zip(self.0, rhs.0, i32::wrapping_add))
    }
}

impl Sub for I {
    type Output = I;
    #[inline(always)]
    fn sub(self, rhs: I) -> I {
        I(zip(self.0, rhs.0, i32::wrapping_sub))
    }
}

impl BitAnd for I {
    type Output = I;
    #[inline(always)]
    fn bitand(self, rhs: I) -> I {
        I(zip(self.0, rhs.0, |a, b| a & b))
    }
}

impl BitOr for I {
    type Output = I;
    #[inline(always)]
    fn bitor(self, rhs: I) -> I {
        I(zip(self.0, rhs.0, |a, b| a | b))
    }
}

impl Shl<u32> for I {
    type Output = I;
    #[inline(always)]
    fn shl(self, s: u32) -> I {
        I(map(self.0, |a| a.wrapping_shl(s)))
    }
}

impl Shr<u32> for I {
    type Output = I;
    /// Arithmetic shift: `floor(x / 2^s)`.
    #[inline(always)]
    fn shr(self, s: u32) -> I {
        I(map(self.0, |a| a.wrapping_shr(s)))
    }
}

impl BitAnd for M {
    type Output = M;
    #[inline(always)]
    fn bitand(self, rhs: M) -> M {
        M(zip(self.0, rhs.0, |a, b| a & b))
    }
}

impl BitOr for M {
    type Output = M;
    #[inline(always)]
    fn bitor(self, rhs: M) -> M {
        M(zip(self.0, rhs.0, |a, b| a | b))
    }
}
