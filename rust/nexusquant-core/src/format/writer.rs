//! Serialization of a compressed KV cache into `.nqkv` bytes.

use std::io::{self, BufWriter, Cursor, Seek, SeekFrom, Write};
use std::path::Path;

use super::atomic::atomic_write;
use super::error::{FormatError, InputError, ParamError, SectionId};
use super::params::{AuxDtype, Component, LayerParams};
use super::reader::{aux_bytes, check_metadata, Header, SectionEntry, SectionKind};
use super::{align_up, AUX_RECORD_LEN, CHUNK_TOKENS, ENTRY_LEN, FORMAT_MAJOR, FORMAT_MINOR};
use super::{HEADER_LEN, LAYER_RECORD_LEN, MAX_AUX_NAME_LEN, MAX_AUX_NDIM, MAX_AUX_PER_LAYER};
use super::{MAX_LAYERS, MAX_SECTIONS};

/// An aux array to write: a small per-layer integer array (per-row lengths, positions, ...).
#[derive(Debug, Clone)]
pub struct AuxArray<'a> {
    /// Name, 1 to 32 bytes of UTF-8, unique within the layer.
    pub name: &'a str,
    /// Element type.
    pub dtype: AuxDtype,
    /// Shape, 0 to 4 dimensions (each below 2^32).
    pub shape: Vec<u64>,
    /// Little-endian elements in C order: `product(shape) * dtype.size()` bytes.
    pub data: &'a [u8],
}

/// One layer to write. Every token component is a C-contiguous **head-major**
/// `(batch, num_kv_heads, tokens, row_bytes)` byte array, as the cache holds it; the writer
/// stores it token-major. `row_bytes` is [`LayerParams::row_bytes`]: `head_dim * bits / 8` for
/// codes, 2 for scales (fp16 bits, little-endian), `head_dim * dtype size` for raw tokens
/// (little-endian elements).
#[derive(Debug, Clone)]
pub struct LayerData<'a> {
    /// Codec parameters and token counts.
    pub params: LayerParams,
    /// `(B, H, n_compressed, head_dim * key_bits / 8)` key codes.
    pub k_codes: &'a [u8],
    /// `(B, H, n_compressed)` key scales, fp16 bits.
    pub k_scales: &'a [u8],
    /// `(B, H, n_compressed, head_dim * value_bits / 8)` value codes.
    pub v_codes: &'a [u8],
    /// `(B, H, n_compressed)` value scales, fp16 bits.
    pub v_scales: &'a [u8],
    /// `(B, H, n_sink, head_dim)` raw key sink tokens.
    pub k_sink: &'a [u8],
    /// `(B, H, n_sink, head_dim)` raw value sink tokens.
    pub v_sink: &'a [u8],
    /// `(B, H, n_window, head_dim)` raw key window tokens.
    pub k_window: &'a [u8],
    /// `(B, H, n_window, head_dim)` raw value window tokens.
    pub v_window: &'a [u8],
    /// Aux arrays.
    pub aux: Vec<AuxArray<'a>>,
}

impl<'a> LayerData<'a> {
    /// The bytes of one component.
    pub fn get(&self, c: Component) -> &'a [u8] {
        match c {
            Component::KCodes => self.k_codes,
            Component::KScales => self.k_scales,
            Component::VCodes => self.v_codes,
            Component::VScales => self.v_scales,
            Component::KSink => self.k_sink,
            Component::VSink => self.v_sink,
            Component::KWindow => self.k_window,
            Component::VWindow => self.v_window,
        }
    }
}

enum Source {
    Metadata,
    Owned(Vec<u8>),
    Chunk {
        layer: usize,
        component: Component,
        t0: u32,
    },
    Aux {
        layer: usize,
        index: usize,
    },
}

struct Planned {
    entry: SectionEntry,
    source: Source,
}

/// A validated write: the section table with every offset, ready to stream out.
struct Plan<'d, 'a> {
    metadata: &'d str,
    layers: &'d [LayerData<'a>],
    sections: Vec<Planned>,
    file_len: u64,
}

