//! Parsing and validation of `.nqkv` bytes, and zero-copy views of their contents.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::error::{FormatError, MetadataError, ParamError, Section, SectionId};
use super::params::{AuxDtype, Component, LayerParams};
use super::{align_up, ALIGNMENT, AUX_RECORD_LEN, CHUNK_TOKENS, ENTRY_LEN, FORMAT_MAJOR};
use super::{FORMAT_MINOR, HEADER_LEN, LAYER_RECORD_LEN, MAGIC, MAX_AUX_NAME_LEN, MAX_AUX_NDIM};
use super::{MAX_LAYERS, MAX_METADATA_BYTES, MAX_SECTIONS};

/// Section kinds of format version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SectionKind {
    /// The metadata document (UTF-8 JSON object). Always the first section.
    Metadata,
    /// The layer table (one 64-byte record per layer). Always the second section.
    LayerTable,
    /// The aux directory (one 56-byte record per aux array), present when any layer has one.
    AuxDirectory,
    /// A chunk of at most [`CHUNK_TOKENS`] tokens of one component of one layer.
    Chunk,
    /// The data of one aux array.
    AuxData,
    /// A kind `>= 0x100`, added by a later minor version; skipped by this reader.
    Extension(u16),
}

/// Smallest kind a later minor version may use for a new section.
const EXTENSION_KIND_MIN: u16 = 0x100;

impl SectionKind {
    /// The code stored in section entries.
    pub fn code(self) -> u16 {
        match self {
            SectionKind::Metadata => 1,
            SectionKind::LayerTable => 2,
            SectionKind::AuxDirectory => 3,
            SectionKind::Chunk => 4,
            SectionKind::AuxData => 5,
            SectionKind::Extension(k) => k,
        }
    }

    /// The kind with this code, if any.
    pub fn from_code(code: u16) -> Option<Self> {
        match code {
            1 => Some(SectionKind::Metadata),
            2 => Some(SectionKind::LayerTable),
            3 => Some(SectionKind::AuxDirectory),
            4 => Some(SectionKind::Chunk),
            5 => Some(SectionKind::AuxData),
            k if k >= EXTENSION_KIND_MIN => Some(SectionKind::Extension(k)),
            _ => None,
        }
    }
}

/// One entry of the section table.
///
/// Layout (40 bytes, little-endian):
///
/// ```text
///  0 u16 kind   2 u16 component   4 u32 layer   8 u32 index   12 u32 tokens
/// 16 u64 offset                  24 u64 length                32 u32 crc32c   36 u32 reserved
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionEntry {
    /// What the section holds.
    pub id: SectionId,
    /// Tokens in the section (chunks only; 0 otherwise).
    pub tokens: u32,
    /// Byte offset from the start of the file (a multiple of 64).
    pub offset: u64,
    /// Byte length.
    pub length: u64,
    /// CRC-32C (Castagnoli) of the section's bytes.
    pub crc: u32,
}

fn le_u16(b: &[u8], o: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(o..o + 2) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}

