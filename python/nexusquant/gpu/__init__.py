"""CUDA kernels for the codec and for fused decode attention, compiled at run time by CuPy.

Importing this package imports torch only; CuPy is imported on the first launch (or by
:func:`available` / :func:`diagnose`). A missing CuPy, device or NVRTC raises
:class:`nexusquant.errors.GPUUnavailableError` naming the cause and the fix
(``pip install 'nexusquant-kv[cuda]'``).

- :func:`encode` / :func:`decode`: the codec on ``(N, d)`` CUDA tensors, byte- and bit-identical
  to the Rust core and ``nexusquant.reference`` (``docs/codec.md``).
- :func:`fused_decode_attention`: one query token against a :class:`PackedKV` layer.
- :func:`register_attention`: the ``"nexusquant"`` transformers attention function.
"""

from __future__ import annotations

from .attention import (
    PackedKV,
    attach_packed,
    fused_decode_attention,
    packed_view,
    register_attention,
)
from .loader import available, diagnose
from .ops import decode, encode

__all__ = [
    "encode",
    "decode",
    "fused_decode_attention",
    "PackedKV",
    "attach_packed",
    "packed_view",
    "register_attention",
    "available",
    "diagnose",
]
