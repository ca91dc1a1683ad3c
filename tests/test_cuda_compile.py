"""The CUDA sources compile with NVRTC and agree with the kernel table. No GPU needed.

NVRTC is the one torch's CUDA wheels bring from PyPI (``nvidia-cuda-nvrtc``, driven through
``cuda-bindings``). Each ``.cu`` is compiled exactly as the loader hands it to CuPy
(:func:`nexusquant.gpu.loader.kernel_source`, :data:`~nexusquant.gpu.loader.COMPILE_OPTIONS`) for
real architectures sm_75, sm_80 and sm_90 (NVRTC runs ptxas, so back-end errors fail too); sm_75
also compiles the pre-Ampere bf16 conversion path. The kernels include no CUDA header at all,
so no include path is given: what compiles here compiles with CuPy's NVRTC on any machine.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nexusquant.gpu import kernels, loader

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "python" / "nexusquant" / "cuda"
ARCHS = ("sm_75", "sm_80", "sm_90")


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        pytest.skip(f"NVRTC is missing: cuda-bindings is not installed ({exc})")
    try:
        err, major, minor = nvrtc.nvrtcVersion()
    except Exception as exc:  # noqa: BLE001 - libnvrtc absent or unloadable
        pytest.skip(f"NVRTC is missing: libnvrtc could not be loaded ({type(exc).__name__}: {exc})")
    assert int(err) == 0, f"nvrtcVersion failed: {err!r}"
    return nvrtc, (major, minor)


def _check(nvrtc, result, what: str) -> None:
    if int(result[0]) != 0:
        raise AssertionError(f"{what}: {result[0]!r}")


def _compile(nvrtc, source: str, arch: str) -> dict:
    text = loader.kernel_source(source)
    err, prog = nvrtc.nvrtcCreateProgram(text.encode(), source.encode(), 0, [], [])
    assert int(err) == 0, err
    options = [o.encode() for o in (*loader.COMPILE_OPTIONS, f"--gpu-architecture={arch}")]
    try:
        (status,) = nvrtc.nvrtcCompileProgram(prog, len(options), options)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        out = {"status": int(status), "log": log.decode(errors="replace").strip("\x00 \n")}
        if out["status"] == 0:
            _, size = nvrtc.nvrtcGetPTXSize(prog)
            ptx = b" " * size
            _check(nvrtc, nvrtc.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
            out["ptx"] = ptx.decode().rstrip("\x00")
            _, size = nvrtc.nvrtcGetCUBINSize(prog)
            out["cubin_bytes"] = size
        return out
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


@pytest.fixture(scope="module")
def compiled():
    """{(source, arch): result}, compiled in parallel (NVRTC releases the GIL)."""
    nvrtc, _ = _nvrtc()
    jobs = [(s, a) for s in kernels.SOURCES for a in ARCHS]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(lambda job: _compile(nvrtc, *job), jobs))
    return dict(zip(jobs, results, strict=True))


def test_nvrtc_version_is_reported():
    _, version = _nvrtc()
    assert version >= (12, 0), f"NVRTC {version} is older than the CUDA 12 the kernels target"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", kernels.SOURCES)
def test_source_compiles(compiled, source, arch):
    result = compiled[(source, arch)]
    assert result["status"] == 0, f"{source} for {arch} failed to compile:\n{result['log']}"
    assert "warning" not in result["log"].lower(), result["log"]
    assert result["cubin_bytes"] > 0


_ENTRY = re.compile(r"\.visible \.entry (\w+)\(\s*(.*?)\)", re.S)
_PARAM = re.compile(r"\.param \.(\w+) \w+")


_PTX_CLASS = {
    "u64": "u64",
    "s64": "u64",
    "b64": "u64",
    "u32": "u32",
    "s32": "u32",
    "b32": "u32",
    "f32": "f32",
}


def _entries(ptx: str) -> dict[str, list[str]]:
    """Entry name -> parameter classes (64-bit integer, 32-bit integer, f32)."""
    return {
        name: [_PTX_CLASS[t] for t in _PARAM.findall(params)]
        for name, params in _ENTRY.findall(ptx)
    }


@pytest.mark.parametrize("source", kernels.SOURCES)
def test_entry_points_match_the_kernel_table(compiled, source):
    ptx = compiled[(source, "sm_90")]
    assert ptx["status"] == 0, ptx["log"]
    found = _entries(ptx["ptx"])
    expected = {}
    for kernel in kernels.KERNELS.values():
        if kernel.source == source:
            for name in kernel.entries():
                expected[name] = [a.ptx_type for a in kernel.args]
    assert set(found) == set(expected), (sorted(found), sorted(expected))
    for name, types in expected.items():
        assert found[name] == types, f"{name}: PTX params {found[name]} != table {types}"


def test_kernel_source_inlines_headers_with_line_markers():
    text = loader.kernel_source("nq_codec.cu")
    assert text.startswith('#line 1 "nq_codec.cu"\n')
    for header in ("nq_common.cuh", "nq_codec.cuh", "nq_device.cuh"):
        assert text.count(f'#line 1 "{header}"') == 1, header
    assert '#include "' not in text
    # The line after the last marker of nq_codec.cu is that file's real line.
    lines = text.splitlines()
    real = (CUDA_DIR / "nq_codec.cu").read_text().splitlines()
    marker = max(
        i for i, l in enumerate(lines) if l.startswith("#line") and l.endswith('"nq_codec.cu"')
    )
    number = int(lines[marker].split()[1])
    assert lines[marker + 1] == real[number - 1]


def test_every_cuda_file_is_reachable_from_a_source():
    used = set()
    for source in kernels.SOURCES:
        used |= set(re.findall(r'#line 1 "([^"]+)"', loader.kernel_source(source)))
    assert used == {p.name for p in CUDA_DIR.glob("*.cu*")}


def test_docs_embed_the_kernel_table():
    doc = (ROOT / "docs" / "gpu.md").read_text()
    assert kernels.markdown_table() in doc, (
        "docs/gpu.md is out of date: paste kernels.markdown_table()"
    )
