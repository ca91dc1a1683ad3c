//! The batched, multi-threaded codec against the literal per-vector spec implementation.

use half::{bf16, f16};
use nexusquant_core::codec::signs::SplitMix64;
use nexusquant_core::codec::{
    decode_vector, encode_vector, Codec, CodecParams, Element, Threads, NAN_SCALE,
};

/// Gaussian-ish values (sum of uniforms), scaled.
fn gaussian(rng: &mut SplitMix64, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let s: f32 = (0..4)
                .map(|_| (rng.next() >> 40) as f32 / 16_777_216.0)
                .sum();
            (s - 2.0) * 1.7 * scale
        })
        .collect()
}

/// Rows of every awkward kind: Gaussian at several scales, heavy outliers, constant, one-hot,
/// zero, tiny, NaN, infinite, and huge (finite but `ss` overflows).
fn mixed_rows(rng: &mut SplitMix64, n: usize, d: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(n * d);
    for r in 0..n {
        let mut row = gaussian(rng, d, [1.0, 0.01, 30.0, 1e-3][r % 4]);
        match r % 13 {
            3 => row.iter_mut().for_each(|v| *v = 0.0),
            5 => row[(r * 7) % d] = f32::NAN,
            6 => row[d - 1] = f32::INFINITY,
            7 => row.iter_mut().for_each(|v| *v = 0.75),
            8 => {
                row.iter_mut().for_each(|v| *v = 0.0);
                row[r % d] = -2.5;
            }
            9 => row[0] *= 500.0,
            10 => row.iter_mut().for_each(|v| *v *= 1e-30),
            11 => row.iter_mut().for_each(|v| *v = 3e38),
            _ => {}
        }
        x.extend(row);
    }
    x
}

/// Encodes with the batched API and checks every row against the literal encoder.
fn check_encode<T: Element>(codec: &Codec, x: &[T], threads: Threads) -> (Vec<u8>, Vec<u16>) {
    let p = codec.params();
    let (d, cb) = (p.head_dim(), p.code_bytes());
    let n = x.len() / d;
    let mut codes = vec![0xAAu8; n * cb];
    let mut scales = vec![0xAAAAu16; n];
    codec
        .encode_into(x, &mut codes, &mut scales, threads)
        .unwrap();
    let mut wide = vec![0f32; d];
    let mut want = vec![0u8; cb];
    for r in 0..n {
        T::load(&x[r * d..(r + 1) * d], &mut wide);
        let s = encode_vector(codec, &wide, &mut want).unwrap();
        assert_eq!(scales[r], s, "scale row {r} d={d} b={}", p.bits());
        assert_eq!(
            &codes[r * cb..(r + 1) * cb],
            &want[..],
            "codes row {r} d={d}"
        );
    }
    (codes, scales)
}

/// Decodes with the batched API and checks every row against the literal decoder.
fn check_decode<T: Element + PartialEq + core::fmt::Debug>(
    codec: &Codec,
    codes: &[u8],
    scales: &[u16],
    threads: Threads,
) -> Vec<T> {
    let p = codec.params();
    let (d, cb) = (p.head_dim(), p.code_bytes());
    let n = scales.len();
    let mut out = vec![T::default(); n * d];
    codec.decode_into(codes, scales, &mut out, threads).unwrap();
    let mut wide = vec![0f32; d];
    let mut want = vec![T::default(); d];
    for r in 0..n {
        decode_vector(codec, &codes[r * cb..(r + 1) * cb], scales[r], &mut wide).unwrap();
        T::store(&wide, &mut want);
        if f16::from_bits(scales[r]).is_nan() {
            let mut nan = [0f32; 1];
            for v in &out[r * d..(r + 1) * d] {
                T::load(core::slice::from_ref(v), &mut nan);
                assert!(nan[0].is_nan(), "row {r} must be NaN");
            }
        } else {
            assert_eq!(&out[r * d..(r + 1) * d], &want[..], "decoded row {r} d={d}");
        }
    }
    out
}

#[test]
fn batched_f32_matches_literal_for_every_dim_and_width() {
    let mut rng = SplitMix64::new(0xBA7C);
    for d in [8, 16, 24, 64, 80, 96, 128, 256] {
        for b in 1..=8 {
            let codec = Codec::new(CodecParams::new(d, b, rng.next()).unwrap());
            let n = 27; // three full groups of 8 and a partial one
            let x = mixed_rows(&mut rng, n, d);
            let (codes, scales) = check_encode(&codec, &x, Threads::Count(1));
            check_decode::<f32>(&codec, &codes, &scales, Threads::Count(1));
        }
    }
}

