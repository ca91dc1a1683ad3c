//! Bindings of the codec: `encode`, `decode` (and their grouped forms), `attention_scores`,
//! `attention_values`, `scalar_roundtrip`, `build_info`.
//!
//! Inputs and outputs are C-contiguous numpy arrays (Python makes them as zero-copy views of
//! torch buffers) that are read and written in place. 16-bit floats travel as `uint16` bit
//! patterns (float16 may also come as numpy `float16`); the `dtype` argument says which type
//! the values are. The work runs with the GIL released.

use half::{bf16, f16};
use nexusquant_core::codec::{simd_level, Codec, CodecError, CodecParams, Element, Threads};
use numpy::ndarray::{ArrayView, ArrayViewMut, Axis, RemoveAxis};
use numpy::{
    dtype, PyArrayDescrMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArray3,
    PyReadwriteArray1, PyReadwriteArray2, PyReadwriteArray3, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{codec_error_to_py, nexusquant_error};

const DTYPES: &str = "['float32', 'float16', 'bfloat16']";

/// The element type named by the `dtype` argument.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    fn parse(py: Python<'_>, name: &str) -> PyResult<Self> {
        match name {
            "float32" => Ok(Dtype::F32),
            "float16" => Ok(Dtype::F16),
            "bfloat16" => Ok(Dtype::Bf16),
            other => Err(nexusquant_error(
                py,
                "UnsupportedDtypeError",
                format!("dtype must be one of {DTYPES}, got '{other}'"),
            )),
        }
    }

    /// The numpy arrays that can hold this type: float32; float16 or uint16; uint16.
    fn accepts(self, a: &Bound<'_, PyUntypedArray>) -> bool {
        let py = a.py();
        let d = a.dtype();
        match self {
            Dtype::F32 => d.is_equiv_to(&dtype::<f32>(py)),
            Dtype::F16 => {
                d.is_equiv_to(&dtype::<u16>(py)) || (d.kind() == b'f' && d.itemsize() == 2)
            }
            Dtype::Bf16 => d.is_equiv_to(&dtype::<u16>(py)),
        }
    }

    fn wanted(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16 or uint16 (fp16 bit patterns)",
            Dtype::Bf16 => "uint16 (bfloat16 bit patterns)",
        }
    }
}

fn error(py: Python<'_>, class: &str, message: String) -> PyErr {
    nexusquant_error(py, class, message)
}

/// An optional integer argument, or `InvalidArgumentError` naming it.
fn int_arg(py: Python<'_>, v: &Bound<'_, PyAny>, name: &str, allowed: &str) -> PyResult<i64> {
    v.extract::<i64>().map_err(|_| {
        error(
            py,
            "InvalidArgumentError",
            format!("{name} must be {allowed}, got {v}"),
        )
    })
}

fn codec(
    py: Python<'_>,
    head_dim: usize,
    bits: &Bound<'_, PyAny>,
    seed: &Bound<'_, PyAny>,
) -> PyResult<Codec> {
    let bits = bits.extract::<i64>().map_err(|_| {
        error(
            py,
            "BitsError",
            format!("bits must be an integer in 1..=8 (2, 3, 4 tuned), got {bits}"),
        )
    })?;
    let bits =
        u32::try_from(bits).map_err(|_| codec_error_to_py(&CodecError::Bits { got: bits }))?;
    let seed = seed.extract::<u64>().map_err(|_| {
        error(
            py,
            "InvalidArgumentError",
            format!("seed must be an integer in [0, 2**64), got {seed}"),
        )
    })?;
    let params = CodecParams::new(head_dim, bits, seed).map_err(|e| codec_error_to_py(&e))?;
    Ok(Codec::new(params))
}

/// The codec with the encoder's number of clipping candidates (`1..=3`; the core's
/// `default_candidates` when unset).
fn encoder_for(
    py: Python<'_>,
    head_dim: usize,
    bits: &Bound<'_, PyAny>,
    seed: &Bound<'_, PyAny>,
    candidates: Option<&Bound<'_, PyAny>>,
) -> PyResult<Codec> {
    let codec = codec(py, head_dim, bits, seed)?;
    let Some(candidates) = candidates.filter(|c| !c.is_none()) else {
        return Ok(codec);
    };
    let c = candidates.extract::<i64>().map_err(|_| {
        error(
            py,
            "InvalidArgumentError",
            format!("candidates must be 1, 2 or 3 (the clipping factors the encoder tries), got {candidates}"),
        )
    })?;
    codec.with_candidates(c).map_err(|e| codec_error_to_py(&e))
}

