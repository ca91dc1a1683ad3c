"""GPU encode and decode of head-vectors (the CUDA half of ``nexusquant.codec``).

:func:`encode_args` / :func:`decode_args` build the kernels' argument dictionaries (validated
against the kernel table); :func:`encode` / :func:`decode` launch them. The host emulation in
``tests/cuda_host`` runs the same dictionaries through the CPU build of the kernels.
"""

from __future__ import annotations

import torch

from ..codec import check_bits, check_candidates, check_head_dim, check_seed
from ..errors import DeviceError, ShapeError, UnsupportedDtypeError
from . import loader
from .kernels import DTYPE_SUFFIX, codec_launch


def _check_float(t: torch.Tensor, name: str) -> None:
    if t.dtype not in DTYPE_SUFFIX:
        raise UnsupportedDtypeError(
            f"{name} must be one of [torch.float16, torch.bfloat16, torch.float32], got {t.dtype}"
        )


def _check_rows(codes: torch.Tensor, scales: torch.Tensor, n: int, d: int, bits: int) -> None:
    check_head_dim(d)
    check_bits(bits)
    cb = d * bits // 8
    if codes.dtype != torch.uint8 or tuple(codes.shape) != (n, cb) or not codes.is_contiguous():
        raise ShapeError(
            f"codes must be a contiguous uint8 tensor of shape {(n, cb)}, got {codes.dtype} "
            f"{tuple(codes.shape)}"
        )
    if scales.dtype != torch.float16 or tuple(scales.shape) != (n,) or not scales.is_contiguous():
        raise ShapeError(
            f"scales must be a contiguous float16 tensor of shape {(n,)}, got {scales.dtype} "
            f"{tuple(scales.shape)}"
        )


def _check_device(*tensors: torch.Tensor) -> torch.device:
    device = tensors[0].device
    for t in tensors:
        if t.device != device:
            raise DeviceError(f"all tensors must be on one device, got {t.device} and {device}")
    return device


def encode_args(
    x2: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, bits: int, seed: int, candidates: int | None = None
) -> dict:
    """Arguments of ``nq_encode_*``: x2 ``(N, d)`` contiguous fp16|bf16|fp32, codes
    ``(N, d*bits/8)`` uint8, scales ``(N,)`` float16, ``candidates`` 1..3."""
    _check_float(x2, "x2.dtype")
    if x2.dim() != 2 or not x2.is_contiguous():
        raise ShapeError(f"x2 must be a contiguous (N, d) tensor, got shape {tuple(x2.shape)}")
    n, d = x2.shape
    _check_rows(codes, scales, n, d, bits)
    _check_device(x2, codes, scales)
    seed = check_seed(seed)
    candidates = check_candidates(candidates, bits)
    return {
        "x": x2,
        "codes": codes,
        "scales": scales,
        "n": n,
        "d": d,
        "bits": bits,
        "seed": seed,
        "candidates": candidates,
    }


def decode_args(
    codes: torch.Tensor, scales: torch.Tensor, out: torch.Tensor, bits: int, seed: int
) -> dict:
    """Arguments of ``nq_decode_*``: out ``(N, d)`` contiguous of the output dtype."""
    _check_float(out, "out.dtype")
    if out.dim() != 2 or not out.is_contiguous():
        raise ShapeError(f"out must be a contiguous (N, d) tensor, got shape {tuple(out.shape)}")
    n, d = out.shape
    _check_rows(codes, scales, n, d, bits)
    _check_device(codes, scales, out)
    seed = check_seed(seed)
    return {
        "codes": codes,
        "scales": scales,
        "out": out,
        "n": n,
        "d": d,
        "bits": bits,
        "seed": seed,
    }


def _require_cuda(t: torch.Tensor) -> None:
    if t.device.type != "cuda":
        raise DeviceError(f"nexusquant.gpu needs CUDA tensors, got a tensor on {t.device}")


def encode(
    x2: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, *, bits: int, seed: int, candidates: int | None = None
) -> None:
    """Encode ``x2`` (N, d) into ``codes`` and ``scales`` in place (docs/codec.md §6).

    Args:
        x2: ``(N, d)`` contiguous float16 | bfloat16 | float32 CUDA tensor, d a multiple of 8 in
            [8, 1024].
        codes: ``(N, d*bits/8)`` uint8, written.
        scales: ``(N,)`` float16, written.
        bits: 1..8. seed: rotation seed in [0, 2^64).
        candidates: clipping factors the encoder tries, 1..3 (see :func:`nexusquant.quantize`).
    """
    _require_cuda(x2)
    values = encode_args(x2, codes, scales, bits, seed, candidates)
    if values["n"]:
        config = codec_launch("encode", values["n"], values["d"])
        loader.launch("encode", x2.dtype, config, values, x2.device)


def decode(
    codes: torch.Tensor, scales: torch.Tensor, out: torch.Tensor, *, bits: int, seed: int
) -> None:
    """Decode ``codes`` (N, d*bits/8) uint8 and ``scales`` (N,) float16 into ``out`` (N, d) of
    float16 | bfloat16 | float32, in place (docs/codec.md §7)."""
    _require_cuda(codes)
    values = decode_args(codes, scales, out, bits, seed)
    if values["n"]:
        config = codec_launch("decode", values["n"], values["d"])
        loader.launch("decode", out.dtype, config, values, out.device)


__all__ = ["encode", "decode", "encode_args", "decode_args"]