fn le_u32(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(o..o + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(o..o + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

impl SectionEntry {
    fn decode(b: &[u8]) -> Self {
        SectionEntry {
            id: SectionId {
                kind: le_u16(b, 0),
                component: le_u16(b, 2),
                layer: le_u32(b, 4),
                index: le_u32(b, 8),
            },
            tokens: le_u32(b, 12),
            offset: le_u64(b, 16),
            length: le_u64(b, 24),
            crc: le_u32(b, 32),
        }
    }

    pub(crate) fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut r = [0u8; ENTRY_LEN];
        r[0..2].copy_from_slice(&self.id.kind.to_le_bytes());
        r[2..4].copy_from_slice(&self.id.component.to_le_bytes());
        r[4..8].copy_from_slice(&self.id.layer.to_le_bytes());
        r[8..12].copy_from_slice(&self.id.index.to_le_bytes());
        r[12..16].copy_from_slice(&self.tokens.to_le_bytes());
        r[16..24].copy_from_slice(&self.offset.to_le_bytes());
        r[24..32].copy_from_slice(&self.length.to_le_bytes());
        r[32..36].copy_from_slice(&self.crc.to_le_bytes());
        r
    }

    /// The section's kind.
    pub fn kind(&self) -> Option<SectionKind> {
        SectionKind::from_code(self.id.kind)
    }
}

/// The fixed header, decoded.
///
/// Layout (64 bytes, little-endian):
///
/// ```text
///  0 [u8; 8] magic      8 u16 major    10 u16 minor      12 u32 flags (reserved, 0)
/// 16 u64 file_len      24 u32 layer_count               28 u32 section_count
/// 32 u64 table_offset (64)             40 u64 table_len (section_count * 40)
/// 48 u32 table_crc     52 [u8; 8] reserved (0)          60 u32 header_crc (of bytes 0..60)
/// ```
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub major: u16,
    pub minor: u16,
    pub file_len: u64,
    pub layer_count: u32,
    pub section_count: u32,
    pub table_offset: u64,
    pub table_len: u64,
    pub table_crc: u32,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..10].copy_from_slice(&self.major.to_le_bytes());
        h[10..12].copy_from_slice(&self.minor.to_le_bytes());
        h[16..24].copy_from_slice(&self.file_len.to_le_bytes());
        h[24..28].copy_from_slice(&self.layer_count.to_le_bytes());
        h[28..32].copy_from_slice(&self.section_count.to_le_bytes());
        h[32..40].copy_from_slice(&self.table_offset.to_le_bytes());
        h[40..48].copy_from_slice(&self.table_len.to_le_bytes());
        h[48..52].copy_from_slice(&self.table_crc.to_le_bytes());
        let crc = crc32c::crc32c(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }
}

/// Where a component's bytes are (all its chunks, contiguous).
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    offset: u64,
    length: u64,
}

#[derive(Debug, Clone)]
struct AuxIndex {
    name: String,
    dtype: AuxDtype,
    shape: Vec<u64>,
    span: Span,
}

#[derive(Debug, Clone)]
struct LayerIndex {
    params: LayerParams,
    components: [Span; 8],
    aux: Vec<AuxIndex>,
}

/// Everything learned from validating a buffer; holds offsets, never borrowed bytes.
#[derive(Debug, Clone)]
struct Index {
    major: u16,
    minor: u16,
    file_len: u64,
    entries: Vec<SectionEntry>,
    metadata: Span,
    layers: Vec<LayerIndex>,
}

fn checksum(buf: &[u8], section: Section, span: Span, stored: u32) -> Result<(), FormatError> {
    let bytes = slice(buf, span);
    let computed = crc32c::crc32c(bytes);
    if computed == stored {
        Ok(())
    } else {
        Err(FormatError::Checksum {
            section,
            stored,
            computed,
        })
    }
}

/// The bytes of a validated span (empty if the buffer changed under us, which the `AsRef`
/// contract of [`Nqkv`] rules out).
fn slice(buf: &[u8], span: Span) -> &[u8] {
    let range = usize::try_from(span.offset).ok().and_then(|start| {
        let end = start.checked_add(usize::try_from(span.length).ok()?)?;
        Some(start..end)
    });
    range.and_then(|r| buf.get(r)).unwrap_or(&[])
}

fn parse_header(buf: &[u8]) -> Result<Header, FormatError> {
    let prefix = buf.get(..MAGIC.len()).unwrap_or(buf);
    if prefix != MAGIC.get(..prefix.len()).unwrap_or(&MAGIC) {
        return Err(FormatError::BadMagic {
            found: prefix.to_vec(),
        });
    }
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Err(FormatError::Truncated {
            what: "header",
            needed: HEADER_LEN as u64,
            available: buf.len() as u64,
        });
    };
    let major = le_u16(h, 8);
    let minor = le_u16(h, 10);
    if major != FORMAT_MAJOR {
        return Err(FormatError::UnsupportedVersion { major, minor });
    }
    let stored = le_u32(h, 60);
    let computed = crc32c::crc32c(h.get(..60).unwrap_or(&[]));
    if stored != computed {
        return Err(FormatError::Checksum {
            section: Section::Header,
            stored,
            computed,
        });
    }
    let header = Header {
        major,
        minor,
        file_len: le_u64(h, 16),
        layer_count: le_u32(h, 24),
        section_count: le_u32(h, 28),
        table_offset: le_u64(h, 32),
        table_len: le_u64(h, 40),
        table_crc: le_u32(h, 48),
    };
    let actual = buf.len() as u64;
    if actual < header.file_len {
        return Err(FormatError::Truncated {
            what: "file",
            needed: header.file_len,
            available: actual,
        });
    }
    if actual > header.file_len {
        return Err(FormatError::TrailingBytes {
            declared: header.file_len,
            actual,
        });
    }
    if header.layer_count > MAX_LAYERS {
        return Err(FormatError::CountOverLimit {
            what: "layer_count",
            count: u64::from(header.layer_count),
            limit: u64::from(MAX_LAYERS),
        });
    }
    if header.section_count > MAX_SECTIONS {
        return Err(FormatError::CountOverLimit {
            what: "section_count",
            count: u64::from(header.section_count),
            limit: u64::from(MAX_SECTIONS),
        });
    }
    Ok(header)
}