fn threads(py: Python<'_>, threads: Option<&Bound<'_, PyAny>>) -> PyResult<Threads> {
    let count = match threads {
        Some(t) if !t.is_none() => {
            Some(int_arg(py, t, "threads", "an integer in 1..=1024 or None")?)
        }
        _ => None,
    };
    Threads::from_count(count).map_err(|e| codec_error_to_py(&e))
}

fn shape_str(s: &[usize]) -> String {
    match s {
        [a] => format!("({a},)"),
        _ => format!(
            "({})",
            s.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `obj` as a numpy array of `ndim` dimensions (any layout), or the error naming `name`.
fn numpy_array<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    ndim: usize,
    layout: &str,
) -> PyResult<Bound<'py, PyUntypedArray>> {
    let py = obj.py();
    let a = obj.cast::<PyUntypedArray>().map_err(|_| {
        let ty = obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        error(
            py,
            "InvalidArgumentError",
            format!("{name} must be a numpy array {layout}, got {ty}"),
        )
    })?;
    if a.ndim() != ndim {
        return Err(error(
            py,
            "ShapeError",
            format!(
                "{name} must be {ndim}-D {layout}, got shape {}",
                shape_str(a.shape())
            ),
        ));
    }
    Ok(a.clone())
}

/// `obj` as a C-contiguous numpy array of `ndim` dimensions, or the error naming `name`.
fn array<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    ndim: usize,
    layout: &str,
) -> PyResult<Bound<'py, PyUntypedArray>> {
    let py = obj.py();
    let a = numpy_array(obj, name, ndim, layout)?;
    if !a.is_c_contiguous() {
        return Err(error(
            py,
            "ShapeError",
            format!("{name} must be C-contiguous {layout}"),
        ));
    }
    Ok(a)
}

/// Checks a numpy dtype against the type it must hold.
fn check_dtype(a: &Bound<'_, PyUntypedArray>, name: &str, want: &str, ok: bool) -> PyResult<()> {
    if ok {
        Ok(())
    } else {
        let got = a.dtype().str().map(|s| s.to_string()).unwrap_or_default();
        Err(error(
            a.py(),
            "UnsupportedDtypeError",
            format!("{name} must have numpy dtype {want}, got {got}"),
        ))
    }
}

fn check_shape(py: Python<'_>, name: &str, got: &[usize], want: &[usize]) -> PyResult<()> {
    if got == want {
        Ok(())
    } else {
        Err(error(
            py,
            "ShapeError",
            format!(
                "{name} must have shape {}, got {}",
                shape_str(want),
                shape_str(got)
            ),
        ))
    }
}

fn writable(py: Python<'_>, name: &str) -> PyErr {
    error(
        py,
        "InvalidArgumentError",
        format!("{name} must be a writeable array that no other argument shares"),
    )
}

fn run<R: Send>(py: Python<'_>, f: impl FnOnce() -> Result<R, CodecError> + Send) -> PyResult<R> {
    py.detach(f).map_err(|e| codec_error_to_py(&e))
}

/// The validated outputs of `encode`.
struct EncodeOut<'py> {
    codes: PyReadwriteArray2<'py, u8>,
    scales: PyReadwriteArray1<'py, u16>,
}

fn encode_outputs<'py>(
    codes_out: &Bound<'py, PyAny>,
    scales_out: &Bound<'py, PyAny>,
    n: usize,
    cb: usize,
) -> PyResult<EncodeOut<'py>> {
    let py = codes_out.py();
    let c = array(codes_out, "codes_out", 2, "(N, head_dim*bits/8) uint8")?;
    check_dtype(
        &c,
        "codes_out",
        "uint8",
        c.dtype().is_equiv_to(&dtype::<u8>(py)),
    )?;
    check_shape(py, "codes_out", c.shape(), &[n, cb])?;
    let s = array(scales_out, "scales_out", 1, "(N,) uint16")?;
    check_dtype(
        &s,
        "scales_out",
        "uint16 (fp16 bit patterns)",
        s.dtype().is_equiv_to(&dtype::<u16>(py)),
    )?;
    check_shape(py, "scales_out", s.shape(), &[n])?;
    Ok(EncodeOut {
        codes: codes_out.extract().map_err(|_| writable(py, "codes_out"))?,
        scales: scales_out
            .extract()
            .map_err(|_| writable(py, "scales_out"))?,
    })
}

