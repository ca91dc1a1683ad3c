//! The rotation's random signs: `splitmix64` (`docs/codec.md` §1).

/// The `splitmix64` generator of `docs/codec.md` §1.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose state starts at `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64-bit output.
    #[allow(clippy::should_implement_trait)] // an infinite stream, not an Iterator of Options
    pub fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The first `count` sign bits of `seed`: element `k` is `true` when sign number `k` is −1
/// (bit `k mod 64` of output number `k div 64`).
pub fn sign_bits(seed: u64, count: usize) -> Vec<bool> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(count);
    let mut word = 0u64;
    for k in 0..count {
        if k % 64 == 0 {
            word = rng.next();
        }
        out.push((word >> (k % 64)) & 1 == 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_outputs() {
        // Outputs of the published splitmix64 for seed 0 and seed 1234567.
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(g.next(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(g.next(), 0x06C4_5D18_8009_454F);
        let mut g = SplitMix64::new(1_234_567);
        assert_eq!(g.next(), 6_457_827_717_110_365_317);
        assert_eq!(g.next(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn sign_bits_follow_output_bits() {
        let bits = sign_bits(42, 200);
        let mut g = SplitMix64::new(42);
        let words = [g.next(), g.next(), g.next(), g.next()];
        for (k, &b) in bits.iter().enumerate() {
            assert_eq!(b, (words[k / 64] >> (k % 64)) & 1 == 1, "sign {k}");
        }
        // Roughly half of the signs are negative.
        let neg = bits.iter().filter(|&&b| b).count();
        assert!((70..130).contains(&neg), "{neg}");
    }
}
