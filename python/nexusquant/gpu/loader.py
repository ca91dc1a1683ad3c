"""Compiling and launching the CUDA kernels through CuPy.

CuPy is imported on first use only. The sources ship inside the package (``nexusquant/cuda``):
:func:`kernel_source` reads a ``.cu`` file with :mod:`importlib.resources` and inlines its local
``#include "..."`` headers with ``#line`` markers (so compiler messages name the real file and
line, and CuPy's compile cache keys on the full text, headers included). Modules are compiled by
NVRTC with :data:`COMPILE_OPTIONS`, once per device and source, and launched on torch's current
stream. Tensors are handed over zero-copy as raw device pointers (``tensor.data_ptr()``): the
kernels take plain pointers, and bfloat16 has no ``__cuda_array_interface__`` typestr, so CuPy
arrays would add nothing but a dtype view; devices, dtypes, shapes and contiguity are checked
against :data:`nexusquant.gpu.kernels.KERNELS` before every launch.
"""

from __future__ import annotations

import re
import threading
from importlib import resources
from typing import Any

import numpy as np
import torch

from ..errors import GPUUnavailableError, ShapeError
from .kernels import KERNELS, SOURCES, Launch

#: NVRTC options: C++17, IEEE arithmetic exactly as written (no FMA contraction, no flush to
#: zero, IEEE division and square root). CuPy adds the device's --gpu-architecture itself.
COMPILE_OPTIONS = (
    "--std=c++17",
    "--fmad=false",
    "--ftz=false",
    "--prec-div=true",
    "--prec-sqrt=true",
)

INSTALL_FIX = "pip install 'nexusquant-kv[cuda]' (CuPy for CUDA 13: cupy-cuda13x)"

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
_lock = threading.Lock()
_modules: dict[tuple[int, str], Any] = {}


def _read(name: str) -> str:
    return resources.files("nexusquant").joinpath("cuda", name).read_text(encoding="utf-8")


def kernel_source(name: str) -> str:
    """The full text of ``cuda/<name>``: local includes inlined once each, ``#line`` marked."""
    seen: set[str] = set()

    def expand(file: str) -> list[str]:
        out = [f'#line 1 "{file}"']
        for number, line in enumerate(_read(file).splitlines(), 1):
            match = _INCLUDE.match(line)
            if match:
                header = match.group(1)
                if header not in seen:
                    seen.add(header)
                    out += expand(header)
                out.append(f'#line {number + 1} "{file}"')
            elif line.strip() == "#pragma once":
                out.append("")
            else:
                out.append(line)
        return out

    seen.add(name)
    return "\n".join(expand(name)) + "\n"


def cupy_module():
    """Import CuPy, or raise GPUUnavailableError with the cause and the fix."""
    try:
        import cupy  # noqa: PLC0415 - lazy by design
    except ImportError as exc:
        raise GPUUnavailableError(f"CuPy is not installed ({exc}); fix: {INSTALL_FIX}") from exc
    except Exception as exc:  # noqa: BLE001 - a broken CuPy install fails in many ways
        raise GPUUnavailableError(
            f"CuPy failed to import ({type(exc).__name__}: {exc}); fix: reinstall it with "
            f"{INSTALL_FIX}, matching the NVIDIA driver's CUDA major version"
        ) from exc
    return cupy


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def get_module(source: str, device: torch.device):
    """The compiled ``cupy.RawModule`` of ``source`` for ``device`` (compiled once, cached)."""
    index = _device_index(device)
    key = (index, source)
    with _lock:
        module = _modules.get(key)
        if module is not None:
            return module
        cupy = cupy_module()
        with cupy.cuda.Device(index):
            module = cupy.RawModule(code=kernel_source(source), options=COMPILE_OPTIONS)
            try:
                module.compile()
            except cupy.cuda.compiler.CompileException:
                raise
            except Exception as exc:  # noqa: BLE001 - NVRTC missing or unusable
                raise GPUUnavailableError(
                    f"NVRTC could not build {source} for cuda:{index} ({type(exc).__name__}: "
                    f"{exc}); fix: {INSTALL_FIX}, which brings NVRTC for its CUDA version"
                ) from exc
        _modules[key] = module
        return module