fn encode_typed<T: Element>(
    py: Python<'_>,
    c: &Codec,
    x: &[T],
    out: &mut EncodeOut<'_>,
    t: Threads,
) -> PyResult<()> {
    let codes = out
        .codes
        .as_slice_mut()
        .map_err(|_| writable(py, "codes_out"))?;
    let scales = out
        .scales
        .as_slice_mut()
        .map_err(|_| writable(py, "scales_out"))?;
    run(py, || c.encode_into(x, codes, scales, t))
}

/// Encodes the rows of `x` (N, head_dim) into `codes_out` (N, head_dim·bits/8) uint8 and
/// `scales_out` (N,) uint16 (fp16 bit patterns), in place. `dtype` names x's element type:
/// "float32" (numpy float32), "float16" (numpy float16 or uint16 bit patterns) or "bfloat16"
/// (uint16 bit patterns). `threads=None` uses every core; `candidates` (1, 2 or 3; when
/// unset, one up to 4 bits and three above) is how many clipping factors the encoder tries.
#[pyfunction]
#[pyo3(signature = (x, codes_out, scales_out, *, bits, seed, dtype, threads=None, candidates=None))]
#[allow(clippy::too_many_arguments)]
fn encode(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    codes_out: &Bound<'_, PyAny>,
    scales_out: &Bound<'_, PyAny>,
    bits: &Bound<'_, PyAny>,
    seed: &Bound<'_, PyAny>,
    dtype: &str,
    threads: Option<&Bound<'_, PyAny>>,
    candidates: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let dt = Dtype::parse(py, dtype)?;
    let t = self::threads(py, threads)?;
    let xa = array(x, "x", 2, "(N, head_dim)")?;
    check_dtype(&xa, "x", dt.wanted(), dt.accepts(&xa))?;
    let (n, d) = (xa.shape()[0], xa.shape()[1]);
    let c = encoder_for(py, d, bits, seed, candidates)?;
    let mut out = encode_outputs(codes_out, scales_out, n, c.params().code_bytes())?;
    if dt == Dtype::F32 {
        let x: PyReadonlyArray2<'_, f32> = x.extract()?;
        encode_typed(py, &c, x.as_slice()?, &mut out, t)
    } else {
        // float16 as numpy float16 has the same bits as uint16: read either as uint16.
        let x = xa.call_method1("view", (numpy::dtype::<u16>(py),))?;
        let x: PyReadonlyArray2<'_, u16> = x.extract()?;
        let bits = x.as_slice()?;
        match dt {
            Dtype::F16 => encode_typed::<f16>(py, &c, bytemuck::cast_slice(bits), &mut out, t),
            _ => encode_typed::<bf16>(py, &c, bytemuck::cast_slice(bits), &mut out, t),
        }
    }
}

/// Decodes `codes` (N, head_dim·bits/8) uint8 and `scales` (N,) uint16 into `out`
/// (N, head_dim), in place, rounding to `dtype` ("float32": numpy float32; "float16": numpy
/// float16 or uint16 bit patterns; "bfloat16": uint16 bit patterns).
#[pyfunction]
#[pyo3(signature = (codes, scales, out, *, bits, seed, dtype, threads=None))]
#[allow(clippy::too_many_arguments)]
fn decode(
    py: Python<'_>,
    codes: &Bound<'_, PyAny>,
    scales: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    bits: &Bound<'_, PyAny>,
    seed: &Bound<'_, PyAny>,
    dtype: &str,
    threads: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let dt = Dtype::parse(py, dtype)?;
    let t = self::threads(py, threads)?;
    let oa = array(out, "out", 2, "(N, head_dim)")?;
    check_dtype(&oa, "out", dt.wanted(), dt.accepts(&oa))?;
    let (n, d) = (oa.shape()[0], oa.shape()[1]);
    let c = codec(py, d, bits, seed)?;
    let ca = array(codes, "codes", 2, "(N, head_dim*bits/8) uint8")?;
    check_dtype(
        &ca,
        "codes",
        "uint8",
        ca.dtype().is_equiv_to(&numpy::dtype::<u8>(py)),
    )?;
    check_shape(py, "codes", ca.shape(), &[n, c.params().code_bytes()])?;
    let sa = array(scales, "scales", 1, "(N,) uint16")?;
    check_dtype(
        &sa,
        "scales",
        "uint16 (fp16 bit patterns)",
        sa.dtype().is_equiv_to(&numpy::dtype::<u16>(py)),
    )?;
    check_shape(py, "scales", sa.shape(), &[n])?;
    let codes: PyReadonlyArray2<'_, u8> = codes.extract()?;
    let scales: PyReadonlyArray1<'_, u16> = scales.extract()?;
    let (cs, ss) = (codes.as_slice()?, scales.as_slice()?);
    if dt == Dtype::F32 {
        let mut o: PyReadwriteArray2<'_, f32> = out.extract().map_err(|_| writable(py, "out"))?;
        let os = o.as_slice_mut()?;
        run(py, || c.decode_into(cs, ss, os, t))
    } else {
        let view = oa.call_method1("view", (numpy::dtype::<u16>(py),))?;
        let mut o: PyReadwriteArray2<'_, u16> = view.extract().map_err(|_| writable(py, "out"))?;
        let os = o.as_slice_mut()?;
        match dt {
            Dtype::F16 => run(py, || {
                c.decode_into::<f16>(cs, ss, bytemuck::cast_slice_mut(os), t)
            }),
            _ => run(py, || {
                c.decode_into::<bf16>(cs, ss, bytemuck::cast_slice_mut(os), t)
            }),
        }
    }
}