/// Checks that a region starts where the canonical tiling says (the next multiple of 64 after
/// `*prev_end`), that the padding before it is zero and that it ends inside the file; then
/// advances `*prev_end` to its end.
fn place(
    buf: &[u8],
    section: Section,
    offset: u64,
    length: u64,
    prev_end: &mut u64,
) -> Result<(), FormatError> {
    let file_len = buf.len() as u64;
    let expected = align_up(*prev_end).ok_or(FormatError::Overflow {
        what: "section offset",
    })?;
    if offset % ALIGNMENT != 0 {
        return Err(FormatError::Misaligned { section, offset });
    }
    if offset < expected {
        return Err(FormatError::Overlap {
            section,
            offset,
            expected,
        });
    }
    if offset > expected {
        return Err(FormatError::Gap {
            section,
            offset,
            expected,
        });
    }
    let end = offset.checked_add(length).ok_or(FormatError::Overflow {
        what: "section end",
    })?;
    if end > file_len {
        return Err(FormatError::OutOfRange {
            section,
            offset,
            length,
            file_len,
        });
    }
    let padding = slice(
        buf,
        Span {
            offset: *prev_end,
            length: offset - *prev_end,
        },
    );
    if let Some(i) = padding.iter().position(|&b| b != 0) {
        return Err(FormatError::NonZeroPadding {
            offset: *prev_end + i as u64,
        });
    }
    *prev_end = end;
    Ok(())
}

/// Walks the section table in the canonical order of `docs/format.md`.
struct Walk<'e> {
    entries: &'e [SectionEntry],
    pos: usize,
}

impl<'e> Walk<'e> {
    /// The next entry, which must be `expected` and hold `tokens` tokens.
    fn expect(
        &mut self,
        expected: SectionId,
        tokens: u32,
    ) -> Result<(Section, &'e SectionEntry), FormatError> {
        let Some(e) = self.entries.get(self.pos) else {
            return Err(FormatError::MissingSection { expected });
        };
        let section = Section::Entry(self.pos as u32, e.id);
        if e.id != expected {
            return Err(FormatError::UnexpectedSection {
                section,
                expected: expected.to_string(),
            });
        }
        if e.tokens != tokens {
            return Err(FormatError::ShapeMismatch {
                section,
                what: "token count",
                expected: u64::from(tokens),
                found: u64::from(e.tokens),
            });
        }
        self.pos += 1;
        Ok((section, e))
    }
}

fn expect_len(section: Section, e: &SectionEntry, expected: u64) -> Result<(), FormatError> {
    if e.length == expected {
        Ok(())
    } else {
        Err(FormatError::ShapeMismatch {
            section,
            what: "length in bytes",
            expected,
            found: e.length,
        })
    }
}

fn span(e: &SectionEntry) -> Span {
    Span {
        offset: e.offset,
        length: e.length,
    }
}

