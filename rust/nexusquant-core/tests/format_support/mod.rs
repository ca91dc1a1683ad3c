//! Helpers shared by the `format_*` tests (included with `#[path]`): sample caches, and
//! taking a file apart into sections and putting it back together with valid checksums, so
//! that crafted files reach the check under test.

#![allow(dead_code)]

use nexusquant_core::format::{
    AuxArray, AuxDtype, Codec, Component, LayerData, LayerParams, LayerType, RawDtype, SectionId,
    ALIGNMENT, ENTRY_LEN, HEADER_LEN, MAGIC,
};

/// A small deterministic generator (SplitMix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// A layer with owned buffers.
pub struct OwnedLayer {
    pub params: LayerParams,
    pub comps: Vec<Vec<u8>>,
    pub aux: Vec<(String, AuxDtype, Vec<u64>, Vec<u8>)>,
}

impl OwnedLayer {
    pub fn random(rng: &mut Rng, params: LayerParams, aux: &[(&str, AuxDtype, &[u64])]) -> Self {
        let comps = Component::ALL
            .iter()
            .map(|&c| {
                let n = params.bytes_for(c, u64::from(params.tokens(c))).unwrap();
                rng.bytes(n as usize)
            })
            .collect();
        let aux = aux
            .iter()
            .map(|&(name, dtype, shape)| {
                let n = shape.iter().product::<u64>() * dtype.size();
                (
                    name.to_owned(),
                    dtype,
                    shape.to_vec(),
                    rng.bytes(n as usize),
                )
            })
            .collect();
        OwnedLayer { params, comps, aux }
    }

    pub fn data(&self) -> LayerData<'_> {
        LayerData {
            params: self.params,
            k_codes: &self.comps[0],
            k_scales: &self.comps[1],
            v_codes: &self.comps[2],
            v_scales: &self.comps[3],
            k_sink: &self.comps[4],
            v_sink: &self.comps[5],
            k_window: &self.comps[6],
            v_window: &self.comps[7],
            aux: self
                .aux
                .iter()
                .map(|(name, dtype, shape, data)| AuxArray {
                    name,
                    dtype: *dtype,
                    shape: shape.clone(),
                    data,
                })
                .collect(),
        }
    }
}

pub fn params(head_dim: u32, key_bits: u8, value_bits: u8, tokens: (u32, u32, u32)) -> LayerParams {
    LayerParams {
        codec: Codec::E8V1,
        head_dim,
        num_kv_heads: 2,
        batch: 2,
        key_bits,
        value_bits,
        raw_dtype: RawDtype::F16,
        layer_type: LayerType::Full,
        key_seed: 0x1234,
        value_seed: 0x5678,
        sink_tokens: 4,
        window_tokens: 8,
        n_sink: tokens.0,
        n_compressed: tokens.1,
        n_window: tokens.2,
    }
}

/// Two layers: one full with 300 compressed tokens (two chunks) and aux arrays, one sliding
/// with bf16 raw tokens.
pub fn sample_layers() -> Vec<OwnedLayer> {
    let mut rng = Rng(7);
    let p0 = params(64, 3, 2, (4, 300, 5));
    let mut p1 = params(80, 4, 4, (2, 17, 3));
    p1.raw_dtype = RawDtype::BF16;
    p1.layer_type = LayerType::Sliding { window: 128 };
    vec![
        OwnedLayer::random(
            &mut rng,
            p0,
            &[
                ("lengths", AuxDtype::I32, &[2]),
                ("positions", AuxDtype::I64, &[2, 3]),
            ],
        ),
        OwnedLayer::random(&mut rng, p1, &[]),
    ]
}

pub const SAMPLE_META: &str = r#"{"model":"tiny","layers":2}"#;

pub fn sample_file() -> Vec<u8> {
    let layers = sample_layers();
    let data: Vec<LayerData<'_>> = layers.iter().map(OwnedLayer::data).collect();
    nexusquant_core::format::to_vec(SAMPLE_META, &data).unwrap()
}

