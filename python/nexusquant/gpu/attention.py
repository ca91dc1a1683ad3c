"""Fused decode attention over packed K/V, and its transformers attention function.

The cache hands its layer's state over as a :class:`PackedKV`; :func:`fused_decode_attention`
computes one new query token's attention over it without materialising the coded keys and
values (``docs/gpu.md``). :func:`register_attention` registers ``"nexusquant"`` with transformers'
``AttentionInterface``: single-token decode steps run the fused kernels, everything else (prefill,
CPU, dropout, masks that do not map onto the cache's segments) runs SDPA on dequantised K/V.

Hand-over from the cache (``docs/gpu.md``): on a decode step ``update()`` builds
``PackedKV.from_layer_view(layer.packed_view())`` and returns its ``raw_k`` / ``raw_v`` (sink slots,
then window slots) with the PackedKV attached to the key tensor by :func:`attach_packed`; the
attention function finds it with :func:`packed_view`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import DeviceError, ShapeError
from . import loader
from .kernels import DTYPE_SUFFIX, AttentionPlan, attention_plan

#: Name of the tensor attribute that carries a PackedKV from the cache's update to attention.
PACKED_ATTR = "nexusquant_packed"
LOG2E = 1.4426950408889634


@dataclass(frozen=True, eq=False)
class PackedKV:
    """One attention layer's cache, as the fused kernel reads it.

    Layout (the cache's, ``nexusquant.cache.layer.PackedLayerView``): row ``r`` holds ``s``
    sink tokens in raw slots ``[0, s)``, ``c`` coded tokens in code slots ``[0, c)`` and ``w``
    window tokens in raw slots ``[sink_slots, sink_slots + w)``, with ``(s, c, w) =
    lengths[r]``. In the sequence they come in that order (sinks, coded, window) and end at
    position ``seq_length``: the rows are right-aligned and the positions before a row's tokens
    are padding. Attention itself is order-free; positions only map transformers' attention mask
    onto the slots (:func:`segment_masks`) and order :meth:`dequantize`.

    Attributes:
        k_codes: ``(B, Hkv, Tc, d*k_bits/8)`` uint8, contiguous: codes of R_k-rotated keys.
        k_scales: ``(B, Hkv, Tc)`` float16.
        v_codes: ``(B, Hkv, Tc, d*v_bits/8)`` uint8. v_scales: ``(B, Hkv, Tc)`` float16.
        k_bits, v_bits: 1..8. k_seed, v_seed: the rotation seeds.
        raw_k, raw_v: ``(B, Hkv, Tr, d)`` model dtype (float16 | bfloat16 | float32),
            contiguous: ``sink_slots`` sink slots, then ``Tr - sink_slots`` window slots.
        sink_slots: raw slots reserved for sinks.
        lengths: ``(B, 3)`` int32 (any device): sink, coded and window tokens per row; None
            when every slot holds a token.
        seq_length: the length the rows are right-aligned to; None: ``Tr + Tc`` (full rows).
        k_means, v_means: ``(B, Hkv, d)`` raw dtype, the rows' key / value centres, or None. A
            key whose scale has its sign bit set is ``decode(code, |scale|) + k_means[b, h]``
            (the cache's centred keys, ``nexusquant.cache.layer``), a value likewise with
            v_means; without them no key (value) is centred.
    """

    k_codes: torch.Tensor
    k_scales: torch.Tensor
    v_codes: torch.Tensor
    v_scales: torch.Tensor
    k_bits: int
    v_bits: int
    k_seed: int
    v_seed: int
    raw_k: torch.Tensor
    raw_v: torch.Tensor
    sink_slots: int = 0
    lengths: torch.Tensor | None = None
    seq_length: int | None = None
    k_means: torch.Tensor | None = None
    v_means: torch.Tensor | None = None

    @classmethod
    def from_layer_view(cls, view: Any) -> PackedKV:
        """Build from the cache's ``NexusQuantLayer.packed_view()`` (a ``PackedLayerView``):
        codes and scales as they are, sinks and window concatenated into the raw tensors."""
        if view.head_dim != view.value_head_dim:
            raise ShapeError(
                f"fused attention needs equal key and value head dims, got {view.head_dim} and "
                f"{view.value_head_dim}"
            )
        return cls(
            k_codes=view.key_codes,
            k_scales=view.key_scales,
            v_codes=view.value_codes,
            v_scales=view.value_scales,
            k_bits=view.key_bits,
            v_bits=view.value_bits,
            k_seed=view.seed,
            v_seed=view.seed,
            raw_k=torch.cat((view.sink_keys, view.window_keys), dim=2),
            raw_v=torch.cat((view.sink_values, view.window_values), dim=2),
            sink_slots=int(view.sink_keys.shape[2]),
            lengths=view.lengths,
            seq_length=int(view.seq_length),
            k_means=view.key_means,
            v_means=view.value_means,
        )

    @property
    def head_dim(self) -> int:
        return int(self.raw_k.shape[-1])

    @property
    def coded_tokens(self) -> int:
        """Tc, the code slots per row."""
        return int(self.k_codes.shape[2])

    @property
    def raw_tokens(self) -> int:
        """Tr, the raw slots per row (sink slots + window slots)."""
        return int(self.raw_k.shape[2])

    @property
    def length(self) -> int:
        """The sequence length L the rows end at."""
        return self.raw_tokens + self.coded_tokens if self.seq_length is None else self.seq_length

    def validate(self) -> None:
        """Raise ShapeError / DeviceError unless every field agrees with the others."""
        if self.raw_k.dim() != 4 or self.raw_k.dtype not in DTYPE_SUFFIX:
            raise ShapeError(
                f"PackedKV.raw_k must be a (B, Hkv, Tr, d) float16, bfloat16 or float32 tensor, "
                f"got {self.raw_k.dtype} {tuple(self.raw_k.shape)}"
            )
        b, hkv, tr, d = self.raw_k.shape
        tc = self.k_codes.shape[2] if self.k_codes.dim() == 4 else -1
        expect = {
            "k_codes": ((b, hkv, tc, d * self.k_bits // 8), torch.uint8),
            "k_scales": ((b, hkv, tc), torch.float16),
            "v_codes": ((b, hkv, tc, d * self.v_bits // 8), torch.uint8),
            "v_scales": ((b, hkv, tc), torch.float16),
            "raw_k": ((b, hkv, tr, d), self.raw_k.dtype),
            "raw_v": ((b, hkv, tr, d), self.raw_k.dtype),
        }
        for name, (shape, dtype) in expect.items():
            t = getattr(self, name)
            if tuple(t.shape) != shape or t.dtype != dtype or not t.is_contiguous():
                raise ShapeError(
                    f"PackedKV.{name} must be a contiguous {dtype} tensor of shape {shape}, got "
                    f"{t.dtype} {tuple(t.shape)}{'' if t.is_contiguous() else ' (strided)'}"
                )
            if t.device != self.raw_k.device:
                raise DeviceError(f"PackedKV.{name} is on {t.device}, raw_k on {self.raw_k.device}")
        if self.lengths is not None and (
            tuple(self.lengths.shape) != (b, 3) or self.lengths.dtype != torch.int32
        ):
            raise ShapeError(
                f"PackedKV.lengths must be a ({b}, 3) int32 tensor, got "
                f"{self.lengths.dtype} {tuple(self.lengths.shape)}"
            )
        if not 0 <= self.sink_slots <= tr:
            raise ShapeError(f"PackedKV.sink_slots must be in [0, {tr}], got {self.sink_slots}")
        for name in ("k_means", "v_means"):
            t = getattr(self, name)
            if t is not None and (tuple(t.shape) != (b, hkv, d) or t.device != self.raw_k.device):
                raise ShapeError(
                    f"PackedKV.{name} must be a ({b}, {hkv}, {d}) tensor on {self.raw_k.device}, got "
                    f"{tuple(t.shape)} on {t.device}"
                )

    def centred_keys(self) -> torch.Tensor | None:
        """``(B, Hkv, Tc)`` bool: which code slots hold a centred key; None when none does."""
        return self._centred(self.k_means, self.k_scales)

    def centred_values(self) -> torch.Tensor | None:
        """``(B, Hkv, Tc)`` bool: which code slots hold a centred value; None when none does."""
        return self._centred(self.v_means, self.v_scales)

    @staticmethod
    def _centred(means: torch.Tensor | None, scales: torch.Tensor) -> torch.Tensor | None:
        if means is None:
            return None
        from ..cache.layer import centred_flags  # noqa: PLC0415 - the cache imports this module

        return centred_flags(scales)

    def counts(self) -> torch.Tensor:
        """``(B, 3)`` int64 on raw_k's device: sink, coded and window tokens per row."""
        b, device = self.raw_k.shape[0], self.raw_k.device
        if self.lengths is None:
            full = [self.sink_slots, self.coded_tokens, self.raw_tokens - self.sink_slots]
            return torch.tensor(full, device=device).expand(b, 3)
        return self.lengths.to(device=device, dtype=torch.int64)

    def slot_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence position of every code slot ``(B, Tc)`` and raw slot ``(B, Tr)``, int64,
        clamped to ``[0, L)`` (slots without a token get some position; they are never read)."""
        counts = self.counts()
        s, c = counts[:, :1], counts[:, 1:2]
        start = self.length - counts.sum(1, keepdim=True)
        device = counts.device
        coded = start + s + torch.arange(self.coded_tokens, device=device)
        slots = torch.arange(self.raw_tokens, device=device)
        raw = torch.where(
            slots < self.sink_slots, start + slots, start + s + c + slots - self.sink_slots
        )
        return coded.clamp(0, self.length - 1), raw.clamp(0, self.length - 1)

    def valid_positions(self) -> torch.Tensor:
        """``(B, L)`` bool: the sequence positions that hold a token (the rest is padding)."""
        n = self.counts().sum(1, keepdim=True)
        return torch.arange(self.length, device=n.device) >= self.length - n

    def dequantize(self, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``(B, Hkv, L, d)`` of the model dtype in sequence order, zeros at
        padding positions (``backend`` as in :func:`nexusquant.codec.decode`)."""
        from ..codec import decode_groups  # noqa: PLC0415 - nexusquant.codec imports this lazily

        d, dtype, big_l, ss = self.head_dim, self.raw_k.dtype, self.length, self.sink_slots
        rows = self.counts().tolist()
        b, hkv, tc = self.raw_k.shape[0], self.raw_k.shape[1], self.coded_tokens

        def full(codes, scales, bits, seed, raw, means):
            # The codec's centred decode: flagged rows get their centre (None: no centres).
            coded = raw.new_empty(b, hkv, tc, d)
            decode_groups(
                codes.reshape(b * hkv, tc, -1), scales.reshape(b * hkv, tc),
                coded.view(b * hkv, tc, d), bits=bits, seed=seed, backend=backend,
                centres=None if means is None else means.float().reshape(b * hkv, d),
            )
            out = raw.new_zeros(raw.shape[0], raw.shape[1], big_l, d)
            for r, (s, c, w) in enumerate(rows):
                out[r, :, big_l - s - c - w :] = torch.cat(
                    (raw[r, :, :s], coded[r, :, :c], raw[r, :, ss : ss + w]), dim=1
                )
            return out

        return (
            full(self.k_codes, self.k_scales, self.k_bits, self.k_seed, self.raw_k, self.k_means),
            full(self.v_codes, self.v_scales, self.v_bits, self.v_seed, self.raw_v, self.v_means),
        )


def check_query(query: torch.Tensor, view: PackedKV) -> int:
    """Validate ``view`` and a decode step's ``query`` ``(B, Hq, d)`` against it (Hq a multiple
    of the KV heads); returns Hq."""
    view.validate()
    b, hkv, _, d = view.raw_k.shape
    if query.dim() != 3 or query.shape[0] != b or query.shape[2] != d:
        raise ShapeError(f"query must be (B={b}, Hq, d={d}), got shape {tuple(query.shape)}")
    hq = query.shape[1]
    if hq % hkv:
        raise ShapeError(f"query heads ({hq}) must be a multiple of the KV heads ({hkv})")
    return hq


def attach_packed(key: torch.Tensor, view: PackedKV) -> torch.Tensor:
    """Attach ``view`` to the key tensor the cache's update returns; returns ``key``."""
    setattr(key, PACKED_ATTR, view)
    return key


def packed_view(key: torch.Tensor) -> PackedKV | None:
    """The PackedKV attached to ``key`` by :func:`attach_packed`, or None."""
    return getattr(key, PACKED_ATTR, None)


def _as_mask(
    mask: torch.Tensor | None, shape: tuple[int, int], name: str, device
) -> torch.Tensor | None:
    if mask is None:
        return None
    if tuple(mask.shape) != shape or mask.dtype not in (torch.bool, torch.uint8):
        raise ShapeError(
            f"{name} must be a bool or uint8 tensor of shape {shape}, got {mask.dtype} {tuple(mask.shape)}"
        )
    if mask.device != device:
        raise DeviceError(f"{name} must be on {device}, got {mask.device}")
    return mask.to(torch.uint8).contiguous()


@dataclass(frozen=True)
class AttentionLaunch:
    """Everything one fused call launches: the plan, both kernels' arguments, the output."""

    plan: AttentionPlan
    partial: dict[str, Any]
    combine: dict[str, Any]
    out: torch.Tensor


def attention_args(
    query: torch.Tensor,
    view: PackedKV,
    scaling: float,
    *,
    sm_count: int,
    coded_mask: torch.Tensor | None = None,
    raw_mask: torch.Tensor | None = None,
) -> AttentionLaunch:
    """Validate the inputs and build the plan, the argument dictionaries and the output."""
    hq = check_query(query, view)
    b, hkv, tr, d = view.raw_k.shape
    tc = view.coded_tokens
    if query.dtype != view.raw_k.dtype:
        raise ShapeError(
            f"query dtype {query.dtype} must match the raw K/V dtype {view.raw_k.dtype}"
        )
    if query.device != view.raw_k.device:
        raise DeviceError(f"query is on {query.device}, the cache on {view.raw_k.device}")
    plan = attention_plan(b, hq, hkv, d, tc, tr, sm_count)
    if plan.partial.grid[1] > 65535 or b > 65535:
        raise ShapeError(f"batch ({b}) and kv_heads x head chunks must be <= 65535")
    device = query.device
    part_o = torch.empty(b, hq, plan.splits, d, dtype=torch.float32, device=device)
    part_ml = torch.empty(b, hq, plan.splits, 2, dtype=torch.float32, device=device)
    out = torch.empty(b, hq, d, dtype=query.dtype, device=device)
    partial = {
        "q": query.contiguous(),
        "k_codes": view.k_codes,
        "k_scales": view.k_scales,
        "v_codes": view.v_codes,
        "v_scales": view.v_scales,
        "lengths": None if view.lengths is None else view.lengths.to(device).contiguous(),
        "coded_mask": _as_mask(coded_mask, (b, tc), "coded_mask", device),
        "raw_k": view.raw_k,
        "raw_v": view.raw_v,
        "raw_mask": _as_mask(raw_mask, (b, tr), "raw_mask", device),
        "k_bias": _key_bias(query, view, float(scaling) * LOG2E),
        "v_centre": _value_centre(view),
        "part_o": part_o,
        "part_ml": part_ml,
        "hq": hq,
        "hkv": hkv,
        "d": d,
        "tc": tc,
        "tr": tr,
        "sink_slots": view.sink_slots,
        "k_bits": view.k_bits,
        "v_bits": view.v_bits,
        "splits": plan.splits,
        "coded_splits": plan.coded_splits,
        "coded_chunk": plan.coded_chunk,
        "raw_chunk": plan.raw_chunk,
        "k_seed": view.k_seed,
        "qscale": float(scaling) * LOG2E,
    }
    combine = {
        "part_o": part_o,
        "part_ml": part_ml,
        "out": out,
        "d": d,
        "splits": plan.splits,
        "coded_splits": plan.coded_splits,
        "v_seed": view.v_seed,
    }
    return AttentionLaunch(plan, partial, combine, out)


def _key_bias(query: torch.Tensor, view: PackedKV, qscale: float) -> torch.Tensor | None:
    """``(B, Hq)`` float32 ``qscale · (q · centre)`` of each query head's KV head, when the
    layer has key centres (None otherwise). The kernel adds it only to the keys whose scale
    carries the sign bit, so it is passed whether or not any key is centred: asking would read
    every scale and wait for the device on each decode step."""
    if view.k_means is None:
        return None
    b, hq, d = query.shape
    means = view.k_means.float().repeat_interleave(hq // view.raw_k.shape[1], dim=1)
    return ((query.float() * means).sum(-1) * qscale).contiguous()


#: R_v(value centres) by id of the centres tensor: (weak reference, version, seed, result).
_ROTATED_CENTRES: dict[int, tuple[weakref.ref, int, int, torch.Tensor]] = {}
_ROTATED_CENTRES_MAX = 256


def _value_centre(view: PackedKV) -> torch.Tensor | None:
    """``(B, Hkv, d)`` float32 ``R_v(value centre)`` when the layer has value centres (added
    only to the values flagged centred, as for :func:`_key_bias`).

    The rotation is some 25 small tensor operations, about 1 ms of host time per call on a GPU,
    while a layer's centres change only when a row sets them: the result is kept per centres
    tensor and reused while the tensor is the same object at the same version (any in-place
    write bumps it) and the seed is the same."""
    means = view.v_means
    if means is None:
        return None
    key = id(means)
    hit = _ROTATED_CENTRES.get(key)
    if (
        hit is not None
        and hit[0]() is means
        and hit[1] == means._version
        and hit[2] == view.v_seed
    ):
        return hit[3]
    from ..reference import rotate  # noqa: PLC0415

    b, hkv, _, d = view.raw_k.shape
    rotated = rotate(means.float().reshape(b * hkv, d), view.v_seed).reshape(b, hkv, d).contiguous()
    if len(_ROTATED_CENTRES) >= _ROTATED_CENTRES_MAX:
        _ROTATED_CENTRES.pop(next(iter(_ROTATED_CENTRES)), None)

    def forget(ref: weakref.ref, key: int = key) -> None:  # the centres tensor was freed
        entry = _ROTATED_CENTRES.get(key)
        if entry is not None and entry[0] is ref:
            del _ROTATED_CENTRES[key]

    _ROTATED_CENTRES[key] = (weakref.ref(means, forget), means._version, view.v_seed, rotated)
    return rotated


def fused_decode_attention(
    query: torch.Tensor,
    view: PackedKV,
    scaling: float,
    *,
    coded_mask: torch.Tensor | None = None,
    raw_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(scaling · q Kᵀ) V for one new query token over a packed layer.

    Args:
        query: ``(B, Hq, d)`` CUDA tensor of the raw K/V dtype; Hq a multiple of Hkv (GQA/MQA).
        view: the layer's :class:`PackedKV`.
        scaling: the softmax scale (usually ``d ** -0.5``).
        coded_mask: optional ``(B, Tc)`` bool/uint8, False/0 = token masked out.
        raw_mask: optional ``(B, Tr)`` bool/uint8.

    Returns:
        ``(B, Hq, d)`` of the query dtype. A row without any valid token gives zeros.
    """
    if query.device.type != "cuda":
        raise DeviceError(
            f"fused_decode_attention needs CUDA tensors, got a tensor on {query.device}"
        )
    sm_count = torch.cuda.get_device_properties(query.device).multi_processor_count
    call = attention_args(
        query, view, scaling, sm_count=sm_count, coded_mask=coded_mask, raw_mask=raw_mask
    )
    if call.plan.splits == 0:
        return call.out.zero_()
    loader.launch(
        "attn_partial",
        query.dtype,
        call.plan.partial,
        call.partial,
        query.device,
        bpl=call.plan.bpl,
    )
    loader.launch("attn_combine", query.dtype, call.plan.combine, call.combine, query.device)
    return call.out


# --------------------------------------------------------------------------------------------
# transformers integration


def segment_masks(
    view: PackedKV, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None] | None:
    """Map a decode step's boolean mask ``(B|1, 1, 1, L)`` onto the code and raw slots.

    Returns ``(coded_mask, raw_mask)`` (both None without a mask), or None when the mask is not
    a boolean mask over exactly ``L = view.length`` positions (the caller then falls back).
    """
    if attention_mask is None:
        return None, None
    b = view.raw_k.shape[0]
    if (
        attention_mask.dtype != torch.bool
        or attention_mask.dim() != 4
        or attention_mask.shape[1:3] != (1, 1)
        or attention_mask.shape[3] != view.length
        or attention_mask.shape[0] not in (1, b)
    ):
        return None
    keep = attention_mask[:, 0, 0, :].expand(b, view.length)
    coded, raw = view.slot_positions()
    return keep.gather(1, coded), keep.gather(1, raw)


def _fallback_mask(
    view: PackedKV, attention_mask: torch.Tensor | None, q_len: int
) -> torch.Tensor | None:
    """The mask over :meth:`PackedKV.dequantize`'s sequence: transformers' mask (or the causal
    one) with the padding positions of short rows masked."""
    valid = view.valid_positions()
    if bool(valid.all()):
        return attention_mask
    total = view.length
    if attention_mask is None:
        i = torch.arange(q_len, device=valid.device)[:, None]
        j = torch.arange(total, device=valid.device)[None, :]
        attention_mask = (j <= total - q_len + i)[None, None]
    if attention_mask.dtype == torch.bool:
        return attention_mask & valid[:, None, None, :]
    return attention_mask.masked_fill(
        ~valid[:, None, None, :], torch.finfo(attention_mask.dtype).min
    )


def nexusquant_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function (``query`` (B, Hq, q_len, d) -> (B, q_len, Hq, d)).

    Without a PackedKV on ``key`` it is SDPA. With one, for a single query token (no dropout,
    softcap, position bias or attention sinks; a mask that maps onto the segments): on the CPU,
    :func:`nexusquant.cache.attention_cpu.cpu_decode_attention` (scores and value sums straight
    from the codes); on CUDA the fused kernels. Otherwise SDPA on :meth:`PackedKV.dequantize`.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: PLC0415

    view = packed_view(key)
    if view is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    plain = (
        query.shape[2] == 1
        and dropout == 0.0
        and kwargs.get("softcap") is None
        and kwargs.get("position_bias") is None
        and kwargs.get("s_aux") is None
    )
    masks = segment_masks(view, attention_mask) if plain else None
    if masks is not None and query.device.type == "cpu":
        from ..cache import layer as cache_layer  # noqa: PLC0415 - cache imports gpu
        from ..cache.attention_cpu import cpu_decode_attention  # noqa: PLC0415

        out = cpu_decode_attention(
            query[:, :, 0, :], view, scale, coded_mask=masks[0], raw_mask=masks[1],
            threads=cache_layer.CODEC_THREADS,
        )
        return out.unsqueeze(1), None
    if masks is not None and query.is_cuda:
        out = fused_decode_attention(
            query[:, :, 0, :], view, scale, coded_mask=masks[0], raw_mask=masks[1]
        )
        return out.unsqueeze(1), None
    keys, values = view.dequantize()
    mask = _fallback_mask(view, attention_mask, query.shape[2])
    return sdpa_attention_forward(
        module, query, keys, values, mask, dropout=dropout, scaling=scale, **kwargs
    )


def register_attention(name: str = "nexusquant") -> str:
    """Register :func:`nexusquant_attention` (and SDPA's mask builder) under ``name`` with
    transformers; load models with ``attn_implementation=name``. Returns ``name``."""
    from transformers import AttentionInterface  # noqa: PLC0415 - transformers is optional
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask  # noqa: PLC0415

    AttentionInterface.register(name, nexusquant_attention)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


__all__ = [
    "PackedKV",
    "PACKED_ATTR",
    "attach_packed",
    "packed_view",
    "attention_args",
    "fused_decode_attention",
    "segment_masks",
    "nexusquant_attention",
    "register_attention",
]