/// `obj` as a numpy array of `ndim` dimensions whose every slice along the first axis is
/// C-contiguous and apart from the others (the first axis may have any stride that does not make
/// two slices overlap), or the error naming `name`.
fn grouped<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    ndim: usize,
    layout: &str,
) -> PyResult<Bound<'py, PyUntypedArray>> {
    let py = obj.py();
    let a = numpy_array(obj, name, ndim, layout)?;
    let (shape, strides) = (a.shape(), a.strides());
    let item = isize::try_from(a.dtype().itemsize()).unwrap_or(isize::MAX);
    // Each group (everything after the first axis) must be one dense run of memory.
    let mut want = item;
    let mut inner = 1usize;
    for k in (1..ndim).rev() {
        if shape[k] > 1 && strides[k] != want {
            return Err(error(
                py,
                "ShapeError",
                format!("{name} must be C-contiguous after its first axis {layout}"),
            ));
        }
        inner = inner.saturating_mul(shape[k]);
        want = want.saturating_mul(isize::try_from(shape[k]).unwrap_or(isize::MAX));
    }
    let span = want.unsigned_abs();
    if shape[0] > 1 && inner > 0 && strides[0].unsigned_abs() < span {
        return Err(error(
            py,
            "ShapeError",
            format!(
                "{name}'s slices along its first axis overlap (stride {} < {span} bytes)",
                strides[0]
            ),
        ));
    }
    Ok(a)
}

/// The dense slices along the first axis of an array checked by [`grouped`].
fn group_slices<'a, T, D: RemoveAxis>(a: ArrayView<'a, T, D>) -> Vec<&'a [T]> {
    (0..a.len_of(Axis(0)))
        .map(|i| {
            a.clone()
                .index_axis_move(Axis(0), i)
                .to_slice()
                .unwrap_or(&[])
        })
        .collect()
}

/// The dense, disjoint slices along the first axis of a writable array checked by [`grouped`].
fn group_slices_mut<'a, T, D: RemoveAxis>(mut a: ArrayViewMut<'a, T, D>) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(a.len_of(Axis(0)));
    while a.len_of(Axis(0)) > 0 {
        let (head, rest) = a.split_at(Axis(0), 1);
        out.push(
            head.index_axis_move(Axis(0), 0)
                .into_slice()
                .unwrap_or(&mut []),
        );
        a = rest;
    }
    out
}

