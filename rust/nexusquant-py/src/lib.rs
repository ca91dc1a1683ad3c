//! `nexusquant._core`: the PyO3 bindings of `nexusquant-core`.
//!
//! Glue only: buffers in and out without copies, the GIL released around real work, and core
//! errors mapped onto `nexusquant.errors` (see `errors.rs`).

mod codec;
mod errors;
mod format;
mod store;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    codec::register(m)?;
    format::register(m)?;
    store::register(m)?;
    Ok(())
}
