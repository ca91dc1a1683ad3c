//! The E8 lattice: nearest point `QE8` and the Voronoi code of the shifted lattice `E8 + ¼`
//! inside the cell of `qE8`, `COORDS`/`VDEC` (`docs/codec.md` §4–5).
//!
//! Lattice points are in *half-units*: `Y = 2y`, so both cosets of `E8 = D8 ∪ (D8 + ½)` are
//! integer vectors (all even or all odd). Codebook points `p = y + ¼` are in *quarter-units*:
//! `P = 4p = 2Y + 1`, odd integers. The literal functions here follow the spec's binary32
//! formulation and are the oracle; the lane functions are the batched kernels' versions,
//! bit-identical to them.
//!
//! `vdec_lanes` runs in integers. This is exact: `VDEC` applies `QE8` to `z = P/(4q)` with `P`
//! odd, `|P| < 2^12` and `q <= 256`, so every binary32 operation of `QE8` on such `z` is exact
//! and `rint` never meets a tie. In units of `1/(4q)`: `rint(z) = (P + 2q) >> (b + 2)` and
//! `rint(z - ½) = P >> (b + 2)`, the residual `e = z - f` is the integer `E = P - 4q·f` (minus
//! `2q` for the `½` coset), `|e|` orders as `|E|`, `e >= 0` iff `E >= 0`, and the squared
//! residuals (`|E| <= 4q`, so `E² <= 2^20` and their sum `<= 2^23 < 2^24`) are summed exactly,
//! so `dA <= dB` compares the same numbers. `tests::every_code_round_trips_*` check it
//! exhaustively for `b <= 2` and on random codes for every `b`.

use super::fold::{fold, fold8_lanes};
use super::lanes::{arr8, LaneF, LaneI, LaneM, Portable, Simd};

/// `QD8(w)`: the nearest point `f` of `D8` (as binary32 integers) and the residual `e = w - f`.
fn qd8(w: &[f32; 8]) -> ([f32; 8], [f32; 8]) {
    let mut f = [0.0f32; 8];
    let mut e = [0.0f32; 8];
    for i in 0..8 {
        f[i] = w[i].round_ties_even();
        e[i] = w[i] - f[i];
    }
    let sum: i64 = f.iter().map(|&x| x as i64).sum();
    if sum % 2 != 0 {
        let mut k = 0;
        for i in 1..8 {
            if e[i].abs() > e[k].abs() {
                k = i;
            }
        }
        if e[k] >= 0.0 {
            f[k] += 1.0;
        } else {
            f[k] -= 1.0;
        }
        e[k] = w[k] - f[k];
    }
    (f, e)
}

/// `QE8(z)`: the E8 point nearest to `z`, in half-units, with the spec's tie rules.
///
/// `z` must be finite with `|z[i]| < 2^20`.
pub fn qe8(z: &[f32; 8]) -> [i32; 8] {
    let (a, ea) = qd8(z);
    let w = z.map(|x| x - 0.5);
    let (b, eb) = qd8(&w);
    let da = fold(&ea.map(|e| e * e));
    let db = fold(&eb.map(|e| e * e));
    if da <= db {
        a.map(|x| 2 * x as i32)
    } else {
        b.map(|x| 2 * x as i32 + 1)
    }
}

/// `COORDS(Y)`: the coordinates of the E8 point `Y` (half-units) in the Voronoi basis, before
/// reduction modulo `q` (the code is `c & (q - 1)`).
pub fn coords(y: &[i32; 8]) -> [i32; 8] {
    let mut c = [0i32; 8];
    c[7] = y[7];
    c[6] = (y[6] - y[7]) / 2;
    for k in (1..=5).rev() {
        c[k] = (y[k] - y[7]) / 2 + c[k + 1];
    }
    c[0] = ((y[0] - y[7]) / 2 + c[1]) / 2;
    c
}

