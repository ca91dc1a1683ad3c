//! The host-RAM store.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::lru::{EntryKey, Lru};
use super::{Hit, StoreError};

/// Blobs in host RAM, keyed by token-id prefixes, LRU-evicted within a byte budget (the sum
/// of the blob lengths). Lookups return the blob without copying it.
pub struct HostStore {
    index: Mutex<Lru<Arc<[u8]>>>,
}

impl HostStore {
    /// An empty store holding at most `budget_bytes` bytes of blobs.
    pub fn new(budget_bytes: u64) -> Self {
        HostStore {
            index: Mutex::new(Lru::new(budget_bytes)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lru<Arc<[u8]>>> {
        // Nothing panics while holding the lock, so a poisoned index is still consistent.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `blob` under the prefix `token_ids` (replacing an entry with the same ids),
    /// evicting least-recently-used entries as the budget requires.
    pub fn put(&self, token_ids: &[u32], blob: impl Into<Arc<[u8]>>) -> Result<(), StoreError> {
        let key = EntryKey::of(token_ids)?;
        let blob = blob.into();
        let mut index = self.lock();
        index.check_size(blob.len() as u64)?;
        index.insert(key, blob.len() as u64, blob);
        Ok(())
    }

    /// The blob of the longest stored prefix of `token_ids` and that prefix's length, marked
    /// as most recently used.
    pub fn lookup(&self, token_ids: &[u32]) -> Option<Hit> {
        let mut index = self.lock();
        let key = index.longest(token_ids)?;
        index.touch(&key);
        let blob = Arc::clone(index.get(&key)?);
        Some((key.len as usize, blob))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held (sum of blob lengths).
    pub fn nbytes(&self) -> u64 {
        self.lock().bytes()
    }

    /// The byte budget.
    pub fn budget(&self) -> u64 {
        self.lock().budget()
    }

    /// Prefix lengths of the entries, least recently used first.
    pub fn prefix_lengths_lru_first(&self) -> Vec<usize> {
        self.lock()
            .keys_lru_first()
            .map(|k| k.len as usize)
            .collect()
    }
}
