//! The disk store: one file per entry, written in the background.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::SystemTime;

use super::lru::{EntryKey, Lru};
use super::{Hit, StoreError};
use crate::format::{replace_file, sync_dir, TEMP_SUFFIX};

/// File-name suffix of entry files: `{hash:032x}-{len:08x}.nqe`.
pub const ENTRY_SUFFIX: &str = ".nqe";
/// Bytes of the header in front of each entry's blob (counted in the budget).
pub const ENTRY_HEADER_LEN: u64 = 64;
/// Suffix given to entry files found corrupt; they are never read again.
const CORRUPT_SUFFIX: &str = ".corrupt";
const ENTRY_MAGIC: [u8; 8] = *b"NQKVENT\n";
const ENTRY_VERSION: u16 = 1;

/// An entry file that was skipped because it is damaged or unreadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptEntry {
    /// The file (renamed with a `.corrupt` suffix when its content is damaged).
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

enum Slot {
    /// Queued for writing; lookups serve this copy.
    Pending { blob: Arc<[u8]>, generation: u64 },
    /// Written; lookups read the file.
    OnDisk,
}

enum Op {
    Write {
        key: EntryKey,
        blob: Arc<[u8]>,
        generation: u64,
    },
    Delete {
        key: EntryKey,
    },
    Flush(Sender<()>),
}

struct State {
    index: Lru<Slot>,
    /// `None` once closed.
    sender: Option<Sender<Op>>,
    generation: u64,
    failures: Vec<String>,
    corrupt: Vec<CorruptEntry>,
}

struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn entry_path(dir: &Path, key: EntryKey) -> PathBuf {
    dir.join(format!("{:032x}-{:08x}{ENTRY_SUFFIX}", key.hash, key.len))
}

fn parse_name(name: &str) -> Option<EntryKey> {
    let stem = name.strip_suffix(ENTRY_SUFFIX)?;
    let (hash, len) = stem.split_once('-')?;
    if hash.len() != 32 || len.len() != 8 {
        return None;
    }
    Some(EntryKey {
        hash: u128::from_str_radix(hash, 16).ok()?,
        len: u32::from_str_radix(len, 16).ok()?,
    })
}

/// Entry header (64 bytes, little-endian):
///
/// ```text
///  0 [u8; 8] magic "NQKVENT\n"   8 u16 version (1)   10 u16 reserved   12 u32 prefix length
/// 16 u128 prefix hash            32 u64 blob length  40 u32 blob crc32c
/// 44 [u8; 16] reserved           60 u32 crc32c of bytes 0..60
/// ```
fn encode_header(key: EntryKey, blob: &[u8]) -> [u8; ENTRY_HEADER_LEN as usize] {
    let mut h = [0u8; ENTRY_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&ENTRY_MAGIC);
    h[8..10].copy_from_slice(&ENTRY_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&key.len.to_le_bytes());
    h[16..32].copy_from_slice(&key.hash.to_le_bytes());
    h[32..40].copy_from_slice(&(blob.len() as u64).to_le_bytes());
    h[40..44].copy_from_slice(&crc32c::crc32c(blob).to_le_bytes());
    let crc = crc32c::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a header against the key in the file name and the file length; returns the blob's
/// length and checksum.
fn check_header(h: &[u8; 64], key: EntryKey, file_len: u64) -> Result<(u64, u32), String> {
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let mut b16 = [0u8; 16];
    b16.copy_from_slice(&h[16..32]);
    let mut b8 = [0u8; 8];
    b8.copy_from_slice(&h[32..40]);
    if h[0..8] != ENTRY_MAGIC {
        return Err("not an entry file (bad magic)".into());
    }
    if crc32c::crc32c(&h[..60]) != u32_at(60) {
        return Err("header checksum mismatch".into());
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version != ENTRY_VERSION {
        return Err(format!("unsupported entry version {version}"));
    }
    if u32_at(12) != key.len || u128::from_le_bytes(b16) != key.hash {
        return Err("header key does not match the file name".into());
    }
    let blob_len = u64::from_le_bytes(b8);
    if ENTRY_HEADER_LEN.checked_add(blob_len) != Some(file_len) {
        return Err(format!(
            "file is {file_len} bytes, the header declares {blob_len} + {ENTRY_HEADER_LEN}"
        ));
    }
    Ok((blob_len, u32_at(40)))
}

enum ReadError {
    Missing,
    Corrupt(String),
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::NotFound => ReadError::Missing,
            io::ErrorKind::UnexpectedEof => ReadError::Corrupt("file is truncated".into()),
            _ => ReadError::Io(e),
        }
    }
}

