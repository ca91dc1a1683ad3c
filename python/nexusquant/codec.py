"""The codec's Python API: ``quantize`` / ``dequantize`` and the low-level ``encode`` / ``decode``.

Dispatch: CPU tensors go to the Rust core (``nexusquant._core``, multi-threaded, GIL released,
zero-copy through numpy views of the torch buffers); CUDA tensors go to the CUDA kernels
(``nexusquant.gpu``, CuPy, on torch's current stream); ``backend="reference"`` runs the pure-torch
oracle on any device. All three produce the same bytes (``docs/codec.md``).

``encode_groups`` / ``decode_groups`` do the same for ``(G, N, ·)`` groups that are slices of
larger buffers (a KV cache's code buffers, an attention buffer), reading and writing them in
place with one pass over the thread pool. ``attention_scores`` / ``attention_values`` do the
arithmetic of attention (query dot products, weighted sums) straight on such groups of codes,
without decoding them (the CPU path of fused decode attention).

Non-finite input: a head-vector containing NaN or ±Inf is stored with a NaN scale and decodes to
all-NaN; every other head-vector in the tensor is unaffected. A head-vector of zeros decodes to
zeros. Scales saturate at the fp16 maximum (65504), so finite inputs with an RMS above ~1e5 are
clipped.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .errors import (
    BitsError,
    DeviceError,
    GPUUnavailableError,
    HeadDimError,
    InvalidArgumentError,
    ShapeError,
    UnsupportedDtypeError,
)

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TUNED_BITS = (2, 3, 4)
MIN_BITS, MAX_BITS = 1, 8
MIN_HEAD_DIM, MAX_HEAD_DIM = 8, 1024
CODEC_VERSION = "e8v1"

Backend = Literal["core", "cuda", "reference"]

_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


# --------------------------------------------------------------------------------------------
# validation


def check_bits(bits: object, name: str = "bits") -> int:
    """Return ``bits`` as an int, or raise BitsError naming ``name`` and the allowed values."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise BitsError(
            f"{name} must be an integer in {MIN_BITS}..{MAX_BITS} "
            f"({', '.join(map(str, TUNED_BITS))} are tuned), got {bits!r}"
        )
    b = int(bits)
    if not MIN_BITS <= b <= MAX_BITS:
        raise BitsError(
            f"{name} must be one of {list(range(MIN_BITS, MAX_BITS + 1))} "
            f"({', '.join(map(str, TUNED_BITS))} are tuned), got {b}"
        )
    return b


def check_head_dim(head_dim: object, name: str = "head_dim") -> int:
    """Return ``head_dim`` as an int, or raise HeadDimError (multiple of 8 in [8, 1024])."""
    if isinstance(head_dim, bool) or not isinstance(head_dim, (int, np.integer)):
        raise HeadDimError(f"{name} must be an integer multiple of 8 in [8, 1024], got {head_dim!r}")
    d = int(head_dim)
    if d % 8 or not MIN_HEAD_DIM <= d <= MAX_HEAD_DIM:
        raise HeadDimError(f"{name} must be a multiple of 8 in [8, 1024], got {d}")
    return d


def check_seed(seed: object) -> int:
    """Return ``seed`` as an int in [0, 2^64), or raise InvalidArgumentError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
        raise InvalidArgumentError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def check_dtype(dtype: torch.dtype, name: str = "x.dtype") -> torch.dtype:
    """Raise UnsupportedDtypeError unless ``dtype`` is float16, bfloat16 or float32."""
    if dtype not in SUPPORTED_DTYPES:
        raise UnsupportedDtypeError(
            f"{name} must be one of [torch.float16, torch.bfloat16, torch.float32], got {dtype}"
        )
    return dtype


def check_threads(threads: object) -> int | None:
    """``None`` (all cores) or a positive int."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or int(threads) < 1:
        raise InvalidArgumentError(f"threads must be None or a positive integer, got {threads!r}")
    return int(threads)


