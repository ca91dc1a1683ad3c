//! Fuzz target that gets past the checksums: it rewrites every checksum the input declares
//! (sections, table, header) to match, then reads. Random bytes almost never carry valid
//! CRCs, so this target is the one that explores the layout, layer-table, aux and metadata
//! checks behind them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexusquant_core::format::{read, Component, ENTRY_LEN, HEADER_LEN};

fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

fn reseal(f: &mut [u8]) {
    let Some(count) = f.get(28..32) else { return };
    let count = u32::from_le_bytes([count[0], count[1], count[2], count[3]]) as usize;
    let count = count.min(f.len().saturating_sub(HEADER_LEN) / ENTRY_LEN);
    for i in 0..count {
        let e = HEADER_LEN + i * ENTRY_LEN;
        let (Some(off), Some(len)) = (u64_at(f, e + 16), u64_at(f, e + 24)) else { return };
        let range = usize::try_from(off)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(o, l)| Some(o..o.checked_add(l)?));
        if let Some(crc) = range.and_then(|r| f.get(r)).map(crc32c::crc32c) {
            f[e + 32..e + 36].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&f[HEADER_LEN..HEADER_LEN + count * ENTRY_LEN]);
    f[48..52].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32c::crc32c(&f[..60]);
    f[60..64].copy_from_slice(&crc.to_le_bytes());
}

fuzz_target!(|d: &[u8]| {
    let mut f = d.to_vec();
    if f.len() >= HEADER_LEN {
        reseal(&mut f);
    }
    if let Ok(file) = read(&f) {
        for layer in file.layers() {
            for c in Component::ALL {
                let _ = layer.component(c).to_head_major();
            }
        }
    }
});