/// The representative `Y` of a code before the `QE8` reduction (§5, first five lines of `VDEC`).
fn lift(code: &[u8; 8]) -> [i32; 8] {
    let c = code.map(i32::from);
    let mut y = [0i32; 8];
    y[7] = c[7];
    y[6] = 2 * c[6] + c[7];
    for k in 1..=5 {
        y[k] = 2 * (c[k] - c[k + 1]) + c[7];
    }
    y[0] = 2 * (2 * c[0] - c[1]) + c[7];
    y
}

/// `VDEC(code)` for `b` bits, literally in binary32: the codebook point `P̂` (quarter-units) of
/// the code's coset of `E8 + ¼` inside the Voronoi cell of `qE8`. Every `code[k]` must be below
/// `q = 2^b`.
pub fn vdec(code: &[u8; 8], b: u32) -> [i32; 8] {
    let q = 1i32 << b;
    let p = lift(code).map(|y| 2 * y + 1);
    let four_q = (4 * q) as f32;
    let z = p.map(|v| v as f32 / four_q);
    let k = qe8(&z);
    core::array::from_fn(|i| p[i] - 2 * q * k[i])
}

/// `VDEC(code)` in integer arithmetic: identical results to [`vdec`] (see the module doc).
pub fn vdec_int(code: &[u8; 8], b: u32) -> [i32; 8] {
    let p = vdec_lanes::<Portable>(&code.map(|c| PI::splat(i32::from(c))), b);
    core::array::from_fn(|i| p[i].to_array()[0])
}

type PI = <Portable as Simd>::I;

/// The lanes where `a[i]` is the first of the largest of `a[0..8]` (one `i` per lane).
#[inline(always)]
fn first_max<S: Simd, T: Copy>(
    a: &[T; 8],
    max: impl Fn(T, T) -> T,
    eq: impl Fn(T, T) -> S::M,
) -> [S::M; 8] {
    let m = max(
        max(max(a[0], a[1]), max(a[2], a[3])),
        max(max(a[4], a[5]), max(a[6], a[7])),
    );
    let is = arr8(|i| eq(a[i], m));
    let mut seen = is[0];
    let mut first = is;
    for i in 1..8 {
        first[i] = is[i].and_not(seen);
        seen = seen | is[i];
    }
    first
}

/// The parity fix of `QD8` in integer units of `1/(4q)`: `f` and `E = 4q·e` are the rounded
/// values and residuals before the fix; returns the residuals after it (the fixed coordinate's
/// `f` moves by ±1, so its `E` by ∓4q).
#[inline(always)]
fn qd8_fix_int<S: Simd>(f: [S::I; 8], e: [S::I; 8], sh: u32) -> [S::I; 8] {
    let s = ((f[0] + f[4]) + (f[2] + f[6])) + ((f[1] + f[5]) + (f[3] + f[7]));
    let one = S::I::splat(1);
    let odd = (s & one).eq(one);
    let first = first_max::<S, S::I>(&arr8(|i| e[i].abs()), S::I::max, S::I::eq);
    let (zero, minus, four_q) = (S::I::splat(0), S::I::splat(-1), S::I::splat(1 << sh));
    arr8(|i| {
        let hit = odd & first[i];
        // f + 1 where e >= 0 (e - 4q), f - 1 where e < 0 (e + 4q).
        let step = e[i].gt(minus).select_i(four_q, zero - four_q);
        hit.select_i(e[i] - step, e[i])
    })
}

/// `Σ E²` of 8 integer residuals (exact, see the module doc).
#[inline(always)]
fn sum_sq<S: Simd>(e: &[S::I; 8]) -> S::I {
    let p: [S::I; 8] = arr8(|i| e[i].mul(e[i]));
    ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7]))
}

