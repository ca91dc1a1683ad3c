//! Every `CodecError` variant, raised by the public API, with its message.

use half::f16;
use nexusquant_core::codec::{
    decode_into, decode_vector, default_candidates, encode_into, encode_vector, scalar_roundtrip,
    Codec, CodecError, CodecParams, Threads,
};

fn params() -> CodecParams {
    CodecParams::new(64, 3, 1).unwrap()
}

#[test]
fn head_dim() {
    let e = CodecParams::new(100, 3, 0).unwrap_err();
    assert_eq!(e, CodecError::HeadDim { got: 100 });
    assert_eq!(
        e.to_string(),
        "head_dim must be a multiple of 8 in [8, 1024], got 100"
    );
    assert!(CodecParams::new(0, 3, 0).is_err() && CodecParams::new(1032, 3, 0).is_err());
}

#[test]
fn bits() {
    let e = CodecParams::new(128, 9, 0).unwrap_err();
    assert_eq!(e, CodecError::Bits { got: 9 });
    assert_eq!(
        e.to_string(),
        "bits must be in 1..=8 (2, 3, 4 tuned), got 9"
    );
    assert_eq!(
        CodecParams::new(128, 0, 0).unwrap_err(),
        CodecError::Bits { got: 0 }
    );
}

#[test]
fn candidates() {
    for c in [0, 4, -1] {
        let e = Codec::new(params()).with_candidates(c).unwrap_err();
        assert_eq!(e, CodecError::Candidates { got: c });
        assert_eq!(
            e.to_string(),
            format!(
                "candidates must be 1, 2 or 3 (the clipping factors the encoder tries), got {c}"
            )
        );
    }
    assert_eq!(Codec::new(params()).candidates(), default_candidates(3));
    assert_eq!(
        (1..=8).map(default_candidates).collect::<Vec<_>>(),
        [1, 1, 1, 1, 3, 3, 3, 3]
    );
    assert_eq!(
        Codec::new(params())
            .with_candidates(3)
            .unwrap()
            .candidates(),
        3
    );
}

#[test]
fn partial_vector() {
    let p = params();
    let x = vec![0f32; 65];
    let e = encode_into(&p, &x, &mut [0; 24], &mut [0; 1], Threads::All).unwrap_err();
    assert_eq!(
        e,
        CodecError::PartialVector {
            name: "x",
            head_dim: 64,
            got: 65
        }
    );
    assert_eq!(
        e.to_string(),
        "x must hold whole head-vectors: its length must be a multiple of head_dim = 64, got 65"
    );
    let mut out = vec![f16::ZERO; 63];
    let e = decode_into(&p, &[0; 24], &[0], &mut out, Threads::All).unwrap_err();
    assert!(matches!(e, CodecError::PartialVector { name: "out", .. }));
    let e = scalar_roundtrip(&p, &[0.0; 10], &mut [0.0; 10], Threads::All).unwrap_err();
    assert!(matches!(e, CodecError::PartialVector { name: "x", .. }));
}

#[test]
fn length() {
    let p = params();
    let x = vec![0f32; 2 * 64];
    let e = encode_into(&p, &x, &mut [0; 47], &mut [0; 2], Threads::All).unwrap_err();
    assert_eq!(
        e.to_string(),
        "codes_out must have length 48 (N × head_dim·bits/8 bytes), got 47"
    );
    let e = encode_into(&p, &x, &mut [0; 48], &mut [0; 3], Threads::All).unwrap_err();
    assert_eq!(
        e,
        CodecError::Length {
            name: "scales_out",
            rule: "N, one fp16 scale per head-vector",
            expected: 2,
            got: 3
        }
    );
    let mut out = vec![0f32; 2 * 64];
    let e = decode_into(&p, &[0; 49], &[0; 2], &mut out, Threads::All).unwrap_err();
    assert!(matches!(e, CodecError::Length { name: "codes", .. }));
    let e = decode_into(&p, &[0; 48], &[0; 1], &mut out, Threads::All).unwrap_err();
    assert!(matches!(e, CodecError::Length { name: "scales", .. }));
    let e = scalar_roundtrip(&p, &x, &mut [0.0; 64], Threads::All).unwrap_err();
    assert!(matches!(e, CodecError::Length { name: "out", .. }));
    let codec = Codec::new(p);
    let e = encode_vector(&codec, &[0.0; 63], &mut [0; 24]).unwrap_err();
    assert!(matches!(e, CodecError::Length { name: "x", .. }));
    let e = encode_vector(&codec, &[0.0; 64], &mut [0; 23]).unwrap_err();
    assert!(matches!(
        e,
        CodecError::Length {
            name: "codes_out",
            ..
        }
    ));
    let e = decode_vector(&codec, &[0; 24], 0, &mut [0.0; 65]).unwrap_err();
    assert!(matches!(e, CodecError::Length { name: "out", .. }));
    let e = decode_vector(&codec, &[0; 25], 0, &mut [0.0; 64]).unwrap_err();
    assert!(matches!(e, CodecError::Length { name: "codes", .. }));
}

#[test]
fn threads() {
    let p = params();
    let x = vec![0f32; 64];
    for n in [0usize, 1025] {
        let e = encode_into(&p, &x, &mut [0; 24], &mut [0; 1], Threads::Count(n)).unwrap_err();
        assert_eq!(e, CodecError::Threads { got: n as i64 });
        assert_eq!(
            e.to_string(),
            format!("threads must be in 1..=1024 (or unset for all cores), got {n}")
        );
    }
    assert!(matches!(
        Threads::from_count(Some(-3)),
        Err(CodecError::Threads { got: -3 })
    ));
}

#[test]
fn thread_pool_message() {
    // The OS refusing threads cannot be provoked portably; the message is checked as built.
    let e = CodecError::ThreadPool {
        threads: 4,
        reason: "Resource temporarily unavailable".into(),
    };
    assert_eq!(
        e.to_string(),
        "could not start a pool of 4 threads: Resource temporarily unavailable"
    );
}
