"""Token importance from real attention (SnapKV-style), computed without a T x T matrix.

Shapes: ``B`` rows, ``Hq`` query heads, ``Hkv`` KV heads (``Hq = G * Hkv``, GQA/MQA), ``Q``
scoring queries, ``T`` key positions, ``d`` head_dim.

* :func:`attention_mass` - softmax attention of ``Q`` queries over all ``T`` keys, summed over
  the queries and averaged over the ``G`` query heads that share a KV head: ``(B, Hkv, T)``.
  Computed one KV head at a time, so the transient is ``B * G * Q * T`` floats.
* :func:`pool_scores` - 1-D average or max pooling along the sequence, restricted to each row's
  real tokens (pad slots neither count nor contribute), so a row scores the same alone and in a
  padded batch.
* :func:`select_tokens` - the tokens one row keeps in every KV head: the same count per head,
  the protected tail always included, ascending.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_allowed(queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """``(1, 1, queries, keys)`` bool: query ``i`` sees keys ``j <= keys - queries + i``
    (the queries are the last ``queries`` positions, lower-right aligned)."""
    q = torch.arange(queries, device=device)[:, None]
    k = torch.arange(keys, device=device)[None, :]
    return (k <= keys - queries + q)[None, None]


def attention_mass(
    query: torch.Tensor, key: torch.Tensor, allowed: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Attention each key receives from the queries.

    Args:
        query: ``(B, Hq, Q, d)`` post-RoPE queries.
        key: ``(B, Hkv, T, d)`` keys as attention sees them (post-RoPE).
        allowed: ``(B or 1, 1, Q, T)`` bool, True where a query may attend to a key.
        scaling: the attention's logit scale (``head_dim ** -0.5`` for most models).

    Returns:
        ``(B, Hkv, T)`` float32: per KV head, the softmax probabilities summed over the ``Q``
        queries and averaged over the query heads of its group. A query that may attend to
        nothing (a pad position) contributes zero.
    """
    batch, q_heads, _, _ = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    group = q_heads // kv_heads
    out = torch.empty(batch, kv_heads, length, dtype=torch.float32, device=key.device)
    blocked = ~allowed
    for h in range(kv_heads):
        q = query[:, h * group : (h + 1) * group].float()
        logits = torch.matmul(q, key[:, h : h + 1].float().transpose(-1, -2)) * scaling
        probs = torch.softmax(logits.masked_fill(blocked, float("-inf")), dim=-1)
        out[:, h] = probs.nan_to_num_(0.0).sum(dim=2).mean(dim=1)
    return out


def pool_scores(scores: torch.Tensor, valid: torch.Tensor, kernel_size: int, mode: str) -> torch.Tensor:
    """Pool ``scores`` along the sequence over real tokens only.

    Args:
        scores: ``(B, H, T)`` float32, non-negative.
        valid: ``(B, T)`` bool, True at each row's real token slots.
        kernel_size: odd window width (1: unchanged).
        mode: ``"avg"`` (mean over the real tokens in the window) or ``"max"``.

    Returns:
        ``(B, H, T)`` float32; pad slots are 0.
    """
    mask = valid[:, None, :].to(scores.dtype)
    scores = scores * mask
    if kernel_size == 1:
        return scores
    batch, heads, length = scores.shape
    flat = scores.reshape(batch * heads, 1, length)
    pad = kernel_size // 2
    if mode == "max":
        pooled = F.max_pool1d(flat, kernel_size, stride=1, padding=pad)
    else:
        total = F.avg_pool1d(flat, kernel_size, stride=1, padding=pad, count_include_pad=True)
        count = F.avg_pool1d(
            mask.expand(batch, heads, length).reshape(batch * heads, 1, length),
            kernel_size, stride=1, padding=pad, count_include_pad=True,
        )
        pooled = total / count.clamp_min(1.0 / kernel_size)
    return pooled.reshape(batch, heads, length) * mask


def select_tokens(scores: torch.Tensor, candidates: int, protected: int, keep: int) -> torch.Tensor:
    """Tokens one row keeps from its evictable span, per KV head.

    Args:
        scores: ``(H, candidates + protected)`` pooled scores of the span's tokens, oldest first;
            the last ``protected`` are always kept.
        candidates: tokens that may be evicted (the first ones).
        protected: tokens at the end that are always kept.
        keep: tokens to keep per head, ``protected <= keep <= candidates + protected``.

    Returns:
        ``(H, keep)`` int64 indices into the span, ascending in every head: the
        ``keep - protected`` best-scoring candidates of each head, then the protected tail.
    """
    heads = scores.shape[0]
    chosen = torch.topk(scores[:, :candidates], keep - protected, dim=1, sorted=False).indices
    tail = torch.arange(candidates, candidates + protected, device=scores.device).expand(heads, -1)
    return torch.cat([chosen.sort(dim=1).values, tail], dim=1)


__all__ = ["causal_allowed", "attention_mass", "pool_scores", "select_tokens"]