/// Opens an entry file and checks its header; returns the file, its blob length and checksum.
fn open_entry(path: &Path, key: EntryKey) -> Result<(File, u64, u32), ReadError> {
    let mut file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut h = [0u8; ENTRY_HEADER_LEN as usize];
    file.read_exact(&mut h)?;
    let (blob_len, crc) = check_header(&h, key, file_len).map_err(ReadError::Corrupt)?;
    Ok((file, blob_len, crc))
}

/// Reads and verifies an entry's blob, and marks the file as recently used (its mtime orders
/// entries when the store is reopened).
fn read_entry(path: &Path, key: EntryKey) -> Result<Vec<u8>, ReadError> {
    let (mut file, blob_len, crc) = open_entry(path, key)?;
    // `blob_len` equals the file length minus the header, so it is backed by real bytes.
    let len = usize::try_from(blob_len).map_err(|_| ReadError::Corrupt("too large".into()))?;
    let mut blob = vec![0u8; len];
    file.read_exact(&mut blob)?;
    if crc32c::crc32c(&blob) != crc {
        return Err(ReadError::Corrupt("blob checksum mismatch".into()));
    }
    // Best effort: a failure only makes the LRU order after a restart less accurate.
    let _ = file.set_modified(SystemTime::now());
    Ok(blob)
}

/// Renames a damaged entry file out of the way (best effort) and returns its new path.
fn quarantine(path: &Path) -> PathBuf {
    let mut target = path.as_os_str().to_owned();
    target.push(CORRUPT_SUFFIX);
    let target = PathBuf::from(target);
    match fs::rename(path, &target) {
        Ok(()) => target,
        Err(_) => path.to_owned(),
    }
}

fn write_entry(dir: &Path, key: EntryKey, blob: &[u8]) -> io::Result<()> {
    let header = encode_header(key, blob);
    replace_file(&entry_path(dir, key), |file| {
        file.write_all(&header)?;
        file.write_all(blob)
    })
}

fn run_worker(shared: Arc<Shared>, ops: Receiver<Op>) {
    let mut dirty = false;
    let sync = |dirty: &mut bool| {
        if std::mem::take(dirty) {
            if let Err(e) = sync_dir(&shared.dir) {
                let msg = format!("fsync of {}: {e}", shared.dir.display());
                shared.lock().failures.push(msg);
            }
        }
    };
    // Each wake-up drains everything queued: one batch, one directory fsync.
    while let Ok(first) = ops.recv() {
        for op in std::iter::once(first).chain(ops.try_iter()) {
            match op {
                Op::Write {
                    key,
                    blob,
                    generation,
                } => {
                    let written = write_entry(&shared.dir, key, &blob);
                    dirty |= written.is_ok();
                    let mut st = shared.lock();
                    let current = matches!(
                        st.index.get(&key),
                        Some(Slot::Pending { generation: g, .. }) if *g == generation
                    );
                    match written {
                        Ok(()) if current => {
                            if let Some(slot) = st.index.get_mut(&key) {
                                *slot = Slot::OnDisk;
                            }
                        }
                        Ok(()) => {}
                        Err(e) => {
                            let path = entry_path(&shared.dir, key);
                            st.failures.push(format!("writing {}: {e}", path.display()));
                            if current {
                                st.index.remove(&key);
                            }
                        }
                    }
                }
                Op::Delete { key } => {
                    let path = entry_path(&shared.dir, key);
                    match fs::remove_file(&path) {
                        Ok(()) => dirty = true,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            let msg = format!("removing {}: {e}", path.display());
                            shared.lock().failures.push(msg);
                        }
                    }
                }
                Op::Flush(done) => {
                    sync(&mut dirty);
                    // The flusher may have stopped waiting; nothing to do then.
                    let _ = done.send(());
                }
            }
        }
        sync(&mut dirty);
    }
}

/// One entry found when scanning the directory.
struct Found {
    key: EntryKey,
    size: u64,
    mtime: SystemTime,
    name: String,
}