/// Checks a metadata document: at most [`MAX_METADATA_BYTES`], UTF-8, a JSON object.
pub(crate) fn check_metadata(bytes: &[u8]) -> Result<&str, MetadataError> {
    if bytes.len() > MAX_METADATA_BYTES {
        return Err(MetadataError::TooLong {
            len: bytes.len() as u64,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| MetadataError::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| MetadataError::NotJson {
            message: e.to_string(),
        })?;
    let found = match value {
        serde_json::Value::Object(_) => return Ok(text),
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
    };
    Err(MetadataError::NotObject { found })
}

fn aux_error(index: u32, reason: impl Into<String>) -> ParamError {
    ParamError::AuxRecord {
        index,
        reason: reason.into(),
    }
}

/// Decodes one 56-byte aux record:
///
/// ```text
///  0 u8 dtype (1 int32, 2 int64)   1 u8 ndim (0..=4)   2 u8 name_len (1..=32)   3 u8 reserved
///  4 [u32; 4] dims (unused ones 0)                     20 [u8; 32] name (UTF-8, zero padded)
/// 52 u32 reserved
/// ```
fn decode_aux(r: &[u8], index: u32) -> Result<(String, AuxDtype, Vec<u64>), ParamError> {
    let get = |o: usize| r.get(o).copied().unwrap_or(0);
    let ndim = usize::from(get(1));
    let name_len = usize::from(get(2));
    let name_field = r.get(20..20 + MAX_AUX_NAME_LEN).unwrap_or(&[]);
    if name_len == 0 || name_len > MAX_AUX_NAME_LEN {
        return Err(aux_error(
            index,
            format!("name_len must be in [1, {MAX_AUX_NAME_LEN}], got {name_len}"),
        ));
    }
    let (name_bytes, name_pad) = name_field.split_at(name_len.min(name_field.len()));
    let name =
        std::str::from_utf8(name_bytes).map_err(|_| aux_error(index, "name is not valid UTF-8"))?;
    if name_pad.iter().any(|&b| b != 0) {
        return Err(aux_error(index, "name padding must be zero"));
    }
    let Some(dtype) = AuxDtype::from_code(get(0)) else {
        return Err(ParamError::AuxDtype {
            name: name.to_owned(),
            got: get(0),
        });
    };
    if ndim > MAX_AUX_NDIM {
        return Err(aux_error(
            index,
            format!("ndim must be in [0, {MAX_AUX_NDIM}], got {ndim}"),
        ));
    }
    let dims: Vec<u64> = (0..MAX_AUX_NDIM)
        .map(|i| u64::from(le_u32(r, 4 + 4 * i)))
        .collect();
    let (shape, unused) = dims.split_at(ndim);
    if unused.iter().any(|&d| d != 0) {
        return Err(aux_error(index, "dims beyond ndim must be zero"));
    }
    Ok((name.to_owned(), dtype, shape.to_vec()))
}

/// Byte length of an aux array, or `None` on overflow.
pub(crate) fn aux_bytes(dtype: AuxDtype, shape: &[u64]) -> Option<u64> {
    shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
}

fn parse_index(buf: &[u8]) -> Result<Index, FormatError> {
    let header = parse_header(buf)?;

    // Section table: right after the header, section_count entries, own checksum.
    let table_len = u64::from(header.section_count)
        .checked_mul(ENTRY_LEN as u64)
        .ok_or(FormatError::Overflow {
            what: "section table length",
        })?;
    if header.table_len != table_len {
        return Err(FormatError::ShapeMismatch {
            section: Section::Table,
            what: "length in bytes",
            expected: table_len,
            found: header.table_len,
        });
    }
    let mut prev_end = HEADER_LEN as u64;
    place(
        buf,
        Section::Table,
        header.table_offset,
        table_len,
        &mut prev_end,
    )?;
    let table_span = Span {
        offset: header.table_offset,
        length: table_len,
    };
    checksum(buf, Section::Table, table_span, header.table_crc)?;
    // `table_len <= file_len` was just checked, so this allocation is bounded by the data.
    let entries: Vec<SectionEntry> = slice(buf, table_span)
        .chunks_exact(ENTRY_LEN)
        .map(SectionEntry::decode)
        .collect();

    // Tiling: every section at the next aligned offset, zero padding, nothing after the last.
    for (i, e) in entries.iter().enumerate() {
        place(
            buf,
            Section::Entry(i as u32, e.id),
            e.offset,
            e.length,
            &mut prev_end,
        )?;
    }
    let file_len = buf.len() as u64;
    if prev_end != file_len {
        return Err(FormatError::Gap {
            section: Section::FileEnd,
            offset: file_len,
            expected: prev_end,
        });
    }

    let mut walk = Walk {
        entries: &entries,
        pos: 0,
    };
    let file_level = |kind: SectionKind| SectionId {
        kind: kind.code(),
        component: 0,
        layer: 0,
        index: 0,
    };

    // Metadata.
    let (section, e) = walk.expect(file_level(SectionKind::Metadata), 0)?;
    if e.length > MAX_METADATA_BYTES as u64 {
        return Err(FormatError::BadMetadata(MetadataError::TooLong {
            len: e.length,
        }));
    }
    checksum(buf, section, span(e), e.crc)?;
    check_metadata(slice(buf, span(e))).map_err(FormatError::BadMetadata)?;
    let metadata = span(e);

    // Layer table.
    let (section, e) = walk.expect(file_level(SectionKind::LayerTable), 0)?;
    let expected = u64::from(header.layer_count) * LAYER_RECORD_LEN as u64;
    expect_len(section, e, expected)?;
    checksum(buf, section, span(e), e.crc)?;
    let mut layers = Vec::new();
    let mut aux_counts = Vec::new();
    for (l, rec) in slice(buf, span(e))
        .chunks_exact(LAYER_RECORD_LEN)
        .enumerate()
    {
        let mut r = [0u8; LAYER_RECORD_LEN];
        r.copy_from_slice(rec);
        let (params, aux_count) =
            LayerParams::decode(&r).map_err(|error| FormatError::InvalidParameter {
                layer: l as u32,
                error,
            })?;
        layers.push(LayerIndex {
            params,
            components: [Span::default(); 8],
            aux: Vec::new(),
        });
        aux_counts.push(aux_count);
    }

    // Aux directory, when any layer has aux arrays.
    let total_aux: u64 = aux_counts.iter().map(|&n| u64::from(n)).sum();
    if total_aux > 0 {
        let (section, e) = walk.expect(file_level(SectionKind::AuxDirectory), 0)?;
        expect_len(section, e, total_aux * AUX_RECORD_LEN as u64)?;
        checksum(buf, section, span(e), e.crc)?;
        let mut records = slice(buf, span(e)).chunks_exact(AUX_RECORD_LEN);
        for (l, (layer, &count)) in layers.iter_mut().zip(&aux_counts).enumerate() {
            for j in 0..count {
                let r = records.next().unwrap_or(&[]);
                let invalid = |error| FormatError::InvalidParameter {
                    layer: l as u32,
                    error,
                };
                let (name, dtype, shape) = decode_aux(r, j).map_err(invalid)?;
                if layer.aux.iter().any(|a| a.name == name) {
                    return Err(invalid(aux_error(j, format!("duplicate name {name:?}"))));
                }
                layer.aux.push(AuxIndex {
                    name,
                    dtype,
                    shape,
                    span: Span::default(),
                });
            }
        }
    }

    // Per layer: the chunks of each component, then the aux arrays.
    for (l, layer) in layers.iter_mut().enumerate() {
        let params = layer.params;
        for c in Component::ALL {
            let total = params.tokens(c);
            let mut first: Option<u64> = None;
            let mut length = 0u64;
            for (i, t0) in (0..total).step_by(CHUNK_TOKENS as usize).enumerate() {
                let tokens = (total - t0).min(CHUNK_TOKENS);
                let id = SectionId {
                    kind: SectionKind::Chunk.code(),
                    component: c.code(),
                    layer: l as u32,
                    index: i as u32,
                };
                let (section, e) = walk.expect(id, tokens)?;
                let bytes =
                    params
                        .bytes_for(c, u64::from(tokens))
                        .ok_or(FormatError::Overflow {
                            what: "chunk length",
                        })?;
                expect_len(section, e, bytes)?;
                // Non-final chunks hold 256 tokens, a multiple of 64 bytes, so the tiling
                // places the chunks of a component back to back.
                first.get_or_insert(e.offset);
                length = length.checked_add(e.length).ok_or(FormatError::Overflow {
                    what: "component length",
                })?;
            }
            layer.components[c as usize] = Span {
                offset: first.unwrap_or(0),
                length,
            };
        }
        for (j, aux) in layer.aux.iter_mut().enumerate() {
            let id = SectionId {
                kind: SectionKind::AuxData.code(),
                component: 0,
                layer: l as u32,
                index: j as u32,
            };
            let (section, e) = walk.expect(id, 0)?;
            let bytes = aux_bytes(aux.dtype, &aux.shape).ok_or(FormatError::Overflow {
                what: "aux array length",
            })?;
            expect_len(section, e, bytes)?;
            aux.span = span(e);
        }
    }

    // Anything left must be an extension section of a later minor version.
    for (i, e) in entries.iter().enumerate().skip(walk.pos) {
        let is_extension = matches!(e.kind(), Some(SectionKind::Extension(_)));
        if !(is_extension && header.minor > FORMAT_MINOR) {
            return Err(FormatError::UnexpectedSection {
                section: Section::Entry(i as u32, e.id),
                expected: "the end of the section table".to_owned(),
            });
        }
    }

    Ok(Index {
        major: header.major,
        minor: header.minor,
        file_len,
        entries,
        metadata,
        layers,
    })
}

/// A validated `.nqkv` buffer (a byte slice, a `Vec<u8>`, a memory map, ...) with zero-copy
/// views of its contents.
///
/// `B::as_ref` must return the same bytes on every call (true of every standard buffer type).
#[derive(Debug)]
pub struct Nqkv<B> {
    buf: B,
    index: Index,
}

/// Checksum status of one data section (chunk, aux array or extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkStatus {
    /// Position in the section table.
    pub entry_index: u32,
    /// The section.
    pub entry: SectionEntry,
    /// CRC-32C of the bytes as they are.
    pub computed: u32,
}

impl ChunkStatus {
    /// Whether the stored checksum matches the bytes.
    pub fn ok(&self) -> bool {
        self.computed == self.entry.crc
    }
}

/// One component of one layer: `tokens` tokens in token-major order, i.e. a C-contiguous
/// `(tokens, batch, num_kv_heads, row_bytes)` byte array.
#[derive(Debug, Clone, Copy)]
pub struct ComponentView<'a> {
    /// Which component.
    pub component: Component,
    /// Token count.
    pub tokens: u32,
    /// Batch size.
    pub batch: u32,
    /// KV heads.
    pub num_kv_heads: u32,
    /// Bytes per head-vector.
    pub row_bytes: u64,
    /// The bytes, `tokens * batch * num_kv_heads * row_bytes` of them.
    pub data: &'a [u8],
}

