//! The one place where core errors become Python exceptions of `nexusquant.errors`.
//!
//! Codec errors are mapped here; the format and store bindings keep their mappings next to the
//! types they map (`format::format_error_to_py`, `store::store_error_to_py`) and build the
//! exceptions through [`nexusquant_error`], so every class lookup goes through this module.

use nexusquant_core::codec::CodecError;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// An instance of `nexusquant.errors.<class>` carrying `message`.
pub(crate) fn nexusquant_error(py: Python<'_>, class: &str, message: String) -> PyErr {
    let class = py
        .import("nexusquant.errors")
        .and_then(|m| m.getattr(class))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match class {
        Ok(class) => PyErr::from_type(class, message),
        Err(e) => e,
    }
}

/// Maps a [`CodecError`] onto `nexusquant.errors`.
pub(crate) fn codec_error_to_py(e: &CodecError) -> PyErr {
    let class = match e {
        CodecError::HeadDim { .. } => "HeadDimError",
        CodecError::Bits { .. } => "BitsError",
        CodecError::PartialVector { .. } | CodecError::Length { .. } => "ShapeError",
        CodecError::Threads { .. } | CodecError::Candidates { .. } => "InvalidArgumentError",
        CodecError::ThreadPool { .. } => "NexusQuantError",
    };
    Python::attach(|py| nexusquant_error(py, class, e.to_string()))
}