fn too_many(what: &'static str, count: usize, limit: u32) -> InputError {
    InputError::TooMany {
        what,
        count: count as u64,
        limit: u64::from(limit),
    }
}

fn validate_layer(l: usize, layer: &LayerData<'_>) -> Result<(), InputError> {
    let p = &layer.params;
    let param = |error| InputError::Param { layer: l, error };
    p.validate().map_err(param)?;
    for c in Component::ALL {
        let tokens = u64::from(p.tokens(c));
        let expected = p.bytes_for(c, tokens).unwrap_or(u64::MAX);
        let got = layer.get(c).len() as u64;
        if got != expected {
            return Err(InputError::Shape {
                layer: l,
                array: c.name().to_owned(),
                shape: format!(
                    "({}, {}, {tokens}, {}) bytes",
                    p.batch,
                    p.num_kv_heads,
                    p.row_bytes(c)
                ),
                expected,
                got,
            });
        }
    }
    if layer.aux.len() > MAX_AUX_PER_LAYER as usize {
        return Err(too_many(
            "aux arrays per layer",
            layer.aux.len(),
            MAX_AUX_PER_LAYER,
        ));
    }
    for (j, a) in layer.aux.iter().enumerate() {
        let record = |reason: String| {
            param(ParamError::AuxRecord {
                index: j as u32,
                reason,
            })
        };
        if a.name.is_empty() || a.name.len() > MAX_AUX_NAME_LEN {
            return Err(record(format!(
                "name must be 1 to {MAX_AUX_NAME_LEN} bytes of UTF-8, got {:?}",
                a.name
            )));
        }
        if layer.aux[..j].iter().any(|b| b.name == a.name) {
            return Err(record(format!("duplicate name {:?}", a.name)));
        }
        if a.shape.len() > MAX_AUX_NDIM {
            return Err(record(format!(
                "ndim must be in [0, {MAX_AUX_NDIM}], got {}",
                a.shape.len()
            )));
        }
        if a.shape.iter().any(|&d| d > u64::from(u32::MAX)) {
            return Err(record(format!(
                "every dimension must be below 2^32, got {:?}",
                a.shape
            )));
        }
        let expected = aux_bytes(a.dtype, &a.shape).unwrap_or(u64::MAX);
        if a.data.len() as u64 != expected {
            return Err(InputError::Shape {
                layer: l,
                array: format!("aux array {:?}", a.name),
                shape: format!("{:?} {}", a.shape, a.dtype.name()),
                expected,
                got: a.data.len() as u64,
            });
        }
    }
    Ok(())
}

fn encode_aux(a: &AuxArray<'_>) -> [u8; AUX_RECORD_LEN] {
    let mut r = [0u8; AUX_RECORD_LEN];
    r[0] = a.dtype.code();
    r[1] = a.shape.len() as u8;
    r[2] = a.name.len() as u8;
    for (i, &d) in a.shape.iter().enumerate() {
        r[4 + 4 * i..8 + 4 * i].copy_from_slice(&(d as u32).to_le_bytes());
    }
    r[20..20 + a.name.len()].copy_from_slice(a.name.as_bytes());
    r
}