impl<'a> ComponentView<'a> {
    /// The bytes of token `t` of batch row `b`, head `h`.
    pub fn row(&self, t: u32, b: u32, h: u32) -> Option<&'a [u8]> {
        if t >= self.tokens || b >= self.batch || h >= self.num_kv_heads {
            return None;
        }
        let bh = u64::from(self.batch) * u64::from(self.num_kv_heads);
        let i = u64::from(t) * bh + u64::from(b) * u64::from(self.num_kv_heads) + u64::from(h);
        let start = usize::try_from(i * self.row_bytes).ok()?;
        let len = usize::try_from(self.row_bytes).ok()?;
        self.data.get(start..start.checked_add(len)?)
    }

    /// A copy in head-major order: a C-contiguous `(batch, num_kv_heads, tokens, row_bytes)`
    /// byte array, the layout the writer takes.
    pub fn to_head_major(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len());
        for b in 0..self.batch {
            for h in 0..self.num_kv_heads {
                for t in 0..self.tokens {
                    out.extend_from_slice(self.row(t, b, h).unwrap_or(&[]));
                }
            }
        }
        out
    }
}

/// One aux array of a layer: little-endian integers in C order.
#[derive(Debug, Clone, Copy)]
pub struct AuxView<'a> {
    /// Name (unique within the layer).
    pub name: &'a str,
    /// Element type.
    pub dtype: AuxDtype,
    /// Shape (0 to 4 dimensions).
    pub shape: &'a [u64],
    /// The bytes.
    pub data: &'a [u8],
}

