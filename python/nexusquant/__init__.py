"""nexusquant-kv: KV-cache compression for LLM inference.

Keys and values are rotated with a randomized Hadamard transform, scaled per head-vector and
coded on the E8 lattice at exactly 2, 3 or 4 bits per element; optional token eviction removes
the least-attended tokens. ``import nexusquant`` never imports CuPy or transformers.

Quick start::

    import torch, nexusquant
    q = nexusquant.quantize(torch.randn(4, 8, 128, dtype=torch.float16), bits=3)
    x = nexusquant.dequantize(q)
"""

from __future__ import annotations

import importlib
from typing import Any

from . import _openmp

# Before anything loads torch: see nexusquant._openmp (never overrides the user's setting).
_openmp.prefer_passive()

from . import errors  # noqa: E402
from .codec import QuantizedTensor, dequantize, quantize  # noqa: E402

try:
    from importlib.metadata import PackageNotFoundError, version as _pkg_version

    __version__ = _pkg_version("nexusquant-kv")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"

# Attributes loaded on first use, so that importing the package stays light and never pulls in
# transformers or CuPy.
_LAZY = {
    "NexusQuantCache": "nexusquant.cache",
    "compress_kv_cache": "nexusquant.cache",
    "MemoryReport": "nexusquant.cache",
    "nexusquant_evict": "nexusquant.eviction",
    "PRESETS": "nexusquant.presets",
    "kv_cache_bytes": "nexusquant.memory",
    "savings_report": "nexusquant.memory",
    "HostStore": "nexusquant.store",
    "DiskStore": "nexusquant.store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nexusquant' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


__all__ = [
    "QuantizedTensor",
    "quantize",
    "dequantize",
    "errors",
    "__version__",
    *_LAZY,
]