#[test]
fn fewer_candidates_match_literal() {
    let mut rng = SplitMix64::new(0xC4);
    for c in [1, 2] {
        for d in [8, 64, 80, 128] {
            for b in 1..=8 {
                let codec = Codec::new(CodecParams::new(d, b, rng.next()).unwrap())
                    .with_candidates(c)
                    .unwrap();
                assert_eq!(codec.candidates(), c as usize);
                let x = mixed_rows(&mut rng, 19, d);
                let (codes, scales) = check_encode(&codec, &x, Threads::Count(1));
                check_decode::<f32>(&codec, &codes, &scales, Threads::Count(1));
            }
        }
    }
}

/// The spec's own error of a coded row (§6 step 4): `FOLD((v - m·ŷ)²)` in the rotated domain.
fn spec_error(codec: &Codec, x: &[f32], codes: &[u8], scale: u16) -> f32 {
    let mut v = x.to_vec();
    codec.rotation().forward(&mut v);
    let mut y = vec![0f32; v.len()];
    // Decoding with scale 1 gives R⁻¹(ŷ); rotating it forward gives ŷ back (up to rounding).
    decode_vector(codec, codes, 0x3C00, &mut y).unwrap();
    codec.rotation().forward(&mut y);
    let m = half::f16::from_bits(scale).to_f32();
    v.iter().zip(&y).map(|(a, b)| (a - m * b).powi(2)).sum()
}

#[test]
fn more_candidates_never_code_a_row_worse() {
    let mut rng = SplitMix64::new(0xE44);
    for b in [2, 3, 4] {
        let (d, n) = (64, 200);
        let x = gaussian(&mut rng, n * d, 1.0);
        let mut errs = Vec::new();
        for c in [1, 3] {
            let codec = Codec::new(CodecParams::new(d, b, 3).unwrap())
                .with_candidates(c)
                .unwrap();
            let mut codes = vec![0u8; n * codec.params().code_bytes()];
            let mut scales = vec![0u16; n];
            codec
                .encode_into(&x, &mut codes, &mut scales, Threads::Count(1))
                .unwrap();
            let cb = codec.params().code_bytes();
            errs.push(
                (0..n)
                    .map(|r| {
                        spec_error(
                            &codec,
                            &x[r * d..(r + 1) * d],
                            &codes[r * cb..(r + 1) * cb],
                            scales[r],
                        )
                    })
                    .collect::<Vec<_>>(),
            );
        }
        let (one, three) = (&errs[0], &errs[1]);
        // ŷ comes back through two rotations here, so allow their rounding.
        for r in 0..n {
            assert!(
                three[r] <= one[r] * 1.0001 + 1e-6,
                "b={b} row {r}: {} > {}",
                three[r],
                one[r]
            );
        }
        let (s1, s3): (f32, f32) = (one.iter().sum(), three.iter().sum());
        assert!(s3 < s1, "b={b}: three candidates {s3} vs one {s1}");
    }
}

#[test]
fn batched_large_dims_match_literal() {
    let mut rng = SplitMix64::new(4);
    for (d, b) in [(512, 3), (1024, 2), (1000, 4)] {
        let codec = Codec::new(CodecParams::new(d, b, 77).unwrap());
        let x = mixed_rows(&mut rng, 10, d);
        let (codes, scales) = check_encode(&codec, &x, Threads::Count(1));
        check_decode::<f32>(&codec, &codes, &scales, Threads::Count(1));
    }
}

#[test]
fn batched_f16_and_bf16_match_literal() {
    let mut rng = SplitMix64::new(16);
    for (d, b) in [(64, 2), (80, 3), (128, 4), (128, 2)] {
        let codec = Codec::new(CodecParams::new(d, b, 0x1234).unwrap());
        let x = mixed_rows(&mut rng, 21, d);
        let xh: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
        let (codes, scales) = check_encode(&codec, &xh, Threads::Count(1));
        check_decode::<f16>(&codec, &codes, &scales, Threads::Count(1));
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let (codes, scales) = check_encode(&codec, &xb, Threads::Count(1));
        check_decode::<bf16>(&codec, &codes, &scales, Threads::Count(1));
    }
}