/// One layer: its parameters and views of its components and aux arrays.
#[derive(Debug, Clone)]
pub struct LayerView<'a> {
    /// Codec parameters and token counts.
    pub params: &'a LayerParams,
    components: [ComponentView<'a>; 8],
    /// Aux arrays, in file order.
    pub aux: Vec<AuxView<'a>>,
}

impl<'a> LayerView<'a> {
    /// The view of one component.
    pub fn component(&self, c: Component) -> &ComponentView<'a> {
        &self.components[c as usize]
    }
}

impl<B: AsRef<[u8]>> Nqkv<B> {
    /// Validates the structure of `buf`: header, section table, tiling, metadata, layer table,
    /// aux directory and every size. The checksums of those are verified; the checksums of the
    /// token chunks and aux arrays are not (see [`Nqkv::verify`], [`Nqkv::chunk_statuses`]).
    pub fn parse(buf: B) -> Result<Self, FormatError> {
        let index = parse_index(buf.as_ref())?;
        Ok(Nqkv { buf, index })
    }

    /// Verifies the checksum of every chunk, aux array and extension section.
    pub fn verify(&self) -> Result<(), FormatError> {
        match self.chunk_statuses().into_iter().find(|s| !s.ok()) {
            None => Ok(()),
            Some(s) => Err(FormatError::Checksum {
                section: Section::Entry(s.entry_index, s.entry.id),
                stored: s.entry.crc,
                computed: s.computed,
            }),
        }
    }