def _pointer(arg, value: Any, dtype: torch.dtype, device: torch.device) -> np.uint64:
    if value is None:
        if not arg.optional:
            raise ShapeError(f"kernel argument {arg.name} must be a tensor, got None")
        return np.uint64(0)
    if not isinstance(value, torch.Tensor):
        raise ShapeError(f"kernel argument {arg.name} must be a tensor, got {type(value).__name__}")
    want = dtype if arg.dtype == "T" else getattr(torch, arg.dtype)
    if value.dtype != want:
        raise ShapeError(f"kernel argument {arg.name} must be {want}, got {value.dtype}")
    if value.device != device:
        raise ShapeError(f"kernel argument {arg.name} must be on {device}, got {value.device}")
    if not value.is_contiguous():
        raise ShapeError(f"kernel argument {arg.name} must be contiguous")
    return np.uint64(value.data_ptr())


_SCALARS = {"i32": np.int32, "i64": np.int64, "u64": np.uint64, "f32": np.float32}


def kernel_args(kernel: str, dtype: torch.dtype, values: dict[str, Any], device: torch.device):
    """The launch arguments of ``kernel`` in table order, checked against the table."""
    spec = KERNELS[kernel]
    missing = {a.name for a in spec.args} ^ set(values)
    if missing:
        raise ShapeError(f"{kernel}: arguments do not match the kernel table: {sorted(missing)}")
    return tuple(
        _pointer(a, values[a.name], dtype, device)
        if a.is_pointer
        else _SCALARS[a.ctype](values[a.name])
        for a in spec.args
    )


def launch(
    kernel: str,
    dtype: torch.dtype,
    launch_config: Launch,
    values: dict[str, Any],
    device: torch.device,
    *,
    bpl: int | None = None,
) -> None:
    """Launch ``KERNELS[kernel]`` for ``dtype`` on torch's current stream of ``device``."""
    spec = KERNELS[kernel]
    args = kernel_args(kernel, dtype, values, device)
    module = get_module(spec.source, device)
    cupy = cupy_module()
    function = module.get_function(spec.entry(dtype, bpl))
    index = _device_index(device)
    with cupy.cuda.Device(index):
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(index).cuda_stream, index)
        with stream:
            function(
                launch_config.grid, launch_config.block, args, shared_mem=launch_config.shared_mem
            )


def available() -> bool:
    """Whether CuPy imports, torch and CuPy see a CUDA device and NVRTC loads (no compile)."""
    try:
        cupy = cupy_module()
        return (
            torch.cuda.is_available()
            and cupy.cuda.runtime.getDeviceCount() > 0
            and cupy.cuda.nvrtc.getVersion() >= (11, 0)
        )
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return False


def diagnose(compile_kernels: bool = True) -> dict[str, Any]:
    """What the GPU path finds, for ``nexusquant doctor``. Never raises.

    Keys: ``available`` (bool), ``cupy`` (version), ``cuda_runtime``, ``cuda_driver``,
    ``nvrtc`` ("major.minor"), ``device`` (name), ``capability`` ("major.minor"),
    ``compiled`` (sources built, when ``compile_kernels``), ``errors`` (list of strings).
    """
    report: dict[str, Any] = {"available": False, "errors": []}
    errors: list[str] = report["errors"]
    try:
        cupy = cupy_module()
    except GPUUnavailableError as exc:
        errors.append(str(exc))
        return report
    report["cupy"] = cupy.__version__
    probes = {
        "cuda_runtime": lambda: cupy.cuda.runtime.runtimeGetVersion(),
        "cuda_driver": lambda: cupy.cuda.runtime.driverGetVersion(),
        "nvrtc": lambda: "{}.{}".format(*cupy.cuda.nvrtc.getVersion()),
    }
    for key, probe in probes.items():
        try:
            report[key] = probe()
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            errors.append(f"{key}: {type(exc).__name__}: {exc}")
    if not torch.cuda.is_available():
        errors.append("torch sees no CUDA device")
        return report
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    report["device"] = props.name
    report["capability"] = f"{props.major}.{props.minor}"
    if compile_kernels:
        report["compiled"] = []
        for source in SOURCES:
            try:
                get_module(source, torch.device("cuda", index))
                report["compiled"].append(source)
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                errors.append(f"{source}: {type(exc).__name__}: {exc}")
    report["available"] = not errors
    return report


__all__ = [
    "COMPILE_OPTIONS",
    "kernel_source",
    "kernel_args",
    "get_module",
    "launch",
    "available",
    "diagnose",
]
