"""One-command GPU check for nexusquant's CUDA kernels (under 8 minutes on an H200).

1. Runs the GPU tests (``pytest -m gpu tests/test_gpu.py``): codes and scales byte-identical to
   the reference (and to the Rust core when it is built), decode bit-exact, fused attention
   within 2x the error of same-dtype SDPA.
2. Prints encode / decode throughput in GB/s (bytes read + written) and as % of the H200's
   4.8 TB/s HBM, for head_dim 128 at 2, 3 and 4 bits, fp16 and bf16.
3. Prints fused decode attention time against torch SDPA on fp16 K/V (32 query heads, 8 KV
   heads, head_dim 128, 4 sinks + 128-token window, K 3 bits / V 3 bits) at 4k, 16k, 64k and 128k
   tokens, batch 1 and 8.

Run from the project root (after ``pip install --no-deps dist/*.whl`` and ``pip install
cupy-cuda13x pytest``)::

    python benches/gpu_check.py            # everything
    python benches/gpu_check.py --no-tests # figures only

Without a GPU (or CuPy) it prints what is missing and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("nexusquant") is None:  # a source checkout, not installed
    sys.path.insert(0, str(ROOT / "python"))

import nexusquant as nq  # noqa: E402
from nexusquant import gpu  # noqa: E402
from nexusquant.gpu.attention import PackedKV  # noqa: E402

HBM_BYTES_PER_S = 4.8e12  # H200 HBM3e peak
TEST_TIMEOUT_S = 330


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
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-x", "tests/test_gpu.py"]
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
        f"{HBM_BYTES_PER_S / 1e12:.1f} TB/s)"
    )
    print(
        f"{'dtype':>9} {'bits':>4} {'encode GB/s':>12} {'%HBM':>6} {'decode GB/s':>12} {'%HBM':>6}"
    )
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(n, d, device="cuda").to(dtype)
        for bits in (2, 3, 4):
            codes = torch.empty(n, d * bits // 8, dtype=torch.uint8, device="cuda")
            scales = torch.empty(n, dtype=torch.float16, device="cuda")
            out = torch.empty_like(x)
            moved = x.numel() * x.element_size() + codes.numel() + 2 * n
            t_enc = timed(gpu.encode, x, codes, scales, bits=bits, seed=1)
            t_dec = timed(gpu.decode, codes, scales, out, bits=bits, seed=1)
            enc, dec = moved / t_enc / 1e9, moved / t_dec / 1e9
            print(
                f"{str(dtype)[6:]:>9} {bits:>4} {enc:>12.0f} {100 * enc * 1e9 / HBM_BYTES_PER_S:>5.0f}% "
                f"{dec:>12.0f} {100 * dec * 1e9 / HBM_BYTES_PER_S:>5.0f}%",
                flush=True,
            )


def packed_layer(batch: int, tokens: int, hkv: int, d: int, bits: int, window: int) -> PackedKV:
    tc = tokens - window
    gen = torch.Generator(device="cuda").manual_seed(tokens)

    def codes():
        return torch.randint(
            0, 256, (batch, hkv, tc, d * bits // 8), device="cuda", dtype=torch.uint8, generator=gen
        )

    def scales():
        return torch.full((batch, hkv, tc), 0.05, dtype=torch.float16, device="cuda")

    raw = torch.randn(batch, hkv, window, d, device="cuda", dtype=torch.float16, generator=gen)
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
        sink_tokens=4,
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
    tests_ok = True if args.no_tests else run_tests()
    codec_throughput()
    attention_speed()
    print(f"\nGPU tests: {'skipped' if args.no_tests else 'passed' if tests_ok else 'FAILED'}")
    return 0 if tests_ok else 1


if __name__ == "__main__":
    sys.exit(main())