#[test]
fn thread_counts_give_identical_bytes() {
    let mut rng = SplitMix64::new(5);
    let codec = Codec::new(CodecParams::new(128, 3, 9).unwrap());
    let n = 1001;
    let x: Vec<f16> = mixed_rows(&mut rng, n, 128)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let mut runs = Vec::new();
    for threads in [
        Threads::Count(1),
        Threads::Count(2),
        Threads::Count(3),
        Threads::All,
    ] {
        let mut codes = vec![0u8; n * 48];
        let mut scales = vec![0u16; n];
        codec
            .encode_into(&x, &mut codes, &mut scales, threads)
            .unwrap();
        let mut out = vec![f16::ZERO; n * 128];
        codec
            .decode_into(&codes, &scales, &mut out, threads)
            .unwrap();
        let bits: Vec<u16> = out.iter().map(|v| v.to_bits()).collect();
        runs.push((codes, scales, bits));
    }
    for r in &runs[1..] {
        assert!(r == &runs[0]);
    }
}

#[test]
fn special_rows_are_isolated() {
    let codec = Codec::new(CodecParams::new(64, 2, 1).unwrap());
    let mut rng = SplitMix64::new(8);
    let mut x = gaussian(&mut rng, 10 * 64, 1.0);
    let clean = x.clone();
    x[2 * 64 + 5] = f32::NAN;
    x[4 * 64] = f32::NEG_INFINITY;
    x[6 * 64..7 * 64].iter_mut().for_each(|v| *v = 0.0);
    let mut codes = vec![0u8; 10 * 16];
    let mut scales = vec![0u16; 10];
    codec
        .encode_into(&x, &mut codes, &mut scales, Threads::All)
        .unwrap();
    let mut clean_codes = vec![0u8; 10 * 16];
    let mut clean_scales = vec![0u16; 10];
    codec
        .encode_into(&clean, &mut clean_codes, &mut clean_scales, Threads::All)
        .unwrap();
    for r in 0..10 {
        let row = &codes[r * 16..(r + 1) * 16];
        match r {
            2 | 4 => {
                assert_eq!(scales[r], NAN_SCALE);
                assert!(row.iter().all(|&c| c == 0));
            }
            6 => {
                assert_eq!(scales[r], 0);
                assert!(row.iter().all(|&c| c == 0));
            }
            _ => {
                assert_eq!(scales[r], clean_scales[r], "row {r} affected");
                assert_eq!(row, &clean_codes[r * 16..(r + 1) * 16]);
            }
        }
    }
    let mut out = vec![0f32; 10 * 64];
    codec
        .decode_into(&codes, &scales, &mut out, Threads::All)
        .unwrap();
    for r in 0..10 {
        let row = &out[r * 64..(r + 1) * 64];
        match r {
            2 | 4 => assert!(row.iter().all(|v| v.to_bits() == f32::NAN.to_bits())),
            6 => assert!(row.iter().all(|&v| v == 0.0)),
            _ => assert!(row.iter().all(|v| v.is_finite())),
        }
    }
    let mut h = vec![f16::ZERO; 10 * 64];
    codec
        .decode_into(&codes, &scales, &mut h, Threads::All)
        .unwrap();
    assert!(h[2 * 64..3 * 64].iter().all(|v| v.to_bits() == 0x7E00));
    let mut bh = vec![bf16::ZERO; 10 * 64];
    codec
        .decode_into(&codes, &scales, &mut bh, Threads::All)
        .unwrap();
    assert!(bh[4 * 64..5 * 64].iter().all(|v| v.to_bits() == 0x7FC0));
}

#[test]
fn underflowing_rms_is_a_zero_vector() {
    // ss > 0 but ss / d rounds to zero: one value of 5.3e-23 after the rotation (d = 8).
    let codec = Codec::new(CodecParams::new(8, 2, 3).unwrap());
    let mut v = [0f32; 8];
    v[0] = 5.3e-23;
    codec.rotation().inverse(&mut v);
    let mut codes = [0xFFu8; 2];
    assert_eq!(encode_vector(&codec, &v, &mut codes).unwrap(), 0);
    assert_eq!(codes, [0, 0]);
    let mut batched = [0xFFu8; 2];
    let mut scale = [7u16];
    codec
        .encode_into(&v, &mut batched, &mut scale, Threads::Count(1))
        .unwrap();
    assert_eq!((batched, scale), ([0, 0], [0]));
}

/// 10·log10(signal / noise) over all values.
fn sqnr_db(x: &[f32], y: &[f32]) -> f64 {
    let s: f64 = x.iter().map(|&a| f64::from(a).powi(2)).sum();
    let e: f64 = x
        .iter()
        .zip(y)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum();
    10.0 * (s / e).log10()
}