/// Decodes `G` groups at once: `codes` (G, N, head_dim·bits/8) uint8 and `scales` (G, N)
/// uint16 into `out` (G, N, head_dim), in place, as `decode` does for each group. Each group
/// must be C-contiguous; the first axis may have any stride (slices of larger buffers, such as
/// the heads of a KV cache and their place in an attention buffer, are read and written where
/// they are). One pass over the thread pool for all groups.
///
/// With `centres` (G, head_dim) float32, a row whose scale has its sign bit set decodes with the
/// absolute scale plus its group's centre (`Codec::decode_groups_centred_into`).
#[pyfunction]
#[pyo3(signature = (codes, scales, out, *, bits, seed, dtype, threads=None, centres=None))]
#[allow(clippy::too_many_arguments)]
fn decode_groups(
    py: Python<'_>,
    codes: &Bound<'_, PyAny>,
    scales: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    bits: &Bound<'_, PyAny>,
    seed: &Bound<'_, PyAny>,
    dtype: &str,
    threads: Option<&Bound<'_, PyAny>>,
    centres: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let dt = Dtype::parse(py, dtype)?;
    let t = self::threads(py, threads)?;
    let oa = grouped(out, "out", 3, "(G, N, head_dim)")?;
    check_dtype(&oa, "out", dt.wanted(), dt.accepts(&oa))?;
    let (g, n, d) = (oa.shape()[0], oa.shape()[1], oa.shape()[2]);
    let c = codec(py, d, bits, seed)?;
    let ca = grouped(codes, "codes", 3, "(G, N, head_dim*bits/8) uint8")?;
    check_dtype(
        &ca,
        "codes",
        "uint8",
        ca.dtype().is_equiv_to(&numpy::dtype::<u8>(py)),
    )?;
    check_shape(py, "codes", ca.shape(), &[g, n, c.params().code_bytes()])?;
    let sa = grouped(scales, "scales", 2, "(G, N) uint16")?;
    check_dtype(
        &sa,
        "scales",
        "uint16 (fp16 bit patterns)",
        sa.dtype().is_equiv_to(&numpy::dtype::<u16>(py)),
    )?;
    check_shape(py, "scales", sa.shape(), &[g, n])?;
    let centres: Option<PyReadonlyArray2<'_, f32>> = match centres {
        Some(a) if !a.is_none() => {
            let ca = array(a, "centres", 2, "(G, head_dim) float32")?;
            check_dtype(&ca, "centres", "float32", Dtype::F32.accepts(&ca))?;
            check_shape(py, "centres", ca.shape(), &[g, d])?;
            Some(a.extract()?)
        }
        _ => None,
    };
    let centres = match &centres {
        Some(a) => Some(a.as_slice()?),
        None => None,
    };
    let codes: PyReadonlyArray3<'_, u8> = codes.extract()?;
    let scales: PyReadonlyArray2<'_, u16> = scales.extract()?;
    let cs = group_slices(codes.as_array());
    let ss = group_slices(scales.as_array());
    fn go<T: Element>(
        c: &Codec,
        groups: Vec<(&[u8], &[u16], &mut [T])>,
        centres: Option<&[f32]>,
        t: Threads,
    ) -> Result<(), CodecError> {
        match centres {
            Some(centres) => c.decode_groups_centred_into(groups, centres, t),
            None => c.decode_groups_into(groups, t),
        }
    }
    if dt == Dtype::F32 {
        let mut o: PyReadwriteArray3<'_, f32> = out.extract().map_err(|_| writable(py, "out"))?;
        let os = group_slices_mut(o.as_array_mut());
        let groups = zip3(cs, ss, os);
        run(py, || go(&c, groups, centres, t))
    } else {
        let view = oa.call_method1("view", (numpy::dtype::<u16>(py),))?;
        let mut o: PyReadwriteArray3<'_, u16> = view.extract().map_err(|_| writable(py, "out"))?;
        let os = group_slices_mut(o.as_array_mut());
        match dt {
            Dtype::F16 => {
                let groups = zip3(
                    cs,
                    ss,
                    os.into_iter()
                        .map(bytemuck::cast_slice_mut::<u16, f16>)
                        .collect(),
                );
                run(py, || go(&c, groups, centres, t))
            }
            _ => {
                let groups = zip3(
                    cs,
                    ss,
                    os.into_iter()
                        .map(bytemuck::cast_slice_mut::<u16, bf16>)
                        .collect(),
                );
                run(py, || go(&c, groups, centres, t))
            }
        }
    }
}

