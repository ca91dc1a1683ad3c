"""Host and disk stores from Python, including reopening a disk store in another process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from nexusquant import errors
from nexusquant.store import DiskStore, HostStore, LayerRecord, nqkv_from_bytes, nqkv_to_bytes

ENTRY_HEADER = 64


def ids(n: int, start: int = 1000) -> list[int]:
    return list(range(start, start + n))


def test_host_store_longest_prefix_and_lru():
    with HostStore(300) as s:
        s.put(ids(10), b"a" * 100)
        s.put(ids(20), b"b" * 100)
        s.put(np.array(ids(5, start=7), dtype=np.int64), b"c" * 100)
        assert len(s) == 3 and s.nbytes == 300 and s.budget_bytes == 300
        assert s.lookup(ids(30)) == (20, b"b" * 100)
        assert s.lookup(ids(15)) == (10, b"a" * 100)
        assert s.lookup(ids(9)) is None
        assert s.lookup([]) is None
        # ids(10) and ids(20) were just used: the next put evicts the [7, ...] entry.
        s.put(ids(3, start=1), b"d" * 100)
        assert s.lookup(ids(5, start=7)) is None
        assert s.lookup(ids(20))[0] == 20


def test_host_store_errors():
    s = HostStore(10)
    with pytest.raises(errors.StoreError, match="larger than the store budget"):
        s.put([1, 2], b"x" * 11)
    with pytest.raises(errors.InvalidArgumentError, match="at least 1 token"):
        s.put([], b"x")
    with pytest.raises(errors.InvalidArgumentError, match=r"token_ids must be in \[0, 4294967295\]"):
        s.put([-1], b"x")
    with pytest.raises(errors.ShapeError):
        s.lookup([[1, 2]])
    with pytest.raises(errors.UnsupportedDtypeError):
        s.lookup([1.5])
    with pytest.raises(errors.InvalidArgumentError):
        HostStore(-1)


def test_torch_token_ids_are_accepted():
    torch = pytest.importorskip("torch")
    s = HostStore(1000)
    s.put(torch.arange(10), b"t")
    assert s.lookup(torch.arange(12)) == (10, b"t")


def test_host_store_threads():
    s = HostStore(1 << 20)
    for n in (8, 64, 255):
        s.put(ids(n), bytes([n]) * n)
    failures = []

    def reader(t):
        for i in range(500):
            q = 1 + (i * 7 + t) % 300
            hit = s.lookup(ids(q))
            if hit is not None and (hit[0] > q or hit[1] != bytes([hit[0]]) * hit[0]):
                failures.append((q, hit[0]))

    threads = [threading.Thread(target=reader, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_disk_store_basics(tmp_path):
    with DiskStore(tmp_path / "store", 10_000) as s:
        s.put(ids(10), b"x" * 1000)
        s.put(ids(100), b"y" * 2000)
        assert s.lookup(ids(50)) == (10, b"x" * 1000)
        s.flush()
        assert s.lookup(ids(200)) == (100, b"y" * 2000)
        assert s.nbytes == 3000 + 2 * ENTRY_HEADER
        assert s.path == os.fspath(tmp_path / "store")
        assert "entries=2" in repr(s)
    with pytest.raises(errors.StoreError, match="closed"):
        s.put(ids(3), b"z")
    with pytest.raises(errors.StoreError, match="closed"):
        s.lookup(ids(3))
    s.close()  # closing twice is harmless
    files = sorted(p for p in os.listdir(tmp_path / "store") if p.endswith(".nqe"))
    assert len(files) == 2


def test_disk_store_budget_and_oversized(tmp_path):
    s = DiskStore(tmp_path, 2 * (100 + ENTRY_HEADER))
    for k in range(5):
        s.put([k, k], bytes([k]) * 100)
    s.flush()
    assert len(s) == 2
    assert s.lookup([4, 4, 4]) == (2, bytes([4]) * 100)
    assert s.lookup([0, 0]) is None
    with pytest.raises(errors.StoreError, match="larger than the store budget"):
        s.put([9], b"x" * 300)
    s.close()


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, env=os.environ.copy(),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_disk_store_reopens_in_another_process(tmp_path):
    path = tmp_path / "store"
    # Written here, read in a fresh process.
    with DiskStore(path, 1 << 20) as s:
        s.put(ids(64), b"first" * 100)
        s.put(ids(128), b"second" * 100)
    out = _run(f"""
        from nexusquant.store import DiskStore
        s = DiskStore({os.fspath(path)!r}, 1 << 20)
        n, blob = s.lookup(list(range(1000, 1000 + 200)))
        print(len(s), n, blob == b"second" * 100, s.corrupt_entries())
        s.put(list(range(5)), b"from child")
        s.close()
    """)
    assert out == "2 128 True []"
    # Written by the child (which has exited), read here.
    with DiskStore(path, 1 << 20) as s:
        assert len(s) == 3
        assert s.lookup(range(10)) == (5, b"from child")
        assert s.lookup(ids(100)) == (64, b"first" * 100)


def test_disk_store_reports_corrupt_entries(tmp_path):
    with DiskStore(tmp_path, 1 << 20) as s:
        s.put(ids(4), b"short" * 10)
        s.put(ids(8), b"long" * 10)
    victim = next(p for p in tmp_path.iterdir() if p.name.endswith("-00000008.nqe"))
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    (tmp_path / "garbage.nqe").write_bytes(b"\0" * 10)
    with DiskStore(tmp_path, 1 << 20) as s:
        assert [reason for _, reason in s.corrupt_entries()] == [
            "file name is not {hash:032x}-{len:08x}.nqe"
        ]
        # The damaged blob is found on lookup; the lookup falls back to the shorter prefix.
        assert s.lookup(ids(10)) == (4, b"short" * 10)
        reasons = [reason for _, reason in s.corrupt_entries()]
        assert reasons[-1] == "blob checksum mismatch"
        assert len(s) == 1


def test_store_holds_nqkv_blobs(tmp_path):
    rng = np.random.default_rng(0)
    layer = LayerRecord(
        key_bits=2, value_bits=2, head_dim=8,
        k_codes=rng.integers(0, 256, (1, 1, 3, 2), dtype=np.uint8),
        k_scales=rng.integers(0, 2**16, (1, 1, 3), dtype=np.uint16),
        v_codes=rng.integers(0, 256, (1, 1, 3, 2), dtype=np.uint8),
        v_scales=rng.integers(0, 2**16, (1, 1, 3), dtype=np.uint16),
        k_sink=np.zeros((1, 1, 1, 8), np.float16), v_sink=np.ones((1, 1, 1, 8), np.float16),
        k_window=np.zeros((1, 1, 0, 8), np.float16), v_window=np.zeros((1, 1, 0, 8), np.float16),
    )
    blob = nqkv_to_bytes({"tokens": 4}, [layer])
    with DiskStore(tmp_path, 1 << 20) as s:
        s.put([1, 2, 3, 4], blob)
    with DiskStore(tmp_path, 1 << 20) as s:
        n, back = s.lookup([1, 2, 3, 4, 5])
    meta, (restored,) = nqkv_from_bytes(back)
    assert n == 4 and meta == {"tokens": 4}
    assert np.array_equal(restored.k_codes, layer.k_codes)
    assert np.array_equal(restored.v_sink, layer.v_sink)