/// Lane-wise `VDEC` in integers: input codes in `[0, q)`, output `P̂` in quarter-units.
#[inline(always)]
pub(crate) fn vdec_lanes<S: Simd>(c: &[S::I; 8], b: u32) -> [S::I; 8] {
    let y = [
        (((c[0] << 1) - c[1]) << 1) + c[7],
        ((c[1] - c[2]) << 1) + c[7],
        ((c[2] - c[3]) << 1) + c[7],
        ((c[3] - c[4]) << 1) + c[7],
        ((c[4] - c[5]) << 1) + c[7],
        ((c[5] - c[6]) << 1) + c[7],
        (c[6] << 1) + c[7],
        c[7],
    ];
    let one = S::I::splat(1);
    let p: [S::I; 8] = arr8(|i| (y[i] << 1) + one);
    let two_q = S::I::splat(2 << b);
    let sh = b + 2;
    let fa: [S::I; 8] = arr8(|i| (p[i] + two_q) >> sh);
    let ea: [S::I; 8] = arr8(|i| p[i] - (fa[i] << sh));
    let fb: [S::I; 8] = arr8(|i| p[i] >> sh);
    let eb: [S::I; 8] = arr8(|i| (p[i] - two_q) - (fb[i] << sh));
    let ea = qd8_fix_int::<S>(fa, ea, sh);
    let eb = qd8_fix_int::<S>(fb, eb, sh);
    // K = 2·fa (A) or 2·fb + 1 (B) in half-units, and P̂ = P − 2q·K is exactly the fixed
    // residual: P − 4q·fa = ea, (P − 2q) − 4q·fb = eb.
    let use_b = sum_sq::<S>(&ea).gt(sum_sq::<S>(&eb));
    arr8(|i| use_b.select_i(eb[i], ea[i]))
}

/// Lane-wise `QD8` in binary32, bit-identical to [`qd8`].
#[inline(always)]
fn qd8_lanes<S: Simd>(w: &[S::F; 8]) -> ([S::F; 8], [S::F; 8]) {
    let f: [S::F; 8] = arr8(|i| w[i].round_even());
    let e: [S::F; 8] = arr8(|i| w[i] - f[i]);
    // The f are small integers, so this sum is exact in any order.
    let s = ((f[0] + f[4]) + (f[2] + f[6])) + ((f[1] + f[5]) + (f[3] + f[7]));
    let one = S::I::splat(1);
    let odd = (s.to_int_exact() & one).eq(one);
    // |e| has no NaN, so the maximum is exact in any order.
    let first = first_max::<S, S::F>(&arr8(|i| e[i].abs()), S::F::max, S::F::eq);
    let (zero, plus, minus) = (S::F::splat(0.0), S::F::splat(1.0), S::F::splat(-1.0));
    let f: [S::F; 8] = arr8(|i| {
        let step = e[i].ge(zero).select(plus, minus);
        (odd & first[i]).select(f[i] + step, f[i])
    });
    let e = arr8(|i| w[i] - f[i]);
    (f, e)
}

/// Lane-wise `QE8` in binary32, bit-identical to [`qe8`]; returns `Y` in half-units.
#[inline(always)]
pub(crate) fn qe8_lanes<S: Simd>(z: &[S::F; 8]) -> [S::I; 8] {
    let (a, ea) = qd8_lanes::<S>(z);
    let half = S::F::splat(0.5);
    let w: [S::F; 8] = arr8(|i| z[i] - half);
    let (b, eb) = qd8_lanes::<S>(&w);
    let da = fold8_lanes::<S>(&arr8(|i| ea[i] * ea[i]));
    let db = fold8_lanes::<S>(&arr8(|i| eb[i] * eb[i]));
    let use_a = da.le(db);
    // Y = 2a or 2b + 1 = 2·(b + ½), all exact for these small integers.
    arr8(|i| {
        let y = use_a.select(a[i], b[i] + half);
        (y + y).to_int_exact()
    })
}

