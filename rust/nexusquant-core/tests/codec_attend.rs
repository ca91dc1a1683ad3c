//! Attention on the codes (`Codec::attention_scores_into` / `attention_values_into`) against
//! decoding the head-vectors and doing the arithmetic on the decoded rows.

use nexusquant_core::codec::signs::SplitMix64;
use nexusquant_core::codec::{Codec, CodecError, CodecParams, Threads};

fn uniform(rng: &mut SplitMix64, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next() >> 40) as f32 / 16_777_216.0 - 0.5) * 2.0 * scale)
        .collect()
}

/// `groups` groups of `n` coded rows each (scales varying by row), decoded alongside.
struct Coded {
    codes: Vec<Vec<u8>>,
    scales: Vec<Vec<u16>>,
    decoded: Vec<Vec<f32>>,
}

fn coded(codec: &Codec, rng: &mut SplitMix64, groups: usize, n: usize) -> Coded {
    let d = codec.params().head_dim();
    let cb = codec.params().code_bytes();
    let mut out = Coded {
        codes: vec![],
        scales: vec![],
        decoded: vec![],
    };
    for _ in 0..groups {
        let mut x = Vec::with_capacity(n * d);
        for r in 0..n {
            x.extend(uniform(rng, d, [1.0, 0.1, 20.0][r % 3]));
        }
        let mut codes = vec![0u8; n * cb];
        let mut scales = vec![0u16; n];
        codec
            .encode_into(&x, &mut codes, &mut scales, Threads::Count(1))
            .unwrap();
        let mut y = vec![0f32; n * d];
        codec
            .decode_into(&codes, &scales, &mut y, Threads::Count(1))
            .unwrap();
        out.codes.push(codes);
        out.scales.push(scales);
        out.decoded.push(y);
    }
    out
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

/// `|got - want| <= tol · scale` for every element.
fn assert_close(got: &[f32], want: &[f64], scale: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(*g) - w).abs();
        assert!(
            err <= 2e-5 * scale + 1e-30,
            "{what}[{i}]: got {g}, want {w} (error {err}, scale {scale})"
        );
    }
}

fn check(d: usize, b: u32, groups: usize, g: usize, n: usize, threads: Threads) {
    let codec = Codec::new(CodecParams::new(d, b, 0x5eed + d as u64).unwrap());
    let mut rng = SplitMix64::new((d * 131 + b as usize * 7 + n) as u64);
    let c = coded(&codec, &mut rng, groups, n);
    let queries = uniform(&mut rng, groups * g * d, 1.0);
    let what = format!("d={d} b={b} groups={groups} g={g} n={n} {threads:?}");

    // Scores.
    let mut scores: Vec<Vec<f32>> = (0..groups).map(|_| vec![f32::NAN; n * g]).collect();
    let batch = c
        .codes
        .iter()
        .zip(&c.scales)
        .zip(scores.iter_mut())
        .map(|((k, s), o)| (k.as_slice(), s.as_slice(), o.as_mut_slice()))
        .collect();
    codec
        .attention_scores_into(&queries, batch, threads)
        .unwrap();
    for gi in 0..groups {
        let mut want = vec![0f64; n * g];
        let mut scale = 0f64;
        for t in 0..n {
            let row = &c.decoded[gi][t * d..(t + 1) * d];
            for j in 0..g {
                let q = &queries[(gi * g + j) * d..(gi * g + j + 1) * d];
                want[t * g + j] = dot(q, row);
                scale = scale.max(dot(row, row).sqrt() * dot(q, q).sqrt());
            }
        }
        assert_close(
            &scores[gi],
            &want,
            scale,
            &format!("scores {what} group {gi}"),
        );
    }

    // Value sums with softmax-like weights (some exactly zero).
    let weights: Vec<Vec<f32>> = (0..groups)
        .map(|_| {
            let mut w = uniform(&mut rng, n * g, 0.5);
            w.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = if i % 5 == 0 { 0.0 } else { v.abs() });
            w
        })
        .collect();
    let mut out = vec![f32::NAN; groups * g * d];
    let batch = c
        .codes
        .iter()
        .zip(&c.scales)
        .zip(&weights)
        .map(|((k, s), w)| (k.as_slice(), s.as_slice(), w.as_slice()))
        .collect();
    codec
        .attention_values_into(batch, &mut out, threads)
        .unwrap();
    for (gi, wg) in weights.iter().enumerate() {
        for j in 0..g {
            let mut want = vec![0f64; d];
            let mut scale = 0f64;
            for t in 0..n {
                let w = f64::from(wg[t * g + j]);
                let row = &c.decoded[gi][t * d..(t + 1) * d];
                for (o, x) in want.iter_mut().zip(row) {
                    *o += w * f64::from(*x);
                }
                scale += w.abs() * dot(row, row).sqrt();
            }
            let at = (gi * g + j) * d;
            assert_close(
                &out[at..at + d],
                &want,
                scale.max(1e-30),
                &format!("values {what} group {gi} query {j}"),
            );
        }
    }
}