/// Scans `dir`: removes temporary files left by a crash, indexes valid entry files, reports
/// (and renames aside) damaged ones. Blob checksums are verified on lookup, not here.
fn scan(dir: &Path, corrupt: &mut Vec<CorruptEntry>) -> Result<Vec<Found>, StoreError> {
    let io_err = |source| StoreError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut found = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err)? {
        let item = item.map_err(io_err)?;
        let path = item.path();
        let Some(name) = item.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) {
            // Best effort: a leftover temporary file is harmless.
            let _ = fs::remove_file(&path);
            continue;
        }
        if !name.ends_with(ENTRY_SUFFIX) {
            continue;
        }
        let Some(key) = parse_name(&name) else {
            corrupt.push(CorruptEntry {
                path: quarantine(&path),
                reason: "file name is not {hash:032x}-{len:08x}.nqe".into(),
            });
            continue;
        };
        let opened = open_entry(&path, key).and_then(|(file, blob_len, _)| {
            let mtime = file.metadata()?.modified()?;
            Ok((blob_len, mtime))
        });
        match opened {
            Ok((blob_len, mtime)) => found.push(Found {
                key,
                size: ENTRY_HEADER_LEN + blob_len,
                mtime,
                name,
            }),
            Err(ReadError::Missing) => {}
            Err(ReadError::Corrupt(reason)) => corrupt.push(CorruptEntry {
                path: quarantine(&path),
                reason,
            }),
            Err(ReadError::Io(e)) => corrupt.push(CorruptEntry {
                path,
                reason: format!("unreadable: {e}"),
            }),
        }
    }
    found.sort_by(|a, b| (a.mtime, &a.name).cmp(&(b.mtime, &b.name)));
    Ok(found)
}