/// Lane-wise overload test of the encoder, exact and without `VDEC`: whether the codebook point
/// `P = 2Y + 1` (quarter-units) of each lane is the point `VDEC(COORDS(Y) & (q - 1))` gives back.
///
/// The relevant vectors of E8 are its 240 roots `r` (`|r|² = 2`). With `p = P/4`: if
/// `<p, r> < q` for every root, `p` is strictly inside the Voronoi cell of `qE8`, so for the
/// coset representative `p + q·l` that `VDEC` starts from, `l` is the unique nearest point of E8
/// to `x + l` (`x = p/q`), which `QE8` (exact on these dyadic values) returns: valid. If
/// `<p, r> > q` for some root, `l` is not a nearest point and `QE8` cannot return it: overload.
/// In quarter-units the largest `<P, r>` over the roots `±e_i ± e_j` is `t1`, the sum of the two
/// largest `|P_i|`, and over `½(±1)^8` with an even number of minus signs it is `t2/2`, with
/// `t2 = Σ|P_i|` less `2·|P|_min` when an odd number of the (odd, so nonzero) `P_i` are
/// negative.
///
/// On the boundary (`t1 = 4q` or `t2 = 8q`, the other not above), `QE8`'s tie rules decide. They
/// commute with translations by `D8` (no rounding tie, same residuals, same parity), and a
/// translation by `D8 + ½` swaps its two candidates `A` (from `D8`) and `B` (from `D8 + ½`)
/// together with their distances `dA`, `dB`. So `QE8(x + l) = l` exactly when `A(x) = 0` and
/// either `dA < dB` or (`dA = dB` and `l ∈ D8`, where the tie goes to `A`). Here every
/// `|x_i| < 1`, and at most one `|P_j|` exceeds `2q` (two would give `t1 > 4q`):
/// - `A(x) = 0` unless `t1 = 4q` and a coordinate `i < j` has `|P_i| = 4q − |P_j|`: rounding
///   gives `±e_j` (odd sum), and `QD8` undoes it only if `j` is the first largest residual,
///   `|e_j| = 1 − |x_j| >= |e_i| = |x_i|`, strictly for `i < j`;
/// - `dA = |x|² <= dB`, with equality exactly when `t2 = 8q`;
/// - `l ∈ D8` exactly when its coordinates are integers: `l_7 = (Y_7 mod q − Y_7)/q`, so when
///   `floor(Y_7 / q)` is even.
///
/// `tests::cell_valid_agrees_with_vdec` checks it against `VDEC` on every codebook point and its
/// boundary neighbours for `b <= 2`, on sampled boundary points and their neighbours for
/// `b = 3..=8`, and on random nearest points for every `b`.
#[inline(always)]
pub(crate) fn cell_valid<S: Simd>(y: &[S::I; 8], b: u32) -> S::M {
    let one = S::I::splat(1);
    let p: [S::I; 8] = arr8(|i| (y[i] << 1) + one);
    let a: [S::I; 8] = arr8(|i| p[i].abs());
    // The two largest |P_i|, by a tournament.
    let top2 =
        |(h0, l0): (S::I, S::I), (h1, l1): (S::I, S::I)| (h0.max(h1), h0.min(h1).max(l0.max(l1)));
    let pair = |i: usize| (a[i].max(a[i + 1]), a[i].min(a[i + 1]));
    let (h, l) = top2(top2(pair(0), pair(2)), top2(pair(4), pair(6)));
    let t1 = h + l;
    let sum = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
    let min = (a[0].min(a[4]).min(a[2].min(a[6]))).min(a[1].min(a[5]).min(a[3].min(a[7])));
    let neg: [S::I; 8] = arr8(|i| p[i] >> 31);
    let negs = ((neg[0] + neg[4]) + (neg[2] + neg[6])) + ((neg[1] + neg[5]) + (neg[3] + neg[7]));
    let odd = (negs & one).eq(one);
    let t2 = sum - odd.select_i(min + min, S::I::splat(0));
    let (b1, b2) = (S::I::splat(4 << b), S::I::splat(8 << b));
    // On the facet t1 = 4q the largest |P_j| is unique (> 2q > the second largest): a
    // coordinate equal to the second largest before it breaks A(x) = 0.
    let mut seen = a[0].eq(l);
    let mut tie_first = S::M::splat(false);
    for &ai in &a[1..] {
        tie_first = tie_first | (seen & ai.eq(h));
        seen = seen | ai.eq(l);
    }
    let a_zero = b1.gt(t1) | t1.eq(b1).and_not(tie_first);
    let l_in_d8 = ((y[7] >> b) & one).eq(S::I::splat(0));
    let d_ok = b2.gt(t2) | (t2.eq(b2) & l_in_d8);
    a_zero & d_ok
}