#[test]
fn round_trip_error_is_bounded_and_beats_scalar() {
    let mut rng = SplitMix64::new(21);
    let n = 1024;
    let x = gaussian(&mut rng, n * 128, 1.0);
    // Lower bounds well under the measured figures (which benches/codec.py prints).
    for (b, floor_db) in [
        (1, 3.5),
        (2, 9.5),
        (3, 15.0),
        (4, 20.8),
        (6, 32.0),
        (8, 43.5),
    ] {
        let codec = Codec::new(CodecParams::new(128, b, 0x1234).unwrap());
        let mut codes = vec![0u8; n * codec.params().code_bytes()];
        let mut scales = vec![0u16; n];
        codec
            .encode_into(&x, &mut codes, &mut scales, Threads::All)
            .unwrap();
        let mut y = vec![0f32; x.len()];
        codec
            .decode_into(&codes, &scales, &mut y, Threads::All)
            .unwrap();
        let e8 = sqnr_db(&x, &y);
        let mut z = vec![0f32; x.len()];
        codec.scalar_roundtrip(&x, &mut z, Threads::All).unwrap();
        let scalar = sqnr_db(&x, &z);
        assert!(e8 > floor_db, "b={b}: E8 SQNR {e8:.2} dB");
        if (2..=4).contains(&b) {
            assert!(
                e8 > scalar + 0.3,
                "b={b}: E8 {e8:.2} dB vs scalar {scalar:.2} dB"
            );
        }
        // No head-vector is coded catastrophically (overload retries shrink a block, so single
        // rows sit well under the mean).
        let worst = (0..n)
            .map(|r| sqnr_db(&x[r * 128..(r + 1) * 128], &y[r * 128..(r + 1) * 128]))
            .fold(f64::INFINITY, f64::min);
        assert!(worst > floor_db / 2.0, "b={b}: worst row {worst:.2} dB");
    }
}

#[test]
fn zero_rows_and_empty_batches() {
    let codec = Codec::new(CodecParams::new(96, 4, 0).unwrap());
    let x = vec![0f32; 3 * 96];
    let mut codes = vec![1u8; 3 * 48];
    let mut scales = vec![1u16; 3];
    codec
        .encode_into(&x, &mut codes, &mut scales, Threads::All)
        .unwrap();
    assert!(codes.iter().all(|&c| c == 0) && scales == [0, 0, 0]);
    let mut y = vec![1f32; 3 * 96];
    codec
        .decode_into(&codes, &scales, &mut y, Threads::All)
        .unwrap();
    assert!(y.iter().all(|&v| v == 0.0));
    codec
        .encode_into::<f32>(&[], &mut [], &mut [], Threads::All)
        .unwrap();
    codec
        .decode_into::<f32>(&[], &[], &mut [], Threads::All)
        .unwrap();
}

/// Groups of uneven sizes (empty, smaller than a lane group, many chunks) decode to exactly what
/// one `decode_into` per group gives, on every thread choice; a group with the wrong lengths is
/// refused before anything is written.
#[test]
fn decode_groups_matches_one_call_per_group() {
    let mut rng = SplitMix64::new(0x6A0);
    for (d, b) in [(64usize, 3u32), (128, 2), (80, 4)] {
        let codec = Codec::new(CodecParams::new(d, b, 11).unwrap());
        let cb = codec.params().code_bytes();
        let sizes = [0usize, 3, 2048, 9, 700];
        let n: usize = sizes.iter().sum();
        let x = mixed_rows(&mut rng, n, d);
        let mut codes = vec![0u8; n * cb];
        let mut scales = vec![0u16; n];
        codec
            .encode_into(&x, &mut codes, &mut scales, Threads::All)
            .unwrap();
        let mut want = vec![0f32; n * d];
        codec
            .decode_into(&codes, &scales, &mut want, Threads::Count(1))
            .unwrap();
        for threads in [Threads::Count(1), Threads::Count(3), Threads::All] {
            let mut out = vec![f32::NAN; n * d];
            let mut groups = Vec::new();
            let (mut c, mut s, mut o) = (&codes[..], &scales[..], &mut out[..]);
            for &k in &sizes {
                let (c0, c1) = c.split_at(k * cb);
                let (s0, s1) = s.split_at(k);
                let (o0, o1) = o.split_at_mut(k * d);
                groups.push((c0, s0, o0));
                (c, s, o) = (c1, s1, o1);
            }
            codec.decode_groups_into(groups, threads).unwrap();
            let same = out
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "d={d} b={b} {threads:?}");
        }
        let mut out = vec![7.0f32; 2 * d];
        let (o0, o1) = out.split_at_mut(d);
        let err = codec
            .decode_groups_into(
                vec![
                    (&codes[..cb], &scales[..1], o0),
                    (&codes[..cb], &scales[..2], o1),
                ],
                Threads::All,
            )
            .unwrap_err();
        assert!(
            matches!(err, nexusquant_core::codec::CodecError::Length { .. }),
            "{err}"
        );
        assert!(out.iter().all(|&v| v == 7.0), "nothing written on error");
    }
}

