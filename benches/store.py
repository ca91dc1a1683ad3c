"""Save/load throughput of the .nqkv format and its size overhead, on a synthetic cache.

Default cache: 30 layers x 3 KV heads x 4096 tokens x head_dim 64 (SmolLM2-135M's shape),
3-bit keys and 2-bit values for the compressed tokens, 4 fp16 sink tokens and a 128-token fp16
window per layer. Throughput is MB/s of array bytes (10^6 bytes per second), each figure the
median of --repeat runs, next to a numpy ``np.savez``/``np.load`` baseline of the same arrays
measured in the same run. Run: ``python benches/store.py [--layers 30 --tokens 4096 ...]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np

import nexusquant
from nexusquant.store import (
    COMPONENTS,
    DiskStore,
    HostStore,
    LayerRecord,
    nqkv_from_bytes,
    nqkv_to_bytes,
    read_nqkv,
    write_nqkv,
)


def synthetic_cache(args: argparse.Namespace) -> list[LayerRecord]:
    rng = np.random.default_rng(0)
    b, h, d = args.batch, args.heads, args.head_dim
    tc = args.tokens - args.sink - args.window
    layers = []
    for l in range(args.layers):
        def raw(t: int) -> np.ndarray:
            return rng.standard_normal((b, h, t, d), dtype=np.float32).astype(np.float16)

        layers.append(
            LayerRecord(
                key_bits=args.key_bits,
                value_bits=args.value_bits,
                head_dim=d,
                k_codes=rng.integers(0, 256, (b, h, tc, d * args.key_bits // 8), dtype=np.uint8),
                k_scales=rng.integers(0, 2**15, (b, h, tc), dtype=np.uint16),
                v_codes=rng.integers(0, 256, (b, h, tc, d * args.value_bits // 8), dtype=np.uint8),
                v_scales=rng.integers(0, 2**15, (b, h, tc), dtype=np.uint16),
                k_sink=raw(args.sink),
                v_sink=raw(args.sink),
                k_window=raw(args.window),
                v_window=raw(args.window),
                raw_dtype="float16",
                key_seed=l,
                value_seed=10_000 + l,
                sink_tokens=args.sink,
                window_tokens=args.window,
                aux={"seen_tokens": np.full((b,), args.tokens, dtype=np.int64)},
            )
        )
    return layers


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def touch(layers: list[LayerRecord]) -> int:
    """Reads every byte of the loaded arrays (a mapped file is read lazily)."""
    total = 0
    for layer in layers:
        for name in COMPONENTS:
            a = getattr(layer, name)
            total += int(np.ascontiguousarray(a).view(np.uint8).sum(dtype=np.uint64) & 1)
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--key-bits", type=int, default=3)
    p.add_argument("--value-bits", type=int, default=2)
    p.add_argument("--sink", type=int, default=4)
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--dir", default=None, help="directory for the files (default: a temp dir)")
    args = p.parse_args()

    layers = synthetic_cache(args)
    array_bytes = sum(l.nbytes() for l in layers)
    mb = array_bytes / 1e6
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
          f"{platform.system()} {platform.release()}")
    print(f"versions: python {platform.python_version()}, numpy {np.__version__}, "
          f"nexusquant {nexusquant.__version__}")
    print(f"cache: {args.layers} layers x batch {args.batch} x {args.heads} KV heads x "
          f"{args.tokens} tokens x head_dim {args.head_dim}; K {args.key_bits} bits, "
          f"V {args.value_bits} bits; {args.sink} sink + {args.window} window fp16 tokens")
    print(f"arrays in memory: {array_bytes:,} bytes ({mb:.2f} MB)")

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "cache.nqkv")
        npz = os.path.join(tmp, "cache.npz")
        arrays = {f"{i}_{n}": getattr(l, n) for i, l in enumerate(layers) for n in COMPONENTS}

        t_save = timed(lambda: write_nqkv(path, {"model": "synthetic"}, layers), args.repeat)
        t_bytes = timed(lambda: nqkv_to_bytes({"model": "synthetic"}, layers), args.repeat)
        t_npz_save = timed(lambda: np.savez(npz, **arrays), args.repeat)
        file_bytes = os.path.getsize(path)

        t_load_mmap = timed(lambda: read_nqkv(path, mmap=True), args.repeat)
        t_load_touch = timed(lambda: touch(read_nqkv(path, mmap=True)[1]), args.repeat)
        t_load_copy = timed(lambda: read_nqkv(path, mmap=False), args.repeat)
        blob = nqkv_to_bytes({"model": "synthetic"}, layers)
        t_from_bytes = timed(lambda: nqkv_from_bytes(blob), args.repeat)

        def npz_load():
            with np.load(npz) as z:
                return [z[k] for k in z.files]

        t_npz_load = timed(npz_load, args.repeat)

        ids = list(range(args.tokens))
        host = HostStore(4 * len(blob))
        t_host_put = timed(lambda: host.put(ids, blob), args.repeat)
        t_host_get = timed(lambda: host.lookup(ids + [1, 2, 3]), args.repeat)
        with DiskStore(os.path.join(tmp, "store"), 4 * len(blob)) as disk:
            def disk_put():
                disk.put(ids, blob)
                disk.flush()

            t_disk_put = timed(disk_put, args.repeat)
            t_disk_get = timed(lambda: disk.lookup(ids + [1, 2, 3]), args.repeat)

    overhead = file_bytes - array_bytes
    print()
    print(f"{'operation':<46}{'seconds':>10}{'MB/s':>10}")
    rows = [
        ("save: write_nqkv (atomic, fsync)", t_save),
        ("save: nqkv_to_bytes (in memory)", t_bytes),
        ("baseline save: np.savez (no fsync)", t_npz_save),
        ("load: read_nqkv mmap=True (checksums verified)", t_load_mmap),
        ("load: read_nqkv mmap=True + read every byte", t_load_touch),
        ("load: read_nqkv mmap=False", t_load_copy),
        ("load: nqkv_from_bytes", t_from_bytes),
        ("baseline load: np.load of the .npz", t_npz_load),
        ("HostStore.put", t_host_put),
        ("HostStore.lookup", t_host_get),
        ("DiskStore.put + flush (fsync)", t_disk_put),
        ("DiskStore.lookup (page cache)", t_disk_get),
    ]
    for name, t in rows:
        print(f"{name:<46}{t:>10.4f}{mb / t:>10.0f}")
    print()
    print(f"bytes on disk: {file_bytes:,}; arrays: {array_bytes:,}; overhead {overhead:,} bytes "
          f"= {100 * overhead / array_bytes:.3f} % (target <= 1 % plus the 64-byte header)")


if __name__ == "__main__":
    main()