/// Lane-wise `COORDS(Y) & (q - 1)`: the code of each lane's block.
#[inline(always)]
pub(crate) fn code_lanes<S: Simd>(y: &[S::I; 8], b: u32) -> [S::I; 8] {
    let c7 = y[7];
    let c6 = (y[6] - c7) >> 1;
    let c5 = ((y[5] - c7) >> 1) + c6;
    let c4 = ((y[4] - c7) >> 1) + c5;
    let c3 = ((y[3] - c7) >> 1) + c4;
    let c2 = ((y[2] - c7) >> 1) + c3;
    let c1 = ((y[1] - c7) >> 1) + c2;
    let c0 = (((y[0] - c7) >> 1) + c1) >> 1;
    let m = S::I::splat((1 << b) - 1);
    [
        c0 & m,
        c1 & m,
        c2 & m,
        c3 & m,
        c4 & m,
        c5 & m,
        c6 & m,
        c7 & m,
    ]
}

#[cfg(test)]
mod tests {
    use super::super::lanes::L;
    use super::super::signs::SplitMix64;
    use super::*;

    fn unif(rng: &mut SplitMix64) -> f32 {
        (rng.next() >> 40) as f32 / 16_777_216.0
    }

    fn is_e8(y: &[i32; 8]) -> bool {
        let par = y[0].rem_euclid(2);
        if y.iter().any(|v| v.rem_euclid(2) != par) {
            return false;
        }
        // y/2 in D8 (all even: sum of y/2 even) or D8 + 1/2 (all odd: sum of (y-1)/2 even).
        let s: i32 = y.iter().map(|v| (v - par) / 2).sum();
        s % 2 == 0
    }

    fn dist2(z: &[f32; 8], y: &[i32; 8]) -> f64 {
        z.iter()
            .zip(y)
            .map(|(&a, &b)| {
                let d = f64::from(a) - f64::from(b) / 2.0;
                d * d
            })
            .sum()
    }

    /// Distance² from z to its nearest E8 point, by brute force over every nearby lattice point.
    fn brute_nearest(z: &[f32; 8]) -> f64 {
        let mut best = f64::INFINITY;
        for par in 0..2 {
            // Each coordinate of the nearest point is within the covering radius (1) of z's.
            let cands: Vec<Vec<i32>> = z
                .iter()
                .map(|&x| {
                    let c = (2.0 * f64::from(x)).round() as i32;
                    (c - 3..=c + 3)
                        .filter(|&v| v.rem_euclid(2) == par)
                        .filter(|&v| (f64::from(v) / 2.0 - f64::from(x)).abs() <= 1.0 + 1e-9)
                        .collect()
                })
                .collect();
            let mut idx = [0usize; 8];
            loop {
                let y: [i32; 8] = core::array::from_fn(|i| cands[i][idx[i]]);
                if is_e8(&y) {
                    best = best.min(dist2(z, &y));
                }
                let mut i = 0;
                while i < 8 {
                    idx[i] += 1;
                    if idx[i] < cands[i].len() {
                        break;
                    }
                    idx[i] = 0;
                    i += 1;
                }
                if i == 8 {
                    break;
                }
            }
        }
        best
    }