#[test]
fn scores_and_values_match_decoding_for_every_dim_and_width() {
    for &d in &[8, 64, 80, 96, 128, 256] {
        for b in 1..=8 {
            check(d, b, 2, 3, 21, Threads::Count(1));
        }
    }
}

#[test]
fn token_counts_and_query_groups() {
    for &n in &[0, 1, 7, 8, 9, 64, 1000] {
        for &g in &[1, 2, 8] {
            check(64, 3, 3, g, n, Threads::Count(1));
        }
    }
}

#[test]
fn threads_agree_with_one_thread() {
    for threads in [
        Threads::Count(1),
        Threads::Count(2),
        Threads::Count(3),
        Threads::All,
    ] {
        check(128, 2, 3, 3, 2500, threads);
    }
    // Values: the chunks' partial sums are added in a fixed order, so a thread count always
    // gives the same bits.
    let codec = Codec::new(CodecParams::new(64, 2, 7).unwrap());
    let mut rng = SplitMix64::new(99);
    let c = coded(&codec, &mut rng, 2, 3000);
    let w = uniform(&mut rng, 3000 * 4, 1.0);
    let run = || {
        let mut out = vec![0f32; 2 * 4 * 64];
        let batch = (0..2)
            .map(|i| (c.codes[i].as_slice(), c.scales[i].as_slice(), w.as_slice()))
            .collect();
        codec
            .attention_values_into(batch, &mut out, Threads::Count(2))
            .unwrap();
        out
    };
    assert_eq!(run(), run());
}

#[test]
fn nan_scales_poison_only_their_outputs() {
    let codec = Codec::new(CodecParams::new(64, 3, 1).unwrap());
    let mut rng = SplitMix64::new(5);
    let mut c = coded(&codec, &mut rng, 1, 20);
    c.scales[0][4] = 0x7e00; // NaN
    let q = uniform(&mut rng, 2 * 64, 1.0);
    let mut scores = [0f32; 20 * 2];
    codec
        .attention_scores_into(
            &q,
            vec![(&c.codes[0][..], &c.scales[0][..], &mut scores[..])],
            Threads::Count(1),
        )
        .unwrap();
    for (i, s) in scores.iter().enumerate() {
        assert_eq!(s.is_nan(), i / 2 == 4, "score {i} = {s}");
    }
    // Without the NaN token's codes, the sums are finite; with them, they are NaN.
    let w = [0.05f32; 20 * 2];
    let mut out = vec![0f32; 2 * 64];
    codec
        .attention_values_into(
            vec![(&c.codes[0][..4 * 24], &c.scales[0][..4], &w[..4 * 2])],
            &mut out,
            Threads::Count(1),
        )
        .unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
    codec
        .attention_values_into(
            vec![(&c.codes[0][..], &c.scales[0][..], &w[..])],
            &mut out,
            Threads::Count(1),
        )
        .unwrap();
    assert!(out.iter().all(|v| v.is_nan()));
}

#[test]
fn length_errors_name_the_argument() {
    let codec = Codec::new(CodecParams::new(64, 2, 1).unwrap());
    let codes = vec![0u8; 3 * 16];
    let scales = vec![0u16; 3];
    let mut out = vec![0f32; 3 * 2];
    let err = |e: CodecError| e.to_string();
    // Queries not a whole number of vectors / not the same count per group.
    let e = codec
        .attention_scores_into(&[0.0; 65], vec![(&codes, &scales, &mut out)], Threads::All)
        .unwrap_err();
    assert!(err(e).contains("queries"));
    let e = codec
        .attention_scores_into(
            &[0.0; 3 * 64],
            vec![(&codes[..], &scales[..], &mut out[..])],
            Threads::All,
        )
        .unwrap_err();
    assert!(err(e).contains("out"), "3 queries for 2 outputs per token");
    let e = codec
        .attention_scores_into(
            &[0.0; 2 * 64],
            vec![(&codes[..16], &scales[..], &mut out[..])],
            Threads::All,
        )
        .unwrap_err();
    assert!(err(e).contains("codes"));
    let w = [0f32; 3 * 2];
    let mut sums = vec![0f32; 2 * 64];
    let e = codec
        .attention_values_into(
            vec![(&codes[..], &scales[..], &w[..5])],
            &mut sums,
            Threads::All,
        )
        .unwrap_err();
    assert!(err(e).contains("weights"));
    let e = codec
        .attention_values_into(
            vec![(&codes[..], &scales[..], &w[..])],
            &mut sums[..100],
            Threads::All,
        )
        .unwrap_err();
    assert!(err(e).contains("out"));
    // No groups: nothing to do.
    codec
        .attention_values_into(vec![], &mut [], Threads::All)
        .unwrap();
    codec
        .attention_scores_into(&[], vec![], Threads::All)
        .unwrap();
}
