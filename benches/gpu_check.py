"""One-command GPU check for nexusquant's CUDA kernels (under 8 minutes on an H200).

1. Prints encode (3 and 1 candidates) / decode throughput in GB/s (bytes read + written) and as
   % of the H200's 4.8 TB/s HBM, for head_dim 128 at 2, 3 and 4 bits, fp16 and bf16, next to a
   device-to-device copy of the same bytes timed in the same run (the ceiling).
2. Prints fused decode attention time against torch SDPA on fp16 K/V (32 query heads, 8 KV
   heads, head_dim 128, 4 sinks + 128-token window, K 3 bits / V 3 bits) at 4k, 16k, 64k and 128k
   tokens, batch 1 and 8; then the fused time against the planner's CTAs per SM (the split count)
   and the host's time per call on a small layer, with and without value/key centres.
3. Runs every GPU test (``pytest -m gpu`` over the files that hold them): codes and scales
   byte-identical to the reference (and to the Rust core when it is built), decode bit-exact,
   fused attention within 2x the error of same-dtype SDPA, the cache and the offload store on
   CUDA tensors. The figures come first, so a failing test cannot hide them.

Run from the project root (after ``pip install --no-deps dist/*.whl`` and ``pip install
cupy-cuda13x pytest``)::

    python benches/gpu_check.py            # everything
    python benches/gpu_check.py --no-tests # figures only

Without a GPU (or CuPy) it prints what is missing and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("nexusquant") is None:  # a source checkout, not installed
    sys.path.insert(0, str(ROOT / "python"))

import nexusquant as nq  # noqa: E402
from nexusquant import gpu  # noqa: E402
from nexusquant.gpu import kernels  # noqa: E402
from nexusquant.gpu.attention import PackedKV  # noqa: E402

HBM_BYTES_PER_S = 4.8e12  # H200 HBM3e peak
TEST_TIMEOUT_S = 300
# the files that hold tests marked ``gpu`` (tests/test_gpu.py checks that this list is complete)
GPU_TEST_FILES = ("tests/test_gpu.py", "tests/test_cache_layer.py", "tests/test_offload.py")


def timed(fn, *args, warmup: int = 3, repeat: int = 15, **kwargs) -> float:
    """Median seconds of ``fn(*args, **kwargs)`` on the current stream (CUDA events)."""
    for _ in range(warmup):
        fn(*args, **kwargs)
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args, **kwargs)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def header(report: dict) -> None:
    props = torch.cuda.get_device_properties(0)
    print(
        f"device   {props.name}, sm {props.major}.{props.minor}, {props.multi_processor_count} SMs, "
        f"{props.total_memory / 2**30:.0f} GiB"
    )
    print(
        f"versions python {platform.python_version()}, torch {torch.__version__} (CUDA "
        f"{torch.version.cuda}), cupy {report.get('cupy')}, NVRTC {report.get('nvrtc')}, "
        f"driver {report.get('cuda_driver')}, nexusquant {nq.__version__}"
    )


def run_tests() -> bool:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfE", "--durations=5", *GPU_TEST_FILES]
    print(f"\n$ {' '.join(cmd[2:])}", flush=True)
    try:
        result = subprocess.run(cmd, cwd=ROOT, timeout=TEST_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"GPU tests did not finish in {TEST_TIMEOUT_S} s")
        return False
    return result.returncode == 0


def codec_throughput() -> None:
    n, d = 1 << 20, 128
    print(
        f"\ncodec, {n} head-vectors of d={d} (GB/s = bytes read + written; % of "
        f"{HBM_BYTES_PER_S / 1e12:.1f} TB/s; copy = a device-to-device copy of the same bytes)"
    )
    print(
        f"{'dtype':>9} {'bits':>4} {'enc GB/s':>9} {'%HBM':>5} {'enc c=1':>8} {'dec GB/s':>9} "
        f"{'%HBM':>5} {'copy GB/s':>10}"
    )
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(n, d, device="cuda").to(dtype)
        for bits in (2, 3, 4):
            codes = torch.empty(n, d * bits // 8, dtype=torch.uint8, device="cuda")
            scales = torch.empty(n, dtype=torch.float16, device="cuda")
            out = torch.empty_like(x)
            moved = x.numel() * x.element_size() + codes.numel() + 2 * n
            src = torch.empty(moved // 2, dtype=torch.uint8, device="cuda")
            dst = torch.empty_like(src)
            t_enc = timed(gpu.encode, x, codes, scales, bits=bits, seed=1, candidates=3)
            t_enc1 = timed(gpu.encode, x, codes, scales, bits=bits, seed=1, candidates=1)
            t_dec = timed(gpu.decode, codes, scales, out, bits=bits, seed=1)
            t_copy = timed(dst.copy_, src)
            enc, enc1, dec, copy = (moved / t / 1e9 for t in (t_enc, t_enc1, t_dec, t_copy))
            print(
                f"{str(dtype)[6:]:>9} {bits:>4} {enc:>9.0f} {100 * enc * 1e9 / HBM_BYTES_PER_S:>4.0f}% "
                f"{enc1:>8.0f} {dec:>9.0f} {100 * dec * 1e9 / HBM_BYTES_PER_S:>4.0f}% {copy:>10.0f}",
                flush=True,
            )


def packed_layer(
    batch: int, tokens: int, hkv: int, d: int, bits: int, window: int, device: str = "cuda"
) -> PackedKV:
    """A full layer of ``tokens`` per row: 4 sink slots + ``window - 4`` window slots raw (fp16),
    the rest coded (random codes, scale 0.05)."""
    tc = tokens - window
    gen = torch.Generator(device=device).manual_seed(tokens)

    def codes():
        return torch.randint(
            0, 256, (batch, hkv, tc, d * bits // 8), device=device, dtype=torch.uint8, generator=gen
        )

    def scales():
        return torch.full((batch, hkv, tc), 0.05, dtype=torch.float16, device=device)

    raw = torch.randn(batch, hkv, window, d, device=device, dtype=torch.float16, generator=gen)
    return PackedKV(
        k_codes=codes(),
        k_scales=scales(),
        v_codes=codes(),
        v_scales=scales(),
        k_bits=bits,
        v_bits=bits,
        k_seed=1,
        v_seed=2,
        raw_k=raw,
        raw_v=raw.clone(),
        sink_slots=4,
    )


def attention_speed() -> None:
    hq, hkv, d, bits, window = 32, 8, 128, 3, 132
    print(
        f"\nfused decode attention vs SDPA on fp16 K/V (Hq={hq}, Hkv={hkv}, d={d}, K/V {bits} bits, "
        f"4 sinks + 128 window)"
    )
    print(
        f"{'batch':>5} {'tokens':>7} {'fused ms':>9} {'SDPA ms':>8} {'speedup':>8} {'packed MB':>10} "
        f"{'fp16 MB':>8}"
    )
    for batch in (1, 8):
        for tokens in (4096, 16384, 65536, 131072):
            view = packed_layer(batch, tokens, hkv, d, bits, window)
            q = torch.randn(batch, hq, d, device="cuda", dtype=torch.float16)
            k = torch.randn(batch, hkv, tokens, d, device="cuda", dtype=torch.float16)
            v = torch.randn_like(k)
            t_fused = timed(gpu.fused_decode_attention, q, view, d**-0.5)
            t_sdpa = timed(
                torch.nn.functional.scaled_dot_product_attention,
                q[:, :, None],
                k,
                v,
                scale=d**-0.5,
                enable_gqa=True,
            )
            packed = sum(
                t.numel() * t.element_size()
                for t in (
                    view.k_codes,
                    view.k_scales,
                    view.v_codes,
                    view.v_scales,
                    view.raw_k,
                    view.raw_v,
                )
            )
            dense = 2 * k.numel() * k.element_size()
            print(
                f"{batch:>5} {tokens:>7} {1e3 * t_fused:>9.3f} {1e3 * t_sdpa:>8.3f} "
                f"{t_sdpa / t_fused:>7.2f}x {packed / 2**20:>10.1f} {dense / 2**20:>8.1f}",
                flush=True,
            )
            del view, k, v
            torch.cuda.empty_cache()


def attention_occupancy() -> None:
    """Fused attention time against the planner's CTAs per SM (kernels.CTAS_PER_SM), which sets
    how many coded splits the grid gets; the default is marked."""
    hq, hkv, d, bits, window = 32, 8, 128, 3, 132
    default = kernels.CTAS_PER_SM
    choices = (2, 4, 8, 16, 32)
    print(f"\nfused attention ms by CTAs per SM (default {default}; same shapes as above)")
    print(f"{'batch':>5} {'tokens':>7} " + " ".join(f"{c:>8}" for c in choices))
    try:
        for batch, tokens in ((1, 16384), (1, 131072), (8, 16384), (8, 131072)):
            view = packed_layer(batch, tokens, hkv, d, bits, window)
            q = torch.randn(batch, hq, d, device="cuda", dtype=torch.float16)
            times = []
            for c in choices:
                kernels.CTAS_PER_SM = c
                times.append(timed(gpu.fused_decode_attention, q, view, d**-0.5))
            print(
                f"{batch:>5} {tokens:>7} " + " ".join(f"{1e3 * t:>8.3f}" for t in times),
                flush=True,
            )
            del view
            torch.cuda.empty_cache()
    finally:
        kernels.CTAS_PER_SM = default


def attention_host_time() -> None:
    """Wall time per fused call issued back to back on a small layer (1 x 4k tokens), where the
    host's share shows: without centres, with key and value centres, and with centres plus the
    scan for centred flags that each call made before 2026-12-01 (two reads of every scale and
    two waits for the device)."""
    hq, hkv, d, bits, window, calls = 32, 8, 128, 3, 132, 200
    plain = packed_layer(1, 4096, hkv, d, bits, window)
    gen = torch.Generator(device="cuda").manual_seed(3)
    centred = dataclasses.replace(
        plain,
        k_means=torch.randn(1, hkv, d, device="cuda", dtype=torch.float16, generator=gen),
        v_means=torch.randn(1, hkv, d, device="cuda", dtype=torch.float16, generator=gen),
    )
    q = torch.randn(1, hq, d, device="cuda", dtype=torch.float16)

    def scan_then_call():
        centred.centred_keys()
        centred.centred_values()
        gpu.fused_decode_attention(q, centred, d**-0.5)

    cases = (
        ("no centres", lambda: gpu.fused_decode_attention(q, plain, d**-0.5)),
        ("centres", lambda: gpu.fused_decode_attention(q, centred, d**-0.5)),
        ("centres + flag scan (before)", scan_then_call),
    )
    print(f"\nhost time per fused call, {calls} calls back to back (1 x 4096 tokens, Hq={hq})")
    for name, fn in cases:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        print(f"{name:>30} {1e6 * (time.perf_counter() - start) / calls:>8.1f} us", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-tests", action="store_true", help="skip the pytest run")
    args = parser.parse_args()
    report = gpu.diagnose()
    if not report["available"]:
        print("nexusquant GPU check: no usable GPU path, nothing to check.")
        for error in report["errors"]:
            print(f"  - {error}")
        return 0
    header(report)
    figures_ok = True
    for section in (codec_throughput, attention_speed, attention_occupancy, attention_host_time):
        try:
            section()
        except Exception as exc:  # report and go on: the tests below say more
            figures_ok = False
            print(f"{section.__name__} failed: {type(exc).__name__}: {exc}", flush=True)
    tests_ok = True if args.no_tests else run_tests()
    print(f"\nGPU tests: {'skipped' if args.no_tests else 'passed' if tests_ok else 'FAILED'}")
    return 0 if tests_ok and figures_ok else 1


if __name__ == "__main__":
    sys.exit(main())
