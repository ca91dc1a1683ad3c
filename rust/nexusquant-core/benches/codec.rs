//! Codec throughput on one thread: fp16 head-vectors of dimension 128, 2/3/4 bits, plus the
//! scalar baseline. Encode runs with the default one clipping candidate and with three.
//! Throughput is reported in bytes of fp16 input (encode) or output (decode).
//! Targets (docs/design.md): encode >= 300 MB/s, decode >= 1000 MB/s.
//!
//! Run with `cargo bench -p nexusquant-core --bench codec`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use nexusquant_core::codec::signs::SplitMix64;
use nexusquant_core::codec::{Codec, CodecParams, Threads};

const N: usize = 4096;
const D: usize = 128;

fn input() -> Vec<f16> {
    let mut rng = SplitMix64::new(1);
    (0..N * D)
        .map(|_| {
            let s: f32 = (0..4)
                .map(|_| (rng.next() >> 40) as f32 / 16_777_216.0)
                .sum();
            f16::from_f32((s - 2.0) * 1.7)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let x = input();
    let bytes = (N * D * 2) as u64;
    let mut group = c.benchmark_group("codec_d128_fp16_1thread");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(20);
    for bits in [2u32, 3, 4] {
        let codec = Codec::new(CodecParams::new(D, bits, 0x1234).unwrap());
        let mut codes = vec![0u8; N * codec.params().code_bytes()];
        let mut scales = vec![0u16; N];
        group.bench_function(BenchmarkId::new("encode", bits), |b| {
            b.iter(|| {
                codec
                    .encode_into(&x, &mut codes, &mut scales, Threads::Count(1))
                    .unwrap()
            })
        });
        // All three clipping candidates (the KV cache's setting).
        let best = codec.clone().with_candidates(3).unwrap();
        group.bench_function(BenchmarkId::new("encode_3_candidates", bits), |b| {
            b.iter(|| {
                best.encode_into(&x, &mut codes, &mut scales, Threads::Count(1))
                    .unwrap()
            })
        });
        let mut out = vec![f16::ZERO; N * D];
        group.bench_function(BenchmarkId::new("decode", bits), |b| {
            b.iter(|| {
                codec
                    .decode_into(&codes, &scales, &mut out, Threads::Count(1))
                    .unwrap()
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("scalar_baseline_d128_f32_1thread");
    group.throughput(Throughput::Bytes((N * D * 4) as u64));
    group.sample_size(10);
    let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let mut out = vec![0f32; N * D];
    for bits in [2u32, 3, 4] {
        let codec = Codec::new(CodecParams::new(D, bits, 0x1234).unwrap());
        group.bench_function(BenchmarkId::new("roundtrip", bits), |b| {
            b.iter(|| {
                codec
                    .scalar_roundtrip(&xf, &mut out, Threads::Count(1))
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
