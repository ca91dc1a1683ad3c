//! Lane vectors for the batched kernels.
//!
//! The batched encoder and decoder process [`L`] head-vectors at once, one per lane, so every
//! operation of the spec is applied lane-wise, with no shuffles. The kernels are generic over a
//! [`Simd`] backend: [`Portable`] (plain arrays; correct everywhere) and, on x86_64,
//! [`Avx2`](avx2::Avx2) (AVX2 intrinsics, one instruction per operation). Each lane performs
//! exactly the binary32 or integer operation the spec names, one rounding each: nothing here
//! reassociates, and no FMA is used, so both backends give identical bits (tested).

use core::ops::{Add, BitAnd, BitOr, Mul, Shl, Shr, Sub};

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
mod portable;

pub(crate) use portable::Portable;

/// Lanes per vector: 8 binary32 values fill one AVX2 register.
pub(crate) const L: usize = 8;

/// `[f(0), …, f(7)]`, always inlined. Kernels use this instead of `core::array::from_fn`, whose
/// body is not always inlined: a kernel's code that is not inlined into the dispatcher's
/// `#[target_feature]` function loses the AVX2 features and calls every intrinsic out of line.
#[inline(always)]
pub(crate) fn arr8<T>(f: impl Fn(usize) -> T) -> [T; 8] {
    [f(0), f(1), f(2), f(3), f(4), f(5), f(6), f(7)]
}

/// A SIMD backend: the lane types the kernels compute with.
pub(crate) trait Simd: Copy + Send + Sync + 'static {
    /// `L` binary32 values.
    type F: LaneF<Self>;
    /// `L` 32-bit integers.
    type I: LaneI<Self>;
    /// `L` lane masks.
    type M: LaneM<Self>;

    /// Transposes an 8 × 8 matrix held as 8 lane vectors: lane `l` of `out[i]` is lane `i` of
    /// `r[l]`. Turns 8 rows of 8 values into coordinate-major lanes and back.
    fn transpose(r: [Self::F; 8]) -> [Self::F; 8];

    /// Widens `src` to binary32 into `dst` (same length; exact): the same results as `half`'s
    /// slice conversion.
    fn load_f16(src: &[half::f16], dst: &mut [f32]);

    /// Lane `l`: the little-endian 32-bit word at `bytes[first + l·stride..][..4]`.
    ///
    /// # Panics
    /// When the last lane's word runs past `bytes` or `stride` is too large for 32-bit offsets.
    fn gather_u32(bytes: &[u8], first: usize, stride: usize) -> Self::I;
}

/// Lane-wise binary32 operations. Comparisons are IEEE (false on NaN).
pub(crate) trait LaneF<S: Simd>:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self>
{
    /// All lanes `x`.
    fn splat(x: f32) -> Self;
    /// The lanes from an array.
    fn from_array(a: [f32; L]) -> Self;
    /// The lanes as an array.
    fn to_array(self) -> [f32; L];
    /// The lanes rounded to fp16 (to nearest, ties to even) into `dst` (`L` values).
    fn store_f16(self, dst: &mut [half::f16]);
    /// IEEE division.
    fn div(self, rhs: Self) -> Self;
    /// IEEE square root.
    fn sqrt(self) -> Self;
    /// Round to nearest, ties to even (`rint`).
    fn round_even(self) -> Self;
    /// Round toward −∞.
    fn floor(self) -> Self;
    /// `|x|`.
    fn abs(self) -> Self;
    /// `self` unless it is smaller than `rhs` or NaN, then `rhs`.
    fn max(self, rhs: Self) -> Self;
    /// `self` unless it is larger than `rhs` or NaN, then `rhs`.
    fn min(self, rhs: Self) -> Self;
    /// Flips the sign bit where `bits` has it set (the spec's exact negation by a sign).
    fn xor_sign(self, bits: u32) -> Self;
    /// `self < rhs`.
    fn lt(self, rhs: Self) -> S::M;
    /// `self <= rhs`.
    fn le(self, rhs: Self) -> S::M;
    /// `self >= rhs`.
    fn ge(self, rhs: Self) -> S::M;
    /// `self == rhs` (`+0 == -0`).
    fn eq(self, rhs: Self) -> S::M;
    /// Neither NaN nor infinite.
    fn is_finite(self) -> S::M;
    /// Integral lanes with `|x| < 2^22` as integers (exact; unspecified outside that range).
    fn to_int_exact(self) -> S::I;
}

