//! `FOLD`, the canonical sum of `docs/codec.md` §3: pad with `+0.0` to a power of two, then
//! repeatedly add the upper half onto the lower half (a warp's XOR-shuffle reduction order).

use super::lanes::{arr8, LaneF, Simd};

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

/// `FOLD` of `n` values (`n` a multiple of 8) computed block by block, 8 coordinates per block:
/// the same additions as the literal `FOLD`, in registers instead of a buffer.
///
/// `FOLD` over `n2` values splits into `FOLD` of the even-indexed values plus `FOLD` of the
/// odd-indexed ones, recursively. Split three times, it is [`fold8_lanes`] of `G[r]`, the `FOLD`
/// of `a[r], a[r + 8], a[r + 16], …` over the `n2/8` blocks; and `FOLD` over blocks is the
/// balanced pairwise tree of the blocks taken in bit-reversed order. So the blocks are pushed in
/// the order [`block_order`] gives, each one merged with the pending left neighbours of its
/// subtree as soon as it completes them (a binary counter), and `finish` applies
/// [`fold8_lanes`]. Padding blocks (index `>= n/8`) must be pushed as `+0.0`: they are added
/// where the spec adds them, so a `-0.0` sum still becomes `+0.0`.
pub(crate) struct BlockFold<S: Simd> {
    /// `levels[k]`: the pending sum of a complete subtree of `2^k` blocks.
    levels: [[S::F; 8]; 8],
}

impl<S: Simd> BlockFold<S> {
    #[inline(always)]
    pub(crate) fn new() -> Self {
        BlockFold {
            levels: [[S::F::splat(0.0); 8]; 8],
        }
    }

    /// Adds the `t`-th block of [`block_order`] (`t` counts from 0, one call per `t`).
    #[inline(always)]
    pub(crate) fn push(&mut self, t: usize, block: [S::F; 8]) {
        let mut cur = block;
        let mut level = 0;
        while t >> level & 1 == 1 {
            let left = &self.levels[level];
            cur = arr8(|i| left[i] + cur[i]);
            level += 1;
        }
        self.levels[level] = cur;
    }

    /// The `FOLD` once all `blocks` (a power of two, at most 128) are pushed.
    #[inline(always)]
    pub(crate) fn finish(&self, blocks: usize) -> S::F {
        fold8_lanes::<S>(&self.levels[blocks.trailing_zeros() as usize])
    }
}

/// The order in which [`BlockFold`] takes the blocks of a `FOLD` over `n` values (`n` a
/// multiple of 8, `8 <= n <= 1024`): the block indices `0..n2/8` bit-reversed, where `n2` is
/// `n` padded to a power of two. Entries `>= n/8` are padding blocks.
pub(crate) fn block_order(n: usize) -> Vec<usize> {
    debug_assert!(n % 8 == 0 && (8..=1024).contains(&n));
    let blocks = n.next_power_of_two() / 8;
    let bits = blocks.trailing_zeros();
    (0..blocks)
        .map(|t| {
            if bits == 0 {
                0
            } else {
                t.reverse_bits() >> (usize::BITS - bits)
            }
        })
        .collect()
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
        let elem = |i: usize| -> [f32; L] {
            core::array::from_fn(|l| vals[(i + l) % 1024] * (l as f32 + 1.0))
        };
        let block_fold = |n: usize, elem: &dyn Fn(usize) -> [f32; L]| {
            let order = block_order(n);
            let mut acc = BlockFold::<S>::new();
            for (t, &j) in order.iter().enumerate() {
                let block: [S::F; 8] = core::array::from_fn(|i| {
                    if j < n / 8 {
                        S::F::from_array(elem(8 * j + i))
                    } else {
                        S::F::splat(0.0)
                    }
                });
                acc.push(t, block);
            }
            acc.finish(order.len()).to_array()
        };
        for n in (8..=1024).step_by(8) {
            let got = block_fold(n, &elem);
            for (l, g) in got.iter().enumerate() {
                let col: Vec<f32> = (0..n).map(|i| elem(i)[l]).collect();
                assert_eq!(g.to_bits(), fold(&col).to_bits(), "n={n} lane={l}");
            }
        }
        // Negative zeros: padded lengths turn the sum into +0.0, full ones keep -0.0.
        let neg = |_: usize| [-0.0f32; L];
        assert_eq!(block_fold(24, &neg)[0].to_bits(), 0);
        assert_eq!(block_fold(32, &neg)[0].to_bits(), (-0.0f32).to_bits());
        let e: [S::F; 8] = core::array::from_fn(|i| S::F::splat(vals[i * 100]));
        let want = fold(&core::array::from_fn::<f32, 8, _>(|i| vals[i * 100]));
        assert_eq!(fold8_lanes::<S>(&e).to_array()[0], want);
    }

    #[test]
    fn block_order_is_bit_reversed() {
        assert_eq!(block_order(8), vec![0]);
        assert_eq!(block_order(32), vec![0, 2, 1, 3]);
        assert_eq!(
            block_order(80),
            vec![0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15]
        );
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
