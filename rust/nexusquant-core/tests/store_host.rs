//! Behaviour of the host-RAM store: longest-prefix lookup, LRU order, budget, threads.

use std::sync::Arc;

use nexusquant_core::store::{prefix_hash, HostStore, StoreError};

fn blob(tag: u8, n: usize) -> Vec<u8> {
    vec![tag; n]
}

#[test]
fn longest_prefix_lookup() {
    let s = HostStore::new(1 << 20);
    s.put(&[1, 2, 3], blob(3, 10)).unwrap();
    s.put(&[1, 2, 3, 4, 5], blob(5, 10)).unwrap();
    s.put(&[1, 9], blob(9, 10)).unwrap();
    let hit = |ids: &[u32]| s.lookup(ids).map(|(n, b)| (n, b[0]));
    assert_eq!(hit(&[1, 2, 3, 4, 5, 6]), Some((5, 5)));
    assert_eq!(hit(&[1, 2, 3, 4, 5]), Some((5, 5)));
    assert_eq!(hit(&[1, 2, 3, 4]), Some((3, 3)));
    assert_eq!(hit(&[1, 2, 3]), Some((3, 3)));
    assert_eq!(hit(&[1, 2]), None);
    assert_eq!(hit(&[1, 9, 9, 9]), Some((2, 9)));
    assert_eq!(hit(&[2, 2, 3, 4, 5]), None);
    assert_eq!(hit(&[]), None);
    assert_eq!(s.len(), 3);
}

#[test]
fn long_prefixes_and_many_lengths() {
    let s = HostStore::new(u64::MAX);
    let ids: Vec<u32> = (0..5000u32).map(|i| i.wrapping_mul(2654435761)).collect();
    for n in (1..=5000).step_by(97) {
        s.put(&ids[..n], (n as u32).to_le_bytes().to_vec()).unwrap();
    }
    for q in [1usize, 97, 98, 1000, 4999, 5000] {
        let (n, b) = s.lookup(&ids[..q]).unwrap();
        assert_eq!(n, (q - 1) / 97 * 97 + 1);
        assert_eq!(b[..], (n as u32).to_le_bytes());
    }
    let mut other = ids.clone();
    other[0] ^= 1;
    assert!(s.lookup(&other).is_none());
}

#[test]
fn prefix_hash_depends_on_every_id() {
    let a = prefix_hash(&[1, 2, 3]);
    assert_ne!(a, prefix_hash(&[1, 2, 4]));
    assert_ne!(a, prefix_hash(&[1, 2]));
    assert_eq!(a, prefix_hash(&[1, 2, 3]));
}

#[test]
fn lru_eviction_within_budget() {
    let s = HostStore::new(30);
    s.put(&[1], blob(1, 10)).unwrap();
    s.put(&[2], blob(2, 10)).unwrap();
    s.put(&[3], blob(3, 10)).unwrap();
    assert_eq!(s.nbytes(), 30);
    assert_eq!(s.prefix_lengths_lru_first(), [1, 1, 1]);
    // Using [1] makes [2] the least recently used.
    assert!(s.lookup(&[1, 7]).is_some());
    s.put(&[4], blob(4, 10)).unwrap();
    assert!(s.lookup(&[2]).is_none());
    assert!(s.lookup(&[1]).is_some());
    assert!(s.lookup(&[3]).is_some());
    assert!(s.lookup(&[4]).is_some());
    // A 25-byte entry evicts the two least recently used ([1] then [3]... in use order).
    s.put(&[5, 5], blob(5, 25)).unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s.nbytes(), 25);
    assert!(s.lookup(&[5, 5]).is_some());
}

#[test]
fn replacing_an_entry_updates_bytes() {
    let s = HostStore::new(100);
    s.put(&[1, 2], blob(1, 40)).unwrap();
    s.put(&[1, 2], blob(2, 10)).unwrap();
    assert_eq!((s.len(), s.nbytes()), (1, 10));
    assert_eq!(s.lookup(&[1, 2]).unwrap().1[0], 2);
}

#[test]
fn refuses_oversized_and_empty_keys() {
    let s = HostStore::new(10);
    let e = s.put(&[1], blob(0, 11)).unwrap_err();
    assert!(matches!(
        e,
        StoreError::TooLarge {
            size: 11,
            budget: 10
        }
    ));
    assert!(e.to_string().contains("larger than the store budget"));
    assert!(matches!(s.put(&[], blob(0, 1)), Err(StoreError::EmptyKey)));
    assert!(s.is_empty());
    s.put(&[1], blob(0, 10)).unwrap();
    assert_eq!(s.budget(), 10);
}

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn concurrent_readers_and_writers() {
    assert_send_sync::<HostStore>();
    let s = Arc::new(HostStore::new(1 << 16));
    let ids: Vec<u32> = (0..512).collect();
    for n in [16usize, 64, 256] {
        s.put(&ids[..n], vec![n as u8; n]).unwrap();
    }
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = Arc::clone(&s);
            let ids = ids.clone();
            std::thread::spawn(move || {
                for i in 0..2000usize {
                    let q = 1 + (i * 7 + t) % 512;
                    if let Some((n, b)) = s.lookup(&ids[..q]) {
                        assert!(n <= q);
                        assert_eq!(b.len(), n);
                        assert!(b.iter().all(|&x| x == n as u8));
                    }
                    if i % 100 == 0 {
                        let n = 1 + (i + t) % 300;
                        s.put(&ids[..n], vec![n as u8; n]).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(s.nbytes() <= 1 << 16);
}
