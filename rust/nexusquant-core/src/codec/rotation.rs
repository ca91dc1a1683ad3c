//! The rotation `R`: a randomized Hadamard transform, orthonormal (`docs/codec.md` §2).
//!
//! `P` is the largest power of two `<= d`. Stage 1 negates by the signs `sign1`, applies the
//! unnormalised Walsh–Hadamard transform `FWHT_P` to `v[0..P]` and multiplies it by `c_P`; when
//! `P < d`, stage 2 does the same on `v[d-P..d]` with the signs `sign2`.

use super::lanes::{LaneF, Simd};
use super::signs::sign_bits;

/// Bits of binary32 `0.70710677` (`1/√2` rounded), the odd-power factor of `c_P`.
const INV_SQRT2_BITS: u32 = 0x3F35_04F3;

/// The sign bit of binary32: XOR-ing it in is the spec's negation.
const SIGN: u32 = 0x8000_0000;

/// `c_P`: `2^-k` when `P = 4^k`, `2^-k × 0.70710677` when `P = 2·4^k`.
///
/// # Panics
/// When `p` is not a power of two.
pub fn c_p(p: usize) -> f32 {
    assert!(p.is_power_of_two(), "P must be a power of two, got {p}");
    let log = p.trailing_zeros();
    let pow = f32::from_bits((127 - log / 2) << 23); // 2^-k, exact
    if log % 2 == 0 {
        pow
    } else {
        pow * f32::from_bits(INV_SQRT2_BITS)
    }
}

/// `FWHT_P(w)`, the unnormalised fast Walsh–Hadamard transform in the spec's stage order
/// (`h = 1, 2, 4, …`). The literal form, used as the reference.
///
/// # Panics
/// When `w.len()` is not a power of two.
pub fn fwht(w: &mut [f32]) {
    let p = w.len();
    assert!(
        p.is_power_of_two(),
        "FWHT length must be a power of two, got {p}"
    );
    let mut h = 1;
    while h < p {
        for j in 0..p {
            if j & h == 0 {
                let (a, b) = (w[j], w[j + h]);
                w[j] = a + b;
                w[j + h] = a - b;
            }
        }
        h *= 2;
    }
}

/// The rotation `R` for one head dimension and seed: the signs as sign-bit masks and `c_P`.
#[derive(Debug, Clone)]
pub struct Rotation {
    d: usize,
    p: usize,
    c: f32,
    /// `sign1[i]` for `i ∈ [0, d)`: 0 or the sign bit.
    sign1: Vec<u32>,
    /// `sign2[i - (d - P)]` for `i ∈ [d - P, d)`; empty when `P == d`.
    sign2: Vec<u32>,
}

impl Rotation {
    /// The rotation for head dimension `d` (a multiple of 8 in `[8, 1024]`, as validated by
    /// [`CodecParams`](super::CodecParams)) and `seed`.
    ///
    /// # Panics
    /// When `d` is zero.
    pub fn new(d: usize, seed: u64) -> Self {
        assert!(d > 0, "head_dim must be positive");
        let p = 1usize << (usize::BITS - 1 - d.leading_zeros());
        let bits = sign_bits(seed, 2 * d);
        let mask = |neg: bool| if neg { SIGN } else { 0 };
        let sign1 = bits[..d].iter().map(|&b| mask(b)).collect();
        let sign2 = if p < d {
            bits[2 * d - p..].iter().map(|&b| mask(b)).collect()
        } else {
            Vec::new()
        };
        Self {
            d,
            p,
            c: c_p(p),
            sign1,
            sign2,
        }
    }

    /// The head dimension `d`.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// `P`, the largest power of two `<= d`.
    pub fn p(&self) -> usize {
        self.p
    }

    /// Forward `R(v)` in place, literally as the spec writes it.
    ///
    /// # Panics
    /// When `v.len() != d`.
    pub fn forward(&self, v: &mut [f32]) {
        let (d, p, c) = (self.d, self.p, self.c);
        assert_eq!(v.len(), d, "vector length must equal head_dim");
        for (x, &s) in v.iter_mut().zip(&self.sign1) {
            *x = f32::from_bits(x.to_bits() ^ s);
        }
        fwht(&mut v[..p]);
        v[..p].iter_mut().for_each(|x| *x *= c);
        if p < d {
            for (x, &s) in v[d - p..].iter_mut().zip(&self.sign2) {
                *x = f32::from_bits(x.to_bits() ^ s);
            }
            fwht(&mut v[d - p..]);
            v[d - p..].iter_mut().for_each(|x| *x *= c);
        }
    }

    /// Inverse `R⁻¹(v)` in place, literally as the spec writes it.
    ///
    /// # Panics
    /// When `v.len() != d`.
    pub fn inverse(&self, v: &mut [f32]) {
        let (d, p, c) = (self.d, self.p, self.c);
        assert_eq!(v.len(), d, "vector length must equal head_dim");
        if p < d {
            fwht(&mut v[d - p..]);
            v[d - p..].iter_mut().for_each(|x| *x *= c);
            for (x, &s) in v[d - p..].iter_mut().zip(&self.sign2) {
                *x = f32::from_bits(x.to_bits() ^ s);
            }
        }
        fwht(&mut v[..p]);
        v[..p].iter_mut().for_each(|x| *x *= c);
        for (x, &s) in v.iter_mut().zip(&self.sign1) {
            *x = f32::from_bits(x.to_bits() ^ s);
        }
    }

