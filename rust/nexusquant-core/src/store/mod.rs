//! Host-RAM and disk stores of serialized caches, keyed by token-id prefixes.
//!
//! A store maps a prefix of token ids to an opaque blob (in practice the bytes of a `.nqkv`
//! file) and answers *longest-prefix* lookups: given the token ids of a new prompt, it returns
//! the blob of the longest stored prefix of those ids, so a cache can resume from it.
//!
//! - Keys: an entry's key is its prefix length and the 128-bit XXH3 hash of the prefix's token
//!   ids (each as 4 little-endian bytes); see [`prefix_hash`]. Token ids themselves are not
//!   stored; two different prefixes of the same length collide with probability about
//!   `n² / 2^129` for `n` entries.
//! - Lookup: the store keeps the set of distinct stored prefix lengths. A lookup of `n` ids
//!   hashes the ids once, incrementally, taking a digest at every stored length `<= n`, then
//!   probes the entries from the longest length down: `O(n + k)` time for `k` distinct stored
//!   lengths `<= n`, independent of the number of entries.
//! - Budget: each store holds at most `budget_bytes` (a [`HostStore`] counts blob bytes, a
//!   [`DiskStore`] bytes on disk); inserting evicts least-recently-used entries (a lookup hit
//!   counts as a use). An entry larger than the whole budget is refused with
//!   [`StoreError::TooLarge`].
//! - Both stores are `Send + Sync`: any number of threads may call `put` and `lookup`.

mod disk;
mod host;
mod lru;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

pub use disk::{CorruptEntry, DiskStore, ENTRY_HEADER_LEN, ENTRY_SUFFIX};
pub use host::HostStore;

/// A lookup hit: the length of the matched prefix (in tokens) and the entry's blob.
pub type Hit = (usize, Arc<[u8]>);

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The entry alone is larger than the store's budget.
    #[error("entry of {size} bytes is larger than the store budget of {budget} bytes")]
    TooLarge {
        /// Bytes the entry would take.
        size: u64,
        /// The store's budget.
        budget: u64,
    },
    /// `put` was given no token ids.
    #[error("token_ids must hold at least 1 token id, got 0")]
    EmptyKey,
    /// More token ids than a key can describe.
    #[error("token_ids must hold at most {max} token ids, got {len}", max = u32::MAX)]
    PrefixTooLong {
        /// Number of ids given.
        len: usize,
    },
    /// An I/O error on a store file.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Background writes failed since the last flush.
    #[error("{count} background write(s) failed; the first: {first}")]
    WriteFailed {
        /// Number of failed operations.
        count: usize,
        /// Message of the first failure.
        first: String,
    },
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
}

/// The 128-bit XXH3 hash of token ids, each taken as 4 little-endian bytes. With the prefix
/// length, it is an entry's key.
pub fn prefix_hash(token_ids: &[u32]) -> u128 {
    let bytes: Vec<u8> = token_ids.iter().flat_map(|t| t.to_le_bytes()).collect();
    xxhash_rust::xxh3::xxh3_128(&bytes)
}
