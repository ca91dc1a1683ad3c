//! Behaviour of the disk store: background writes, reopen, LRU, budget, corrupt files,
//! concurrent readers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nexusquant_core::store::{DiskStore, StoreError, ENTRY_HEADER_LEN, ENTRY_SUFFIX};

fn entry_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(ENTRY_SUFFIX))
        .collect();
    v.sort();
    v
}

fn blob(n: usize, tag: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_add(tag)).collect()
}

#[test]
fn put_lookup_flush_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<u32> = (100..400).collect();
    {
        let s = DiskStore::open(dir.path(), 1 << 20).unwrap();
        s.put(&ids[..10], blob(1000, 1)).unwrap();
        s.put(&ids[..200], blob(3000, 2)).unwrap();
        // Served before or after the background write, the answer is the same.
        let (n, b) = s.lookup(&ids[..250]).unwrap().unwrap();
        assert_eq!((n, &b[..]), (200, &blob(3000, 2)[..]));
        s.flush().unwrap();
        assert_eq!(entry_files(dir.path()).len(), 2);
        let (n, b) = s.lookup(&ids[..150]).unwrap().unwrap();
        assert_eq!((n, &b[..]), (10, &blob(1000, 1)[..]));
        assert_eq!(s.nbytes(), 4000 + 2 * ENTRY_HEADER_LEN);
        s.put(&ids[..300], blob(10, 3)).unwrap();
        // Dropped without an explicit flush: drop flushes.
    }
    let s = DiskStore::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.len(), 3);
    assert!(s.corrupt_entries().is_empty());
    assert_eq!(s.lookup(&ids).unwrap().unwrap().0, 300);
    assert_eq!(
        s.lookup(&ids[..299]).unwrap().unwrap().1[..],
        blob(3000, 2)[..]
    );
    assert!(s.lookup(&ids[1..]).unwrap().is_none());
    s.close().unwrap();
}

#[test]
fn lru_order_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let pause = || std::thread::sleep(Duration::from_millis(20));
    let entry = 100 + ENTRY_HEADER_LEN;
    {
        let s = DiskStore::open(dir.path(), 3 * entry).unwrap();
        for k in 1..=3u32 {
            s.put(&[k], blob(100, k as u8)).unwrap();
            s.flush().unwrap();
            pause();
        }
        // A hit on [1] makes [2] the least recently used, on disk too.
        assert!(s.lookup(&[1, 0]).unwrap().is_some());
        assert_eq!(s.prefix_lengths_lru_first().len(), 3);
    }
    // Reopening with room for two entries evicts the least recently used one.
    let s = DiskStore::open(dir.path(), 2 * entry).unwrap();
    s.flush().unwrap();
    assert_eq!(s.len(), 2);
    assert!(s.lookup(&[2]).unwrap().is_none());
    assert!(s.lookup(&[1]).unwrap().is_some());
    assert!(s.lookup(&[3]).unwrap().is_some());
    assert_eq!(entry_files(dir.path()).len(), 2);
}

#[test]
fn budget_evicts_files() {
    let dir = tempfile::tempdir().unwrap();
    let entry = 1000 + ENTRY_HEADER_LEN;
    let s = DiskStore::open(dir.path(), 2 * entry).unwrap();
    for k in 0..5u32 {
        s.put(&[k, k], blob(1000, k as u8)).unwrap();
    }
    s.flush().unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(s.nbytes(), 2 * entry);
    assert_eq!(entry_files(dir.path()).len(), 2);
    assert!(s.lookup(&[4, 4]).unwrap().is_some());
    assert!(s.lookup(&[0, 0]).unwrap().is_none());
    let e = s.put(&[9], blob(2 * 1000 + 100, 0)).unwrap_err();
    assert!(matches!(e, StoreError::TooLarge { .. }), "{e}");
}

