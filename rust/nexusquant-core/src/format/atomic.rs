//! Atomic replacement of a file: write a temporary file in the same directory, fsync it, rename
//! it over the target, fsync the directory. A failure at any step leaves the previous file
//! intact and removes the temporary file.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Suffix of the temporary files made by [`atomic_write`] (their names also start with `.`).
/// A directory owner may delete leftovers of a crash that match `.*` + this suffix.
pub const TEMP_SUFFIX: &str = ".nqtmp";

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(parent_dir(path).join(format!(
        ".{}.{}.{n}{TEMP_SUFFIX}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Fsyncs a directory so that a rename inside it is durable (a no-op where directories cannot
/// be opened as files).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Like [`atomic_write`] but without the final fsync of the directory, for callers that
/// replace several files in one directory and then call [`sync_dir`] once.
pub fn replace_file<T>(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<T>,
) -> io::Result<T> {
    let tmp = temp_path(path)?;
    let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let written = write(&mut file).and_then(|v| file.sync_all().map(|()| v));
    drop(file);
    let renamed = written.and_then(|v| fs::rename(&tmp, path).map(|()| v));
    if renamed.is_err() {
        // Best effort: the error that matters is the one being returned.
        let _ = fs::remove_file(&tmp);
    }
    renamed
}

/// Replaces the file at `path` atomically with what `write` writes into a fresh temporary file
/// in the same directory. On any error (from `write` or from the file system) the previous file
/// is left as it was and the temporary file is removed.
pub fn atomic_write<T>(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<T>,
) -> io::Result<T> {
    let value = replace_file(path, write)?;
    sync_dir(parent_dir(path))?;
    Ok(value)
}
