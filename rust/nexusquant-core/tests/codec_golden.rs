//! Golden vectors: frozen code bytes, scales and decoded values for a fixed input
//! (`tests/golden/codec_v1.json`, also read by the Python tests).
//!
//! Regenerate (only when the spec changes, with a new codec version) with
//! `NEXUSQUANT_BLESS=1 cargo test -p nexusquant-core --test codec_golden`.

use std::fmt::Write as _;
use std::path::PathBuf;

use nexusquant_core::codec::signs::SplitMix64;
use nexusquant_core::codec::{decode_vector, encode_vector, Codec, CodecParams, Threads};

const SEED: u64 = 0x1234;
const ROWS: usize = 4;
const CASES: [(usize, u32); 7] = [
    (64, 2),
    (80, 3),
    (96, 4),
    (128, 2),
    (128, 3),
    (128, 4),
    (256, 3),
];

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/codec_v1.json")
}

/// The spec-derived input: splitmix64 from state `SEED`, `((next() >> 40) / 2^24 - 0.5) · 4`.
fn input(d: usize) -> Vec<f32> {
    let mut rng = SplitMix64::new(SEED);
    (0..ROWS * d)
        .map(|_| ((rng.next() >> 40) as f32 / 16_777_216.0 - 0.5) * 4.0)
        .collect()
}

fn hex(bytes: impl IntoIterator<Item = u8>) -> String {
    bytes.into_iter().fold(String::new(), |mut s, b| {
        write!(s, "{b:02x}").expect("write to String");
        s
    })
}

struct Case {
    d: usize,
    b: u32,
    x: Vec<f32>,
    codes: Vec<u8>,
    scales: Vec<u16>,
    decoded: Vec<f32>,
}

fn compute(d: usize, b: u32) -> Case {
    // The golden bytes were made with all three clipping candidates (the KV cache's setting).
    let codec = Codec::new(CodecParams::new(d, b, SEED).unwrap())
        .with_candidates(3)
        .unwrap();
    let x = input(d);
    let cb = codec.params().code_bytes();
    let mut codes = vec![0u8; ROWS * cb];
    let mut scales = vec![0u16; ROWS];
    codec
        .encode_into(&x, &mut codes, &mut scales, Threads::Count(1))
        .unwrap();
    let mut decoded = vec![0f32; ROWS * d];
    codec
        .decode_into(&codes, &scales, &mut decoded, Threads::Count(1))
        .unwrap();
    // The batched kernels and the literal spec implementation agree on every row.
    for r in 0..ROWS {
        let mut c = vec![0u8; cb];
        let s = encode_vector(&codec, &x[r * d..(r + 1) * d], &mut c).unwrap();
        assert_eq!((s, &c[..]), (scales[r], &codes[r * cb..(r + 1) * cb]));
        let mut y = vec![0f32; d];
        decode_vector(&codec, &c, s, &mut y).unwrap();
        assert_eq!(y, decoded[r * d..(r + 1) * d]);
    }
    Case {
        d,
        b,
        x,
        codes,
        scales,
        decoded,
    }
}

fn to_json(cases: &[Case]) -> String {
    let mut s = String::new();
    s.push_str("{\n  \"codec\": \"e8v1\",\n  \"spec\": \"docs/codec.md revision 2\",\n");
    writeln!(s, "  \"seed\": {SEED},").unwrap();
    writeln!(s, "  \"rows\": {ROWS},").unwrap();
    s.push_str(
        "  \"input\": \"float32 (rows, head_dim), row-major: splitmix64 with state = seed (restarted \
         for every case), value = ((next() >> 40) / 2^24 - 0.5) * 4\",\n",
    );
    s.push_str(
        "  \"encoding\": \"hex of little-endian bytes: input_f32 and decoded_f32 are float32, codes are \
         the (rows, head_dim*bits/8) bytes, scales are the fp16 bit patterns as uint16\",\n",
    );
    s.push_str("  \"cases\": [\n");
    for (k, c) in cases.iter().enumerate() {
        s.push_str("    {\n");
        writeln!(s, "      \"head_dim\": {},", c.d).unwrap();
        writeln!(s, "      \"bits\": {},", c.b).unwrap();
        let f32s = |v: &[f32]| hex(v.iter().flat_map(|x| x.to_le_bytes()));
        writeln!(s, "      \"input_f32\": \"{}\",", f32s(&c.x)).unwrap();
        writeln!(s, "      \"codes\": \"{}\",", hex(c.codes.iter().copied())).unwrap();
        let sc = hex(c.scales.iter().flat_map(|x| x.to_le_bytes()));
        writeln!(s, "      \"scales\": \"{sc}\",").unwrap();
        writeln!(s, "      \"decoded_f32\": \"{}\"", f32s(&c.decoded)).unwrap();
        s.push_str(if k + 1 == cases.len() {
            "    }\n"
        } else {
            "    },\n"
        });
    }
    s.push_str("  ]\n}\n");
    s
}

#[test]
fn golden_vectors_are_frozen() {
    let cases: Vec<Case> = CASES.iter().map(|&(d, b)| compute(d, b)).collect();
    let json = to_json(&cases);
    let path = golden_path();
    if std::env::var_os("NEXUSQUANT_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &json).unwrap();
    }
    let stored = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (bless with NEXUSQUANT_BLESS=1)", path.display()));
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    let now: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(stored["seed"], SEED);
    let (stored, now) = (
        stored["cases"].as_array().unwrap(),
        now["cases"].as_array().unwrap(),
    );
    assert_eq!(stored.len(), CASES.len());
    for (s, n) in stored.iter().zip(now) {
        let case = (s["head_dim"].clone(), s["bits"].clone());
        for key in [
            "head_dim",
            "bits",
            "input_f32",
            "codes",
            "scales",
            "decoded_f32",
        ] {
            assert_eq!(s[key], n[key], "{key} differs for {case:?}");
        }
    }
}

#[test]
fn golden_scales_are_plausible() {
    // Independent of the stored file: scales are finite, positive fp16 near rms / alpha.
    for &(d, b) in &CASES {
        let c = compute(d, b);
        for &s in &c.scales {
            let v = half::f16::from_bits(s).to_f32();
            assert!(v.is_finite() && v > 0.0, "d={d} b={b} scale {v}");
        }
    }
}