#[test]
fn corrupt_entry_files_are_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<u32> = (0..50).collect();
    {
        let s = DiskStore::open(dir.path(), 1 << 20).unwrap();
        for n in [5usize, 10, 20, 30] {
            s.put(&ids[..n], blob(500, n as u8)).unwrap();
        }
        s.close().unwrap();
    }
    let files = entry_files(dir.path());
    let len_of = |p: &Path| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        usize::from_str_radix(&name[33..41], 16).unwrap()
    };
    let file = |n: usize| files.iter().find(|p| len_of(p) == n).unwrap().clone();
    // Blob damage (found on lookup), header damage and truncation (found at open).
    let mut bytes = std::fs::read(file(30)).unwrap();
    bytes[ENTRY_HEADER_LEN as usize + 7] ^= 1;
    std::fs::write(file(30), bytes).unwrap();
    let mut bytes = std::fs::read(file(20)).unwrap();
    bytes[13] ^= 1;
    std::fs::write(file(20), bytes).unwrap();
    let bytes = std::fs::read(file(10)).unwrap();
    std::fs::write(file(10), &bytes[..bytes.len() - 1]).unwrap();
    // Junk that is not an entry, a badly named entry and a leftover temporary file.
    std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    std::fs::write(dir.path().join(format!("junk{ENTRY_SUFFIX}")), b"x").unwrap();
    std::fs::write(dir.path().join(".x.nqe.1.2.nqtmp"), b"partial").unwrap();

    let s = DiskStore::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.len(), 2); // 5 and 30 (whose blob damage is not visible yet)
    let reported = s.corrupt_entries();
    assert_eq!(reported.len(), 3, "{reported:?}");
    assert!(reported
        .iter()
        .any(|c| c.reason.contains("header checksum")));
    assert!(reported
        .iter()
        .any(|c| c.reason.contains("truncated") || c.reason.contains("bytes")));
    assert!(reported.iter().any(|c| c.reason.contains("file name")));
    // The lookup meets the damaged blob, drops it and falls back to the next prefix.
    let (n, b) = s.lookup(&ids).unwrap().unwrap();
    assert_eq!((n, &b[..]), (5, &blob(500, 5)[..]));
    let reported = s.corrupt_entries();
    assert_eq!(reported.len(), 4);
    assert!(reported[3].reason.contains("blob checksum"));
    assert!(reported[3].path.to_string_lossy().ends_with(".corrupt"));
    assert_eq!(s.len(), 1);
    assert!(!dir.path().join(".x.nqe.1.2.nqtmp").exists());
    assert!(dir.path().join("notes.txt").exists());
    drop(s);
    // Damaged files were renamed aside: a reopen finds only the good entry, reports nothing.
    let s = DiskStore::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.len(), 1);
    assert!(s.corrupt_entries().is_empty());
}

#[test]
fn failed_background_writes_are_reported_by_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let s = DiskStore::open(&store_dir, 1 << 20).unwrap();
    s.flush().unwrap();
    std::fs::remove_dir_all(&store_dir).unwrap();
    s.put(&[1, 2, 3], blob(10, 0)).unwrap();
    let e = s.flush().unwrap_err();
    assert!(matches!(e, StoreError::WriteFailed { count: 1, .. }), "{e}");
    // The entry that could not be written is gone from the index.
    assert!(s.lookup(&[1, 2, 3]).unwrap().is_none());
    assert_eq!(s.len(), 0);
    s.flush().unwrap();
}

#[test]
fn closed_store_refuses_work() {
    let dir = tempfile::tempdir().unwrap();
    let s = DiskStore::open(dir.path(), 1 << 20).unwrap();
    s.put(&[1], blob(10, 0)).unwrap();
    s.close().unwrap();
    s.close().unwrap();
    assert_eq!(entry_files(dir.path()).len(), 1);
    assert!(matches!(s.put(&[2], blob(1, 0)), Err(StoreError::Closed)));
    assert!(matches!(s.lookup(&[1]), Err(StoreError::Closed)));
    assert!(matches!(s.flush(), Err(StoreError::Closed)));
}

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn concurrent_readers_with_a_writer() {
    assert_send_sync::<DiskStore>();
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(DiskStore::open(dir.path(), 64 * 1024).unwrap());
    let ids: Vec<u32> = (0..256).collect();
    for n in [8usize, 32, 128] {
        s.put(&ids[..n], vec![n as u8; 1000 + n]).unwrap();
    }
    let mut threads: Vec<_> = (0..3)
        .map(|t| {
            let s = Arc::clone(&s);
            let ids = ids.clone();
            std::thread::spawn(move || {
                for i in 0..300usize {
                    let q = 1 + (i * 13 + t) % 256;
                    if let Some((n, b)) = s.lookup(&ids[..q]).unwrap() {
                        assert!(n <= q);
                        assert_eq!(b.len(), 1000 + n);
                        assert!(b.iter().all(|&x| x == n as u8));
                    }
                }
            })
        })
        .collect();
    let writer = Arc::clone(&s);
    let ids_w = ids.clone();
    threads.push(std::thread::spawn(move || {
        for i in 0..100usize {
            let n = 1 + (i * 31) % 256;
            writer.put(&ids_w[..n], vec![n as u8; 1000 + n]).unwrap();
        }
        writer.flush().unwrap();
    }));
    for t in threads {
        t.join().unwrap();
    }
    s.flush().unwrap();
    assert!(s.nbytes() <= 64 * 1024);
    assert!(s.corrupt_entries().is_empty());
    assert_eq!(entry_files(dir.path()).len(), s.len());
}
