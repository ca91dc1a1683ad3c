"""``nexusquant doctor``: what this installation has, and what would run on the GPU.

Every probe is guarded: a missing or broken piece is reported, never raised. Nothing here
needs CuPy, transformers, a GPU or the Rust extension to be present.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import platform
import re
import sys
from collections.abc import Callable
from typing import Any

from . import _openmp

#: transformers versions older than this lack the per-layer Cache API the cache integration uses.
MIN_TRANSFORMERS = (5, 17)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def _guard(probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``probe``; turn any exception into ``{"available": False, "error": ...}``."""
    try:
        return probe()
    except Exception as exc:  # noqa: BLE001 - the doctor reports every failure, whatever it is
        return {"available": False, "error": f"{type(exc).__name__}: {exc}"}


def _missing(module: str, fix: str) -> dict[str, Any]:
    return {"available": False, "error": f"{module} is not installed", "fix": fix}


def _python() -> dict[str, Any]:
    return {
        "available": True,
        "version": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
    }


def _nexusquant() -> dict[str, Any]:
    import nexusquant  # noqa: PLC0415

    return {"available": True, "version": nexusquant.__version__,
            "location": next(iter(nexusquant.__path__))}


def _torch() -> dict[str, Any]:
    import torch  # noqa: PLC0415

    info: dict[str, Any] = {
        "available": True,
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": _openmp.wait_policy(),
        "devices": [],
    }
    if info["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append({
                "index": i,
                "name": p.name,
                "capability": f"{p.major}.{p.minor}",
                "memory_bytes": p.total_memory,
            })
    info["device"] = info["devices"][0]["name"] if info["devices"] else "cpu"
    return info


def _transformers() -> dict[str, Any]:
    if importlib.util.find_spec("transformers") is None:
        return _missing("transformers", "pip install 'nexusquant-kv[hf]'")
    import transformers  # noqa: PLC0415

    version = transformers.__version__
    info = {"available": True, "version": version}
    if _version_tuple(version) < MIN_TRANSFORMERS:
        info["warning"] = (f"the cache integration needs transformers >= "
                           f"{'.'.join(map(str, MIN_TRANSFORMERS))}")
    return info


def _core() -> dict[str, Any]:
    try:
        core = importlib.import_module("nexusquant._core")
    except ImportError as exc:
        return {"available": False, "error": f"not built ({exc})",
                "fix": "pip install nexusquant-kv, or `maturin develop --release` in a checkout"}
    info: dict[str, Any] = {"available": True, "location": getattr(core, "__file__", None)}
    build_info = getattr(core, "build_info", None)
    if build_info is not None:
        info["build_info"] = build_info()
    return info


def _cupy() -> dict[str, Any]:
    if importlib.util.find_spec("cupy") is None:
        return _missing("cupy", "pip install 'nexusquant-kv[cuda]' (cupy-cuda13x)")
    import cupy  # noqa: PLC0415

    info: dict[str, Any] = {"available": True, "version": cupy.__version__}
    info["cuda_runtime"] = _guard(lambda: {"available": True,
                                           "version": cupy.cuda.runtime.runtimeGetVersion()})
    info["device_count"] = _guard(lambda: {"available": True,
                                           "count": cupy.cuda.runtime.getDeviceCount()})
    return info


def _nvrtc_bindings() -> dict[str, Any]:
    if importlib.util.find_spec("cuda.bindings") is None:
        return _missing("cuda-bindings", "pip install cuda-bindings (torch's CUDA wheels bring it)")
    from cuda import bindings  # noqa: PLC0415
    from cuda.bindings import nvrtc  # noqa: PLC0415

    err, major, minor = nvrtc.nvrtcVersion()
    if int(err) != 0:
        return {"available": False, "error": f"nvrtcVersion failed: {err!r}",
                "bindings_version": bindings.__version__}
    return {"available": True, "version": f"{major}.{minor}",
            "bindings_version": bindings.__version__}


def _nvrtc_cupy() -> dict[str, Any]:
    if importlib.util.find_spec("cupy") is None:
        return _missing("cupy", "pip install 'nexusquant-kv[cuda]' (cupy-cuda13x)")
    from cupy.cuda import nvrtc  # noqa: PLC0415

    major, minor = nvrtc.getVersion()
    return {"available": True, "version": f"{major}.{minor}"}


