//! Error types of the `.nqkv` reader and writer: one variant per failure.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::params::Component;
use super::{MAGIC, MAX_METADATA_BYTES};

/// Identity of a section as declared in the section table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SectionId {
    /// Raw section kind (see [`super::SectionKind`]).
    pub kind: u16,
    /// Component index for chunks (see [`Component`]), 0 otherwise.
    pub component: u16,
    /// Layer the section belongs to (0 for file-level sections).
    pub layer: u32,
    /// Chunk index within the component, or aux array index within the layer.
    pub index: u32,
}

impl fmt::Display for SectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            1 => write!(f, "metadata"),
            2 => write!(f, "layer table"),
            3 => write!(f, "aux directory"),
            4 => match Component::from_code(self.component) {
                Some(c) => write!(f, "layer {} {} chunk {}", self.layer, c.name(), self.index),
                None => write!(
                    f,
                    "layer {} component {} chunk {}",
                    self.layer, self.component, self.index
                ),
            },
            5 => write!(f, "layer {} aux array {}", self.layer, self.index),
            k => write!(
                f,
                "section of kind {k:#06x} (layer {}, component {}, index {})",
                self.layer, self.component, self.index
            ),
        }
    }
}

/// Where in a file an error was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The fixed 64-byte header.
    Header,
    /// The section table.
    Table,
    /// Entry `.0` of the section table, declaring section `.1`.
    Entry(u32, SectionId),
    /// The end of the file (after the last section).
    FileEnd,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Section::Header => write!(f, "header"),
            Section::Table => write!(f, "section table"),
            Section::Entry(i, id) => write!(f, "section {i} ({id})"),
            Section::FileEnd => write!(f, "end of file"),
        }
    }
}

/// A codec or layer parameter outside its allowed values. Each message names the field and
/// what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// Unknown codec tag.
    #[error("codec must be one of [\"e8v1\"], got {got:?}")]
    Codec {
        /// The 4 tag bytes found.
        got: [u8; 4],
    },
    /// A bit width outside 1..=8.
    #[error("{field} must be one of [1, 2, 3, 4, 5, 6, 7, 8], got {got}")]
    Bits {
        /// `key_bits` or `value_bits`.
        field: &'static str,
        /// The value found.
        got: u8,
    },
    /// A head dimension that is not a multiple of 8 in [8, 1024].
    #[error("head_dim must be a multiple of 8 in [8, 1024], got {got}")]
    HeadDim {
        /// The value found.
        got: u32,
    },
    /// An integer field outside its range.
    #[error("{field} must be in [{min}, {max}], got {got}")]
    Range {
        /// Name of the field.
        field: &'static str,
        /// The value found.
        got: u64,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// Unknown raw-tensor dtype code.
    #[error("raw_dtype must be one of [1 (float32), 2 (float16), 3 (bfloat16)], got {got}")]
    RawDtype {
        /// The code found.
        got: u8,
    },
    /// Unknown layer type code.
    #[error("layer_type must be one of [0 (full), 1 (sliding)], got {got}")]
    LayerType {
        /// The code found.
        got: u8,
    },
    /// A sliding window size that does not fit the layer type.
    #[error(
        "sliding_window must be 0 for a full-attention layer and in [1, {max}] for a sliding \
         layer, got {got} for a {layer_type} layer",
        max = super::MAX_TOKENS
    )]
    SlidingWindow {
        /// `"full"` or `"sliding"`.
        layer_type: &'static str,
        /// The window size found.
        got: u32,
    },
    /// Unknown aux array dtype code.
    #[error("aux array {name:?}: dtype must be one of [1 (int32), 2 (int64)], got {got}")]
    AuxDtype {
        /// Name of the array.
        name: String,
        /// The code found.
        got: u8,
    },
    /// An aux array record that breaks a rule other than its dtype.
    #[error("aux array {index}: {reason}")]
    AuxRecord {
        /// Index of the array within its layer.
        index: u32,
        /// The rule broken.
        reason: String,
    },
}

/// A metadata document that is not a UTF-8 JSON object of at most [`MAX_METADATA_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// Longer than [`MAX_METADATA_BYTES`].
    #[error("metadata is {len} bytes, the limit is {max} bytes", max = MAX_METADATA_BYTES)]
    TooLong {
        /// Length found.
        len: u64,
    },
    /// Not valid UTF-8.
    #[error("metadata is not valid UTF-8 (valid up to byte {valid_up_to})")]
    NotUtf8 {
        /// Length of the longest valid prefix.
        valid_up_to: usize,
    },
    /// Not valid JSON.
    #[error("metadata is not valid JSON: {message}")]
    NotJson {
        /// The parser's message.
        message: String,
    },
    /// Valid JSON, but not an object.
    #[error("metadata must be a JSON object, got a JSON {found}")]
    NotObject {
        /// What was found (array, string, number, ...).
        found: &'static str,
    },
}