    #[test]
    fn qe8_is_nearest_point() {
        let mut rng = SplitMix64::new(5);
        for n in 0..400 {
            let scale = [0.3f32, 1.0, 3.0, 20.0][n % 4];
            let z: [f32; 8] = core::array::from_fn(|_| (unif(&mut rng) - 0.5) * 2.0 * scale);
            let y = qe8(&z);
            assert!(is_e8(&y), "{y:?}");
            let d = dist2(&z, &y);
            let b = brute_nearest(&z);
            assert!(d <= b * (1.0 + 1e-9) + 1e-12, "z={z:?}: got {d}, best {b}");
        }
    }

    #[test]
    fn qe8_ties_follow_the_spec() {
        // z = 0.5 everywhere: A = 1^8 (even sum, dA = 2.0) vs B = 0^8 + 1/2 (dB = 0).
        assert_eq!(qe8(&[0.5; 8]), [1; 8]);
        // A point exactly between 0 and the coset: dA == dB picks A.
        assert_eq!(qe8(&[0.25; 8]), [0; 8]);
        // rint rounds halves to even: (0.5, 0.5, 0, …) rounds to 0, not to (1, 1, 0, …).
        assert_eq!(qe8(&[0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]), [0; 8]);
        assert_eq!(
            qe8(&[1.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
            [4, 0, 0, 0, 0, 0, 0, 0]
        );
        // Odd rounded sum: the parity fix moves the *first* of the two largest residuals.
        assert_eq!(
            qe8(&[0.4, 0.4, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9]),
            [2, 0, 0, 0, 0, 0, 0, 2]
        );
    }

    /// VDEC(code) is a point of E8 + ¼ inside the Voronoi cell of qE8 whose lattice part
    /// re-encodes to `code`, and the integer VDEC agrees with the binary32 one.
    fn check_code(code: [u8; 8], b: u32) {
        let p = vdec(&code, b);
        assert!(
            p.iter().all(|v| v.rem_euclid(2) == 1),
            "b={b} {code:?} -> {p:?}"
        );
        let y = p.map(|v| (v - 1) / 2);
        assert!(is_e8(&y), "b={b} code={code:?} -> {y:?}");
        let back: [u8; 8] = coords(&y).map(|v| (v & ((1 << b) - 1)) as u8);
        assert_eq!(back, code, "b={b} {y:?}");
        assert_eq!(vdec_int(&code, b), p, "int VDEC b={b} code={code:?}");
        // Inside the cell: the nearest point of qE8 to P̂ is the origin.
        let q = (1u32 << b) as f32;
        let z = p.map(|v| v as f32 / (4.0 * q));
        assert_eq!(qe8(&z), [0; 8], "not in the Voronoi cell: b={b} {p:?}");
    }

    fn code_from_index(idx: u64, b: u32) -> [u8; 8] {
        core::array::from_fn(|k| ((idx >> (b as usize * k)) & ((1 << b) - 1)) as u8)
    }

    #[test]
    fn every_code_round_trips_b1_b2_exhaustive() {
        for b in 1..=2u32 {
            for idx in 0..(1u64 << (8 * b)) {
                check_code(code_from_index(idx, b), b);
            }
        }
    }

    #[test]
    fn random_codes_round_trip_b3_to_b8() {
        let mut rng = SplitMix64::new(77);
        for b in 3..=8u32 {
            for _ in 0..20_000 {
                check_code(code_from_index(rng.next(), b), b);
            }
        }
    }

    #[test]
    fn vdec_int_matches_float_on_edge_codes() {
        for b in 1..=8u32 {
            let q = (1u16 << b) - 1;
            for pattern in 0..256u32 {
                // Every mix of 0 and q - 1 per coordinate: the corners of the code box.
                let code: [u8; 8] =
                    core::array::from_fn(|k| if pattern >> k & 1 == 1 { q as u8 } else { 0 });
                assert_eq!(vdec_int(&code, b), vdec(&code, b), "b={b} {code:?}");
            }
        }
    }

    fn check_lanes<S: Simd>() {
        let mut rng = SplitMix64::new(9);
        for round in 0..2000 {
            let scale = [0.5f32, 2.0, 8.0, 40.0][round % 4];
            let z: [[f32; L]; 8] = core::array::from_fn(|_| {
                core::array::from_fn(|_| (unif(&mut rng) - 0.5) * 2.0 * scale)
            });
            let y = qe8_lanes::<S>(&z.map(S::F::from_array)).map(|v| v.to_array());
            for b in 1..=8u32 {
                let codes = code_lanes::<S>(&y.map(S::I::from_array), b);
                let p = vdec_lanes::<S>(&codes, b).map(|v| v.to_array());
                let codes = codes.map(|v| v.to_array());
                for l in 0..L {
                    let zl: [f32; 8] = core::array::from_fn(|i| z[i][l]);
                    let yl = qe8(&zl);
                    assert_eq!(core::array::from_fn::<i32, 8, _>(|i| y[i][l]), yl);
                    let cl: [u8; 8] = coords(&yl).map(|v| (v & ((1 << b) - 1)) as u8);
                    let got: [u8; 8] = core::array::from_fn(|i| codes[i][l] as u8);
                    assert_eq!(got, cl);
                    let got: [i32; 8] = core::array::from_fn(|i| p[i][l]);
                    assert_eq!(got, vdec(&cl, b));
                }
            }
        }
    }

    /// Whether `P` (quarter-units, odd) is its code's codebook point, literally.
    fn literal_valid(p: &[i32; 8], b: u32) -> bool {
        let y = p.map(|v| (v - 1) / 2);
        let code = coords(&y).map(|c| (c & ((1 << b) - 1)) as u8);
        vdec(&code, b) == *p
    }

    /// `cell_valid` on `L` points `P` (quarter-units, odd) at once, against the literal test.
    fn check_valid_points<S: Simd>(pts: &[[i32; 8]], b: u32) -> (usize, usize) {
        let (mut valid, mut invalid) = (0, 0);
        for chunk in pts.chunks(L) {
            let y: [S::I; 8] = core::array::from_fn(|i| {
                S::I::from_array(core::array::from_fn(|l| {
                    (chunk[l.min(chunk.len() - 1)][i] - 1) / 2
                }))
            });
            let got = cell_valid::<S>(&y, b);
            for (l, p) in chunk.iter().enumerate() {
                let want = literal_valid(p, b);
                assert_eq!(got.get(l), want, "b = {b}, P = {p:?}");
                if want {
                    valid += 1;
                } else {
                    invalid += 1;
                }
            }
        }
        (valid, invalid)
    }

    /// The 240 roots of E8, doubled (integers).
    fn roots2() -> Vec<[i32; 8]> {
        let mut r = Vec::new();
        for i in 0..8 {
            for j in i + 1..8 {
                for (si, sj) in [(2, 2), (2, -2), (-2, 2), (-2, -2)] {
                    let mut v = [0; 8];
                    (v[i], v[j]) = (si, sj);
                    r.push(v);
                }
            }
        }
        for m in 0u32..256 {
            if m.count_ones() % 2 == 0 {
                r.push(core::array::from_fn(
                    |i| if m >> i & 1 == 1 { -1 } else { 1 },
                ));
            }
        }
        r
    }

    /// A codebook point `P` (quarter-units) and every other point of its coset on the same
    /// sphere, `P − 4q·r` for the roots `r` with `<P, r> = 4q`: its mates across the cell's faces,
    /// which the overload test must reject. Returns how many mates it pushed.
    fn push_with_mates(pts: &mut Vec<[i32; 8]>, p: [i32; 8], b: u32, roots: &[[i32; 8]]) -> usize {
        let q = 1i32 << b;
        pts.push(p);
        let before = pts.len();
        for r in roots {
            let dot: i32 = p.iter().zip(r).map(|(a, b)| a * b).sum();
            if dot == 8 * q {
                pts.push(core::array::from_fn(|i| p[i] - 2 * q * r[i]));
            }
        }
        pts.len() - before
    }

    /// Every codebook point of `b` bits with its mates (see [`push_with_mates`]).
    fn check_cell_valid_exhaustive<S: Simd>(b: u32) {
        let roots = roots2();
        let mut pts = Vec::new();
        let (mut valid, mut invalid) = (0, 0);
        for idx in 0..1u64 << (8 * b) {
            push_with_mates(&mut pts, vdec(&code_from_index(idx, b), b), b, &roots);
            if pts.len() >= 1 << 16 {
                let (v, n) = check_valid_points::<S>(&pts, b);
                (valid, invalid) = (valid + v, invalid + n);
                pts.clear();
            }
        }
        let (v, n) = check_valid_points::<S>(&pts, b);
        (valid, invalid) = (valid + v, invalid + n);
        // Exactly the codebook points are valid (each point was checked against VDEC above),
        // and the boundary is exercised.
        assert_eq!(valid, 1 << (8 * b), "{valid} valid, {invalid} invalid");
        assert!(invalid > valid / 4, "{valid} valid, {invalid} invalid");
    }

    /// Random codebook points of 3 to 8 bits on the cell's boundary, with their mates.
    fn check_cell_valid_boundary_sampled<S: Simd>() {
        let roots = roots2();
        let mut rng = SplitMix64::new(7);
        for b in 3..=8u32 {
            let (mut pts, mut on_boundary) = (Vec::new(), 0);
            // Fewer points lie on the boundary as b grows (about 3 % at b = 6).
            for _ in 0..100_000 {
                if on_boundary == 150 {
                    break;
                }
                let code: [u8; 8] = core::array::from_fn(|_| (rng.next() >> (64 - b)) as u8);
                let mut with = Vec::new();
                if push_with_mates(&mut with, vdec(&code, b), b, &roots) > 0 {
                    on_boundary += 1;
                    pts.extend(with);
                }
            }
            let (valid, invalid) = check_valid_points::<S>(&pts, b);
            assert_eq!(valid, on_boundary, "b = {b}: one valid point per coset");
            assert!(
                on_boundary == 150 && invalid >= on_boundary,
                "b = {b}: {on_boundary}"
            );
        }
    }

    /// Random nearest points at scales that overload often, for every `b`.
    fn check_cell_valid_random<S: Simd>() {
        let mut rng = SplitMix64::new(99);
        let (mut valid, mut invalid) = (0, 0);
        for round in 0..8000 {
            let b = 1 + (round % 8) as u32;
            let q = (1 << b) as f32;
            let scale = [0.5, 1.0, 1.6][round % 3] * q;
            let z: [[f32; L]; 8] =
                core::array::from_fn(|_| core::array::from_fn(|_| (unif(&mut rng) - 0.5) * scale));
            let y = qe8_lanes::<S>(&z.map(S::F::from_array)).map(|v| v.to_array());
            let pts: Vec<[i32; 8]> = (0..L)
                .map(|l| core::array::from_fn(|i| 2 * y[i][l] + 1))
                .collect();
            let (v, n) = check_valid_points::<S>(&pts, b);
            (valid, invalid) = (valid + v, invalid + n);
        }
        assert!(valid > 4000 && invalid > 4000, "{valid} {invalid}");
    }

    #[test]
    fn cell_valid_agrees_with_vdec() {
        check_cell_valid_random::<Portable>();
        for b in 1..=2 {
            check_cell_valid_exhaustive::<Portable>(b);
        }
        check_cell_valid_boundary_sampled::<Portable>();
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            check_cell_valid_random::<super::super::lanes::avx2::Avx2>();
            check_cell_valid_exhaustive::<super::super::lanes::avx2::Avx2>(2);
            check_cell_valid_boundary_sampled::<super::super::lanes::avx2::Avx2>();
        }
    }

    #[test]
    fn lanes_match_literal() {
        check_lanes::<Portable>();
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            check_lanes::<super::super::lanes::avx2::Avx2>();
        }
    }
}