def default_candidates(bits: int) -> int:
    """Clipping candidates the encoder tries at ``bits`` unless told otherwise (see
    :func:`quantize`): one up to 4 bits, where the other two add 0.03-0.44 dB of SQNR, and all
    three above, where they add 0.7-2.7 dB. The Rust core's ``default_candidates``."""
    return 1 if bits <= 4 else 3


def check_candidates(candidates: object, bits: int) -> int:
    """How many clipping factors the encoder tries: 1, 2 or 3 (see :func:`quantize`); ``None``
    is :func:`default_candidates` of ``bits`` (checked already)."""
    if candidates is None:
        return default_candidates(bits)
    if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) or not 1 <= int(candidates) <= 3:
        raise InvalidArgumentError(
            f"candidates must be 1, 2 or 3 (the clipping factors the encoder tries), got {candidates!r}"
        )
    return int(candidates)


def code_bytes(head_dim: int, bits: int) -> int:
    """Bytes of codes per head-vector: ``head_dim * bits / 8`` (exact)."""
    return head_dim * bits // 8


# --------------------------------------------------------------------------------------------
# backends


def _core():
    try:
        return importlib.import_module("nexusquant._core")
    except ImportError as exc:  # pragma: no cover - depends on the build
        raise ImportError(
            "nexusquant._core (the Rust extension) is not built: install the package with "
            "`pip install nexusquant-kv` or build it in place with `maturin develop --release`"
        ) from exc


def _gpu():
    from . import gpu  # noqa: PLC0415 - lazy by design: CuPy only on first CUDA use

    return gpu


def _choose_backend(device: torch.device, backend: Backend | None) -> Backend:
    if backend is not None:
        if backend not in ("core", "cuda", "reference"):
            raise InvalidArgumentError(
                f"backend must be one of ['core', 'cuda', 'reference'] or None, got {backend!r}"
            )
        if backend == "core" and device.type != "cpu":
            raise DeviceError(f"backend='core' needs CPU tensors, got a tensor on {device}")
        if backend == "cuda" and device.type != "cuda":
            raise DeviceError(f"backend='cuda' needs CUDA tensors, got a tensor on {device}")
        return backend
    if device.type == "cpu":
        return "core"
    if device.type == "cuda":
        return "cuda"
    raise DeviceError(f"tensors must be on 'cpu' or 'cuda', got a tensor on {device}")


def _np_view(t: torch.Tensor) -> np.ndarray:
    """Zero-copy numpy view of a contiguous CPU tensor (16-bit floats as uint16 bit patterns)."""
    t = t.detach()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    a = t.numpy()
    if a.dtype == np.int16:
        a = a.view(np.uint16)
    return a


# --------------------------------------------------------------------------------------------
# low level: encode / decode