/// Groups encode to exactly what one `encode_into` per group gives, on every thread choice.
#[test]
fn encode_groups_matches_one_call_per_group() {
    let mut rng = SplitMix64::new(0x6A1);
    for (d, b) in [(64usize, 3u32), (128, 2), (96, 4)] {
        let codec = Codec::new(CodecParams::new(d, b, 5).unwrap());
        let cb = codec.params().code_bytes();
        let sizes = [0usize, 1, 3, 1500, 17];
        let n: usize = sizes.iter().sum();
        let x = mixed_rows(&mut rng, n, d);
        let mut want_c = vec![0u8; n * cb];
        let mut want_s = vec![0u16; n];
        codec
            .encode_into(&x, &mut want_c, &mut want_s, Threads::Count(1))
            .unwrap();
        for threads in [Threads::Count(1), Threads::Count(3), Threads::All] {
            let mut codes = vec![0xAAu8; n * cb];
            let mut scales = vec![0xAAAAu16; n];
            let mut groups = Vec::new();
            let (mut xs, mut c, mut s) = (&x[..], &mut codes[..], &mut scales[..]);
            for &k in &sizes {
                let (x0, x1) = xs.split_at(k * d);
                let (c0, c1) = c.split_at_mut(k * cb);
                let (s0, s1) = s.split_at_mut(k);
                groups.push((x0, c0, s0));
                (xs, c, s) = (x1, c1, s1);
            }
            codec.encode_groups_into(groups, threads).unwrap();
            assert_eq!(codes, want_c, "d={d} b={b} {threads:?}");
            assert_eq!(scales, want_s, "d={d} b={b} {threads:?}");
        }
    }
}

#[test]
fn centred_rows_decode_with_the_absolute_scale_plus_their_centre() {
    let d = 64;
    let codec = Codec::new(CodecParams::new(d, 3, 17).unwrap());
    let mut rng = SplitMix64::new(23);
    let (groups, n) = (3, 45);
    let x = mixed_rows(&mut rng, groups * n, d);
    let (codes, scales) = check_encode(&codec, &x, Threads::Count(1));
    // Flag every other row of each group (NaN and zero scales included).
    let flagged: Vec<u16> = scales
        .iter()
        .enumerate()
        .map(|(i, &s)| if i % 2 == 0 { s | 0x8000 } else { s })
        .collect();
    let centres = gaussian(&mut rng, groups * d, 3.0);
    let cb = codec.params().code_bytes();
    for threads in [Threads::Count(1), Threads::Count(3)] {
        let mut plain = vec![0f32; groups * n * d];
        codec
            .decode_into(&codes, &scales, &mut plain, Threads::Count(1))
            .unwrap();
        let mut got = vec![0f32; groups * n * d];
        let batch = codes
            .chunks(n * cb)
            .zip(flagged.chunks(n))
            .zip(got.chunks_mut(n * d))
            .map(|((c, s), o)| (c, s, o))
            .collect();
        codec
            .decode_groups_centred_into(batch, &centres, threads)
            .unwrap();
        for (r, (g_row, p_row)) in got.chunks(d).zip(plain.chunks(d)).enumerate() {
            let c = &centres[(r / n) * d..(r / n + 1) * d];
            for i in 0..d {
                let want = if r % 2 == 0 {
                    p_row[i] + c[i]
                } else {
                    p_row[i]
                };
                assert!(
                    want.to_bits() == g_row[i].to_bits() || (want.is_nan() && g_row[i].is_nan()),
                    "row {r} [{i}]: {} vs {want}",
                    g_row[i]
                );
            }
        }
        // Without centres the sign bit is the scale's sign, as always.
        let mut negated = vec![0f32; groups * n * d];
        codec
            .decode_into(&codes, &flagged, &mut negated, threads)
            .unwrap();
        assert!(negated[..d]
            .iter()
            .zip(&plain[..d])
            .all(|(a, b)| *a == -*b || a.is_nan()));
    }
    let err = codec
        .decode_groups_centred_into(
            vec![(&codes[..cb], &scales[..1], &mut [0f32; 64][..])],
            &centres[..10],
            Threads::All,
        )
        .unwrap_err();
    assert!(err.to_string().contains("centres"), "{err}");
}
