//! Bindings of the codec: `encode`, `decode`, `scalar_roundtrip`, `build_info`.
//!
//! Inputs and outputs are C-contiguous numpy arrays that Python makes as zero-copy views of
//! torch buffers; 16-bit floats (float16 and bfloat16) travel as `uint16` bit patterns and the
//! `dtype` argument says which. The work runs with the GIL released.

use half::{bf16, f16};
use nexusquant_core::codec::{simd_level, Codec, CodecError, CodecParams, Element, Threads};
use numpy::{
    PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray1, PyReadwriteArray2, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{codec_error_to_py, nexusquant_error};

const DTYPES: &str = "['float32', 'float16', 'bfloat16']";

fn codec(head_dim: usize, bits: i64, seed: u64) -> PyResult<Codec> {
    let bits =
        u32::try_from(bits).map_err(|_| codec_error_to_py(&CodecError::Bits { got: bits }))?;
    let params = CodecParams::new(head_dim, bits, seed).map_err(|e| codec_error_to_py(&e))?;
    Ok(Codec::new(params))
}

fn threads(threads: Option<i64>) -> PyResult<Threads> {
    Threads::from_count(threads).map_err(|e| codec_error_to_py(&e))
}

fn shape_error(py: Python<'_>, message: String) -> PyErr {
    nexusquant_error(py, "ShapeError", message)
}

fn not_contiguous(py: Python<'_>, name: &str) -> PyErr {
    shape_error(py, format!("{name} must be a C-contiguous array"))
}

/// The bit patterns of 16-bit floats, reinterpreted as `T` (`f16` and `bf16` are
/// `repr(transparent)` over `u16`).
fn as_halves<T: bytemuck::Pod>(bits: &[u16]) -> &[T] {
    bytemuck::cast_slice(bits)
}

fn as_halves_mut<T: bytemuck::Pod>(bits: &mut [u16]) -> &mut [T] {
    bytemuck::cast_slice_mut(bits)
}

fn run_encode<T: Element>(
    py: Python<'_>,
    c: &Codec,
    x: &[T],
    codes: &mut [u8],
    scales: &mut [u16],
    t: Threads,
) -> PyResult<()> {
    py.detach(|| c.encode_into(x, codes, scales, t))
        .map_err(|e| codec_error_to_py(&e))
}

fn run_decode<T: Element>(
    py: Python<'_>,
    c: &Codec,
    codes: &[u8],
    scales: &[u16],
    out: &mut [T],
    t: Threads,
) -> PyResult<()> {
    py.detach(|| c.decode_into(codes, scales, out, t))
        .map_err(|e| codec_error_to_py(&e))
}

/// Encodes the rows of `x` (N, head_dim) into `codes_out` (N, head_dim·bits/8) uint8 and
/// `scales_out` (N,) uint16 (fp16 bit patterns). `dtype` names x's element type; 16-bit types
/// come as uint16 bit patterns.
#[pyfunction]
#[pyo3(signature = (x, codes_out, scales_out, *, bits, seed, dtype, threads=None))]
#[allow(clippy::too_many_arguments)]
fn encode(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    mut codes_out: PyReadwriteArray2<'_, u8>,
    mut scales_out: PyReadwriteArray1<'_, u16>,
    bits: i64,
    seed: u64,
    dtype: &str,
    threads: Option<i64>,
) -> PyResult<()> {
    let t = self::threads(threads)?;
    let codes = codes_out
        .as_slice_mut()
        .map_err(|_| not_contiguous(py, "codes_out"))?;
    let scales = scales_out
        .as_slice_mut()
        .map_err(|_| not_contiguous(py, "scales_out"))?;
    match dtype {
        "float32" => {
            let x: PyReadonlyArray2<'_, f32> = x.extract()?;
            let c = codec(x.shape()[1], bits, seed)?;
            let xs = x.as_slice().map_err(|_| not_contiguous(py, "x"))?;
            run_encode(py, &c, xs, codes, scales, t)
        }
        "float16" | "bfloat16" => {
            let x: PyReadonlyArray2<'_, u16> = x.extract()?;
            let c = codec(x.shape()[1], bits, seed)?;
            let xs = x.as_slice().map_err(|_| not_contiguous(py, "x"))?;
            if dtype == "float16" {
                run_encode(py, &c, as_halves::<f16>(xs), codes, scales, t)
            } else {
                run_encode(py, &c, as_halves::<bf16>(xs), codes, scales, t)
            }
        }
        other => Err(nexusquant_error(
            py,
            "UnsupportedDtypeError",
            format!("dtype must be one of {DTYPES}, got {other:?}"),
        )),
    }
}

/// Decodes `codes` (N, head_dim·bits/8) uint8 and `scales` (N,) uint16 into `out`
/// (N, head_dim) of `dtype` (16-bit types as uint16 bit patterns).
#[pyfunction]
#[pyo3(signature = (codes, scales, out, *, bits, seed, dtype, threads=None))]
#[allow(clippy::too_many_arguments)]
fn decode(
    py: Python<'_>,
    codes: PyReadonlyArray2<'_, u8>,
    scales: PyReadonlyArray1<'_, u16>,
    out: &Bound<'_, PyAny>,
    bits: i64,
    seed: u64,
    dtype: &str,
    threads: Option<i64>,
) -> PyResult<()> {
    let t = self::threads(threads)?;
    let cs = codes.as_slice().map_err(|_| not_contiguous(py, "codes"))?;
    let ss = scales
        .as_slice()
        .map_err(|_| not_contiguous(py, "scales"))?;
    match dtype {
        "float32" => {
            let mut out: PyReadwriteArray2<'_, f32> = out.extract()?;
            let c = codec(out.shape()[1], bits, seed)?;
            let os = out.as_slice_mut().map_err(|_| not_contiguous(py, "out"))?;
            run_decode(py, &c, cs, ss, os, t)
        }
        "float16" | "bfloat16" => {
            let mut out: PyReadwriteArray2<'_, u16> = out.extract()?;
            let c = codec(out.shape()[1], bits, seed)?;
            let os = out.as_slice_mut().map_err(|_| not_contiguous(py, "out"))?;
            if dtype == "float16" {
                run_decode(py, &c, cs, ss, as_halves_mut::<f16>(os), t)
            } else {
                run_decode(py, &c, cs, ss, as_halves_mut::<bf16>(os), t)
            }
        }
        other => Err(nexusquant_error(
            py,
            "UnsupportedDtypeError",
            format!("dtype must be one of {DTYPES}, got {other:?}"),
        )),
    }
}

/// The scalar baseline: the same rotation, then per-vector round-to-nearest at `bits` with the
/// best clipping scale; encodes and decodes float32 rows of `x` (N, head_dim) into `out`.
#[pyfunction]
#[pyo3(signature = (x, out, *, bits, seed, threads=None))]
fn scalar_roundtrip(
    py: Python<'_>,
    x: PyReadonlyArray2<'_, f32>,
    mut out: PyReadwriteArray2<'_, f32>,
    bits: i64,
    seed: u64,
    threads: Option<i64>,
) -> PyResult<()> {
    let t = self::threads(threads)?;
    let c = codec(x.shape()[1], bits, seed)?;
    let xs = x.as_slice().map_err(|_| not_contiguous(py, "x"))?;
    let os = out.as_slice_mut().map_err(|_| not_contiguous(py, "out"))?;
    py.detach(|| c.scalar_roundtrip(xs, os, t))
        .map_err(|e| codec_error_to_py(&e))
}

/// Build information: crate version, target, SIMD level detected at run time, threads.
#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("version", env!("CARGO_PKG_VERSION"))?;
    d.set_item("codec", "e8v1")?;
    d.set_item("target_arch", std::env::consts::ARCH)?;
    d.set_item("target_os", std::env::consts::OS)?;
    d.set_item("simd", simd_level())?;
    d.set_item("threads", rayon::current_num_threads())?;
    d.set_item(
        "profile",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    Ok(d)
}

/// Registers the codec functions on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode, m)?)?;
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    m.add_function(wrap_pyfunction!(scalar_roundtrip, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    Ok(())
}