/// Invalid arguments given to the writer (the data to be written, not a file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// A layer parameter outside its allowed values.
    #[error("layer {layer}: {error}")]
    Param {
        /// Layer index.
        layer: usize,
        /// The parameter at fault.
        error: ParamError,
    },
    /// An array whose byte length does not match the layer parameters.
    #[error("layer {layer}: {array} must be {expected} bytes ({shape}), got {got} bytes")]
    Shape {
        /// Layer index.
        layer: usize,
        /// Name of the array.
        array: String,
        /// The expected shape, in words.
        shape: String,
        /// Expected byte length.
        expected: u64,
        /// Byte length given.
        got: u64,
    },
    /// The metadata document.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// More layers, sections or aux arrays than the format allows.
    #[error("{what}: {count} is over the limit of {limit}")]
    TooMany {
        /// What is counted.
        what: &'static str,
        /// How many were given.
        count: u64,
        /// The limit.
        limit: u64,
    },
}

/// Why a `.nqkv` file or buffer could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The data does not start with [`MAGIC`].
    #[error("not a .nqkv file: starts with {found:02x?}, expected {MAGIC:02x?}")]
    BadMagic {
        /// The first bytes found (at most 8).
        found: Vec<u8>,
    },
    /// The major version is not [`super::FORMAT_MAJOR`].
    #[error(
        "unsupported .nqkv version {major}.{minor}: this build reads major version {} only",
        super::FORMAT_MAJOR
    )]
    UnsupportedVersion {
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
    },
    /// The data ends before something it declares.
    #[error("truncated: the {what} needs {needed} bytes, the data has {available}")]
    Truncated {
        /// What was cut short.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        available: u64,
    },
    /// A checksum does not match.
    #[error("checksum mismatch in {section}: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The section whose bytes do not match.
        section: Section,
        /// Checksum stored in the file.
        stored: u32,
        /// Checksum of the bytes.
        computed: u32,
    },
    /// A section offset that is not a multiple of [`super::ALIGNMENT`].
    #[error("{section} starts at offset {offset}, not a multiple of 64")]
    Misaligned {
        /// The section.
        section: Section,
        /// Its declared offset.
        offset: u64,
    },
    /// A section that starts before the end of the previous one.
    #[error(
        "{section} starts at offset {offset}, overlapping what precedes it (expected {expected})"
    )]
    Overlap {
        /// The section.
        section: Section,
        /// Its declared offset.
        offset: u64,
        /// Where it must start.
        expected: u64,
    },
    /// Bytes between sections beyond the alignment padding.
    #[error("{section} starts at offset {offset}, leaving a gap (expected {expected})")]
    Gap {
        /// The section (or [`Section::FileEnd`] for bytes after the last one).
        section: Section,
        /// Its declared offset.
        offset: u64,
        /// Where it must start.
        expected: u64,
    },
    /// A section that extends past the end of the file.
    #[error("{section} at offset {offset} with length {length} ends past the end of the file ({file_len} bytes)")]
    OutOfRange {
        /// The section.
        section: Section,
        /// Its declared offset.
        offset: u64,
        /// Its declared length.
        length: u64,
        /// File length.
        file_len: u64,
    },
    /// A non-zero byte in alignment padding.
    #[error("non-zero byte in alignment padding at offset {offset}")]
    NonZeroPadding {
        /// Offset of the first non-zero padding byte.
        offset: u64,
    },
    /// More bytes than the header declares.
    #[error("the header declares {declared} bytes, the data has {actual}")]
    TrailingBytes {
        /// `file_len` from the header.
        declared: u64,
        /// Length of the data.
        actual: u64,
    },
    /// A size computation overflowed.
    #[error("size overflow while computing {what}")]
    Overflow {
        /// What was being computed.
        what: &'static str,
    },
    /// A count above its named limit.
    #[error("{what} is {count}, over the limit of {limit}")]
    CountOverLimit {
        /// What is counted.
        what: &'static str,
        /// The count found.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// A section in a place where the format requires a different one.
    #[error("{section} is out of place: expected {expected}")]
    UnexpectedSection {
        /// The section found.
        section: Section,
        /// What the format requires there.
        expected: String,
    },
    /// The table ends before a section the layer table requires.
    #[error("missing section: {expected}")]
    MissingSection {
        /// The section required.
        expected: SectionId,
    },
    /// A layer record with a parameter outside its allowed values.
    #[error("layer {layer}: {error}")]
    InvalidParameter {
        /// Layer index.
        layer: u32,
        /// The parameter at fault.
        error: ParamError,
    },
    /// A section whose size or token count disagrees with the parameters.
    #[error("{section}: {what} is {found}, expected {expected}")]
    ShapeMismatch {
        /// The section.
        section: Section,
        /// What disagrees (length in bytes, token count, ...).
        what: &'static str,
        /// Value expected from the parameters.
        expected: u64,
        /// Value found.
        found: u64,
    },
    /// The metadata section is not a UTF-8 JSON object within the size limit.
    #[error("bad metadata: {0}")]
    BadMetadata(MetadataError),
    /// The writer was given invalid data.
    #[error("invalid input: {0}")]
    InvalidInput(#[from] InputError),
    /// An I/O error while reading or writing a file.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An I/O error from a caller-provided sink.
    #[error("I/O error while writing: {0}")]
    Sink(#[source] io::Error),
}
