//! A deterministic random-mutation fuzz loop over valid seed files, runnable with plain
//! `cargo test` (the coverage-guided target is `fuzz/fuzz_targets/read.rs`). Every mutant must
//! be rejected with an error or, if accepted, be fully readable; it must never panic.
//! `NQKV_FUZZ_ITERS` sets the number of mutants (default 20 000).

#[path = "format_support/mod.rs"]
mod support;

use nexusquant_core::format::{read, Component, LayerData};
use support::*;

fn seeds() -> Vec<Vec<u8>> {
    let layers = sample_layers();
    let data: Vec<LayerData<'_>> = layers.iter().map(OwnedLayer::data).collect();
    vec![
        sample_file(),
        nexusquant_core::format::to_vec("{}", &data[1..]).unwrap(),
        nexusquant_core::format::to_vec("{}", &[]).unwrap(),
    ]
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut f = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !f.is_empty() => {
                let i = rng.below(f.len() as u64) as usize;
                f[i] ^= 1 << rng.below(8);
            }
            1 if !f.is_empty() => {
                let i = rng.below(f.len() as u64) as usize;
                f[i] = rng.next_u64() as u8;
            }
            2 => {
                let n = rng.below(f.len() as u64 + 1) as usize;
                f.truncate(n);
            }
            3 => {
                // Overwrite a header or table field with an interesting value, then re-seal so
                // that the mutant gets past the checksums.
                let at = rng.below(f.len().min(400) as u64 + 1) as usize;
                let v: u64 =
                    [0, 1, 63, 64, 255, 256, u32::MAX as u64, u64::MAX][rng.below(8) as usize];
                for (k, b) in v.to_le_bytes().iter().enumerate().take(1 << rng.below(4)) {
                    if let Some(x) = f.get_mut(at + k) {
                        *x = *b;
                    }
                }
                if f.len() >= 64 {
                    reseal(&mut f);
                }
            }
            4 => {
                let n = rng.below(128) as usize;
                let extra = rng.bytes(n);
                f.extend_from_slice(&extra);
            }
            _ => {
                if f.len() >= 64 {
                    reseal(&mut f);
                }
            }
        }
    }
    f
}

#[test]
fn mutants_never_panic() {
    let iters: u64 = std::env::var("NQKV_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seeds = seeds();
    let mut rng = Rng(2024);
    let (mut accepted, mut rejected) = (0u64, 0u64);
    for _ in 0..iters {
        let seed = &seeds[rng.below(seeds.len() as u64) as usize];
        let f = mutate(&mut rng, seed);
        match read(&f) {
            Ok(file) => {
                accepted += 1;
                for layer in file.layers() {
                    for c in Component::ALL {
                        let v = layer.component(c);
                        assert_eq!(v.to_head_major().len(), v.data.len());
                    }
                }
            }
            Err(e) => {
                rejected += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert_eq!(accepted + rejected, iters);
    // Most mutants are rejected, and every seed itself is accepted.
    assert!(rejected > iters / 2, "{rejected} of {iters} rejected");
    for s in &seeds {
        read(s).unwrap();
    }
}