def _gpu_path(report: dict[str, Any]) -> dict[str, Any]:
    """What would run on the GPU, and why not when it would not."""
    missing = []
    if not report["torch"].get("cuda_available"):
        missing.append("no CUDA device visible to torch")
    if not report["cupy"].get("available"):
        missing.append("CuPy is not installed")
    if not (report["nvrtc"]["cuda_bindings"].get("available")
            or report["nvrtc"]["cupy"].get("available")):
        missing.append("NVRTC was not found")
    if importlib.util.find_spec("nexusquant.gpu") is None:
        missing.append("this build has no nexusquant.gpu module")
    cpu = ("the Rust core (nexusquant._core)" if report["core"].get("available")
           else "unavailable: nexusquant._core is not built (only backend='reference', the "
                "pure-torch oracle, works)")
    if missing:
        return {"available": False, "runs_on_gpu": [], "missing": missing,
                "cpu_codec": cpu}
    return {
        "available": True,
        "device": report["torch"]["device"],
        "runs_on_gpu": ["codec encode/decode of CUDA tensors (CUDA kernels via CuPy, "
                        "compiled with NVRTC)",
                        "fused decode attention over packed K/V"],
        "missing": [],
        "cpu_codec": cpu,
    }


def collect() -> dict[str, Any]:
    """Probe the installation; return a JSON-ready dictionary. Never raises."""
    report: dict[str, Any] = {
        "python": _guard(_python),
        "nexusquant": _guard(_nexusquant),
        "torch": _guard(_torch),
        "transformers": _guard(_transformers),
        "core": _guard(_core),
        "cupy": _guard(_cupy),
        "nvrtc": {"cuda_bindings": _guard(_nvrtc_bindings), "cupy": _guard(_nvrtc_cupy)},
    }
    report["gpu_path"] = _guard(lambda: _gpu_path(report))
    return report


def _line(info: dict[str, Any], describe: Callable[[dict[str, Any]], str]) -> str:
    if not info.get("available"):
        fix = f"  (fix: {info['fix']})" if "fix" in info else ""
        return f"missing: {info.get('error', 'unavailable')}{fix}"
    text = describe(info)
    if "warning" in info:
        text += f"  WARNING: {info['warning']}"
    return text


def _describe_torch(t: dict[str, Any]) -> str:
    devices = ", ".join(
        f"cuda:{d['index']} {d['name']} (sm {d['capability']}, {d['memory_bytes'] / 2**30:.1f} GiB)"
        for d in t["devices"]
    ) or "no CUDA device, running on cpu"
    return (f"{t['version']} (CUDA build {t['cuda_build'] or 'none'}, {t['threads']} CPU "
            f"threads, OMP_WAIT_POLICY {t.get('omp_wait_policy', '?')}); {devices}")


def _describe_cupy(c: dict[str, Any]) -> str:
    runtime = c["cuda_runtime"]
    count = c["device_count"]
    return (f"{c['version']} (CUDA runtime "
            f"{runtime['version'] if runtime.get('available') else 'unavailable'}; devices: "
            f"{count['count'] if count.get('available') else count.get('error')})")


def _describe_core(c: dict[str, Any]) -> str:
    if "build_info" not in c:
        return f"built ({c['location']}), no build_info()"
    info = c["build_info"]
    if isinstance(info, dict):
        info = ", ".join(f"{k}={v}" for k, v in info.items())
    return f"built: {info}"


def format_report(report: dict[str, Any]) -> str:
    """Render :func:`collect`'s dictionary as aligned text lines."""
    nvrtc = report["nvrtc"]
    rows = [
        ("python", _line(report["python"], lambda p: f"{p['version']} ({p['executable']})")),
        ("nexusquant", _line(report["nexusquant"],
                             lambda n: f"{n['version']} ({n['location']})")),
        ("torch", _line(report["torch"], _describe_torch)),
        ("transformers", _line(report["transformers"], lambda t: t["version"])),
        ("core extension", _line(report["core"], _describe_core)),
        ("CuPy", _line(report["cupy"], _describe_cupy)),
        ("NVRTC (cuda-bindings)", _line(nvrtc["cuda_bindings"], lambda n: (
            f"{n['version']} (cuda-bindings {n['bindings_version']})"))),
        ("NVRTC (CuPy)", _line(nvrtc["cupy"], lambda n: n["version"])),
    ]
    gpu = report["gpu_path"]
    if gpu.get("available"):
        verdict = f"yes, on {gpu['device']}: " + "; ".join(gpu["runs_on_gpu"])
    elif "missing" in gpu:
        verdict = "nothing: " + "; ".join(gpu["missing"])
    else:
        verdict = f"unknown: {gpu.get('error')}"
    rows.append(("runs on the GPU", verdict))
    if "cpu_codec" in gpu:
        rows.append(("CPU codec", gpu["cpu_codec"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def run(as_json: bool = False) -> int:
    """Print the report (text or JSON) to stdout; always returns exit status 0."""
    report = collect()
    print(json.dumps(report, indent=2, default=str) if as_json else format_report(report))
    return 0


__all__ = ["collect", "format_report", "run", "MIN_TRANSFORMERS"]
