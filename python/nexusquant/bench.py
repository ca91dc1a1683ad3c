"""Codec benchmark (``nexusquant bench`` and ``benches/codec.py``).

For b = 2, 3, 4 on iid Gaussian head-vectors (head_dim 128 by default): SQNR in dB, bits per
element actually stored (scales counted), encode and decode MB/s of fp16 data on one thread and
on all threads, next to the scalar baseline measured in the same run (the same rotation, then
per-vector round-to-nearest at the same bits with the best clipping scale). These are for the
codec's defaults (one clipping candidate); the same figures follow for the encoder with all
three (``candidates=3``, the KV cache's setting; the same format and decoder). Round trips
(encode then decode, one thread) next to the scalar baseline's
round trip timed in the same run, so that the ratio survives a noisy machine. MB = 10^6 bytes;
encode MB/s counts fp16 input bytes, decode MB/s counts fp16 output bytes, a round trip counts
the head-vectors' fp16 bytes once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import numpy as np
import torch

from . import codec

TARGET_SQNR = {2: 10.0, 3: 15.2, 4: 20.8}
TARGET_ENCODE_MBS, TARGET_DECODE_MBS = 300.0, 1000.0
LLOYD_MAX = {2: 9.30, 3: 14.62, 4: 20.22}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _sqnr(x: torch.Tensor, y: torch.Tensor) -> float:
    x64, y64 = x.double(), y.double()
    return float(10 * torch.log10(x64.pow(2).sum() / (x64 - y64).pow(2).sum()))


def run_bench(n: int = 1 << 16, head_dim: int = 128, bits_list=(2, 3, 4), repeats: int = 3,
              threads: int | None = None) -> dict[str, Any]:
    """Measure everything; returns a JSON-able dict (see the module docstring)."""
    from . import _core  # noqa: PLC0415

    gen = torch.Generator().manual_seed(20261129)
    x16 = torch.randn(n, head_dim, generator=gen).to(torch.float16)
    x32 = x16.float()
    all_threads = threads or os.cpu_count() or 1
    in_mb = x16.numel() * 2 / 1e6
    rows = []
    for bits in bits_list:
        q = codec.quantize(x16, bits, seed=7)
        y = codec.dequantize(q)
        base = np.empty((n, head_dim), np.float32)
        _core.scalar_roundtrip(x32.numpy(), base, bits=bits, seed=7)
        out = torch.empty_like(x16)
        q3 = codec.quantize(x16, bits, seed=7, candidates=3)
        timing = {}
        for label, t in (("1", 1), ("all", all_threads)):
            enc = _best_time(lambda t=t: codec.encode(x16, bits, 7, threads=t), repeats)
            enc3 = _best_time(lambda t=t: codec.encode(x16, bits, 7, threads=t, candidates=3), repeats)
            dec = _best_time(
                lambda t=t: codec.decode(q.codes, q.scales, bits=bits, seed=7, head_dim=head_dim,
                                         dtype=torch.float16, out=out, threads=t),
                repeats,
            )
            timing[label] = (in_mb / enc, in_mb / dec, in_mb / enc3)
        scalar = _best_time(lambda: _core.scalar_roundtrip(x32.numpy(), base, bits=bits, seed=7, threads=1),
                            repeats)
        stored = q.codes.numel() + q.scales.numel() * 2
        rows.append({
            "bits": bits,
            "sqnr_db": _sqnr(x32, y.float()),
            "scalar_sqnr_db": _sqnr(x32, torch.from_numpy(base)),
            "lloyd_max_db": LLOYD_MAX[bits],
            "target_sqnr_db": TARGET_SQNR[bits],
            "bits_per_element": stored * 8 / x16.numel(),
            "encode_mbs_1": timing["1"][0],
            "decode_mbs_1": timing["1"][1],
            "encode_mbs_all": timing["all"][0],
            "decode_mbs_all": timing["all"][1],
            "candidates_3": {
                "sqnr_db": _sqnr(x32, codec.dequantize(q3).float()),
                "encode_mbs_1": timing["1"][2],
                "encode_mbs_all": timing["all"][2],
            },
            "round_trip_mbs_1": 1 / (1 / timing["1"][0] + 1 / timing["1"][1]),
            "round_trip_mbs_1_candidates_3": 1 / (1 / timing["1"][2] + 1 / timing["1"][1]),
            "scalar_round_trip_mbs_1": in_mb / scalar,
        })
    return {
        "vectors": n,
        "head_dim": head_dim,
        "candidates": {bits: codec.default_candidates(bits) for bits in bits_list},
        "threads_all": all_threads,
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "torch": torch.__version__,
                    "core": dict(_core.build_info())},
        "targets": {"encode_mbs_1": TARGET_ENCODE_MBS, "decode_mbs_1": TARGET_DECODE_MBS},
        "rows": rows,
    }


def format_result(res: dict[str, Any]) -> str:
    """A readable table of :func:`run_bench`'s result."""
    m = res["machine"]
    lines = [
        f"codec benchmark: {res['vectors']} iid Gaussian vectors, head_dim {res['head_dim']}, "
        f"fp16 data; the codec's defaults (candidates="
        f"{' / '.join(str(c) for c in res['candidates'].values())} at "
        f"{' / '.join(str(b) for b in res['candidates'])} bits)",
        f"machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, numpy {m['numpy']}; "
        f"core {m['core'].get('version')} ({m['core'].get('simd')}, {m['core'].get('profile')})",
        "",
        f"{'bits':>4} {'SQNR dB':>8} {'scalar dB':>9} {'target':>6} {'bits/elem':>9} "
        f"{'enc MB/s 1t':>11} {'dec MB/s 1t':>11} {'enc MB/s ' + str(res['threads_all']) + 't':>12} "
        f"{'dec MB/s ' + str(res['threads_all']) + 't':>12}",
    ]
    for r in res["rows"]:
        lines.append(
            f"{r['bits']:>4} {r['sqnr_db']:>8.2f} {r['scalar_sqnr_db']:>9.2f} "
            f"{r['target_sqnr_db']:>6.1f} {r['bits_per_element']:>9.3f} {r['encode_mbs_1']:>11.0f} "
            f"{r['decode_mbs_1']:>11.0f} {r['encode_mbs_all']:>12.0f} {r['decode_mbs_all']:>12.0f}"
        )
    lines += [
        "",
        "encoder with three clipping candidates (candidates=3, the KV cache's setting; same format "
        "and decoder):",
        f"{'bits':>4} {'SQNR dB':>8} {'target':>6} {'enc MB/s 1t':>11} "
        f"{'enc MB/s ' + str(res['threads_all']) + 't':>12}",
    ]
    for r in res["rows"]:
        c = r["candidates_3"]
        lines.append(
            f"{r['bits']:>4} {c['sqnr_db']:>8.2f} {r['target_sqnr_db']:>6.1f} "
            f"{c['encode_mbs_1']:>11.0f} {c['encode_mbs_all']:>12.0f}"
        )
    lines += [
        "",
        "round trip (encode + decode), one thread, next to the scalar baseline timed in this run:",
        f"{'bits':>4} {'1 cand MB/s':>11} {'3 cand MB/s':>11} {'scalar MB/s':>11} {'1c/scalar':>9} "
        f"{'3c/scalar':>9}",
    ]
    for r in res["rows"]:
        a, c, s = r["round_trip_mbs_1"], r["round_trip_mbs_1_candidates_3"], r["scalar_round_trip_mbs_1"]
        lines.append(f"{r['bits']:>4} {a:>11.0f} {c:>11.0f} {s:>11.0f} {a / s:>9.2f} {c / s:>9.2f}")
    t = res["targets"]
    missed = [
        f"{name} at {r['bits']} bits"
        for r in res["rows"]
        for name, ok in (
            ("SQNR", r["sqnr_db"] >= r["target_sqnr_db"]),
            ("encode", r["encode_mbs_1"] >= t["encode_mbs_1"]),
            ("decode", r["decode_mbs_1"] >= t["decode_mbs_1"]),
        )
        if not ok
    ]
    lines += [
        "",
        "defaults in this run: " + ("every target met" if not missed else "missed " + ", ".join(missed)),
        "",
        f"targets: SQNR >= 10.0 / 15.2 / 20.8 dB at 2 / 3 / 4 bits (Lloyd-Max scalar 9.30 / 14.62 "
        f"/ 20.22); one thread: encode >= {t['encode_mbs_1']:.0f} MB/s, decode >= "
        f"{t['decode_mbs_1']:.0f} MB/s",
        "scalar = the same rotation + per-vector round-to-nearest with the best clipping scale "
        "(measured in this run); bits/elem counts codes and fp16 scales",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``nexusquant bench [--n N] [--head-dim D] [--threads T] [--repeats R] [--json]``."""
    p = argparse.ArgumentParser(prog="nexusquant bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1 << 16, help="vectors (default 65536)")
    p.add_argument("--head-dim", type=int, default=128, help="head_dim (default 128)")
    p.add_argument("--threads", type=int, default=None, help="threads for the 'all' column")
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    res = run_bench(args.n, args.head_dim, repeats=args.repeats, threads=args.threads)
    print(json.dumps(res, indent=2) if args.json else format_result(res))
    return 0
