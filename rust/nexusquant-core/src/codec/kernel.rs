//! Runtime CPU dispatch of the batched kernels.
//!
//! The kernels are plain Rust written lane-wise (see [`lanes`](super::lanes)); here each is
//! instantiated twice: once for the baseline target the crate is built for (SSE2 on x86_64, so
//! that abi3 wheels run everywhere) and once with AVX2 and F16C enabled, chosen at run time.
//! FMA is deliberately not enabled, and Rust never contracts `a * b + c` on its own, so both
//! instantiations compute the spec's exact binary32 operations and agree bit for bit.

use super::attend::{scores_rows as scores_impl, values_rows as values_impl};
use super::decode::decode_rows as decode_impl;
use super::element::Element;
use super::encode::encode_rows as encode_impl;
use super::lanes::Portable;
use super::scalar::scalar_rows as scalar_impl;
use super::Codec;

/// The instruction set the batched kernels use on this CPU: `"avx2+f16c"` or `"baseline"`.
pub fn simd_level() -> &'static str {
    if has_avx2() {
        "avx2+f16c"
    } else {
        "baseline"
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx2() -> bool {
    false
}

/// Defines a dispatching entry point `$name` for the generic kernel `$imp::<S, …>`.
macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident <$($g:ident: $b:path),*> ($($arg:ident: $ty:ty),*) => $imp:ident) => {
        $(#[$doc])*
        pub(crate) fn $name<$($g: $b),*>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                // SAFETY: the CPU supports AVX2 and F16C, checked just above.
                unsafe { avx2::$name($($arg),*) };
                return;
            }
            $imp::<Portable, $($g),*>($($arg),*)
        }
    };
}

dispatch!(
    /// Batched encode ([`encode_impl`]) with the best instruction set available.
    encode_rows<T: Element>(codec: &Codec, x: &[T], codes: &mut [u8], scales: &mut [u16])
        => encode_impl
);

dispatch!(
    /// Batched decode ([`decode_impl`]) with the best instruction set available.
    decode_rows<T: Element>(
        codec: &Codec,
        codes: &[u8],
        scales: &[u16],
        out: &mut [T],
        centre: Option<&[f32]>
    ) => decode_impl
);

dispatch!(
    /// Batched scalar baseline ([`scalar_impl`]) with the best instruction set available.
    scalar_rows<>(codec: &Codec, x: &[f32], out: &mut [f32]) => scalar_impl
);

dispatch!(
    /// Scores of coded keys ([`scores_impl`]) with the best instruction set available.
    scores_rows<>(codec: &Codec, rq: &[f32], codes: &[u8], scales: &[u16], out: &mut [f32])
        => scores_impl
);

dispatch!(
    /// Rotated value sums ([`values_impl`]) with the best instruction set available.
    values_rows<>(codec: &Codec, weights: &[f32], codes: &[u8], scales: &[u16], out: &mut [f32])
        => values_impl
);

/// The AVX2 + F16C instantiations: the only place kernels run with the [`Avx2`] backend.
/// Callers must check the CPU first.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::lanes::avx2::Avx2;
    use super::*;

    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn encode_rows<T: Element>(
        codec: &Codec,
        x: &[T],
        codes: &mut [u8],
        scales: &mut [u16],
    ) {
        encode_impl::<Avx2, T>(codec, x, codes, scales);
    }

    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn decode_rows<T: Element>(
        codec: &Codec,
        codes: &[u8],
        scales: &[u16],
        out: &mut [T],
        centre: Option<&[f32]>,
    ) {
        decode_impl::<Avx2, T>(codec, codes, scales, out, centre);
    }

    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn scores_rows(
        codec: &Codec,
        rq: &[f32],
        codes: &[u8],
        scales: &[u16],
        out: &mut [f32],
    ) {
        scores_impl::<Avx2>(codec, rq, codes, scales, out);
    }

    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn values_rows(
        codec: &Codec,
        weights: &[f32],
        codes: &[u8],
        scales: &[u16],
        out: &mut [f32],
    ) {
        values_impl::<Avx2>(codec, weights, codes, scales, out);
    }

    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn scalar_rows(codec: &Codec, x: &[f32], out: &mut [f32]) {
        scalar_impl::<Avx2>(codec, x, out);
    }
}
