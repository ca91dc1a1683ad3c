//! `FOLD`, the canonical sum of `docs/codec.md` §3: pad with `+0.0` to a power of two, then
//! repeatedly add the upper half onto the lower half (a warp's XOR-shuffle reduction order).

use super::lanes::{LaneF, Simd};

/// `FOLD(a)`, literally: the reference for the lane version. `FOLD` of nothing is `+0.0`.
pub fn fold(a: &[f32]) -> f32 {
    let mut n2 = a.len().next_power_of_two();
    let mut buf = vec![0.0f32; n2];
    buf[..a.len()].copy_from_slice(a);
    while n2 > 1 {
        n2 /= 2;
        for i in 0..n2 {
            buf[i] += buf[i + n2];
        }
    }
    buf[0]
}

/// `FOLD` of 8 values: `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`.
#[inline(always)]
pub(crate) fn fold8_lanes<S: Simd>(a: &[S::F; 8]) -> S::F {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// `FOLD` of the `n >= 2` lane vectors `s[..n]`, per lane, computed in place: `s` must be at
/// least `n.next_power_of_two()` long and its contents are overwritten. A padding `+0.0` is
/// still added where the spec adds it (it turns `-0.0` into `+0.0`).
///
/// The elements are written to `s` by the caller's own loop rather than produced by a closure:
/// a closure is a function of its own without the caller's target features, and when the
/// optimiser declines to inline it every SIMD operation inside becomes a call.
#[inline(always)]
pub(crate) fn fold_lanes<S: Simd>(s: &mut [S::F], n: usize) -> S::F {
    let half = n.next_power_of_two() / 2;
    let (lo, hi) = s[..2 * half].split_at_mut(half);
    let (full, padded) = lo.split_at_mut(n - half);
    for (a, b) in full.iter_mut().zip(&hi[..n - half]) {
        *a = *a + *b;
    }
    for a in padded {
        *a = *a + S::F::splat(0.0);
    }
    halve::<S>(lo)
}

/// The halving steps of `FOLD` on `s` (a power of two long, at least 1): upper half onto lower
/// half until one vector is left.
#[inline(always)]
fn halve<S: Simd>(s: &mut [S::F]) -> S::F {
    let mut half = s.len();
    while half > 1 {
        half /= 2;
        let (lo, hi) = s[..2 * half].split_at_mut(half);
        for (a, b) in lo.iter_mut().zip(hi.iter()) {
            *a = *a + *b;
        }
    }
    s[0]
}

#[cfg(test)]
mod tests {
    use super::super::lanes::{Portable, L};
    use super::*;

    #[test]
    fn fold_order_is_the_spec_order() {
        // 1e8 + 1 - 1e8 depends on the order: FOLD adds a[i] + a[i + 2] first.
        let a = [1.0e8f32, 1.0, -1.0e8, 1.0];
        assert_eq!(fold(&a), (1.0e8 + -1.0e8) + (1.0 + 1.0));
        assert_eq!(fold(&[]), 0.0);
        assert_eq!(fold(&[-0.0]).to_bits(), (-0.0f32).to_bits());
        // Padding adds +0.0, which turns a -0.0 sum into +0.0.
        assert_eq!(fold(&[-0.0, -0.0, -0.0]).to_bits(), 0);
        assert_eq!(
            fold(&[-0.0, -0.0, -0.0, -0.0]).to_bits(),
            (-0.0f32).to_bits()
        );
    }

    fn check_lanes<S: Simd>() {
        let vals: Vec<f32> = (0..1024)
            .map(|i| {
                let big = if i % 3 == 0 { 1e4 } else { 0.0 };
                ((i * 7919 % 1000) as f32 - 500.0) * 1.37e-3 + big
            })
            .collect();
        let mut scratch = vec![S::F::splat(0.0); 1024];
        let elem = |i: usize| -> [f32; L] {
            core::array::from_fn(|l| vals[(i + l) % 1024] * (l as f32 + 1.0))
        };
        for n in 2..=1024 {
            for (i, x) in scratch[..n].iter_mut().enumerate() {
                *x = S::F::from_array(elem(i));
            }
            let got = fold_lanes::<S>(&mut scratch, n).to_array();
            for (l, g) in got.iter().enumerate() {
                let col: Vec<f32> = (0..n).map(|i| elem(i)[l]).collect();
                assert_eq!(g.to_bits(), fold(&col).to_bits(), "n={n} lane={l}");
            }
        }
        scratch[..3].fill(S::F::splat(-0.0));
        let z = fold_lanes::<S>(&mut scratch, 3);
        assert_eq!(z.to_array()[0].to_bits(), 0);
        let e: [S::F; 8] = core::array::from_fn(|i| S::F::splat(vals[i * 100]));
        let want = fold(&core::array::from_fn::<f32, 8, _>(|i| vals[i * 100]));
        assert_eq!(fold8_lanes::<S>(&e).to_array()[0], want);
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
