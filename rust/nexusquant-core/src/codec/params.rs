//! Validated codec parameters and the codec's error type.

use thiserror::Error;

/// Smallest accepted head dimension.
pub const MIN_HEAD_DIM: usize = 8;
/// Largest accepted head dimension.
pub const MAX_HEAD_DIM: usize = 1024;
/// Smallest accepted bit width.
pub const MIN_BITS: u32 = 1;
/// Largest accepted bit width.
pub const MAX_BITS: u32 = 8;

/// Every way a codec call can be refused. Messages name the argument and the allowed values.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// `head_dim` is not a multiple of 8 in `[8, 1024]`.
    #[error("head_dim must be a multiple of 8 in [8, 1024], got {got}")]
    HeadDim {
        /// The rejected value.
        got: usize,
    },
    /// `bits` is outside `1..=8`.
    #[error("bits must be in 1..=8 (2, 3, 4 tuned), got {got}")]
    Bits {
        /// The rejected value (signed, so that any caller's value can be reported).
        got: i64,
    },
    /// A flat input buffer does not hold a whole number of head-vectors.
    #[error("{name} must hold whole head-vectors: its length must be a multiple of head_dim = {head_dim}, got {got}")]
    PartialVector {
        /// The argument at fault.
        name: &'static str,
        /// The head dimension its length must be a multiple of.
        head_dim: usize,
        /// The length received.
        got: usize,
    },
    /// A buffer's length does not agree with the number of head-vectors and the parameters.
    #[error("{name} must have length {expected} ({rule}), got {got}")]
    Length {
        /// The argument at fault.
        name: &'static str,
        /// The rule the length follows, e.g. `"N × head_dim·bits/8 bytes"`.
        rule: &'static str,
        /// The length required.
        expected: usize,
        /// The length received.
        got: usize,
    },
    /// A number of clipping candidates for the encoder outside `1..=3`.
    #[error("candidates must be 1, 2 or 3 (the clipping factors the encoder tries), got {got}")]
    Candidates {
        /// The rejected value (signed, so that any caller's value can be reported).
        got: i64,
    },
    /// An explicit thread count outside `1..=1024`.
    #[error("threads must be in 1..=1024 (or unset for all cores), got {got}")]
    Threads {
        /// The rejected value.
        got: i64,
    },
    /// The operating system refused to start the worker threads.
    #[error("could not start a pool of {threads} threads: {reason}")]
    ThreadPool {
        /// The pool size asked for.
        threads: usize,
        /// What the operating system said.
        reason: String,
    },
}

/// The parameters of the codec (`docs/codec.md`), validated on construction.
///
/// A value of this type always holds a `head_dim` that is a multiple of 8 in `[8, 1024]` and a
/// `bits` in `1..=8`; every `seed` is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodecParams {
    head_dim: usize,
    bits: u32,
    seed: u64,
}

impl CodecParams {
    /// Validates and builds the parameters.
    ///
    /// # Errors
    /// [`CodecError::HeadDim`] or [`CodecError::Bits`] when a value is out of range.
    pub fn new(head_dim: usize, bits: u32, seed: u64) -> Result<Self, CodecError> {
        if !(MIN_HEAD_DIM..=MAX_HEAD_DIM).contains(&head_dim) || head_dim % 8 != 0 {
            return Err(CodecError::HeadDim { got: head_dim });
        }
        if !(MIN_BITS..=MAX_BITS).contains(&bits) {
            return Err(CodecError::Bits {
                got: i64::from(bits),
            });
        }
        Ok(Self {
            head_dim,
            bits,
            seed,
        })
    }

    /// The number of values in one head-vector, `d`.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Bits per element, `b`.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// The seed of the rotation's random signs.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Code bytes per head-vector: `d·b/8`.
    pub fn code_bytes(&self) -> usize {
        self.head_dim * self.bits as usize / 8
    }

    /// The number of 8-value blocks in a head-vector: `d/8`.
    pub fn blocks(&self) -> usize {
        self.head_dim / 8
    }
}

/// `ALPHA[b]` of `docs/codec.md` §6: the three candidate clipping factors for `b` bits, each the
/// binary32 value of the decimal literal. Row `b - 1` holds bit width `b`.
pub(crate) const ALPHA: [[f32; 3]; 8] = [
    [0.655, 0.5895, 0.7205],
    [1.01, 0.909, 1.111],
    [1.765, 1.5885, 1.9415],
    [3.33, 2.997, 3.663],
    [6.03, 5.427, 6.633],
    [11.6, 10.44, 12.76],
    [22.7, 20.43, 24.97],
    [42.7, 38.43, 46.97],
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_valid_combination() {
        for d in (8..=1024).step_by(8) {
            for b in 1..=8 {
                let p = CodecParams::new(d, b, 7).unwrap();
                assert_eq!(p.code_bytes() * 8, d * b as usize);
                assert_eq!(p.blocks() * 8, d);
                assert_eq!((p.head_dim(), p.bits(), p.seed()), (d, b, 7));
            }
        }
    }

    #[test]
    fn head_dim_error_names_argument_and_range() {
        for d in [0, 4, 12, 100, 1025, 1032, 2048] {
            let e = CodecParams::new(d, 3, 0).unwrap_err();
            assert_eq!(e, CodecError::HeadDim { got: d });
            assert_eq!(
                e.to_string(),
                format!("head_dim must be a multiple of 8 in [8, 1024], got {d}")
            );
        }
    }

    #[test]
    fn bits_error_names_argument_and_range() {
        for b in [0, 9, 16] {
            let e = CodecParams::new(128, b, 0).unwrap_err();
            assert_eq!(e, CodecError::Bits { got: i64::from(b) });
            assert_eq!(
                e.to_string(),
                format!("bits must be in 1..=8 (2, 3, 4 tuned), got {b}")
            );
        }
    }

    #[test]
    fn alpha_table_is_the_spec_products() {
        let alpha = [0.655f32, 1.01, 1.765, 3.33, 6.03, 11.6, 22.7, 42.7];
        for (row, a) in ALPHA.iter().zip(alpha) {
            assert_eq!(row[0], a);
            // The decimal literals are the products rounded to the printed digits.
            assert!((row[1] - a * 0.9).abs() <= 1e-5 * a);
            assert!((row[2] - a * 1.1).abs() <= 1e-5 * a);
        }
    }
}