/// Encodes `G` groups at once: the rows of `x` (G, N, head_dim) into `codes_out`
/// (G, N, head_dim·bits/8) uint8 and `scales_out` (G, N) uint16, in place, as `encode` does
/// for each group. Each group must be C-contiguous; the first axis may have any stride that
/// keeps the groups apart (codes are written straight into slices of a cache's buffers).
#[pyfunction]
#[pyo3(signature = (x, codes_out, scales_out, *, bits, seed, dtype, threads=None, candidates=None))]
#[allow(clippy::too_many_arguments)]
fn encode_groups(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    codes_out: &Bound<'_, PyAny>,
    scales_out: &Bound<'_, PyAny>,
    bits: &Bound<'_, PyAny>,
    seed: &Bound<'_, PyAny>,
    dtype: &str,
    threads: Option<&Bound<'_, PyAny>>,
    candidates: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let dt = Dtype::parse(py, dtype)?;
    let t = self::threads(py, threads)?;
    let xa = grouped(x, "x", 3, "(G, N, head_dim)")?;
    check_dtype(&xa, "x", dt.wanted(), dt.accepts(&xa))?;
    let (g, n, d) = (xa.shape()[0], xa.shape()[1], xa.shape()[2]);
    let c = encoder_for(py, d, bits, seed, candidates)?;
    let ca = grouped(codes_out, "codes_out", 3, "(G, N, head_dim*bits/8) uint8")?;
    check_dtype(
        &ca,
        "codes_out",
        "uint8",
        ca.dtype().is_equiv_to(&numpy::dtype::<u8>(py)),
    )?;
    check_shape(
        py,
        "codes_out",
        ca.shape(),
        &[g, n, c.params().code_bytes()],
    )?;
    let sa = grouped(scales_out, "scales_out", 2, "(G, N) uint16")?;
    check_dtype(
        &sa,
        "scales_out",
        "uint16 (fp16 bit patterns)",
        sa.dtype().is_equiv_to(&numpy::dtype::<u16>(py)),
    )?;
    check_shape(py, "scales_out", sa.shape(), &[g, n])?;
    let mut codes: PyReadwriteArray3<'_, u8> =
        codes_out.extract().map_err(|_| writable(py, "codes_out"))?;
    let mut scales: PyReadwriteArray2<'_, u16> = scales_out
        .extract()
        .map_err(|_| writable(py, "scales_out"))?;
    let cs = group_slices_mut(codes.as_array_mut());
    let ss = group_slices_mut(scales.as_array_mut());
    if dt == Dtype::F32 {
        let x: PyReadonlyArray3<'_, f32> = x.extract()?;
        let groups = zip3_in(group_slices(x.as_array()), cs, ss);
        run(py, || c.encode_groups_into(groups, t))
    } else {
        let view = xa.call_method1("view", (numpy::dtype::<u16>(py),))?;
        let x: PyReadonlyArray3<'_, u16> = view.extract()?;
        let xs = group_slices(x.as_array());
        match dt {
            Dtype::F16 => {
                let xs = xs
                    .into_iter()
                    .map(bytemuck::cast_slice::<u16, f16>)
                    .collect();
                let groups = zip3_in(xs, cs, ss);
                run(py, || c.encode_groups_into(groups, t))
            }
            _ => {
                let xs = xs
                    .into_iter()
                    .map(bytemuck::cast_slice::<u16, bf16>)
                    .collect();
                let groups = zip3_in(xs, cs, ss);
                run(py, || c.encode_groups_into(groups, t))
            }
        }
    }
}

type EncodeGroup<'a, T> = (&'a [T], &'a mut [u8], &'a mut [u16]);

fn zip3_in<'a, T>(
    x: Vec<&'a [T]>,
    c: Vec<&'a mut [u8]>,
    s: Vec<&'a mut [u16]>,
) -> Vec<EncodeGroup<'a, T>> {
    x.into_iter()
        .zip(c)
        .zip(s)
        .map(|((x, c), s)| (x, c, s))
        .collect()
}

fn zip3<'a, T>(
    c: Vec<&'a [u8]>,
    s: Vec<&'a [u16]>,
    o: Vec<&'a mut [T]>,
) -> Vec<(&'a [u8], &'a [u16], &'a mut [T])> {
    c.into_iter()
        .zip(s)
        .zip(o)
        .map(|((c, s), o)| (c, s, o))
        .collect()
}

/// The per-group token counts of the attention functions: a 1-D integer array of `groups`
/// values in `[0, n]`.
fn attention_counts(
    py: Python<'_>,
    counts: &Bound<'_, PyAny>,
    groups: usize,
    n: usize,
) -> PyResult<Vec<usize>> {
    let ca = array(counts, "counts", 1, "(G,) int64")?;
    check_dtype(
        &ca,
        "counts",
        "int64",
        ca.dtype().is_equiv_to(&numpy::dtype::<i64>(py)),
    )?;
    check_shape(py, "counts", ca.shape(), &[groups])?;
    let counts: PyReadonlyArray1<'_, i64> = counts.extract()?;
    counts
        .as_slice()?
        .iter()
        .map(|&c| match usize::try_from(c) {
            Ok(c) if c <= n => Ok(c),
            _ => Err(error(
                py,
                "InvalidArgumentError",
                format!("counts must be in [0, {n}] (the tokens of each group), got {c}"),
            )),
        })
        .collect()
}

