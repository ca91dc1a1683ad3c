//! Bindings of the `.nqkv` format: parse (zero-copy: Python keeps the buffer and builds numpy
//! views from the offsets returned here), verify, and write. The mapping of
//! [`FormatError`] onto the classes of `nexusquant.errors` lives in [`format_error_to_py`].

use std::io;
use std::path::PathBuf;

use nexusquant_core::format::{
    self, AuxArray, AuxDtype, Codec, Component, FormatError, InputError, LayerData, LayerParams,
    LayerType, Nqkv, ParamError, RawDtype, SectionKind,
};
use numpy::{PyReadonlyArray1, PyReadonlyArray4, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

pub(crate) use crate::errors::nexusquant_error;

/// An `OSError` subclass chosen from the error kind (`FileNotFoundError`, ...), naming the
/// path when there is one.
pub(crate) fn io_error_to_py(path: Option<&std::path::Path>, source: &io::Error) -> PyErr {
    let message = match path {
        Some(p) => format!("{}: {source}", p.display()),
        None => source.to_string(),
    };
    PyErr::from(io::Error::new(source.kind(), message))
}

/// Maps a core format error onto `nexusquant.errors`: the reader's failures onto
/// `FormatError` and its subclasses, the writer's invalid arguments onto `BitsError`,
/// `HeadDimError`, `UnsupportedDtypeError`, `ShapeError` or `InvalidArgumentError`, I/O
/// failures onto `OSError`.
pub fn format_error_to_py(e: &FormatError) -> PyErr {
    let class = match e {
        FormatError::BadMagic { .. } => "BadMagicError",
        FormatError::UnsupportedVersion { .. } => "UnsupportedVersionError",
        FormatError::Truncated { .. } => "TruncatedError",
        FormatError::Checksum { .. } => "ChecksumError",
        FormatError::Misaligned { .. }
        | FormatError::Overlap { .. }
        | FormatError::Gap { .. }
        | FormatError::OutOfRange { .. }
        | FormatError::NonZeroPadding { .. }
        | FormatError::TrailingBytes { .. }
        | FormatError::Overflow { .. }
        | FormatError::CountOverLimit { .. }
        | FormatError::UnexpectedSection { .. }
        | FormatError::MissingSection { .. }
        | FormatError::ShapeMismatch { .. } => "LayoutError",
        FormatError::InvalidInput(input) => match input {
            InputError::Param { error, .. } => match error {
                ParamError::Bits { .. } => "BitsError",
                ParamError::HeadDim { .. } => "HeadDimError",
                ParamError::RawDtype { .. } | ParamError::AuxDtype { .. } => {
                    "UnsupportedDtypeError"
                }
                _ => "InvalidArgumentError",
            },
            InputError::Shape { .. } => "ShapeError",
            _ => "InvalidArgumentError",
        },
        FormatError::Io { path, source } => return io_error_to_py(Some(path), source),
        FormatError::Sink(source) => return io_error_to_py(None, source),
        // InvalidParameter, BadMetadata and any later variant: a malformed file.
        _ => "FormatError",
    };
    Python::attach(|py| nexusquant_error(py, class, e.to_string()))
}

fn to_py(e: FormatError) -> PyErr {
    format_error_to_py(&e)
}

fn layer_type_name(t: LayerType) -> (&'static str, u32) {
    match t {
        LayerType::Full => ("full", 0),
        LayerType::Sliding { window } => ("sliding", window),
    }
}

fn kind_name(kind: u16) -> String {
    match SectionKind::from_code(kind) {
        Some(SectionKind::Metadata) => "metadata".into(),
        Some(SectionKind::LayerTable) => "layer_table".into(),
        Some(SectionKind::AuxDirectory) => "aux_directory".into(),
        Some(SectionKind::Chunk) => "chunk".into(),
        Some(SectionKind::AuxData) => "aux".into(),
        Some(SectionKind::Extension(_)) | None => format!("extension_{kind:#06x}"),
    }
}

/// What Python needs to build views, gathered while the GIL is released.
struct AuxSummary {
    name: String,
    dtype: AuxDtype,
    shape: Vec<u64>,
    offset: u64,
    nbytes: u64,
}

struct LayerSummary {
    params: LayerParams,
    offsets: [u64; 8],
    aux: Vec<AuxSummary>,
}

struct Summary {
    version: (u16, u16),
    file_len: u64,
    metadata: String,
    layers: Vec<LayerSummary>,
    sections: Vec<format::SectionEntry>,
}

fn summarize(f: &Nqkv<&[u8]>) -> Summary {
    let layers = f
        .layers()
        .enumerate()
        .map(|(l, v)| LayerSummary {
            params: *v.params,
            offsets: Component::ALL.map(|c| f.component_offset(l, c).unwrap_or(0)),
            aux: v
                .aux
                .iter()
                .enumerate()
                .map(|(j, a)| AuxSummary {
                    name: a.name.to_owned(),
                    dtype: a.dtype,
                    shape: a.shape.to_vec(),
                    offset: f.aux_offset(l, j).unwrap_or(0),
                    nbytes: a.data.len() as u64,
                })
                .collect(),
        })
        .collect();
    Summary {
        version: f.version(),
        file_len: f.file_len(),
        metadata: f.metadata().to_owned(),
        layers,
        sections: f.sections().to_vec(),
    }
}

fn layer_dict<'py>(py: Python<'py>, l: &LayerSummary) -> PyResult<Bound<'py, PyDict>> {
    let p = &l.params;
    let d = PyDict::new(py);
    let (layer_type, window) = layer_type_name(p.layer_type);
    d.set_item("codec", std::str::from_utf8(&p.codec.tag()).unwrap_or("?"))?;
    d.set_item("head_dim", p.head_dim)?;
    d.set_item("num_kv_heads", p.num_kv_heads)?;
    d.set_item("batch", p.batch)?;
    d.set_item("key_bits", p.key_bits)?;
    d.set_item("value_bits", p.value_bits)?;
    d.set_item("raw_dtype", p.raw_dtype.name())?;
    d.set_item("layer_type", layer_type)?;
    d.set_item("sliding_window", window)?;
    d.set_item("key_seed", p.key_seed)?;
    d.set_item("value_seed", p.value_seed)?;
    d.set_item("sink_tokens", p.sink_tokens)?;
    d.set_item("window_tokens", p.window_tokens)?;
    d.set_item("n_sink", p.n_sink)?;
    d.set_item("n_compressed", p.n_compressed)?;
    d.set_item("n_window", p.n_window)?;
    let comps = PyDict::new(py);
    for (c, offset) in Component::ALL.iter().zip(l.offsets) {
        comps.set_item(c.name(), (offset, p.tokens(*c), p.row_bytes(*c)))?;
    }
    d.set_item("components", comps)?;
    let aux = PyList::empty(py);
    for a in &l.aux {
        aux.append((&a.name, a.dtype.name(), a.shape.clone(), a.offset, a.nbytes))?;
    }
    d.set_item("aux", aux)?;
    Ok(d)
}