def encode(
    x: torch.Tensor,
    bits: int = 3,
    seed: int = 0,
    *,
    threads: int | None = None,
    backend: Backend | None = None,
    candidates: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode head-vectors.

    Args:
        x: ``(..., head_dim)`` float16 | bfloat16 | float32, on CPU or CUDA; any strides.
        bits: bits per element, 1..8 (2, 3, 4 tuned).
        seed: rotation seed in [0, 2^64).
        threads: CPU threads (``None``: all cores).
        backend: ``None`` (by device), ``"core"``, ``"cuda"`` or ``"reference"``.
        candidates: clipping factors the encoder tries, 1..3 (``None``: 1 up to 4 bits, 3 above;
            see :func:`quantize`).

    Returns:
        ``(codes, scales)``: codes ``(..., head_dim*bits/8)`` uint8 and scales ``(...)`` float16,
        on ``x``'s device.
    """
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentError(f"x must be a torch.Tensor, got {type(x).__name__}")
    check_dtype(x.dtype)
    bits = check_bits(bits)
    seed = check_seed(seed)
    threads = check_threads(threads)
    candidates = check_candidates(candidates, bits)
    if x.dim() < 1:
        raise ShapeError(f"x must have at least 1 dimension (..., head_dim), got shape {tuple(x.shape)}")
    d = check_head_dim(x.shape[-1], "head_dim (x.shape[-1])")
    which = _choose_backend(x.device, backend)
    lead = tuple(x.shape[:-1])
    n = int(np.prod(lead)) if lead else 1
    codes = torch.empty((*lead, code_bytes(d, bits)), dtype=torch.uint8, device=x.device)
    scales = torch.empty(lead, dtype=torch.float16, device=x.device)
    if n == 0:
        return codes, scales
    x2 = x.reshape(n, d).contiguous()
    if which == "reference":
        from . import reference  # noqa: PLC0415

        c, s = reference.encode(x2.cpu(), bits, seed, candidates)
        codes.copy_(c.reshape(codes.shape))
        scales.copy_(s.view(torch.float16).reshape(scales.shape))
    elif which == "core":
        _core().encode(
            _np_view(x2),
            _np_view(codes.view(n, -1)),
            _np_view(scales.view(n).view(torch.int16)),
            bits=bits,
            seed=seed,
            dtype=_DTYPE_NAMES[x.dtype],
            threads=threads,
            candidates=candidates,
        )
    else:
        _gpu().encode(x2, codes.view(n, -1), scales.view(n), bits=bits, seed=seed, candidates=candidates)
    return codes, scales


def decode(
    codes: torch.Tensor,
    scales: torch.Tensor,
    *,
    bits: int,
    seed: int,
    head_dim: int,
    dtype: torch.dtype = torch.float16,
    out: torch.Tensor | None = None,
    threads: int | None = None,
    backend: Backend | None = None,
) -> torch.Tensor:
    """Decode codes and scales back to head-vectors.

    Args:
        codes: ``(..., head_dim*bits/8)`` uint8.
        scales: ``(...)`` float16 (the leading shape of ``codes``).
        bits, seed, head_dim: the parameters used to encode.
        dtype: output dtype (float16 | bfloat16 | float32).
        out: optional contiguous ``(..., head_dim)`` tensor of ``dtype`` to write into.

    Returns:
        ``(..., head_dim)`` tensor of ``dtype`` on ``codes``' device.
    """
    bits = check_bits(bits)
    seed = check_seed(seed)
    d = check_head_dim(head_dim)
    check_dtype(dtype, "dtype")
    threads = check_threads(threads)
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8:
        raise ShapeError(f"codes must be a torch.uint8 tensor, got {getattr(codes, 'dtype', type(codes))}")
    if not isinstance(scales, torch.Tensor) or scales.dtype != torch.float16:
        raise ShapeError(
            f"scales must be a torch.float16 tensor, got {getattr(scales, 'dtype', type(scales))}"
        )
    cb = code_bytes(d, bits)
    if codes.dim() < 1 or codes.shape[-1] != cb:
        raise ShapeError(
            f"codes.shape[-1] must be head_dim*bits/8 = {cb} for head_dim={d}, bits={bits}, "
            f"got shape {tuple(codes.shape)}"
        )
    lead = tuple(codes.shape[:-1])
    if tuple(scales.shape) != lead:
        raise ShapeError(f"scales.shape must be {lead} (codes.shape[:-1]), got {tuple(scales.shape)}")
    if scales.device != codes.device:
        raise DeviceError(f"codes and scales must be on one device, got {codes.device} and {scales.device}")
    which = _choose_backend(codes.device, backend)
    n = int(np.prod(lead)) if lead else 1
    if out is None:
        out = torch.empty((*lead, d), dtype=dtype, device=codes.device)
    elif out.shape != (*lead, d) or out.dtype != dtype or not out.is_contiguous() or out.device != codes.device:
        raise ShapeError(
            f"out must be a contiguous {dtype} tensor of shape {(*lead, d)} on {codes.device}, "
            f"got {out.dtype} {tuple(out.shape)} on {out.device}"
        )
    if n == 0:
        return out
    c2 = codes.reshape(n, cb).contiguous()
    s2 = scales.reshape(n).contiguous()
    if which == "reference":
        from . import reference  # noqa: PLC0415

        out.copy_(reference.decode(c2.cpu(), s2.cpu().view(torch.int16), bits, seed, d, dtype).reshape(out.shape))
    elif which == "core":
        _core().decode(
            _np_view(c2),
            _np_view(s2.view(torch.int16)),
            _np_view(out.view(n, d)),
            bits=bits,
            seed=seed,
            dtype=_DTYPE_NAMES[dtype],
            threads=threads,
        )
    else:
        _gpu().decode(c2, s2, out.view(n, d), bits=bits, seed=seed)
    return out


def scale_magnitudes(scales: torch.Tensor) -> torch.Tensor:
    """``|scales|`` of float16 scales, by clearing the sign bit (NaN stays NaN): the scales of
    head-vectors whose sign bit flags them as centred (:func:`decode_groups` ``centres``)."""
    return scales.view(torch.int16).bitwise_and(0x7FFF).view(torch.float16)


def _is_grouped(t: torch.Tensor) -> bool:
    """Whether each slice of ``t`` along its first axis is one dense run of memory (what the
    grouped core functions read and write in place)."""
    dense = 1
    for size, stride in zip(reversed(t.shape[1:]), reversed(t.stride()[1:])):
        if size > 1 and stride != dense:
            return False
        dense *= size
    return True


def _grouped(t: torch.Tensor) -> torch.Tensor:
    """``t`` if :func:`_is_grouped`, else a contiguous copy (for inputs)."""
    return t if _is_grouped(t) else t.contiguous()


def _check_grouped_out(t: torch.Tensor, name: str) -> None:
    """Raise ShapeError unless ``t`` can be written in place by a grouped core function."""
    if not _is_grouped(t):
        raise ShapeError(f"{name} must be contiguous after its first axis (each group one dense run)")


def _check_group_tensor(t: object, name: str, dtype: torch.dtype, shape: tuple[int, ...], what: str) -> None:
    """Raise ShapeError unless ``t`` is a ``dtype`` tensor of ``shape`` (described as ``what``)."""
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != shape:
        raise ShapeError(
            f"{name} must be a {dtype} tensor of shape {shape} {what}, "
            f"got {getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}"
        )


def _group_args(
    t: object, name: str, bits: object, seed: object, threads: object
) -> tuple[int, int, int | None, int, int, int, int]:
    """The validated ``(bits, seed, threads, G, N, head_dim, code bytes)`` of a grouped call whose
    head-vector tensor (``x`` or ``out``) is ``t``."""
    bits, seed, threads = check_bits(bits), check_seed(seed), check_threads(threads)
    if not isinstance(t, torch.Tensor) or t.dim() != 3:
        raise ShapeError(f"{name} must be a 3-D (G, N, head_dim) tensor, got {getattr(t, 'shape', type(t))}")
    check_dtype(t.dtype, f"{name}.dtype")
    g, n, d = t.shape
    d = check_head_dim(d, f"head_dim ({name}.shape[-1])")
    return bits, seed, threads, g, n, d, code_bytes(d, bits)


def encode_groups(
    x: torch.Tensor,
    codes_out: torch.Tensor,
    scales_out: torch.Tensor,
    *,
    bits: int,
    seed: int,
    threads: int | None = None,
    backend: Backend | None = None,
    candidates: int | None = None,
) -> None:
    """Encode ``G`` groups of head-vectors straight into slices of larger buffers.

    ``x`` ``(G, N, head_dim)`` (float16 | bfloat16 | float32, any strides) is encoded into
    ``codes_out`` ``(G, N, head_dim*bits/8)`` uint8 and ``scales_out`` ``(G, N)`` float16,
    which may be slices of a cache's buffers (``codes.view(G, cap, cb)[:, at:at + N]``): each
    group must be contiguous, the first axis may have any stride that keeps the groups apart.
    The bytes are those of :func:`encode` on each group.
    """
    bits, seed, threads, g, n, d, cb = _group_args(x, "x", bits, seed, threads)
    candidates = check_candidates(candidates, bits)
    _check_group_tensor(codes_out, "codes_out", torch.uint8, (g, n, cb), "(G, N, head_dim*bits/8)")
    _check_group_tensor(scales_out, "scales_out", torch.float16, (g, n), "(G, N)")
    if not x.device == codes_out.device == scales_out.device:
        raise DeviceError(
            f"x, codes_out and scales_out must be on one device, got {x.device}, {codes_out.device} "
            f"and {scales_out.device}"
        )
    if g == 0 or n == 0:
        return
    if _choose_backend(x.device, backend) != "core":
        c, s = encode(x, bits, seed, threads=threads, backend=backend, candidates=candidates)
        codes_out.copy_(c)
        scales_out.copy_(s)
        return
    _check_grouped_out(codes_out, "codes_out")
    _check_grouped_out(scales_out, "scales_out")
    _core().encode_groups(
        _np_view(_grouped(x)),
        _np_view(codes_out),
        _np_view(scales_out.view(torch.int16)),
        bits=bits,
        seed=seed,
        dtype=_DTYPE_NAMES[x.dtype],
        threads=threads,
        candidates=candidates,
    )


def decode_groups(
    codes: torch.Tensor,
    scales: torch.Tensor,
    out: torch.Tensor,
    *,
    bits: int,
    seed: int,
    threads: int | None = None,
    backend: Backend | None = None,
    centres: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode ``G`` groups of head-vectors straight into slices of a larger tensor.

    The groups are what a KV cache holds per (row, head): ``codes`` ``(G, N, head_dim*bits/8)``
    and ``scales`` ``(G, N)`` may be slices of bigger buffers (``buf[:, :n]``), and ``out``
    ``(G, N, head_dim)`` a slice of the attention buffer they are decoded into
    (``full.view(G, T, d)[:, at:at + N]``): each group must be contiguous, the first axis may
    have any stride that keeps the groups apart. Nothing is copied in or out on the CPU; the
    bytes are those of :func:`decode` on each group.

    Args:
        codes, scales: as above (uint8, float16).
        out: as above, float16 | bfloat16 | float32 (the output dtype), on ``codes``' device.
        bits, seed: the parameters used to encode; ``head_dim`` is ``out.shape[-1]``.
        centres: optional ``(G, head_dim)`` float32: rows coded relative to their group's
            centre (a KV cache's centred keys) are marked by the sign bit of their scale, which
            the encoder never sets; such a row decodes with the absolute scale and then gets
            the centre added (in float32, before the rounding to ``out``'s dtype). Other rows
            decode as without ``centres``.

    Returns:
        ``out``.
    """
    bits, seed, threads, g, n, d, cb = _group_args(out, "out", bits, seed, threads)
    _check_group_tensor(codes, "codes", torch.uint8, (g, n, cb), "(G, N, head_dim*bits/8)")
    _check_group_tensor(scales, "scales", torch.float16, (g, n), "(G, N)")
    if centres is not None:
        _check_group_tensor(centres, "centres", torch.float32, (g, d), "(G, head_dim)")
    if not codes.device == scales.device == out.device:
        raise DeviceError(
            f"codes, scales and out must be on one device, got {codes.device}, {scales.device} and {out.device}"
        )
    if centres is not None and centres.device != out.device:
        raise DeviceError(f"centres must be on {out.device}, got {centres.device}")
    if g == 0 or n == 0:
        return out
    if _choose_backend(codes.device, backend) != "core":
        flags = None if centres is None else scales.view(torch.int16) < 0
        if flags is not None:
            scales = scale_magnitudes(scales)
        decoded = decode(codes, scales, bits=bits, seed=seed, head_dim=d, dtype=torch.float32,
                         threads=threads, backend=backend)
        if flags is not None:
            decoded.addcmul_(flags.unsqueeze(-1).float(), centres.unsqueeze(1))
        out.copy_(decoded)
        return out
    _check_grouped_out(out, "out")
    _core().decode_groups(
        _np_view(_grouped(codes)),
        _np_view(_grouped(scales).view(torch.int16)),
        _np_view(out),
        bits=bits,
        seed=seed,
        dtype=_DTYPE_NAMES[out.dtype],
        threads=threads,
        centres=None if centres is None else _np_view(centres.contiguous()),
    )
    return out


def _attention_args(
    codes: object, scales: object, counts: object, g: int, n: int, d: int, bits: int, device: torch.device
) -> torch.Tensor:
    """Validate the coded operand of :func:`attention_scores` / :func:`attention_values`;
    returns ``counts`` as int64 on the CPU."""
    _check_group_tensor(codes, "codes", torch.uint8, (g, n, code_bytes(d, bits)), "(G, N, head_dim*bits/8)")
    _check_group_tensor(scales, "scales", torch.float16, (g, n), "(G, N)")
    if not isinstance(counts, torch.Tensor) or counts.dim() != 1 or counts.shape[0] != g or (
        counts.dtype.is_floating_point or counts.dtype.is_complex or counts.dtype == torch.bool
    ):
        raise ShapeError(
            f"counts must be a 1-D integer tensor of {g} token counts (one per group), got "
            f"{getattr(counts, 'dtype', type(counts).__name__)} {tuple(getattr(counts, 'shape', ()))}"
        )
    if not codes.device == scales.device == device:
        raise DeviceError(f"codes, scales and the queries/weights must be on one device, got "
                          f"{codes.device}, {scales.device} and {device}")
    counts = counts.to("cpu", torch.int64)
    if g and (int(counts.min()) < 0 or int(counts.max()) > n):
        raise InvalidArgumentError(f"counts must be in [0, {n}] (the tokens of each group), got {counts.tolist()}")
    return counts


def _check_f32_3d(t: object, name: str, layout: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.dtype != torch.float32:
        raise ShapeError(
            f"{name} must be a 3-D {layout} float32 tensor, got "
            f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}"
        )


def _reference_decoded(codes, scales, counts, bits, seed, d) -> torch.Tensor:
    """The groups decoded to float32 ``(G, N, d)``, slots past each count zero (reference)."""
    g, n = scales.shape
    out = torch.zeros(g, n, d, dtype=torch.float32, device=codes.device)
    if g and n:
        decode_groups(codes, scales, out, bits=bits, seed=seed, backend="reference")
    valid = torch.arange(n, device=codes.device)[None, :] < counts.to(codes.device)[:, None]
    return out * valid[..., None]


def attention_scores(
    queries: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    counts: torch.Tensor,
    *,
    bits: int,
    seed: int,
    threads: int | None = None,
    backend: Backend | None = None,
) -> torch.Tensor:
    """Dot products of queries with coded head-vectors, without decoding them.

    ``out[i, t, j] = <queries[i, j], x̂[i, t]>`` where ``x̂[i, t]`` is what :func:`decode` gives
    for ``codes[i, t]`` / ``scales[i, t]``, for the first ``counts[i]`` tokens of group ``i``;
    ``-inf`` for the slots after them. On the CPU the Rust core rotates each query once
    (``<q, R⁻¹y> = <Rq, y>``) and works on the lattice points directly: no decoded rows, no
    per-token rotation. The result equals decoding then multiplying up to float32 rounding.
    A NaN scale gives NaN scores.

    Args:
        queries: ``(G, q, head_dim)`` float32: the ``q`` queries of each group (e.g. the query
            heads sharing one KV head, already multiplied by the softmax scale).
        codes, scales: ``(G, N, head_dim*bits/8)`` uint8 and ``(G, N)`` float16; each group
            contiguous, the first axis may have any stride (slices of a cache's buffers).
        counts: ``(G,)`` integer tensor, the tokens of each group (``0 <= counts <= N``).
        bits, seed: the codes' parameters.
        backend: as for :func:`decode` (``"reference"``: decode with the oracle, then matmul).

    Returns:
        ``(G, N, q)`` float32, token-major.
    """
    bits, seed, threads = check_bits(bits), check_seed(seed), check_threads(threads)
    _check_f32_3d(queries, "queries", "(G, q, head_dim)")
    g, nq, d = queries.shape
    d = check_head_dim(d, "head_dim (queries.shape[-1])")
    n = codes.shape[1] if isinstance(codes, torch.Tensor) and codes.dim() == 3 else -1
    counts = _attention_args(codes, scales, counts, g, n, d, bits, queries.device)
    if _choose_backend(queries.device, backend) != "core":
        keys = _reference_decoded(codes, scales, counts, bits, seed, d)
        out = torch.bmm(keys, queries.transpose(1, 2))
        valid = torch.arange(n, device=out.device)[None, :] < counts.to(out.device)[:, None]
        return out.masked_fill(~valid[..., None], float("-inf"))
    out = torch.empty(g, n, nq, dtype=torch.float32)
    if g and n and nq:
        _core().attention_scores(
            _np_view(queries.contiguous()),
            _np_view(_grouped(codes)),
            _np_view(_grouped(scales).view(torch.int16)),
            counts.numpy(),
            _np_view(out),
            bits=bits,
            seed=seed,
            threads=threads,
        )
    return out


def attention_values(
    codes: torch.Tensor,
    scales: torch.Tensor,
    weights: torch.Tensor,
    counts: torch.Tensor,
    *,
    bits: int,
    seed: int,
    threads: int | None = None,
    backend: Backend | None = None,
) -> torch.Tensor:
    """Weighted sums of coded head-vectors, without decoding them.

    ``out[i, j] = Σ_{t < counts[i]} weights[i, t, j] · x̂[i, t]`` (``x̂`` as in
    :func:`attention_scores`). On the CPU the Rust core sums the lattice points in the rotated
    domain and rotates each sum back once. Slots past a group's count are not read. A NaN
    scale poisons the sums it takes part in, as its decoded NaN row would.

    Args:
        codes, scales, counts, bits, seed, backend: as for :func:`attention_scores`.
        weights: ``(G, N, q)`` float32, token-major (the attention weights of ``q`` queries).

    Returns:
        ``(G, q, head_dim)`` float32.
    """
    bits, seed, threads = check_bits(bits), check_seed(seed), check_threads(threads)
    _check_f32_3d(weights, "weights", "(G, N, q)")
    g, n, nq = weights.shape
    if not isinstance(codes, torch.Tensor) or codes.dim() != 3 or codes.shape[-1] * 8 % bits:
        raise ShapeError(
            f"codes must be a 3-D (G, N, head_dim*bits/8) uint8 tensor, got "
            f"{getattr(codes, 'dtype', type(codes).__name__)} {tuple(getattr(codes, 'shape', ()))}"
        )
    d = check_head_dim(codes.shape[-1] * 8 // bits, "head_dim (codes.shape[-1]*8/bits)")
    counts = _attention_args(codes, scales, counts, g, n, d, bits, weights.device)
    if _choose_backend(weights.device, backend) != "core":
        values = _reference_decoded(codes, scales, counts, bits, seed, d)
        valid = torch.arange(n, device=values.device)[None, :] < counts.to(values.device)[:, None]
        return torch.bmm(weights.masked_fill(~valid[..., None], 0.0).transpose(1, 2), values)
    out = torch.zeros(g, nq, d, dtype=torch.float32)
    if g and nq:
        _core().attention_values(
            _np_view(_grouped(codes)),
            _np_view(_grouped(scales).view(torch.int16)),
            _np_view(weights.contiguous()),
            counts.numpy(),
            _np_view(out),
            bits=bits,
            seed=seed,
            threads=threads,
        )
    return out


# --------------------------------------------------------------------------------------------
# high level: QuantizedTensor


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A tensor of head-vectors held as packed E8 codes plus one fp16 scale per head-vector.

    Attributes:
        codes: ``(..., head_dim*bits/8)`` uint8, packed LSB-first (``docs/codec.md`` §8).
        scales: ``(...)`` float16, one per head-vector.
        shape: the original tensor's shape ``(..., head_dim)``.
        dtype: the original dtype (what :func:`dequantize` returns).
        bits: bits per element of the codes.
        seed: the rotation seed.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    bits: int
    seed: int

    #: Bytes of the fixed descriptor (seed u64, bits u8, dtype u8, ndim u8, codec version u8,
    #: 4 reserved) that accompanies the arrays; plus 8 bytes per dimension of ``shape``.
    META_FIXED_BYTES = 16

    @property
    def head_dim(self) -> int:
        """Elements per head-vector (the last dimension of ``shape``)."""
        return int(self.shape[-1])

    @property
    def device(self) -> torch.device:
        """Where the codes live."""
        return self.codes.device

    @property
    def meta_nbytes(self) -> int:
        """Bytes of metadata: the fixed descriptor plus 8 bytes per dimension."""
        return self.META_FIXED_BYTES + 8 * len(self.shape)

    @property
    def nbytes(self) -> int:
        """Every byte the object holds: codes + scales + metadata."""
        return (
            self.codes.numel() * self.codes.element_size()
            + self.scales.numel() * self.scales.element_size()
            + self.meta_nbytes
        )

    @property
    def bits_per_element(self) -> float:
        """Stored bits per original element, scales and metadata included."""
        n = max(1, int(np.prod(self.shape)))
        return 8.0 * self.nbytes / n

    def dequantize(self, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """Decode to a tensor of ``shape`` and ``dtype`` (see :func:`dequantize`)."""
        return dequantize(self, out=out)

    def __repr__(self) -> str:
        return (
            f"QuantizedTensor(shape={tuple(self.shape)}, dtype={self.dtype}, bits={self.bits}, "
            f"seed={self.seed}, nbytes={self.nbytes}, device={self.device})"
        )


def quantize(
    x: torch.Tensor,
    bits: int = 3,
    *,
    seed: int = 0,
    threads: int | None = None,
    backend: Backend | None = None,
    candidates: int | None = None,
) -> QuantizedTensor:
    """Quantize ``x`` (``(..., head_dim)`` float16 | bfloat16 | float32) to E8 codes.

    ``head_dim`` must be a multiple of 8 in [8, 1024]; ``bits`` in 1..8 (2, 3, 4 tuned).
    Empty and non-contiguous tensors are accepted. See the module docstring for NaN/Inf.

    ``candidates`` is how many of the spec's three clipping factors the encoder tries, keeping
    the one with the smallest error (1, 2 or 3; an encoder setting, not part of the format:
    :func:`dequantize` reads any of them the same way). The default (``None``,
    :func:`default_candidates`) is 1 up to 4 bits, which meets the codec's SQNR targets at its
    encode speed: iid Gaussian, head_dim 128, 10.03 / 15.64 / 21.05 dB at 2 / 3 / 4 bits.
    ``candidates=3`` gains 0.06 / 0.15 / 0.44 dB there and encodes about 2.4× slower on the CPU
    (``benches/codec.py`` prints both); the KV cache uses it
    (:data:`nexusquant.cache.layer.CODEC_CANDIDATES`). Above 4 bits the default is 3: one
    would lose 0.7 / 1.3 / 2.4 / 2.7 dB at 5 / 6 / 7 / 8 bits. No vector is coded worse with
    more candidates, since the three include the first.
    """
    codes, scales = encode(x, bits, seed, threads=threads, backend=backend, candidates=candidates)
    return QuantizedTensor(
        codes=codes, scales=scales, shape=x.shape, dtype=x.dtype, bits=int(bits), seed=int(seed)
    )


def dequantize(
    q: QuantizedTensor,
    *,
    out: torch.Tensor | None = None,
    threads: int | None = None,
    backend: Backend | None = None,
) -> torch.Tensor:
    """Decode a :class:`QuantizedTensor` to a tensor of its original shape and dtype."""
    if not isinstance(q, QuantizedTensor):
        raise InvalidArgumentError(f"q must be a QuantizedTensor, got {type(q).__name__}")
    return decode(
        q.codes,
        q.scales,
        bits=q.bits,
        seed=q.seed,
        head_dim=q.head_dim,
        dtype=q.dtype,
        out=out,
        threads=threads,
        backend=backend,
    )


__all__ = [
    "CODEC_VERSION",
    "QuantizedTensor",
    "quantize",
    "dequantize",
    "encode",
    "decode",
    "encode_groups",
    "decode_groups",
    "scale_magnitudes",
    "attention_scores",
    "attention_values",
    "code_bytes",
    "check_bits",
    "check_head_dim",
    "check_dtype",
    "check_seed",
]
