//! The index shared by both stores: entries keyed by (prefix length, prefix hash), LRU order,
//! byte accounting and longest-prefix search.

use std::collections::{BTreeMap, HashMap};

use xxhash_rust::xxh3::Xxh3;

use super::StoreError;

/// An entry's key: the prefix length and [`super::prefix_hash`] of the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct EntryKey {
    pub len: u32,
    pub hash: u128,
}

impl EntryKey {
    /// The key of a whole id sequence (which `put` stores).
    pub fn of(token_ids: &[u32]) -> Result<Self, StoreError> {
        if token_ids.is_empty() {
            return Err(StoreError::EmptyKey);
        }
        let len = u32::try_from(token_ids.len()).map_err(|_| StoreError::PrefixTooLong {
            len: token_ids.len(),
        })?;
        Ok(EntryKey {
            len,
            hash: super::prefix_hash(token_ids),
        })
    }
}

struct Slot<V> {
    tick: u64,
    size: u64,
    value: V,
}

/// LRU index of entries with values `V`, within a byte budget.
pub(crate) struct Lru<V> {
    entries: HashMap<EntryKey, Slot<V>>,
    order: BTreeMap<u64, EntryKey>,
    lengths: BTreeMap<u32, usize>,
    next_tick: u64,
    bytes: u64,
    budget: u64,
}

impl<V> Lru<V> {
    pub fn new(budget: u64) -> Self {
        Lru {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            lengths: BTreeMap::new(),
            next_tick: 0,
            bytes: 0,
            budget,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Refuses an entry larger than the whole budget.
    pub fn check_size(&self, size: u64) -> Result<(), StoreError> {
        if size > self.budget {
            Err(StoreError::TooLarge {
                size,
                budget: self.budget,
            })
        } else {
            Ok(())
        }
    }

    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    /// Inserts (or replaces) an entry as the most recently used, then evicts least recently
    /// used entries until the budget holds. Returns the evicted entries (not the replaced one).
    /// The caller has checked the size with [`Lru::check_size`].
    pub fn insert(&mut self, key: EntryKey, size: u64, value: V) -> Vec<(EntryKey, V)> {
        self.remove(&key);
        let tick = self.tick();
        self.order.insert(tick, key);
        *self.lengths.entry(key.len).or_insert(0) += 1;
        self.bytes += size;
        self.entries.insert(key, Slot { tick, size, value });
        let mut evicted = Vec::new();
        while self.bytes > self.budget {
            let Some((_, &oldest)) = self.order.iter().next() else {
                break;
            };
            if oldest == key {
                break;
            }
            if let Some(v) = self.remove(&oldest) {
                evicted.push((oldest, v));
            }
        }
        evicted
    }

    pub fn remove(&mut self, key: &EntryKey) -> Option<V> {
        let slot = self.entries.remove(key)?;
        self.order.remove(&slot.tick);
        if let Some(n) = self.lengths.get_mut(&key.len) {
            *n -= 1;
            if *n == 0 {
                self.lengths.remove(&key.len);
            }
        }
        self.bytes -= slot.size;
        Some(slot.value)
    }

    /// Marks an entry as most recently used.
    pub fn touch(&mut self, key: &EntryKey) {
        let tick = self.tick();
        if let Some(slot) = self.entries.get_mut(key) {
            self.order.remove(&slot.tick);
            slot.tick = tick;
            self.order.insert(tick, *key);
        }
    }

    pub fn get(&self, key: &EntryKey) -> Option<&V> {
        self.entries.get(key).map(|s| &s.value)
    }

    pub fn get_mut(&mut self, key: &EntryKey) -> Option<&mut V> {
        self.entries.get_mut(key).map(|s| &mut s.value)
    }

    /// The key of the longest stored prefix of `token_ids`: `O(n + k)` for `n` ids and `k`
    /// distinct stored lengths `<= n`.
    pub fn longest(&self, token_ids: &[u32]) -> Option<EntryKey> {
        let n = u32::try_from(token_ids.len()).unwrap_or(u32::MAX);
        if n == 0 {
            return None;
        }
        let lens: Vec<u32> = self.lengths.range(1..=n).map(|(&len, _)| len).collect();
        let max = *lens.last()? as usize;
        let bytes: Vec<u8> = token_ids
            .get(..max)
            .unwrap_or(&[])
            .iter()
            .flat_map(|t| t.to_le_bytes())
            .collect();
        let mut hasher = Xxh3::new();
        let mut done = 0usize;
        let mut candidates = Vec::with_capacity(lens.len());
        for len in lens {
            let upto = len as usize * 4;
            hasher.update(bytes.get(done..upto).unwrap_or(&[]));
            done = upto;
            candidates.push(EntryKey {
                len,
                hash: hasher.digest128(),
            });
        }
        candidates
            .into_iter()
            .rev()
            .find(|k| self.entries.contains_key(k))
    }

    /// Keys from least to most recently used.
    pub fn keys_lru_first(&self) -> impl Iterator<Item = &EntryKey> {
        self.order.values()
    }
}