/// Blobs on disk, one file per entry in a directory, keyed by token-id prefixes, LRU-evicted
/// within a byte budget (bytes on disk, headers included).
///
/// - `put` returns at once: the blob is queued and written by a background thread, which drains
///   the queue in batches (each entry written atomically, one directory fsync per batch).
///   Until written, lookups serve the queued copy. [`DiskStore::flush`] waits for the queue
///   and reports failed writes; dropping the store flushes it.
/// - Reopening the directory finds the entries again (by scanning the entry files, whose names
///   and headers carry the key, ordered by modification time, which a lookup hit refreshes).
///   Damaged entry files are skipped, renamed with a `.corrupt` suffix and reported by
///   [`DiskStore::corrupt_entries`]; an entry whose blob fails its checksum on lookup is
///   treated the same way and the lookup falls back to the next-longest stored prefix.
/// - One process at a time may open a directory.
pub struct DiskStore {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl DiskStore {
    /// Opens (creating it if needed) the store in directory `dir` with a budget of
    /// `budget_bytes` bytes on disk. Entries beyond the budget are evicted at once, least
    /// recently used first.
    pub fn open(dir: impl AsRef<Path>, budget_bytes: u64) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_owned();
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut corrupt = Vec::new();
        let mut index = Lru::new(budget_bytes);
        let mut doomed = Vec::new();
        for f in scan(&dir, &mut corrupt)? {
            if index.check_size(f.size).is_err() {
                doomed.push(f.key);
                continue;
            }
            doomed.extend(
                index
                    .insert(f.key, f.size, Slot::OnDisk)
                    .into_iter()
                    .map(|e| e.0),
            );
        }
        let (sender, ops) = mpsc::channel();
        for key in doomed {
            // The worker deletes them; the receiver is alive, so this cannot fail.
            let _ = sender.send(Op::Delete { key });
        }
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            state: Mutex::new(State {
                index,
                sender: Some(sender),
                generation: 0,
                failures: Vec::new(),
                corrupt,
            }),
        });
        let worker_shared = Arc::clone(&shared);
        let worker = std::thread::Builder::new()
            .name("nqkv-disk-store".into())
            .spawn(move || run_worker(worker_shared, ops))
            .map_err(|source| StoreError::Io { path: dir, source })?;
        Ok(DiskStore {
            shared,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Queues `blob` to be stored under the prefix `token_ids` (replacing an entry with the
    /// same ids), evicting least-recently-used entries as the budget requires. Returns at once.
    pub fn put(&self, token_ids: &[u32], blob: impl Into<Arc<[u8]>>) -> Result<(), StoreError> {
        let key = EntryKey::of(token_ids)?;
        let blob = blob.into();
        let size = ENTRY_HEADER_LEN + blob.len() as u64;
        let mut st = self.shared.lock();
        let sender = st.sender.clone().ok_or(StoreError::Closed)?;
        st.index.check_size(size)?;
        st.generation += 1;
        let generation = st.generation;
        let slot = Slot::Pending {
            blob: Arc::clone(&blob),
            generation,
        };
        // Sent while holding the lock, so the queue's order is the order of index changes.
        for (old, _) in st.index.insert(key, size, slot) {
            sender
                .send(Op::Delete { key: old })
                .map_err(|_| StoreError::Closed)?;
        }
        sender
            .send(Op::Write {
                key,
                blob,
                generation,
            })
            .map_err(|_| StoreError::Closed)
    }

    /// The blob of the longest stored prefix of `token_ids` and that prefix's length, marked
    /// as most recently used. Damaged entries met on the way are dropped and reported.
    pub fn lookup(&self, token_ids: &[u32]) -> Result<Option<Hit>, StoreError> {
        loop {
            let key = {
                let mut st = self.shared.lock();
                if st.sender.is_none() {
                    return Err(StoreError::Closed);
                }
                let Some(key) = st.index.longest(token_ids) else {
                    return Ok(None);
                };
                if let Some(Slot::Pending { blob, .. }) = st.index.get(&key) {
                    let blob = Arc::clone(blob);
                    st.index.touch(&key);
                    return Ok(Some((key.len as usize, blob)));
                }
                key
            };
            let path = entry_path(&self.shared.dir, key);
            let read = read_entry(&path, key);
            let mut st = self.shared.lock();
            let on_disk = matches!(st.index.get(&key), Some(Slot::OnDisk));
            match read {
                Ok(blob) => {
                    st.index.touch(&key);
                    return Ok(Some((key.len as usize, Arc::from(blob))));
                }
                Err(ReadError::Io(source)) => return Err(StoreError::Io { path, source }),
                // Evicted (or replaced) meanwhile: look again.
                Err(_) if !on_disk => {}
                Err(ReadError::Missing) => {
                    st.index.remove(&key);
                    st.corrupt.push(CorruptEntry {
                        path,
                        reason: "entry file disappeared".into(),
                    });
                }
                Err(ReadError::Corrupt(reason)) => {
                    st.index.remove(&key);
                    let path = quarantine(&path);
                    st.corrupt.push(CorruptEntry { path, reason });
                }
            }
        }
    }

    fn take_failures(&self) -> Result<(), StoreError> {
        let failures = std::mem::take(&mut self.shared.lock().failures);
        let count = failures.len();
        match failures.into_iter().next() {
            None => Ok(()),
            Some(first) => Err(StoreError::WriteFailed { count, first }),
        }
    }

    /// Waits until every queued write is on disk (files and directory fsynced). Reports the
    /// background writes that failed since the last flush.
    pub fn flush(&self) -> Result<(), StoreError> {
        let (done, wait) = mpsc::channel();
        {
            let st = self.shared.lock();
            let sender = st.sender.as_ref().ok_or(StoreError::Closed)?;
            sender
                .send(Op::Flush(done))
                .map_err(|_| StoreError::Closed)?;
        }
        wait.recv().map_err(|_| StoreError::Closed)?;
        self.take_failures()
    }

    /// Flushes, stops the background thread and closes the store; later calls fail with
    /// [`StoreError::Closed`]. Closing twice is a no-op.
    pub fn close(&self) -> Result<(), StoreError> {
        let sender = self.shared.lock().sender.take();
        if sender.is_none() {
            return Ok(());
        }
        drop(sender);
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(worker) = worker {
            if worker.join().is_err() {
                self.shared
                    .lock()
                    .failures
                    .push("the background writer panicked".into());
            }
        }
        self.take_failures()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.shared.lock().index.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held on disk (entry files, headers included; queued entries count).
    pub fn nbytes(&self) -> u64 {
        self.shared.lock().index.bytes()
    }

    /// The byte budget.
    pub fn budget(&self) -> u64 {
        self.shared.lock().index.budget()
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Damaged or unreadable entry files met so far (at open and on lookups).
    pub fn corrupt_entries(&self) -> Vec<CorruptEntry> {
        self.shared.lock().corrupt.clone()
    }

    /// Prefix lengths of the entries, least recently used first.
    pub fn prefix_lengths_lru_first(&self) -> Vec<usize> {
        self.shared
            .lock()
            .index
            .keys_lru_first()
            .map(|k| k.len as usize)
            .collect()
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        // Errors cannot be returned from drop; call `close` to see them.
        let _ = self.close();
    }
}
