//! Bindings of the host-RAM and disk stores. The mapping of [`StoreError`] onto the classes of
//! `nexusquant.errors` lives in [`store_error_to_py`].

use std::path::PathBuf;
use std::sync::Arc;

use nexusquant_core::store::{DiskStore, HostStore, StoreError};
use numpy::PyReadonlyArray1;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::format::{io_error_to_py, nexusquant_error};

/// Maps a core store error onto `nexusquant.errors`: invalid token ids onto
/// `InvalidArgumentError`, everything else (budget, I/O, failed background writes, closed
/// store) onto `StoreError`.
pub fn store_error_to_py(e: &StoreError) -> PyErr {
    let class = match e {
        StoreError::EmptyKey | StoreError::PrefixTooLong { .. } => "InvalidArgumentError",
        StoreError::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
            return io_error_to_py(Some(path), source)
        }
        _ => "StoreError",
    };
    Python::attach(|py| nexusquant_error(py, class, e.to_string()))
}

fn to_py(e: StoreError) -> PyErr {
    store_error_to_py(&e)
}

/// Blobs in host RAM keyed by token-id prefixes, LRU-evicted within `budget_bytes`.
#[pyclass(name = "HostStore", module = "nexusquant._core", frozen)]
struct PyHostStore {
    inner: HostStore,
}

#[pymethods]
impl PyHostStore {
    #[new]
    fn new(budget_bytes: u64) -> Self {
        PyHostStore {
            inner: HostStore::new(budget_bytes),
        }
    }

    /// Stores `blob` under the prefix `token_ids` (a contiguous uint32 array).
    fn put(&self, token_ids: PyReadonlyArray1<'_, u32>, blob: &[u8]) -> PyResult<()> {
        self.inner
            .put(token_ids.as_slice()?, Arc::<[u8]>::from(blob))
            .map_err(to_py)
    }

    /// `(matched_tokens, blob)` for the longest stored prefix of `token_ids`, or `None`.
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        token_ids: PyReadonlyArray1<'py, u32>,
    ) -> PyResult<Option<(usize, Bound<'py, PyBytes>)>> {
        let ids = token_ids.as_slice()?;
        let hit = py.detach(|| self.inner.lookup(ids));
        Ok(hit.map(|(n, blob)| (n, PyBytes::new(py, &blob))))
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Bytes held (sum of blob lengths).
    #[getter]
    fn nbytes(&self) -> u64 {
        self.inner.nbytes()
    }

    /// The byte budget.
    #[getter]
    fn budget_bytes(&self) -> u64 {
        self.inner.budget()
    }
}

/// Blobs on disk (one file per entry in a directory) keyed by token-id prefixes, LRU-evicted
/// within `budget_bytes` of disk; writes happen on a background thread.
#[pyclass(name = "DiskStore", module = "nexusquant._core", frozen)]
struct PyDiskStore {
    inner: DiskStore,
}

#[pymethods]
impl PyDiskStore {
    #[new]
    fn new(py: Python<'_>, path: PathBuf, budget_bytes: u64) -> PyResult<Self> {
        let inner = py
            .detach(|| DiskStore::open(&path, budget_bytes))
            .map_err(to_py)?;
        Ok(PyDiskStore { inner })
    }

    /// Queues `blob` to be stored under the prefix `token_ids`; returns at once.
    fn put(&self, token_ids: PyReadonlyArray1<'_, u32>, blob: &[u8]) -> PyResult<()> {
        self.inner
            .put(token_ids.as_slice()?, Arc::<[u8]>::from(blob))
            .map_err(to_py)
    }

    /// `(matched_tokens, blob)` for the longest stored prefix of `token_ids`, or `None`.
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        token_ids: PyReadonlyArray1<'py, u32>,
    ) -> PyResult<Option<(usize, Bound<'py, PyBytes>)>> {
        let ids = token_ids.as_slice()?;
        let hit = py.detach(|| self.inner.lookup(ids)).map_err(to_py)?;
        Ok(hit.map(|(n, blob)| (n, PyBytes::new(py, &blob))))
    }

    /// Waits until every queued write is on disk; raises `StoreError` for failed writes.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.flush()).map_err(to_py)
    }

    /// Flushes and stops the background writer; later calls raise `StoreError`.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.close()).map_err(to_py)
    }

    /// Damaged or unreadable entry files met so far: a list of `(path, reason)`.
    fn corrupt_entries(&self) -> Vec<(PathBuf, String)> {
        self.inner
            .corrupt_entries()
            .into_iter()
            .map(|c| (c.path, c.reason))
            .collect()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Bytes on disk (entry files, headers included).
    #[getter]
    fn nbytes(&self) -> u64 {
        self.inner.nbytes()
    }

    /// The byte budget.
    #[getter]
    fn budget_bytes(&self) -> u64 {
        self.inner.budget()
    }

    /// The store's directory.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.dir().to_owned()
    }
}

/// Registers the store classes in the extension module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyHostStore>()?;
    m.add_class::<PyDiskStore>()?;
    Ok(())
}