/// Parses a `.nqkv` buffer (a 1-D uint8 array: a memory map or the file's bytes) and, with
/// `verify`, checks every chunk checksum. Returns a dict: `version` (major, minor),
/// `file_len`, `metadata` (JSON text), `layers` (parameters, `components`:
/// name -> (offset, tokens, row_bytes), token-major, and `aux`: (name, dtype, shape, offset,
/// nbytes)), `sections` (kind, component, layer, index, tokens, offset, length, crc).
#[pyfunction]
#[pyo3(signature = (buf, verify = true))]
fn parse_nqkv<'py>(
    py: Python<'py>,
    buf: PyReadonlyArray1<'py, u8>,
    verify: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let bytes = buf.as_slice()?;
    let summary = py
        .detach(|| {
            let f = Nqkv::parse(bytes)?;
            if verify {
                f.verify()?;
            }
            Ok(summarize(&f))
        })
        .map_err(to_py)?;
    let d = PyDict::new(py);
    d.set_item("version", summary.version)?;
    d.set_item("file_len", summary.file_len)?;
    d.set_item("metadata", summary.metadata)?;
    let layers = PyList::empty(py);
    for l in &summary.layers {
        layers.append(layer_dict(py, l)?)?;
    }
    d.set_item("layers", layers)?;
    let sections = PyList::empty(py);
    for s in &summary.sections {
        let component = match SectionKind::from_code(s.id.kind) {
            Some(SectionKind::Chunk) => Component::from_code(s.id.component).map(Component::name),
            _ => None,
        };
        sections.append((
            kind_name(s.id.kind),
            component,
            s.id.layer,
            s.id.index,
            s.tokens,
            s.offset,
            s.length,
            s.crc,
        ))?;
    }
    d.set_item("sections", sections)?;
    Ok(d)
}

