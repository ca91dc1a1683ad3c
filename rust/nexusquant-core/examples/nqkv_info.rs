//! Prints a summary of a `.nqkv` file: version, metadata, layers, bytes by component and the
//! checksum status of every chunk.
//!
//! ```sh
//! cargo run --example nqkv_info -- cache.nqkv
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;

use nexusquant_core::format::{Component, LayerType, Nqkv, SectionKind};

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: nqkv_info FILE.nqkv");
        return ExitCode::FAILURE;
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {}: {e}", path.to_string_lossy());
            return ExitCode::FAILURE;
        }
    };
    // Parse the structure only, so that damaged chunks are listed rather than fatal.
    let file = match Nqkv::parse(&bytes[..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {}: {e}", path.to_string_lossy());
            return ExitCode::FAILURE;
        }
    };
    let (major, minor) = file.version();
    println!(
        "{}: .nqkv {major}.{minor}, {} bytes",
        path.to_string_lossy(),
        file.file_len()
    );
    println!("metadata: {}", file.metadata());
    for (l, layer) in file.layers().enumerate() {
        let p = layer.params;
        let kind = match p.layer_type {
            LayerType::Full => "full".to_owned(),
            LayerType::Sliding { window } => format!("sliding({window})"),
        };
        println!(
            "layer {l}: {kind}, batch {} x {} kv heads x head_dim {}, K {} bits, V {} bits, \
             raw {}, tokens: {} sink + {} compressed + {} window, {} aux",
            p.batch,
            p.num_kv_heads,
            p.head_dim,
            p.key_bits,
            p.value_bits,
            p.raw_dtype.name(),
            p.n_sink,
            p.n_compressed,
            p.n_window,
            layer.aux.len()
        );
    }
    let mut by_component: BTreeMap<&str, u64> = BTreeMap::new();
    let mut sections_bytes = 0;
    for s in file.sections() {
        let name = match s.kind() {
            Some(SectionKind::Chunk) => Component::from_code(s.id.component)
                .map(Component::name)
                .unwrap_or("chunk"),
            Some(SectionKind::Metadata) => "metadata",
            Some(SectionKind::LayerTable) => "layer table",
            Some(SectionKind::AuxDirectory) => "aux directory",
            Some(SectionKind::AuxData) => "aux arrays",
            Some(SectionKind::Extension(_)) | None => "extensions",
        };
        *by_component.entry(name).or_default() += s.length;
        sections_bytes += s.length;
    }
    let table = (file.sections().len() * nexusquant_core::format::ENTRY_LEN) as u64;
    let header = nexusquant_core::format::HEADER_LEN as u64;
    by_component.insert("header + section table", header + table);
    by_component.insert("padding", file.file_len() - header - table - sections_bytes);
    println!("bytes by component:");
    for (name, n) in &by_component {
        println!("  {name:<24} {n:>12}");
    }
    let statuses = file.chunk_statuses();
    let bad: Vec<_> = statuses.iter().filter(|s| !s.ok()).collect();
    println!(
        "checksums: {} data sections, {} damaged",
        statuses.len(),
        bad.len()
    );
    for s in &bad {
        println!(
            "  damaged: section {} ({}), stored {:#010x}, computed {:#010x}",
            s.entry_index, s.entry.id, s.entry.crc, s.computed
        );
    }
    if bad.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
