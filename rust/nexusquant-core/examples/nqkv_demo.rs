//! Writes a small synthetic `.nqkv` file (random codes, two layers, aux arrays): a seed for
//! the fuzzer and a file to try `nqkv_info` on.
//!
//! ```sh
//! cargo run --example nqkv_demo -- demo.nqkv [COMPRESSED_TOKENS]
//! ```

use std::process::ExitCode;

use nexusquant_core::format::{
    write_file, AuxArray, AuxDtype, Codec, Component, LayerData, LayerParams, LayerType, RawDtype,
};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: nqkv_demo OUTPUT.nqkv [COMPRESSED_TOKENS]");
        return ExitCode::FAILURE;
    };
    let tokens = match args.next().map(|a| a.to_string_lossy().parse::<u32>()) {
        None => 260,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("COMPRESSED_TOKENS must be an integer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut state = 0x5eed_u64;
    let mut random = |n: u64| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 56) as u8
            })
            .collect()
    };
    let layer_params: Vec<LayerParams> = (0..2u32)
        .map(|l| LayerParams {
            codec: Codec::E8V1,
            head_dim: 64,
            num_kv_heads: 2,
            batch: 1,
            key_bits: 3,
            value_bits: 2,
            raw_dtype: RawDtype::F16,
            layer_type: if l == 0 {
                LayerType::Full
            } else {
                LayerType::Sliding { window: 256 }
            },
            key_seed: u64::from(l),
            value_seed: u64::from(l) + 1000,
            sink_tokens: 4,
            window_tokens: 16,
            n_sink: 4,
            n_compressed: tokens,
            n_window: 9,
        })
        .collect();
    let buffers: Vec<Vec<Vec<u8>>> = layer_params
        .iter()
        .map(|p| {
            Component::ALL
                .iter()
                .map(|&c| random(p.bytes_for(c, u64::from(p.tokens(c))).unwrap_or(0)))
                .collect()
        })
        .collect();
    let lengths = (tokens + 13).to_le_bytes();
    let layers: Vec<LayerData<'_>> = layer_params
        .iter()
        .zip(&buffers)
        .map(|(p, b)| LayerData {
            params: *p,
            k_codes: &b[0],
            k_scales: &b[1],
            v_codes: &b[2],
            v_scales: &b[3],
            k_sink: &b[4],
            v_sink: &b[5],
            k_window: &b[6],
            v_window: &b[7],
            aux: vec![AuxArray {
                name: "lengths",
                dtype: AuxDtype::I32,
                shape: vec![1],
                data: &lengths,
            }],
        })
        .collect();
    match write_file(&path, r#"{"demo": true}"#, &layers) {
        Ok(n) => {
            println!("wrote {n} bytes to {}", path.to_string_lossy());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