/// Lane-wise 32-bit integer operations (wrapping).
pub(crate) trait LaneI<S: Simd>:
    Copy
    + Add<Output = Self>
    + Sub<Output = Self>
    + BitAnd<Output = Self>
    + BitOr<Output = Self>
    + Shl<u32, Output = Self>
    + Shr<u32, Output = Self>
{
    /// All lanes `x`.
    fn splat(x: i32) -> Self;
    /// The lanes from an array.
    fn from_array(a: [i32; L]) -> Self;
    /// The lanes as an array.
    fn to_array(self) -> [i32; L];
    /// Each lane as binary32 (exact for `|x| <= 2^24`).
    fn to_f32(self) -> S::F;
    /// `|x|`.
    fn abs(self) -> Self;
    /// The larger of `self` and `rhs`.
    fn max(self, rhs: Self) -> Self;
    /// The smaller of `self` and `rhs`.
    fn min(self, rhs: Self) -> Self;
    /// `self · rhs`, low 32 bits.
    fn mul(self, rhs: Self) -> Self;
    /// `self > rhs`.
    fn gt(self, rhs: Self) -> S::M;
    /// `self == rhs`.
    fn eq(self, rhs: Self) -> S::M;
}

/// Lane masks: each lane true or false.
pub(crate) trait LaneM<S: Simd>:
    Copy + BitAnd<Output = Self> + BitOr<Output = Self>
{
    /// Every lane `b`.
    fn splat(b: bool) -> Self;
    /// Bit `l` set where lane `l` is true.
    fn bits(self) -> u32;
    /// Lane-wise not.
    fn not(self) -> Self;
    /// Lanes true in `self` and false in `rhs`.
    fn and_not(self, rhs: Self) -> Self;
    /// `if self { a } else { b }` per lane.
    fn select(self, a: S::F, b: S::F) -> S::F;
    /// `if self { a } else { b }` per lane, for integers.
    fn select_i(self, a: S::I, b: S::I) -> S::I;

    /// Whether any lane is true.
    #[inline(always)]
    fn any(self) -> bool {
        self.bits() != 0
    }

    /// Lane `l`.
    #[inline(always)]
    fn get(self, l: usize) -> bool {
        (self.bits() >> l) & 1 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type PF = <Portable as Simd>::F;
    type PI = <Portable as Simd>::I;
    type PM = <Portable as Simd>::M;

    #[test]
    fn to_int_exact_matches_as_on_its_range() {
        for x in [
            -4_194_303.0f32,
            -1025.0,
            -2.0,
            -1.0,
            -0.0,
            0.0,
            1.0,
            3.0,
            4_194_303.0,
        ] {
            assert_eq!(PF::splat(x).to_int_exact().to_array(), [x as i32; L]);
        }
    }

    #[test]
    fn masks_select_and_shifts() {
        let a = PF::from_array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        let m = a.lt(PF::splat(3.5));
        assert_eq!(m.bits(), 0b1111);
        assert!(m.any() && !PM::splat(false).any() && m.get(0) && !m.get(7));
        let s = m.select(a, PF::splat(-1.0)).to_array();
        assert_eq!(s, [0.0, 1.0, 2.0, 3.0, -1.0, -1.0, -1.0, -1.0]);
        assert_eq!((m.not() & m).bits(), 0);
        assert_eq!(m.and_not(m).bits(), 0);
        assert_eq!((m | m.not()).bits(), 0xFF);
        let x = PI::from_array([-5, -4, -1, 0, 1, 4, 5, 7]);
        assert_eq!((x >> 1).to_array(), [-3, -2, -1, 0, 0, 2, 2, 3]);
        assert_eq!((x << 2).to_array(), [-20, -16, -4, 0, 4, 16, 20, 28]);
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod avx2_tests {
    use super::avx2::Avx2;
    use super::*;

    /// Every operation of the AVX2 backend against the portable one on awkward values.
    #[test]
    fn avx2_matches_portable() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        let vals = [
            0.0f32,
            -0.0,
            0.5,
            -0.5,
            1.5,
            2.5,
            -2.5,
            0.49999997,
            1e-40,
            -3.75,
            1e30,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            7.0,
            -8.0,
        ];
        let ints = [0i32, 1, -1, 5, -7, 1 << 20, -(1 << 20), 1023];
        for a0 in 0..vals.len() {
            let a: [f32; L] = core::array::from_fn(|l| vals[(a0 + l) % vals.len()]);
            let b: [f32; L] = core::array::from_fn(|l| vals[(a0 * 3 + l * 5 + 1) % vals.len()]);
            let (pa, pb) = (
                <Portable as Simd>::F::from_array(a),
                <Portable as Simd>::F::from_array(b),
            );
            let (xa, xb) = (
                <Avx2 as Simd>::F::from_array(a),
                <Avx2 as Simd>::F::from_array(b),
            );
            let same = |p: [f32; L], x: [f32; L], what: &str| {
                for l in 0..L {
                    assert!(
                        p[l].to_bits() == x[l].to_bits() || (p[l].is_nan() && x[l].is_nan()),
                        "{what}: {a:?} {b:?} lane {l}: {} vs {}",
                        p[l],
                        x[l]
                    );
                }
            };
            same((pa + pb).to_array(), (xa + xb).to_array(), "add");
            same((pa - pb).to_array(), (xa - xb).to_array(), "sub");
            same((pa * pb).to_array(), (xa * xb).to_array(), "mul");
            same(pa.div(pb).to_array(), xa.div(xb).to_array(), "div");
            same(pa.sqrt().to_array(), xa.sqrt().to_array(), "sqrt");
            same(
                pa.round_even().to_array(),
                xa.round_even().to_array(),
                "rint",
            );
            same(pa.floor().to_array(), xa.floor().to_array(), "floor");
            same(pa.abs().to_array(), xa.abs().to_array(), "abs");
            same(pa.max(pb).to_array(), xa.max(xb).to_array(), "max");
            same(pa.min(pb).to_array(), xa.min(xb).to_array(), "min");
            same(
                pa.xor_sign(1 << 31).to_array(),
                xa.xor_sign(1 << 31).to_array(),
                "xor",
            );
            assert_eq!(pa.lt(pb).bits(), xa.lt(xb).bits());
            assert_eq!(pa.le(pb).bits(), xa.le(xb).bits());
            assert_eq!(pa.ge(pb).bits(), xa.ge(xb).bits());
            assert_eq!(pa.eq(pb).bits(), xa.eq(xb).bits());
            assert_eq!(pa.is_finite().bits(), xa.is_finite().bits());
            let (pm, xm) = (pa.lt(pb), xa.lt(xb));
            same(
                pm.select(pa, pb).to_array(),
                xm.select(xa, xb).to_array(),
                "select",
            );
            assert_eq!(pm.not().bits(), xm.not().bits());
            assert_eq!((pm & pa.ge(pb)).bits(), (xm & xa.ge(xb)).bits());
            assert_eq!((pm | pa.eq(pb)).bits(), (xm | xa.eq(xb)).bits());
            assert_eq!(pm.and_not(pa.ge(pb)).bits(), xm.and_not(xa.ge(xb)).bits());
            assert_eq!(<Avx2 as Simd>::M::splat(true).bits(), 0xFF);

            let ia: [i32; L] = core::array::from_fn(|l| ints[(a0 + l) % 8]);
            let ib: [i32; L] = core::array::from_fn(|l| ints[(a0 * 3 + l) % 8]);
            let (pi, pj) = (
                <Portable as Simd>::I::from_array(ia),
                <Portable as Simd>::I::from_array(ib),
            );
            let (xi, xj) = (
                <Avx2 as Simd>::I::from_array(ia),
                <Avx2 as Simd>::I::from_array(ib),
            );
            assert_eq!((pi + pj).to_array(), (xi + xj).to_array());
            assert_eq!((pi - pj).to_array(), (xi - xj).to_array());
            assert_eq!((pi & pj).to_array(), (xi & xj).to_array());
            assert_eq!((pi | pj).to_array(), (xi | xj).to_array());
            assert_eq!((pi << 3).to_array(), (xi << 3).to_array());
            assert_eq!((pi >> 3).to_array(), (xi >> 3).to_array());
            assert_eq!(pi.mul(pj).to_array(), xi.mul(xj).to_array());
            assert_eq!(pi.abs().to_array(), xi.abs().to_array());
            assert_eq!(pi.max(pj).to_array(), xi.max(xj).to_array());
            assert_eq!(pi.min(pj).to_array(), xi.min(xj).to_array());
            assert_eq!(pi.gt(pj).bits(), xi.gt(xj).bits());
            assert_eq!(pi.eq(pj).bits(), xi.eq(xj).bits());
            same(pi.to_f32().to_array(), xi.to_f32().to_array(), "to_f32");
            assert_eq!(
                pm.select_i(pi, pj).to_array(),
                xm.select_i(xi, xj).to_array()
            );
            let integral = <Portable as Simd>::I::from_array(ia).to_f32();
            let xintegral = <Avx2 as Simd>::I::from_array(ia).to_f32();
            assert_eq!(
                integral.to_int_exact().to_array(),
                xintegral.to_int_exact().to_array()
            );
        }
        let bytes: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        for (first, stride) in [(0, 4), (3, 41), (17, 72), (0, 96)] {
            assert_eq!(
                Portable::gather_u32(&bytes, first, stride).to_array(),
                Avx2::gather_u32(&bytes, first, stride).to_array()
            );
        }
        let want: [i32; L] = core::array::from_fn(|l| {
            i32::from_le_bytes(bytes[5 + 9 * l..9 + 9 * l].try_into().unwrap())
        });
        assert_eq!(Avx2::gather_u32(&bytes, 5, 9).to_array(), want);
        let bad = std::panic::catch_unwind(|| Avx2::gather_u32(&bytes, 700 - 7 * 96 - 3, 96));
        assert!(bad.is_err(), "a word past the end must panic");
        // Lane vectors to fp16: the slice conversion's results, on awkward values.
        for a0 in 0..vals.len() {
            let a: [f32; L] = core::array::from_fn(|l| vals[(a0 + l) % vals.len()] * 1.000_1);
            let (mut hp, mut hx) = ([half::f16::ZERO; L], [half::f16::ZERO; L]);
            <Portable as Simd>::F::from_array(a).store_f16(&mut hp);
            <Avx2 as Simd>::F::from_array(a).store_f16(&mut hx);
            let want: [u16; L] = core::array::from_fn(|l| half::f16::from_f32(a[l]).to_bits());
            assert_eq!(hp.map(half::f16::to_bits), want);
            assert_eq!(hx.map(half::f16::to_bits), want);
        }
        // fp16 -> binary32 on every fp16 bit pattern (13 values: one full chunk and a tail).
        let all: Vec<half::f16> = (0..=u16::MAX).map(half::f16::from_bits).collect();
        for chunk in all.chunks(13) {
            let (mut p, mut x) = ([0f32; 13], [0f32; 13]);
            Portable::load_f16(chunk, &mut p[..chunk.len()]);
            Avx2::load_f16(chunk, &mut x[..chunk.len()]);
            for (a, b) in p.iter().zip(&x) {
                assert_eq!(a.to_bits(), b.to_bits(), "load_f16 {chunk:?}");
            }
        }
        let rows: [[f32; L]; 8] =
            core::array::from_fn(|r| core::array::from_fn(|c| (r * 8 + c) as f32));
        let p = Portable::transpose(rows.map(<Portable as Simd>::F::from_array));
        let x = Avx2::transpose(rows.map(<Avx2 as Simd>::F::from_array));
        for i in 0..8 {
            assert_eq!(p[i].to_array(), x[i].to_array());
            for (l, row) in rows.iter().enumerate().take(L) {
                assert_eq!(p[i].to_array()[l], row[i], "lane {l}");
            }
        }
    }
}