/// The coded keys or values of the attention functions: `codes` (G, N, d·bits/8) uint8 and
/// `scales` (G, N) uint16, each group dense (see `decode_groups`).
fn attention_codes<'py>(
    py: Python<'py>,
    codes: &Bound<'py, PyAny>,
    scales: &Bound<'py, PyAny>,
    g: usize,
    n: usize,
    cb: usize,
) -> PyResult<(PyReadonlyArray3<'py, u8>, PyReadonlyArray2<'py, u16>)> {
    let ca = grouped(codes, "codes", 3, "(G, N, head_dim*bits/8) uint8")?;
    check_dtype(
        &ca,
        "codes",
        "uint8",
        ca.dtype().is_equiv_to(&numpy::dtype::<u8>(py)),
    )?;
    check_shape(py, "codes", ca.shape(), &[g, n, cb])?;
    let sa = grouped(scales, "scales", 2, "(G, N) uint16")?;
    check_dtype(
        &sa,
        "scales",
        "uint16 (fp16 bit patterns)",
        sa.dtype().is_equiv_to(&numpy::dtype::<u16>(py)),
    )?;
    check_shape(py, "scales", sa.shape(), &[g, n])?;
    Ok((codes.extract()?, scales.extract()?))
}

/// Attention scores straight from coded keys (no decode): `queries` (G, q, head_dim) float32,
/// `codes` (G, N, head_dim·bits/8) uint8, `scales` (G, N) uint16, `counts` (G,) int64 (tokens
/// of each group, the first ones), `out` (G, N, q) float32 written in place:
/// `out[i, t, j] = <queries[i, j], decode(codes[i, t], scales[i, t])>` for `t < counts[i]`,
/// `-inf` after. Codes and scales may be slices of larger buffers along N (each group dense).
#[pyfunction]
#[pyo3(signature = (queries, codes, scales, counts, out, *, bits, seed, threads=None))]
#[allow(clippy::too_many_arguments)]
fn attention_scores(
    py: Python<'_>,
    queries: &Bound<'_, PyAny>,
    codes: &Bound<'_, PyAny>,
    scales: &Bound<'_, PyAny>,
    counts: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    bits: &Bound<'_, PyAny>,
    seed: &Bound<'_, PyAny>,
    threads: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let t = self::threads(py, threads)?;
    let qa = array(queries, "queries", 3, "(G, q, head_dim) float32")?;
    check_dtype(&qa, "queries", "float32", Dtype::F32.accepts(&qa))?;
    let (g, nq, d) = (qa.shape()[0], qa.shape()[1], qa.shape()[2]);
    let c = codec(py, d, bits, seed)?;
    let oa = array(out, "out", 3, "(G, N, q) float32")?;
    check_dtype(&oa, "out", "float32", Dtype::F32.accepts(&oa))?;
    let n = oa.shape()[1];
    check_shape(py, "out", oa.shape(), &[g, n, nq])?;
    let (codes, scales) = attention_codes(py, codes, scales, g, n, c.params().code_bytes())?;
    let counts = attention_counts(py, counts, g, n)?;
    let queries: PyReadonlyArray3<'_, f32> = queries.extract()?;
    let mut o: PyReadwriteArray3<'_, f32> = out.extract().map_err(|_| writable(py, "out"))?;
    let cb = c.params().code_bytes();
    let (cs, ss) = (
        group_slices(codes.as_array()),
        group_slices(scales.as_array()),
    );
    let mut os = group_slices_mut(o.as_array_mut());
    let mut groups = Vec::with_capacity(g);
    for (((cs, ss), os), &k) in cs.into_iter().zip(ss).zip(os.iter_mut()).zip(&counts) {
        let (head, tail) = os.split_at_mut(k * nq);
        tail.fill(f32::NEG_INFINITY);
        groups.push((&cs[..k * cb], &ss[..k], head));
    }
    let qs = queries.as_slice()?;
    run(py, || c.attention_scores_into(qs, groups, t))
}