impl<'d, 'a> Plan<'d, 'a> {
    fn new(metadata: &'d str, layers: &'d [LayerData<'a>]) -> Result<Self, InputError> {
        check_metadata(metadata.as_bytes())?;
        if layers.len() > MAX_LAYERS as usize {
            return Err(too_many("layers", layers.len(), MAX_LAYERS));
        }
        for (l, layer) in layers.iter().enumerate() {
            validate_layer(l, layer)?;
        }

        let id = |kind: SectionKind, component: u16, layer: usize, index: usize| SectionId {
            kind: kind.code(),
            component,
            layer: layer as u32,
            index: index as u32,
        };
        let file_level = |kind| id(kind, 0, 0, 0);
        let mut sections = Vec::new();
        let mut push = |id: SectionId, tokens: u32, length: u64, source: Source| {
            sections.push(Planned {
                entry: SectionEntry {
                    id,
                    tokens,
                    offset: 0,
                    length,
                    crc: 0,
                },
                source,
            });
        };
        push(
            file_level(SectionKind::Metadata),
            0,
            metadata.len() as u64,
            Source::Metadata,
        );
        let mut table = Vec::with_capacity(layers.len() * LAYER_RECORD_LEN);
        let mut aux_dir = Vec::new();
        for layer in layers {
            table.extend_from_slice(&layer.params.encode(layer.aux.len() as u32));
            for a in &layer.aux {
                aux_dir.extend_from_slice(&encode_aux(a));
            }
        }
        push(
            file_level(SectionKind::LayerTable),
            0,
            table.len() as u64,
            Source::Owned(table),
        );
        if !aux_dir.is_empty() {
            push(
                file_level(SectionKind::AuxDirectory),
                0,
                aux_dir.len() as u64,
                Source::Owned(aux_dir),
            );
        }
        for (l, layer) in layers.iter().enumerate() {
            let p = &layer.params;
            for c in Component::ALL {
                let total = p.tokens(c);
                for (i, t0) in (0..total).step_by(CHUNK_TOKENS as usize).enumerate() {
                    let n = (total - t0).min(CHUNK_TOKENS);
                    // Cannot overflow: the whole component's length was checked above.
                    let length = p.bytes_for(c, u64::from(n)).unwrap_or(0);
                    let source = Source::Chunk {
                        layer: l,
                        component: c,
                        t0,
                    };
                    push(id(SectionKind::Chunk, c.code(), l, i), n, length, source);
                }
            }
            for (j, a) in layer.aux.iter().enumerate() {
                let source = Source::Aux { layer: l, index: j };
                push(
                    id(SectionKind::AuxData, 0, l, j),
                    0,
                    a.data.len() as u64,
                    source,
                );
            }
        }
        if sections.len() > MAX_SECTIONS as usize {
            return Err(too_many("sections", sections.len(), MAX_SECTIONS));
        }

        let overflow = || InputError::TooMany {
            what: "file size in bytes",
            count: u64::MAX,
            limit: u64::MAX,
        };
        let mut end = (HEADER_LEN + sections.len() * ENTRY_LEN) as u64;
        for s in &mut sections {
            s.entry.offset = align_up(end).ok_or_else(overflow)?;
            end = s
                .entry
                .offset
                .checked_add(s.entry.length)
                .ok_or_else(overflow)?;
        }
        Ok(Plan {
            metadata,
            layers,
            sections,
            file_len: end,
        })
    }

    /// Copies tokens `[t0, t0 + n)` of a head-major component into `out`, token-major.
    fn gather(&self, layer: usize, c: Component, t0: u32, n: u32, out: &mut Vec<u8>) {
        let data = &self.layers[layer];
        let p = &data.params;
        let row = p.row_bytes(c) as usize;
        let tokens = p.tokens(c) as usize;
        let bh = (p.batch * p.num_kv_heads) as usize;
        let (t0, n) = (t0 as usize, n as usize);
        out.clear();
        out.resize(n * bh * row, 0);
        // Each (batch, head) slab holds `tokens` rows; row t of slab s goes to (t - t0, s).
        // Common row sizes get a copy of constant length (inlined, no memcpy call per row).
        for (s, slab) in data.get(c).chunks_exact(tokens * row).enumerate() {
            let src = &slab[t0 * row..(t0 + n) * row];
            match row {
                2 => scatter::<2>(src, out, s, bh),
                8 => scatter::<8>(src, out, s, bh),
                16 => scatter::<16>(src, out, s, bh),
                24 => scatter::<24>(src, out, s, bh),
                32 => scatter::<32>(src, out, s, bh),
                48 => scatter::<48>(src, out, s, bh),
                64 => scatter::<64>(src, out, s, bh),
                96 => scatter::<96>(src, out, s, bh),
                128 => scatter::<128>(src, out, s, bh),
                _ => {
                    for (k, r) in src.chunks_exact(row).enumerate() {
                        let at = (k * bh + s) * row;
                        out[at..at + row].copy_from_slice(r);
                    }
                }
            }
        }
    }

    /// Streams the file into `sink` from its current position; returns the length written.
    fn write_to<W: Write + Seek>(&mut self, sink: &mut W) -> io::Result<u64> {
        let base = sink.stream_position()?;
        let table_len = self.sections.len() * ENTRY_LEN;
        sink.write_all(&vec![0u8; HEADER_LEN + table_len])?;
        let mut pos = (HEADER_LEN + table_len) as u64;
        let mut scratch = Vec::new();
        for i in 0..self.sections.len() {
            let (entry, bytes): (SectionEntry, &[u8]) = {
                let s = &self.sections[i];
                let bytes = match &s.source {
                    Source::Metadata => self.metadata.as_bytes(),
                    Source::Owned(v) => v.as_slice(),
                    Source::Chunk {
                        layer,
                        component,
                        t0,
                    } => {
                        self.gather(*layer, *component, *t0, s.entry.tokens, &mut scratch);
                        scratch.as_slice()
                    }
                    Source::Aux { layer, index } => self.layers[*layer].aux[*index].data,
                };
                (s.entry, bytes)
            };
            let padding = (entry.offset - pos) as usize;
            sink.write_all(&[0u8; 64][..padding])?;
            sink.write_all(bytes)?;
            let crc = crc32c::crc32c(bytes);
            self.sections[i].entry.crc = crc;
            pos = entry.offset + entry.length;
        }
        let mut table = Vec::with_capacity(table_len);
        for s in &self.sections {
            table.extend_from_slice(&s.entry.encode());
        }
        let header = Header {
            major: FORMAT_MAJOR,
            minor: FORMAT_MINOR,
            file_len: self.file_len,
            layer_count: self.layers.len() as u32,
            section_count: self.sections.len() as u32,
            table_offset: HEADER_LEN as u64,
            table_len: table_len as u64,
            table_crc: crc32c::crc32c(&table),
        };
        sink.seek(SeekFrom::Start(base + HEADER_LEN as u64))?;
        sink.write_all(&table)?;
        sink.seek(SeekFrom::Start(base))?;
        sink.write_all(&header.encode())?;
        sink.seek(SeekFrom::Start(base + self.file_len))?;
        sink.flush()?;
        Ok(self.file_len)
    }
}

/// Copies the `N`-byte rows of `src` to rows `s, s + bh, s + 2 bh, ...` of `out`.
fn scatter<const N: usize>(src: &[u8], out: &mut [u8], s: usize, bh: usize) {
    for (k, r) in src.chunks_exact(N).enumerate() {
        let at = (k * bh + s) * N;
        out[at..at + N].copy_from_slice(r);
    }
}

/// Writes a `.nqkv` file into `sink`, starting at its current position. `metadata` must be a
/// JSON object of at most [`super::MAX_METADATA_BYTES`]. Everything is validated before the
/// first byte is written; returns the number of bytes written.
pub fn write<W: Write + Seek>(
    sink: &mut W,
    metadata: &str,
    layers: &[LayerData<'_>],
) -> Result<u64, FormatError> {
    let mut plan = Plan::new(metadata, layers)?;
    plan.write_to(sink).map_err(FormatError::Sink)
}

/// The bytes of a `.nqkv` file (for the stores, or to send elsewhere).
pub fn to_vec(metadata: &str, layers: &[LayerData<'_>]) -> Result<Vec<u8>, FormatError> {
    let mut plan = Plan::new(metadata, layers)?;
    let mut out = Cursor::new(Vec::with_capacity(plan.file_len as usize));
    plan.write_to(&mut out).map_err(FormatError::Sink)?;
    Ok(out.into_inner())
}

/// Writes a `.nqkv` file at `path`, replacing any previous file atomically (see
/// [`super::atomic_write`]): a failure leaves the previous file intact. Returns the length.
pub fn write_file(
    path: impl AsRef<Path>,
    metadata: &str,
    layers: &[LayerData<'_>],
) -> Result<u64, FormatError> {
    let path = path.as_ref();
    let mut plan = Plan::new(metadata, layers)?;
    atomic_write(path, |file| {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let n = plan.write_to(&mut w)?;
        w.flush()?;
        Ok(n)
    })
    .map_err(|source| FormatError::Io {
        path: path.to_owned(),
        source,
    })
}
