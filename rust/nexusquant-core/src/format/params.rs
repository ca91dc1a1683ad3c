//! Per-layer codec parameters and the 64-byte layer record that stores them.

use super::error::ParamError;
use super::{LAYER_RECORD_LEN, MAX_AUX_PER_LAYER, MAX_BATCH, MAX_HEAD_DIM, MAX_KV_HEADS};
use super::{MAX_TOKENS, MIN_HEAD_DIM};

/// The codec that produced the compressed tokens. Its tag travels in every layer record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// `docs/codec.md` version 1: randomized Hadamard + E8 Voronoi codes, one fp16 scale.
    E8V1,
}

impl Codec {
    /// The 4-byte tag stored in the file.
    pub fn tag(self) -> [u8; 4] {
        match self {
            Codec::E8V1 => *b"e8v1",
        }
    }

    /// The codec with this tag.
    pub fn from_tag(tag: [u8; 4]) -> Result<Self, ParamError> {
        match &tag {
            b"e8v1" => Ok(Codec::E8V1),
            _ => Err(ParamError::Codec { got: tag }),
        }
    }
}

/// Element type of the raw (uncompressed) sink and window tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RawDtype {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
}

impl RawDtype {
    /// The code stored in the file (1, 2, 3).
    pub fn code(self) -> u8 {
        match self {
            RawDtype::F32 => 1,
            RawDtype::F16 => 2,
            RawDtype::BF16 => 3,
        }
    }

    /// The dtype with this code.
    pub fn from_code(code: u8) -> Result<Self, ParamError> {
        match code {
            1 => Ok(RawDtype::F32),
            2 => Ok(RawDtype::F16),
            3 => Ok(RawDtype::BF16),
            got => Err(ParamError::RawDtype { got }),
        }
    }

    /// Bytes per element.
    pub fn size(self) -> u32 {
        match self {
            RawDtype::F32 => 4,
            RawDtype::F16 | RawDtype::BF16 => 2,
        }
    }

    /// `"float32"`, `"float16"` or `"bfloat16"`.
    pub fn name(self) -> &'static str {
        match self {
            RawDtype::F32 => "float32",
            RawDtype::F16 => "float16",
            RawDtype::BF16 => "bfloat16",
        }
    }
}

/// Element type of an aux array (small per-layer integer arrays: lengths, positions, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuxDtype {
    /// Little-endian `i32`.
    I32,
    /// Little-endian `i64`.
    I64,
}

impl AuxDtype {
    /// The code stored in the file (1, 2).
    pub fn code(self) -> u8 {
        match self {
            AuxDtype::I32 => 1,
            AuxDtype::I64 => 2,
        }
    }

    /// The dtype with this code, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(AuxDtype::I32),
            2 => Some(AuxDtype::I64),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            AuxDtype::I32 => 4,
            AuxDtype::I64 => 8,
        }
    }

    /// `"int32"` or `"int64"`.
    pub fn name(self) -> &'static str {
        match self {
            AuxDtype::I32 => "int32",
            AuxDtype::I64 => "int64",
        }
    }
}

/// Attention type of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerType {
    /// Full (global) attention.
    Full,
    /// Sliding-window attention over the last `window` tokens.
    Sliding {
        /// The model's attention window, in tokens (at least 1).
        window: u32,
    },
}

/// The eight token components of a layer, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// Key codes: `head_dim * key_bits / 8` bytes per head-vector.
    KCodes,
    /// Key scales: one fp16 (stored as its `u16` bits) per head-vector.
    KScales,
    /// Value codes: `head_dim * value_bits / 8` bytes per head-vector.
    VCodes,
    /// Value scales: one fp16 per head-vector.
    VScales,
    /// Raw key sink tokens: `head_dim` elements of the raw dtype per head-vector.
    KSink,
    /// Raw value sink tokens.
    VSink,
    /// Raw key recent-window tokens.
    KWindow,
    /// Raw value recent-window tokens.
    VWindow,
}

impl Component {
    /// All components, in file order.
    pub const ALL: [Component; 8] = [
        Component::KCodes,
        Component::KScales,
        Component::VCodes,
        Component::VScales,
        Component::KSink,
        Component::VSink,
        Component::KWindow,
        Component::VWindow,
    ];

