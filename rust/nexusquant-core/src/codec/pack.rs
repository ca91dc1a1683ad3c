//! Bit packing of codes (`docs/codec.md` §8).
//!
//! A block's 8 codes of `b` bits form the `8b`-bit integer `Σ code[k] << (b·k)`, stored as `b`
//! bytes little-endian; blocks follow each other, so a head-vector's bit stream is LSB-first:
//!
//! ```text
//! b = 3, one block (24 bits = 3 bytes):
//! bit:   23 … 21 20 … 18 17 … 15 14 … 12 11 … 9  8 … 6  5 … 3  2 … 0
//! code:  [  c7  ][  c6  ][  c5  ][  c4  ][  c3  ][  c2  ][  c1  ][  c0  ]
//! byte0 = bits 0‥7   = c0 | c1<<3 | (c2 & 3)<<6
//! byte1 = bits 8‥15  = c2>>2 | c3<<1 | c4<<4 | (c5 & 1)<<7
//! byte2 = bits 16‥23 = c5>>1 | c6<<2 | c7<<5
//! ```
//!
//! Block `j` of a head-vector is bytes `[b·j, b·j + b)` of its `d·b/8` code bytes.

/// The `8b`-bit word of one block: `Σ code[k] << (b·k)`. Codes must be below `2^b`.
#[inline(always)]
pub fn block_word(codes: &[u8; 8], b: u32) -> u64 {
    codes
        .iter()
        .enumerate()
        .fold(0u64, |w, (k, &c)| w | (u64::from(c) << (b as usize * k)))
}

/// The 8 codes of a block's word.
#[inline(always)]
pub fn word_codes(word: u64, b: u32) -> [u8; 8] {
    let mask = (1u64 << b) - 1;
    core::array::from_fn(|k| ((word >> (b as usize * k)) & mask) as u8)
}

/// Packs `codes` (a multiple of 8 long, each below `2^b`) into `out` (`codes.len()·b/8` bytes).
///
/// # Panics
/// When the lengths disagree or `b` is not in `1..=8`.
pub fn pack(codes: &[u8], b: u32, out: &mut [u8]) {
    assert!((1..=8).contains(&b), "bits must be in 1..=8, got {b}");
    assert!(codes.len() % 8 == 0 && out.len() == codes.len() / 8 * b as usize);
    let bb = b as usize;
    for (block, dst) in codes.chunks_exact(8).zip(out.chunks_exact_mut(bb)) {
        let block: &[u8; 8] = block.try_into().expect("chunks of 8");
        dst.copy_from_slice(&block_word(block, b).to_le_bytes()[..bb]);
    }
}

/// Unpacks `bytes` (`codes.len()·b/8` of them) into `codes` (a multiple of 8 long).
///
/// # Panics
/// When the lengths disagree or `b` is not in `1..=8`.
pub fn unpack(bytes: &[u8], b: u32, codes: &mut [u8]) {
    assert!((1..=8).contains(&b), "bits must be in 1..=8, got {b}");
    assert!(codes.len() % 8 == 0 && bytes.len() == codes.len() / 8 * b as usize);
    let bb = b as usize;
    for (src, block) in bytes.chunks_exact(bb).zip(codes.chunks_exact_mut(8)) {
        let mut w = [0u8; 8];
        w[..bb].copy_from_slice(src);
        block.copy_from_slice(&word_codes(u64::from_le_bytes(w), b));
    }
}

#[cfg(test)]
mod tests {
    use super::super::signs::SplitMix64;
    use super::*;

    #[test]
    fn spec_drawing_b3() {
        let c = [1u8, 2, 3, 4, 5, 6, 7, 0];
        let mut out = [0u8; 3];
        pack(&c, 3, &mut out);
        let byte0 = c[0] | c[1] << 3 | (c[2] & 3) << 6;
        let byte1 = c[2] >> 2 | c[3] << 1 | c[4] << 4 | (c[5] & 1) << 7;
        let byte2 = c[5] >> 1 | c[6] << 2 | c[7] << 5;
        assert_eq!(out, [byte0, byte1, byte2]);
    }

    #[test]
    fn round_trip_every_width() {
        let mut rng = SplitMix64::new(1);
        for b in 1..=8u32 {
            for blocks in [1usize, 2, 3, 16, 128] {
                let codes: Vec<u8> = (0..blocks * 8)
                    .map(|_| (rng.next() & ((1 << b) - 1)) as u8)
                    .collect();
                let mut bytes = vec![0u8; blocks * b as usize];
                pack(&codes, b, &mut bytes);
                let mut back = vec![0u8; codes.len()];
                unpack(&bytes, b, &mut back);
                assert_eq!(back, codes, "b={b}");
                // LSB-first bit stream: code i occupies bits [b·i, b·i + b).
                for (i, &c) in codes.iter().enumerate() {
                    let mut v = 0u8;
                    for t in 0..b as usize {
                        let bit = b as usize * i + t;
                        v |= ((bytes[bit / 8] >> (bit % 8)) & 1) << t;
                    }
                    assert_eq!(v, c, "b={b} code {i}");
                }
            }
        }
    }

    #[test]
    fn word_codes_inverts_block_word() {
        for b in 1..=8u32 {
            let c: [u8; 8] = core::array::from_fn(|k| ((k as u32 * 37 + 5) & ((1 << b) - 1)) as u8);
            assert_eq!(word_codes(block_word(&c, b), b), c);
        }
    }
}