    /// The checksum status of every data section (those not verified by [`Nqkv::parse`]).
    pub fn chunk_statuses(&self) -> Vec<ChunkStatus> {
        let buf = self.buf.as_ref();
        self.index
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                !matches!(
                    e.kind(),
                    Some(
                        SectionKind::Metadata | SectionKind::LayerTable | SectionKind::AuxDirectory
                    )
                )
            })
            .map(|(i, e)| ChunkStatus {
                entry_index: i as u32,
                entry: *e,
                computed: crc32c::crc32c(slice(buf, span(e))),
            })
            .collect()
    }

    /// Format version `(major, minor)` of the file.
    pub fn version(&self) -> (u16, u16) {
        (self.index.major, self.index.minor)
    }

    /// Total length in bytes.
    pub fn file_len(&self) -> u64 {
        self.index.file_len
    }

    /// The section table.
    pub fn sections(&self) -> &[SectionEntry] {
        &self.index.entries
    }

    /// The metadata document (a UTF-8 JSON object).
    pub fn metadata(&self) -> &str {
        std::str::from_utf8(slice(self.buf.as_ref(), self.index.metadata)).unwrap_or("{}")
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.index.layers.len()
    }

    /// Layer `l`, or `None` past the last layer.
    pub fn layer(&self, l: usize) -> Option<LayerView<'_>> {
        let layer = self.index.layers.get(l)?;
        let buf = self.buf.as_ref();
        let p = &layer.params;
        let components = Component::ALL.map(|c| ComponentView {
            component: c,
            tokens: p.tokens(c),
            batch: p.batch,
            num_kv_heads: p.num_kv_heads,
            row_bytes: p.row_bytes(c),
            data: slice(buf, layer.components[c as usize]),
        });
        let aux = layer
            .aux
            .iter()
            .map(|a| AuxView {
                name: &a.name,
                dtype: a.dtype,
                shape: &a.shape,
                data: slice(buf, a.span),
            })
            .collect();
        Some(LayerView {
            params: p,
            components,
            aux,
        })
    }

    /// All layers, in order.
    pub fn layers(&self) -> impl Iterator<Item = LayerView<'_>> {
        (0..self.num_layers()).filter_map(move |l| self.layer(l))
    }

    /// Byte offset of each component's data (for callers that map the same file themselves).
    pub fn component_offset(&self, l: usize, c: Component) -> Option<u64> {
        Some(self.index.layers.get(l)?.components[c as usize].offset)
    }

    /// Byte offset of aux array `j` of layer `l`.
    pub fn aux_offset(&self, l: usize, j: usize) -> Option<u64> {
        Some(self.index.layers.get(l)?.aux.get(j)?.span.offset)
    }

    /// The underlying buffer.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> B {
        self.buf
    }
}

/// Parses `bytes` and verifies every checksum.
pub fn read(bytes: &[u8]) -> Result<Nqkv<&[u8]>, FormatError> {
    let file = Nqkv::parse(bytes)?;
    file.verify()?;
    Ok(file)
}

/// Memory-maps the file at `path`, parses it and verifies every checksum. The views borrow the
/// mapping: nothing is copied.
///
/// The file must not be modified in place while mapped (truncating it under the mapping makes
/// later accesses fault). Files written by [`super::write_file`] and by the stores are replaced
/// by rename, never modified in place, so a mapping keeps seeing the file it opened.
pub fn open(path: impl AsRef<Path>) -> Result<Nqkv<Mmap>, FormatError> {
    let path = path.as_ref();
    let io = |source| FormatError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    // SAFETY: the mapping is read-only and private to this value; see the contract above
    // about in-place modification, which this crate never does to its own files.
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    let nqkv = Nqkv::parse(map)?;
    nqkv.verify()?;
    Ok(nqkv)
}