    /// The code stored in section entries (0..8, file order).
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The component with this code, if any.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// Snake-case name (`"k_codes"`, ..., `"v_window"`).
    pub fn name(self) -> &'static str {
        match self {
            Component::KCodes => "k_codes",
            Component::KScales => "k_scales",
            Component::VCodes => "v_codes",
            Component::VScales => "v_scales",
            Component::KSink => "k_sink",
            Component::VSink => "v_sink",
            Component::KWindow => "k_window",
            Component::VWindow => "v_window",
        }
    }
}

/// Codec parameters and token counts of one layer: one record of the layer table.
///
/// Record layout (64 bytes, little-endian):
///
/// ```text
///  0  [u8; 4] codec tag ("e8v1")     24  u64 key_seed
///  4  u32 head_dim                   32  u64 value_seed
///  8  u32 num_kv_heads               40  u32 sink_tokens   (configured)
/// 12  u32 batch                      44  u32 window_tokens (configured)
/// 16  u8  key_bits                   48  u32 n_sink        (raw sink tokens held)
/// 17  u8  value_bits                 52  u32 n_compressed  (compressed tokens held)
/// 18  u8  raw_dtype (1 f32, 2 f16, 3 bf16)   56  u32 n_window (raw window tokens held)
/// 19  u8  layer_type (0 full, 1 sliding)     60  u32 aux_count
/// 20  u32 sliding_window (0 for full)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerParams {
    /// Codec of the compressed tokens.
    pub codec: Codec,
    /// Elements per head-vector (a multiple of 8 in [8, 1024]).
    pub head_dim: u32,
    /// KV heads (1..=[`MAX_KV_HEADS`]).
    pub num_kv_heads: u32,
    /// Batch size (1..=[`MAX_BATCH`]).
    pub batch: u32,
    /// Bits per key element (1..=8).
    pub key_bits: u8,
    /// Bits per value element (1..=8).
    pub value_bits: u8,
    /// Element type of the raw sink and window tokens.
    pub raw_dtype: RawDtype,
    /// Full or sliding-window attention.
    pub layer_type: LayerType,
    /// Rotation seed of the keys.
    pub key_seed: u64,
    /// Rotation seed of the values.
    pub value_seed: u64,
    /// Sink tokens the cache is configured to keep raw.
    pub sink_tokens: u32,
    /// Recent-window tokens the cache is configured to keep raw.
    pub window_tokens: u32,
    /// Raw sink tokens held (token count of `k_sink`, `v_sink`).
    pub n_sink: u32,
    /// Compressed tokens held (token count of the codes and scales).
    pub n_compressed: u32,
    /// Raw window tokens held (token count of `k_window`, `v_window`).
    pub n_window: u32,
}

fn range(field: &'static str, got: u32, min: u32, max: u32) -> Result<(), ParamError> {
    if (min..=max).contains(&got) {
        Ok(())
    } else {
        Err(ParamError::Range {
            field,
            got: u64::from(got),
            min: u64::from(min),
            max: u64::from(max),
        })
    }
}

fn bits(field: &'static str, got: u8) -> Result<(), ParamError> {
    if (1..=8).contains(&got) {
        Ok(())
    } else {
        Err(ParamError::Bits { field, got })
    }
}

impl LayerParams {
    /// Checks every field against its allowed values.
    pub fn validate(&self) -> Result<(), ParamError> {
        if self.head_dim % 8 != 0 || !(MIN_HEAD_DIM..=MAX_HEAD_DIM).contains(&self.head_dim) {
            return Err(ParamError::HeadDim { got: self.head_dim });
        }
        range("num_kv_heads", self.num_kv_heads, 1, MAX_KV_HEADS)?;
        range("batch", self.batch, 1, MAX_BATCH)?;
        bits("key_bits", self.key_bits)?;
        bits("value_bits", self.value_bits)?;
        match self.layer_type {
            LayerType::Full => {}
            LayerType::Sliding { window } => {
                if !(1..=MAX_TOKENS).contains(&window) {
                    return Err(ParamError::SlidingWindow {
                        layer_type: "sliding",
                        got: window,
                    });
                }
            }
        }
        range("n_sink", self.n_sink, 0, MAX_TOKENS)?;
        range("n_compressed", self.n_compressed, 0, MAX_TOKENS)?;
        range("n_window", self.n_window, 0, MAX_TOKENS)?;
        Ok(())
    }