    /// Forward `R` on [`L`](super::lanes::L) vectors at once (`v[i]` holds coordinate `i` of
    /// each). Bit-identical to [`Rotation::forward`] lane by lane.
    #[inline(always)]
    pub(crate) fn forward_lanes<S: Simd>(&self, v: &mut [S::F]) {
        let (d, p, c) = (self.d, self.p, S::F::splat(self.c));
        let s1 = &self.sign1[..d];
        fwht_lanes::<S>(&mut v[..p], |i, x| x.xor_sign(s1[i]), |_, x| x * c);
        if p < d {
            let (off, s2) = (d - p, &self.sign2[..p]);
            for i in p..d {
                v[i] = v[i].xor_sign(s1[i]);
            }
            fwht_lanes::<S>(&mut v[off..d], |i, x| x.xor_sign(s2[i]), |_, x| x * c);
        }
    }

    /// Inverse `R⁻¹` on [`L`](super::lanes::L) vectors at once. Bit-identical to
    /// [`Rotation::inverse`] lane by lane.
    #[inline(always)]
    pub(crate) fn inverse_lanes<S: Simd>(&self, v: &mut [S::F]) {
        let (d, p, c) = (self.d, self.p, S::F::splat(self.c));
        let s1 = &self.sign1[..d];
        if p < d {
            let (off, s2) = (d - p, &self.sign2[..p]);
            fwht_lanes::<S>(&mut v[off..d], |_, x| x, |i, x| (x * c).xor_sign(s2[i]));
            for i in p..d {
                v[i] = v[i].xor_sign(s1[i]);
            }
        }
        fwht_lanes::<S>(&mut v[..p], |_, x| x, |i, x| (x * c).xor_sign(s1[i]));
    }
}

/// `FWHT_P` on lane vectors, with `pre(i, x)` applied to each input and `post(i, x)` to each
/// output. Stages are fused three at a time (radix 8) to save passes over memory, and `pre` and
/// `post` are applied as the first pass loads and the last pass stores; every output of every
/// stage is still the one addition or subtraction the spec names, in stage order.
#[inline(always)]
fn fwht_lanes<S: Simd>(
    w: &mut [S::F],
    pre: impl Fn(usize, S::F) -> S::F,
    post: impl Fn(usize, S::F) -> S::F,
) {
    let log = w.len().trailing_zeros() as usize;
    debug_assert!(log >= 3, "FWHT of at least 8 values");
    // `pre` and `post` are moved into their pass (not passed by reference: a `&F` call is not
    // always inlined, and out of line it loses the AVX2 features).
    let same = |_: usize, x: S::F| x;
    if log == 3 {
        radix::<S, 8>(w, 1, pre, post);
        return;
    }
    // Radix 8 while three stages remain, then one pass of radix 4 or 2; the last pass is the
    // last radix-8 one when `log` is a multiple of 3.
    radix::<S, 8>(w, 1, pre, same);
    let mut h = 8;
    let middle = log / 3 - usize::from(log % 3 == 0);
    for _ in 1..middle {
        radix::<S, 8>(w, h, same, same);
        h *= 8;
    }
    match log % 3 {
        0 => radix::<S, 8>(w, h, same, post),
        1 => radix::<S, 2>(w, h, same, post),
        _ => radix::<S, 4>(w, h, same, post),
    }
}

