//! The `.nqkv` container: one compressed KV cache in a single, checksummed, versioned file.
//!
//! `docs/format.md` is the specification; this module implements it. In short:
//!
//! ```text
//! offset 0    header (64 bytes): magic, version, file length, counts, table offset/length,
//!             table checksum, header checksum
//! offset 64   section table: section_count entries of 40 bytes (kind, component, layer,
//!             index, tokens, offset, length, crc32c)
//! then        sections, each starting at the next multiple of 64 after the previous one,
//!             zero padding in between, the last one ending at the end of the file:
//!             metadata (UTF-8 JSON object), layer table (64 bytes per layer),
//!             aux directory (56 bytes per aux array, only when there is one), then per layer:
//!             the chunks of k_codes, k_scales, v_codes, v_scales, k_sink, v_sink, k_window,
//!             v_window (256 tokens each, the last one shorter), then the layer's aux arrays.
//! ```
//!
//! Token data is stored *token-major*: a component of `T` tokens is a `(T, batch, kv_heads,
//! row_bytes)` array, so every 256-token chunk is one contiguous byte range with its own
//! checksum, a prefix of tokens is a prefix of bytes, and the chunks of a component are
//! adjacent: a reader hands out the whole component as one slice without copying.
//!
//! Every input is treated as hostile: [`Nqkv::parse`] never panics, never indexes out of
//! bounds, computes every size with checked arithmetic, caps every count by a named constant and
//! allocates only after a size has been checked against the length of the data. Each failure has
//! its own [`FormatError`] variant.
//!
//! Writing goes through [`write()`] (any `Write + Seek` sink), [`to_vec`], or [`write_file`],
//! which replaces the target atomically (temporary file, fsync, rename, fsync of the directory).

mod atomic;
mod error;
mod params;
mod reader;
mod writer;

pub use atomic::{atomic_write, replace_file, sync_dir, TEMP_SUFFIX};
pub use error::{FormatError, InputError, MetadataError, ParamError, Section, SectionId};
pub use params::{AuxDtype, Codec, Component, LayerParams, LayerType, RawDtype};
pub use reader::{
    open, read, AuxView, ChunkStatus, ComponentView, LayerView, Nqkv, SectionEntry, SectionKind,
};
pub use writer::{to_vec, write, write_file, AuxArray, LayerData};

/// The 8 bytes every `.nqkv` file starts with. `\r\n`, `\x1a` and the final `\n` detect
/// line-ending conversion and text-mode truncation, as in PNG.
pub const MAGIC: [u8; 8] = *b"NQKV\r\n\x1a\n";
/// Major format version written and read by this build. A reader rejects any other major.
pub const FORMAT_MAJOR: u16 = 1;
/// Minor format version written by this build. A reader accepts any minor of its major:
/// a higher minor may only add what older readers can skip (see `docs/format.md`).
pub const FORMAT_MINOR: u16 = 0;
/// Every section starts at a multiple of this many bytes.
pub const ALIGNMENT: u64 = 64;
/// Size of the fixed header at offset 0.
pub const HEADER_LEN: usize = 64;
/// Size of one section-table entry.
pub const ENTRY_LEN: usize = 40;
/// Size of one record of the layer table.
pub const LAYER_RECORD_LEN: usize = 64;
/// Size of one record of the aux directory.
pub const AUX_RECORD_LEN: usize = 56;
/// Tokens per chunk along the token axis (the last chunk of a component may hold fewer).
pub const CHUNK_TOKENS: u32 = 256;
/// Largest metadata document, in bytes.
pub const MAX_METADATA_BYTES: usize = 1 << 20;
/// Largest number of layers in one file.
pub const MAX_LAYERS: u32 = 4096;
/// Largest number of sections in one file.
pub const MAX_SECTIONS: u32 = 1 << 24;
/// Largest token count of one segment (compressed, sink or window) of one layer.
pub const MAX_TOKENS: u32 = 1 << 26;
/// Largest batch size.
pub const MAX_BATCH: u32 = 1 << 16;
/// Largest number of KV heads.
pub const MAX_KV_HEADS: u32 = 1 << 10;
/// Smallest head dimension (the codec needs whole blocks of 8).
pub const MIN_HEAD_DIM: u32 = 8;
/// Largest head dimension.
pub const MAX_HEAD_DIM: u32 = 1024;
/// Largest number of aux arrays per layer.
pub const MAX_AUX_PER_LAYER: u32 = 64;
/// Longest aux array name, in bytes of UTF-8.
pub const MAX_AUX_NAME_LEN: usize = 32;
/// Largest number of dimensions of an aux array.
pub const MAX_AUX_NDIM: usize = 4;

/// `x` rounded up to the next multiple of [`ALIGNMENT`], or `None` on overflow.
fn align_up(x: u64) -> Option<u64> {
    x.checked_add(ALIGNMENT - 1).map(|v| v & !(ALIGNMENT - 1))
}