    /// Token count of a component.
    pub fn tokens(&self, c: Component) -> u32 {
        match c {
            Component::KCodes | Component::KScales | Component::VCodes | Component::VScales => {
                self.n_compressed
            }
            Component::KSink | Component::VSink => self.n_sink,
            Component::KWindow | Component::VWindow => self.n_window,
        }
    }

    /// Bytes per head-vector of a component: `head_dim * bits / 8` for codes, 2 for scales,
    /// `head_dim * dtype size` for raw tokens.
    pub fn row_bytes(&self, c: Component) -> u64 {
        let d = u64::from(self.head_dim);
        match c {
            Component::KCodes => d * u64::from(self.key_bits) / 8,
            Component::VCodes => d * u64::from(self.value_bits) / 8,
            Component::KScales | Component::VScales => 2,
            _ => d * u64::from(self.raw_dtype.size()),
        }
    }

    /// Bytes of `tokens` tokens of a component (`tokens * batch * num_kv_heads * row_bytes`),
    /// or `None` on overflow.
    pub fn bytes_for(&self, c: Component, tokens: u64) -> Option<u64> {
        tokens
            .checked_mul(u64::from(self.batch))?
            .checked_mul(u64::from(self.num_kv_heads))?
            .checked_mul(self.row_bytes(c))
    }

    /// The 64-byte layer record, with `aux_count` aux arrays.
    pub(crate) fn encode(&self, aux_count: u32) -> [u8; LAYER_RECORD_LEN] {
        let mut r = [0u8; LAYER_RECORD_LEN];
        let (layer_type, window) = match self.layer_type {
            LayerType::Full => (0u8, 0u32),
            LayerType::Sliding { window } => (1, window),
        };
        r[0..4].copy_from_slice(&self.codec.tag());
        r[4..8].copy_from_slice(&self.head_dim.to_le_bytes());
        r[8..12].copy_from_slice(&self.num_kv_heads.to_le_bytes());
        r[12..16].copy_from_slice(&self.batch.to_le_bytes());
        r[16] = self.key_bits;
        r[17] = self.value_bits;
        r[18] = self.raw_dtype.code();
        r[19] = layer_type;
        r[20..24].copy_from_slice(&window.to_le_bytes());
        r[24..32].copy_from_slice(&self.key_seed.to_le_bytes());
        r[32..40].copy_from_slice(&self.value_seed.to_le_bytes());
        r[40..44].copy_from_slice(&self.sink_tokens.to_le_bytes());
        r[44..48].copy_from_slice(&self.window_tokens.to_le_bytes());
        r[48..52].copy_from_slice(&self.n_sink.to_le_bytes());
        r[52..56].copy_from_slice(&self.n_compressed.to_le_bytes());
        r[56..60].copy_from_slice(&self.n_window.to_le_bytes());
        r[60..64].copy_from_slice(&aux_count.to_le_bytes());
        r
    }

    /// Decodes and validates a layer record; returns the parameters and the aux count.
    pub(crate) fn decode(r: &[u8; LAYER_RECORD_LEN]) -> Result<(Self, u32), ParamError> {
        let u32_at = |o: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&r[o..o + 4]);
            u32::from_le_bytes(b)
        };
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&r[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let mut tag = [0u8; 4];
        tag.copy_from_slice(&r[0..4]);
        let codec = Codec::from_tag(tag)?;
        let raw_dtype = RawDtype::from_code(r[18])?;
        let window = u32_at(20);
        let layer_type = match r[19] {
            0 if window == 0 => LayerType::Full,
            0 => {
                return Err(ParamError::SlidingWindow {
                    layer_type: "full",
                    got: window,
                })
            }
            1 => LayerType::Sliding { window },
            got => return Err(ParamError::LayerType { got }),
        };
        let params = LayerParams {
            codec,
            head_dim: u32_at(4),
            num_kv_heads: u32_at(8),
            batch: u32_at(12),
            key_bits: r[16],
            value_bits: r[17],
            raw_dtype,
            layer_type,
            key_seed: u64_at(24),
            value_seed: u64_at(32),
            sink_tokens: u32_at(40),
            window_tokens: u32_at(44),
            n_sink: u32_at(48),
            n_compressed: u32_at(52),
            n_window: u32_at(56),
        };
        params.validate()?;
        let aux_count = u32_at(60);
        range("aux_count", aux_count, 0, MAX_AUX_PER_LAYER)?;
        Ok((params, aux_count))
    }
}
