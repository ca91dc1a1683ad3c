"""Decode attention over a packed layer on the CPU, without materialising the coded K/V.

The dequantize path decodes every coded key and value of a layer into ``(B, H, T, d)`` tensors
of the model dtype on every decode step, and SDPA reads them back: per layer and step that is a
rotation per token and ``2·T·d`` values written and read. Here the coded segment is handled by
the Rust core straight from the codes (:func:`nexusquant.codec.attention_scores` /
:func:`~nexusquant.codec.attention_values`: one rotation per query, lattice points summed in the
rotated domain), and the few raw tokens (sinks and window) by torch; one softmax spans both.

The cache hands a layer over this way when the model's attention is nexusquant's
(``nexusquant.gpu.register_attention()``, ``attn_implementation="nexusquant"``); on the CPU
:func:`nexusquant.gpu.nexusquant_attention` then calls :func:`cpu_decode_attention` for every
single-token step.
"""

from __future__ import annotations

import torch

from .. import codec
from ..gpu.attention import PackedKV, check_query


def cpu_decode_attention(
    query: torch.Tensor,
    view: PackedKV,
    scaling: float,
    *,
    coded_mask: torch.Tensor | None = None,
    raw_mask: torch.Tensor | None = None,
    threads: int | None = None,
) -> torch.Tensor:
    """softmax(scaling · q Kᵀ) V for one new query token per row over a packed layer.

    Args:
        query: ``(B, Hq, d)`` CPU tensor; Hq a multiple of the KV heads (GQA/MQA): query head
            ``h`` reads KV head ``h // (Hq / Hkv)``.
        view: the layer's :class:`~nexusquant.gpu.attention.PackedKV` (centred keys and values
            included).
        scaling: the softmax scale.
        coded_mask, raw_mask: optional ``(B, Tc)`` / ``(B, Tr)`` bool or uint8, False/0 = the
            slot is masked out (as :func:`nexusquant.gpu.attention.segment_masks` gives them).
        threads: codec threads (None: all).

    Returns:
        ``(B, Hq, d)`` of the query dtype, computed in float32. A row without any valid token
        gives zeros; a NaN anywhere in what a row attends to gives NaN, as SDPA would.
    """
    hq = check_query(query, view)
    b, hkv, tr, d = view.raw_k.shape
    g, groups, cap = hq // hkv, b * hkv, view.coded_tokens
    counts = view.counts().cpu()
    n = int(counts[:, 1].max()) if b else 0
    per_group = counts[:, 1].repeat_interleave(hkv)
    q = query.float().reshape(groups, g, d) * scaling

    # Scores of the coded slots [0, n) (-inf past each row's count), then of the raw slots.
    k_scales = view.k_scales.view(groups, cap)[:, :n]
    centred = view.centred_keys()
    if centred is not None:
        k_scales = codec.scale_magnitudes(k_scales)
    coded = codec.attention_scores(
        q, view.k_codes.view(groups, cap, -1)[:, :n], k_scales, per_group,
        bits=view.k_bits, seed=view.k_seed, threads=threads,
    )
    if centred is not None:
        bias = torch.bmm(q, view.k_means.float().reshape(groups, d, 1)).transpose(1, 2)
        coded.addcmul_(centred.reshape(groups, cap)[:, :n, None].float(), bias)
    raw = torch.bmm(view.raw_k.float().reshape(groups, tr, d), q.transpose(1, 2))
    slots = torch.arange(tr)
    sinks, window = counts[:, :1], counts[:, 2:]
    raw_ok = (slots < sinks) | ((slots >= view.sink_slots) & (slots < view.sink_slots + window))
    if raw_mask is not None:
        raw_ok = raw_ok & raw_mask.cpu().bool()
    raw = raw.masked_fill(~raw_ok.repeat_interleave(hkv, 0).unsqueeze(-1), float("-inf"))
    if coded_mask is not None:
        keep = coded_mask.cpu().bool()[:, :n].repeat_interleave(hkv, 0)
        coded = coded.masked_fill(~keep.unsqueeze(-1), float("-inf"))

    # Softmax along the last, contiguous axis (several times faster than along the middle one);
    # a query whose every slot is masked gets zeros instead of softmax's NaN.
    scores = torch.cat((coded, raw), dim=1).transpose(1, 2).contiguous()
    weights = torch.softmax(scores, dim=-1)
    weights.masked_fill_(torch.isneginf(scores).all(dim=-1, keepdim=True), 0.0)

    # Value sums; a centred value adds its weight times the row's value centre.
    v_scales = view.v_scales.view(groups, cap)[:, :n]
    v_centred = view.centred_values()
    if v_centred is not None:
        v_scales = codec.scale_magnitudes(v_scales)
    coded_weights = weights[:, :, :n]
    out = codec.attention_values(
        view.v_codes.view(groups, cap, -1)[:, :n], v_scales,
        coded_weights.transpose(1, 2).contiguous(), per_group,
        bits=view.v_bits, seed=view.v_seed, threads=threads,
    )
    if v_centred is not None:
        share = torch.bmm(coded_weights, v_centred.reshape(groups, cap)[:, :n, None].float())
        out.baddbmm_(share, view.v_means.float().reshape(groups, 1, d))
    out.baddbmm_(weights[:, :, n:], view.raw_v.float().reshape(groups, tr, d))
    return out.reshape(b, hq, d).to(query.dtype)


__all__ = ["cpu_decode_attention"]