/// Weighted sums straight from coded values (no decode): `codes` (G, N, head_dim·bits/8)
/// uint8, `scales` (G, N) uint16, `weights` (G, N, q) float32 (token-major), `counts` (G,)
/// int64, `out` (G, q, head_dim) float32 written in place:
/// `out[i, j] = Σ_{t < counts[i]} weights[i, t, j] · decode(codes[i, t], scales[i, t])`.
/// Slots past a group's count are not read.
#[pyfunction]
#[pyo3(signature = (codes, scales, weights, counts, out, *, bits, seed, threads=None))]
#[allow(clippy::too_many_arguments)]
fn attention_values(
    py: Python<'_>,
    codes: &Bound<'_, PyAny>,
    scales: &Bound<'_, PyAny>,
    weights: &Bound<'_, PyAny>,
    counts: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    bits: &Bound<'_, PyAny>,
    seed: &Bound<'_, PyAny>,
    threads: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let t = self::threads(py, threads)?;
    let oa = array(out, "out", 3, "(G, q, head_dim) float32")?;
    check_dtype(&oa, "out", "float32", Dtype::F32.accepts(&oa))?;
    let (g, nq, d) = (oa.shape()[0], oa.shape()[1], oa.shape()[2]);
    let c = codec(py, d, bits, seed)?;
    let wa = array(weights, "weights", 3, "(G, N, q) float32")?;
    check_dtype(&wa, "weights", "float32", Dtype::F32.accepts(&wa))?;
    let n = wa.shape()[1];
    check_shape(py, "weights", wa.shape(), &[g, n, nq])?;
    let (codes, scales) = attention_codes(py, codes, scales, g, n, c.params().code_bytes())?;
    let counts = attention_counts(py, counts, g, n)?;
    let weights: PyReadonlyArray3<'_, f32> = weights.extract()?;
    let mut o: PyReadwriteArray3<'_, f32> = out.extract().map_err(|_| writable(py, "out"))?;
    let cb = c.params().code_bytes();
    let groups = group_slices(codes.as_array())
        .into_iter()
        .zip(group_slices(scales.as_array()))
        .zip(group_slices(weights.as_array()))
        .zip(&counts)
        .map(|(((cs, ss), ws), &k)| (&cs[..k * cb], &ss[..k], &ws[..k * nq]))
        .collect();
    let os = o.as_slice_mut()?;
    run(py, || c.attention_values_into(groups, os, t))
}

/// The scalar baseline: the same rotation, then per-vector round-to-nearest at `bits` with the
/// best clipping scale (one fp16 step); encodes and decodes the float32 rows of `x`
/// (N, head_dim) into `out` (same shape), in place. For benchmarks and evaluation only.
#[pyfunction]
#[pyo3(signature = (x, out, *, bits, seed, threads=None))]
fn scalar_roundtrip(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    bits: &Bound<'_, PyAny>,
    seed: &Bound<'_, PyAny>,
    threads: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let t = self::threads(py, threads)?;
    let xa = array(x, "x", 2, "(N, head_dim) float32")?;
    check_dtype(&xa, "x", "float32", Dtype::F32.accepts(&xa))?;
    let oa = array(out, "out", 2, "(N, head_dim) float32")?;
    check_dtype(&oa, "out", "float32", Dtype::F32.accepts(&oa))?;
    check_shape(py, "out", oa.shape(), xa.shape())?;
    let c = codec(py, xa.shape()[1], bits, seed)?;
    let x: PyReadonlyArray2<'_, f32> = x.extract()?;
    let mut o: PyReadwriteArray2<'_, f32> = out.extract().map_err(|_| writable(py, "out"))?;
    let (xs, os) = (x.as_slice()?, o.as_slice_mut()?);
    run(py, || c.scalar_roundtrip(xs, os, t))
}

/// Build information: crate version, codec version, target, SIMD level detected at run time,
/// rayon's thread count, and whether this is a debug or release build.
#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("version", env!("CARGO_PKG_VERSION"))?;
    d.set_item("codec", "e8v1")?;
    d.set_item("target_arch", std::env::consts::ARCH)?;
    d.set_item("target_os", std::env::consts::OS)?;
    d.set_item("simd", simd_level())?;
    d.set_item("threads", rayon::current_num_threads())?;
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    d.set_item("profile", profile)?;
    Ok(d)
}

/// Registers the codec functions on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode, m)?)?;
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    m.add_function(wrap_pyfunction!(decode_groups, m)?)?;
    m.add_function(wrap_pyfunction!(encode_groups, m)?)?;
    m.add_function(wrap_pyfunction!(scalar_roundtrip, m)?)?;
    m.add_function(wrap_pyfunction!(attention_scores, m)?)?;
    m.add_function(wrap_pyfunction!(attention_values, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    Ok(())
}