/// A section taken out of a file.
#[derive(Clone, Debug)]
pub struct Sec {
    pub id: SectionId,
    pub tokens: u32,
    pub bytes: Vec<u8>,
}

pub struct Parts {
    pub major: u16,
    pub minor: u16,
    pub layer_count: u32,
    pub sections: Vec<Sec>,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Takes a valid file apart.
pub fn decompose(file: &[u8]) -> Parts {
    let count = u32_at(file, 28) as usize;
    let sections = (0..count)
        .map(|i| {
            let e = &file[HEADER_LEN + i * ENTRY_LEN..HEADER_LEN + (i + 1) * ENTRY_LEN];
            let (off, len) = (u64_at(e, 16) as usize, u64_at(e, 24) as usize);
            Sec {
                id: SectionId {
                    kind: u16_at(e, 0),
                    component: u16_at(e, 2),
                    layer: u32_at(e, 4),
                    index: u32_at(e, 8),
                },
                tokens: u32_at(e, 12),
                bytes: file[off..off + len].to_vec(),
            }
        })
        .collect();
    Parts {
        major: u16_at(file, 8),
        minor: u16_at(file, 10),
        layer_count: u32_at(file, 24),
        sections,
    }
}

/// Lays sections out canonically with valid checksums everywhere.
pub fn assemble(p: &Parts) -> Vec<u8> {
    let n = p.sections.len();
    let mut out = vec![0u8; HEADER_LEN + n * ENTRY_LEN];
    let mut table = Vec::new();
    for s in &p.sections {
        let off = out.len().next_multiple_of(ALIGNMENT as usize);
        out.resize(off, 0);
        out.extend_from_slice(&s.bytes);
        table.extend_from_slice(&s.id.kind.to_le_bytes());
        table.extend_from_slice(&s.id.component.to_le_bytes());
        table.extend_from_slice(&s.id.layer.to_le_bytes());
        table.extend_from_slice(&s.id.index.to_le_bytes());
        table.extend_from_slice(&s.tokens.to_le_bytes());
        table.extend_from_slice(&(off as u64).to_le_bytes());
        table.extend_from_slice(&(s.bytes.len() as u64).to_le_bytes());
        table.extend_from_slice(&crc32c::crc32c(&s.bytes).to_le_bytes());
        table.extend_from_slice(&[0u8; 4]);
    }
    out[HEADER_LEN..HEADER_LEN + table.len()].copy_from_slice(&table);
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&p.major.to_le_bytes());
    h[10..12].copy_from_slice(&p.minor.to_le_bytes());
    h[16..24].copy_from_slice(&(out.len() as u64).to_le_bytes());
    h[24..28].copy_from_slice(&p.layer_count.to_le_bytes());
    h[28..32].copy_from_slice(&(n as u32).to_le_bytes());
    h[32..40].copy_from_slice(&(HEADER_LEN as u64).to_le_bytes());
    h[40..48].copy_from_slice(&(table.len() as u64).to_le_bytes());
    h[48..52].copy_from_slice(&crc32c::crc32c(&table).to_le_bytes());
    let crc = crc32c::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    out[..HEADER_LEN].copy_from_slice(&h);
    out
}

/// Recomputes the table and header checksums after the table or header was edited.
pub fn reseal(file: &mut [u8]) {
    let n = u32_at(file, 28) as usize;
    let table_len = (n * ENTRY_LEN).min(file.len().saturating_sub(HEADER_LEN));
    let crc = crc32c::crc32c(&file[HEADER_LEN..HEADER_LEN + table_len]);
    file[48..52].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32c::crc32c(&file[..60]);
    file[60..64].copy_from_slice(&crc.to_le_bytes());
}

/// Byte offset of field `field` of table entry `i`.
pub fn entry_field(i: usize, field: usize) -> usize {
    HEADER_LEN + i * ENTRY_LEN + field
}