/// One pass of `log2(R)` consecutive stages `h, 2h, …` on groups of `R` values at stride `h`,
/// with `pre(i, x)` applied to each value `w[i]` as it is loaded and `post(i, x)` as it is
/// stored.
#[inline(always)]
fn radix<S: Simd, const R: usize>(
    w: &mut [S::F],
    h: usize,
    pre: impl Fn(usize, S::F) -> S::F,
    post: impl Fn(usize, S::F) -> S::F,
) {
    for (g, group) in w.chunks_exact_mut(R * h).enumerate() {
        let base = g * R * h;
        // The group as R rows of h values: row k holds the values at j + k·h.
        let mut rows: [&mut [S::F]; R] = core::array::from_fn(|_| &mut [][..]);
        let mut rest = group;
        for row in rows.iter_mut() {
            let (head, tail) = rest.split_at_mut(h);
            *row = head;
            rest = tail;
        }
        for j in 0..h {
            // A loop, not `core::array::from_fn`: that one is not always inlined, and out of
            // line it loses the AVX2 features and calls every intrinsic in `pre`.
            let mut a = [S::F::splat(0.0); R];
            for (k, x) in a.iter_mut().enumerate() {
                *x = pre(base + k * h + j, rows[k][j]);
            }
            let mut s = 1;
            while s < R {
                for k in 0..R {
                    if k & s == 0 {
                        let (x, y) = (a[k], a[k + s]);
                        a[k] = x + y;
                        a[k + s] = x - y;
                    }
                }
                s *= 2;
            }
            for (k, (row, x)) in rows.iter_mut().zip(a).enumerate() {
                row[j] = post(base + k * h + j, x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::lanes::{Portable, L};
    use super::super::signs::SplitMix64;
    use super::*;

    fn random_vec(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| ((rng.next() >> 40) as f32 / 16_777_216.0 - 0.5) * 4.0)
            .collect()
    }

    #[test]
    fn c_p_values() {
        assert_eq!(c_p(1), 1.0);
        assert_eq!(c_p(4), 0.5);
        assert_eq!(c_p(64), 0.125);
        assert_eq!(c_p(2).to_bits(), INV_SQRT2_BITS);
        assert_eq!(c_p(8), 0.5 * f32::from_bits(INV_SQRT2_BITS));
        assert_eq!(c_p(128), 0.125 * f32::from_bits(INV_SQRT2_BITS));
        assert_eq!(c_p(512), 0.0625 * f32::from_bits(INV_SQRT2_BITS));
        assert_eq!(c_p(1024), 1.0 / 32.0);
    }

    #[test]
    fn fwht_of_unit_vectors_is_hadamard() {
        let p = 16;
        for i in 0..p {
            let mut w = vec![0.0f32; p];
            w[i] = 1.0;
            fwht(&mut w);
            for (j, &x) in w.iter().enumerate() {
                let sign = if (i & j).count_ones() % 2 == 0 {
                    1.0
                } else {
                    -1.0
                };
                assert_eq!(x, sign);
            }
        }
    }

    #[test]
    fn p_is_largest_power_of_two() {
        for (d, p) in [
            (8, 8),
            (24, 16),
            (80, 64),
            (96, 64),
            (128, 128),
            (1000, 512),
        ] {
            assert_eq!(Rotation::new(d, 0).p(), p);
        }
    }

    fn check_lanes<S: Simd>() {
        let mut rng = SplitMix64::new(3);
        for d in (8..=1024).step_by(8) {
            let rot = Rotation::new(d, rng.next());
            let rows: Vec<Vec<f32>> = (0..L).map(|_| random_vec(&mut rng, d)).collect();
            let mut lanes: Vec<S::F> = (0..d)
                .map(|i| S::F::from_array(core::array::from_fn(|l| rows[l][i])))
                .collect();
            rot.forward_lanes::<S>(&mut lanes);
            let mut back = lanes.clone();
            rot.inverse_lanes::<S>(&mut back);
            for (l, row) in rows.iter().enumerate() {
                let mut f = row.clone();
                rot.forward(&mut f);
                let mut b = f.clone();
                rot.inverse(&mut b);
                for i in 0..d {
                    let (got_f, got_b) = (lanes[i].to_array()[l], back[i].to_array()[l]);
                    assert_eq!(got_f.to_bits(), f[i].to_bits(), "fwd d={d} i={i}");
                    assert_eq!(got_b.to_bits(), b[i].to_bits(), "inv d={d} i={i}");
                }
            }
        }
    }

    #[test]
    fn lanes_match_literal_bit_for_bit() {
        check_lanes::<Portable>();
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            check_lanes::<super::super::lanes::avx2::Avx2>();
        }
    }

    #[test]
    fn orthonormal_and_invertible() {
        let mut rng = SplitMix64::new(11);
        for d in [8, 16, 24, 64, 80, 96, 128, 256, 512, 1024] {
            let rot = Rotation::new(d, 0x1234);
            for _ in 0..4 {
                let x = random_vec(&mut rng, d);
                let mut y = x.clone();
                rot.forward(&mut y);
                let n0: f64 = x.iter().map(|&a| f64::from(a) * f64::from(a)).sum();
                let n1: f64 = y.iter().map(|&a| f64::from(a) * f64::from(a)).sum();
                assert!((n0 - n1).abs() <= 1e-5 * n0, "norm d={d}: {n0} vs {n1}");
                rot.inverse(&mut y);
                for (a, b) in x.iter().zip(&y) {
                    assert!((a - b).abs() <= 2e-6 * 4.0, "inverse d={d}: {a} vs {b}");
                }
            }
            // Columns are orthonormal: R applied to unit vectors gives an orthonormal set.
            let cols: Vec<Vec<f32>> = (0..d.min(32))
                .map(|i| {
                    let mut e = vec![0.0; d];
                    e[i] = 1.0;
                    rot.forward(&mut e);
                    e
                })
                .collect();
            for (i, a) in cols.iter().enumerate() {
                for (j, b) in cols.iter().enumerate() {
                    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-5, "d={d} <{i},{j}> = {dot}");
                }
            }
        }
    }

    #[test]
    fn non_power_of_two_mixes_every_output() {
        // For d = 80 every output depends on many inputs thanks to the two overlapping stages.
        let rot = Rotation::new(80, 9);
        let mut e = vec![0.0f32; 80];
        e[70] = 1.0;
        rot.forward(&mut e);
        assert!(e.iter().filter(|x| **x != 0.0).count() >= 64);
    }
}