/// Checksum status of every data section of a structurally valid `.nqkv` buffer: a list of
/// `(section_index, stored_crc, computed_crc)`. Raises a `FormatError` only when the
/// structure itself is broken.
#[pyfunction]
fn check_nqkv_chunks(
    py: Python<'_>,
    buf: PyReadonlyArray1<'_, u8>,
) -> PyResult<Vec<(u32, u32, u32)>> {
    let bytes = buf.as_slice()?;
    py.detach(|| {
        let f = Nqkv::parse(bytes)?;
        Ok(f.chunk_statuses()
            .iter()
            .map(|s| (s.entry_index, s.entry.crc, s.computed))
            .collect())
    })
    .map_err(to_py)
}

/// One layer as prepared by `nexusquant.store`: parameters plus the eight token components as
/// C-contiguous `(batch, kv_heads, tokens, row_bytes)` uint8 arrays in file order, and aux
/// arrays as `(name, dtype, shape, little-endian bytes)`.
#[derive(FromPyObject)]
struct WireLayer<'py> {
    #[pyo3(item)]
    codec: String,
    #[pyo3(item)]
    head_dim: u32,
    #[pyo3(item)]
    key_bits: u8,
    #[pyo3(item)]
    value_bits: u8,
    #[pyo3(item)]
    raw_dtype: String,
    #[pyo3(item)]
    layer_type: String,
    #[pyo3(item)]
    sliding_window: u32,
    #[pyo3(item)]
    key_seed: u64,
    #[pyo3(item)]
    value_seed: u64,
    #[pyo3(item)]
    sink_tokens: u32,
    #[pyo3(item)]
    window_tokens: u32,
    #[pyo3(item)]
    arrays: Vec<PyReadonlyArray4<'py, u8>>,
    #[pyo3(item)]
    aux: Vec<(String, String, Vec<u64>, PyReadonlyArray1<'py, u8>)>,
}

fn invalid(py: Python<'_>, message: String) -> PyErr {
    nexusquant_error(py, "InvalidArgumentError", message)
}

fn shape_error(layer: usize, array: &str, shape: String, expected: u64, got: u64) -> PyErr {
    to_py(FormatError::InvalidInput(InputError::Shape {
        layer,
        array: array.to_owned(),
        shape,
        expected,
        got,
    }))
}

