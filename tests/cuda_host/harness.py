"""Build and run the host emulation of the CUDA kernels (tests/cuda_host/nq_host.cpp).

:func:`build` compiles the kernels' own headers (``python/nexusquant/cuda/*.cuh``) with the host
shim into one executable: g++ with ``-ffp-contract=off`` (one rounding per operation, as
``--fmad=false`` on the GPU) and AddressSanitizer + UndefinedBehaviorSanitizer (any out-of-bounds
access of a kernel, within the exact buffer sizes and the shared-memory size the launch planner
asked for, aborts the run). :class:`HostKernels` launches a kernel of the table
(``nexusquant.gpu.kernels.KERNELS``) with the same argument dictionary and launch configuration
the GPU path would use, and copies the outputs back into the dictionary's tensors.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nexusquant.gpu.kernels import DTYPE_SUFFIX, KERNELS, Launch

HERE = Path(__file__).resolve().parent
CUDA_DIR = HERE.parents[1] / "python" / "nexusquant" / "cuda"
CXX_FLAGS = (
    "-std=c++17",
    "-O1",
    "-g",
    "-ffp-contract=off",
    "-fno-fast-math",
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-Wall",
    "-Wextra",
    "-Werror",
)


def find_compiler() -> str | None:
    """A C++ compiler: $CXX, else g++, else c++."""
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def build(compiler: str, out_dir: Path) -> Path:
    """Compile nq_host into ``out_dir``; raise RuntimeError with the compiler's output."""
    exe = out_dir / "nq_host"
    cmd = [
        compiler,
        *CXX_FLAGS,
        f"-I{CUDA_DIR}",
        f"-I{HERE}",
        str(HERE / "nq_host.cpp"),
        "-o",
        str(exe),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"host emulation build failed: {' '.join(cmd)}\n{result.stderr}")
    return exe


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def _read_into(path: Path, t: torch.Tensor) -> None:
    raw = np.fromfile(path, dtype=np.uint8)
    src = torch.from_numpy(raw.copy())
    want = t.numel() * t.element_size()
    if src.numel() != want:
        raise RuntimeError(f"{path.name}: {src.numel()} bytes written, {want} expected")
    t.copy_(src.view(t.dtype).reshape(t.shape))


class HostKernels:
    """Runs kernels of the table on the CPU (one process per launch)."""

    def __init__(self, exe: Path, workdir: Path):
        self.exe = exe
        self.workdir = workdir
        self.env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1")

    def launch(
        self,
        kernel: str,
        dtype: torch.dtype,
        config: Launch,
        values: dict[str, Any],
        *,
        bpl: int | None = None,
    ) -> None:
        """Run ``KERNELS[kernel]`` over ``config.grid`` with ``values`` (table names)."""
        spec = KERNELS[kernel]
        argv = [str(self.exe), kernel, f"dtype={DTYPE_SUFFIX[dtype]}"]
        argv += [f"threads={config.block[0]}", f"smem={config.shared_mem}"]
        if kernel == "attn_partial":
            argv += [
                f"grid_x={config.grid[0]}",
                f"grid_y={config.grid[1]}",
                f"grid_z={config.grid[2]}",
            ]
            argv.append(f"bpl={bpl}")
        else:
            argv.append(f"grid={config.grid[0]}")
        outputs = {}
        for arg in spec.args:
            value = values[arg.name]
            if arg.is_pointer:
                if value is None:
                    continue
                path = self.workdir / f"{kernel}.{arg.name}.bin"
                if arg.is_output:
                    outputs[arg.name] = path
                else:
                    path.write_bytes(_tensor_bytes(value))
                argv.append(f"{arg.name}={path}")
            elif arg.ctype == "f32":
                argv.append(f"{arg.name}_bits={struct.unpack('<I', struct.pack('<f', value))[0]}")
            else:
                argv.append(f"{arg.name}={int(value)}")
        result = subprocess.run(argv, capture_output=True, text=True, env=self.env)
        if result.returncode != 0:
            raise RuntimeError(
                f"nq_host {kernel} failed ({result.returncode}):\n{result.stderr[-6000:]}"
            )
        for name, path in outputs.items():
            _read_into(path, values[name])

    def run(
        self, op: str, inputs: dict[str, np.ndarray], outputs: dict[str, Any], **scalars: int
    ) -> dict[str, np.ndarray]:
        """Run a helper op (``vdec``, ``convert``): arrays in, ``outputs`` (name -> numpy dtype)
        back."""
        argv = [str(self.exe), op, *(f"{k}={v}" for k, v in scalars.items())]
        for key, value in inputs.items():
            path = self.workdir / f"{op}.{key}.in"
            value.tofile(path)
            argv.append(f"{key}={path}")
        for key in outputs:
            argv.append(f"{key}={self.workdir / f'{op}.{key}.out'}")
        result = subprocess.run(argv, capture_output=True, text=True, env=self.env)
        if result.returncode != 0:
            raise RuntimeError(
                f"nq_host {op} failed ({result.returncode}):\n{result.stderr[-6000:]}"
            )
        return {
            k: np.fromfile(self.workdir / f"{op}.{k}.out", dtype=dt) for k, dt in outputs.items()
        }