/// Builds the core's `LayerData` from a wire layer, checking every array's shape.
fn layer_data<'a>(py: Python<'_>, l: usize, w: &'a WireLayer<'_>) -> PyResult<LayerData<'a>> {
    let codec = match w.codec.as_str() {
        "e8v1" => Codec::E8V1,
        other => {
            return Err(invalid(
                py,
                format!("codec must be one of ['e8v1'], got {other:?}"),
            ))
        }
    };
    let raw_dtype = match w.raw_dtype.as_str() {
        "float32" => RawDtype::F32,
        "float16" => RawDtype::F16,
        "bfloat16" => RawDtype::BF16,
        other => {
            let allowed = "['float32', 'float16', 'bfloat16']";
            let message = format!("raw_dtype must be one of {allowed}, got {other:?}");
            return Err(nexusquant_error(py, "UnsupportedDtypeError", message));
        }
    };
    let layer_type = match w.layer_type.as_str() {
        "full" => LayerType::Full,
        "sliding" => LayerType::Sliding {
            window: w.sliding_window,
        },
        other => {
            return Err(invalid(
                py,
                format!("layer_type must be one of ['full', 'sliding'], got {other:?}"),
            ))
        }
    };
    if w.arrays.len() != 8 {
        return Err(invalid(
            py,
            format!("arrays must hold the 8 components, got {}", w.arrays.len()),
        ));
    }
    let shape0 = w.arrays[0].shape();
    let (batch, heads) = (shape0[0], shape0[1]);
    let dim = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
    let tokens = |c: Component| dim(w.arrays[c as usize].shape()[2]);
    let params = LayerParams {
        codec,
        head_dim: w.head_dim,
        num_kv_heads: dim(heads),
        batch: dim(batch),
        key_bits: w.key_bits,
        value_bits: w.value_bits,
        raw_dtype,
        layer_type,
        key_seed: w.key_seed,
        value_seed: w.value_seed,
        sink_tokens: w.sink_tokens,
        window_tokens: w.window_tokens,
        n_sink: tokens(Component::KSink),
        n_compressed: tokens(Component::KCodes),
        n_window: tokens(Component::KWindow),
    };
    params.validate().map_err(|error| {
        to_py(FormatError::InvalidInput(InputError::Param {
            layer: l,
            error,
        }))
    })?;
    let mut slices: Vec<&[u8]> = Vec::with_capacity(8);
    for (c, a) in Component::ALL.iter().zip(&w.arrays) {
        let expected = [
            batch,
            heads,
            params.tokens(*c) as usize,
            params.row_bytes(*c) as usize,
        ];
        if a.shape() != expected {
            let bytes = |s: &[usize]| s.iter().map(|&x| x as u64).product::<u64>();
            return Err(shape_error(
                l,
                c.name(),
                format!("{expected:?} bytes, got shape {:?}", a.shape()),
                bytes(&expected),
                bytes(a.shape()),
            ));
        }
        slices.push(a.as_slice()?);
    }
    let mut aux = Vec::with_capacity(w.aux.len());
    for (name, dtype, shape, data) in &w.aux {
        let dtype = match dtype.as_str() {
            "int32" => AuxDtype::I32,
            "int64" => AuxDtype::I64,
            other => {
                let allowed = "['int32', 'int64']";
                let message =
                    format!("aux array {name:?}: dtype must be one of {allowed}, got {other:?}");
                return Err(nexusquant_error(py, "UnsupportedDtypeError", message));
            }
        };
        aux.push(AuxArray {
            name,
            dtype,
            shape: shape.clone(),
            data: data.as_slice()?,
        });
    }
    Ok(LayerData {
        params,
        k_codes: slices[0],
        k_scales: slices[1],
        v_codes: slices[2],
        v_scales: slices[3],
        k_sink: slices[4],
        v_sink: slices[5],
        k_window: slices[6],
        v_window: slices[7],
        aux,
    })
}

fn layer_data_all<'a>(py: Python<'_>, layers: &'a [WireLayer<'_>]) -> PyResult<Vec<LayerData<'a>>> {
    layers
        .iter()
        .enumerate()
        .map(|(l, w)| layer_data(py, l, w))
        .collect()
}

/// Writes a `.nqkv` file atomically (temporary file, fsync, rename, fsync of the directory).
/// `metadata` is a JSON object; `layers` are wire layers prepared by `nexusquant.store`.
/// Returns the file length in bytes.
#[pyfunction]
fn write_nqkv(
    py: Python<'_>,
    path: PathBuf,
    metadata: &str,
    layers: Vec<WireLayer<'_>>,
) -> PyResult<u64> {
    let data = layer_data_all(py, &layers)?;
    py.detach(|| format::write_file(&path, metadata, &data))
        .map_err(to_py)
}

/// The bytes of a `.nqkv` file (for a store), from the same arguments as `write_nqkv`.
#[pyfunction]
fn nqkv_to_bytes<'py>(
    py: Python<'py>,
    metadata: &str,
    layers: Vec<WireLayer<'py>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let data = layer_data_all(py, &layers)?;
    let bytes = py
        .detach(|| format::to_vec(metadata, &data))
        .map_err(to_py)?;
    Ok(PyBytes::new(py, &bytes))
}

/// Registers the format functions in the extension module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(parse_nqkv, m)?)?;
    m.add_function(wrap_pyfunction!(check_nqkv_chunks, m)?)?;
    m.add_function(wrap_pyfunction!(write_nqkv, m)?)?;
    m.add_function(wrap_pyfunction!(nqkv_to_bytes, m)?)?;
    m.add("NQKV_MAGIC", PyBytes::new(m.py(), &format::MAGIC))?;
    m.add(
        "NQKV_FORMAT_VERSION",
        (format::FORMAT_MAJOR, format::FORMAT_MINOR),
    )?;
    m.add("NQKV_CHUNK_TOKENS", format::CHUNK_TOKENS)?;
    m.add("NQKV_MAX_METADATA_BYTES", format::MAX_METADATA_BYTES)?;
    Ok(())
}
