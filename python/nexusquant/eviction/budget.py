"""Token budgets: how many tokens a row may keep so that the cache meets a memory ratio.

The ratio is measured against an fp16 ``DynamicCache`` holding the whole context, so a row of
``n`` tokens may hold ``n * baseline_token_bytes / target_ratio`` bytes. Of what it holds, some
bytes do not depend on how many tokens are kept (the sink buffer, the exact recent window,
bookkeeping) and every other kept token is coded at a fixed price (codes + fp16 scales, and the
decode-time score when that is enabled). :class:`RowCost` states those three numbers and
:meth:`RowCost.kept_tokens` solves for the count; :func:`solve_budget` is the per-head form
that ``nexusquant.memory`` uses for its tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import codec
from ..errors import InvalidArgumentError

#: Bytes per element of the reference (uncompressed) cache the ratio is measured against.
FP16_BYTES = 2
#: Bytes of the fp16 scale stored with every coded head-vector.
SCALE_BYTES = 2


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_ratio(name: str, value: object) -> float:
    """``value`` as a float > 1, or InvalidArgumentError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 1
    ):
        raise InvalidArgumentError(f"{name} must be a finite number > 1, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class RowCost:
    """Bytes one row of a cache holds, as a function of the tokens it keeps.

    Attributes:
        fixed_tokens: kept tokens whose bytes are in ``fixed_bytes`` (sinks, exact window).
        fixed_bytes: bytes that do not depend on the coded-token count.
        coded_token_bytes: bytes of one more kept coded token (all layers and heads).
        baseline_token_bytes: bytes of one token of context in the fp16 reference cache.
    """

    fixed_tokens: int
    fixed_bytes: int
    coded_token_bytes: int
    baseline_token_bytes: int

    def held_bytes(self, kept: int) -> int:
        """Bytes held when ``kept`` tokens (>= ``fixed_tokens``) are kept."""
        return self.fixed_bytes + (kept - self.fixed_tokens) * self.coded_token_bytes

    def kept_tokens(self, context_tokens: int, target_ratio: float) -> int:
        """Most tokens a row of ``context_tokens`` may keep and still be ``target_ratio`` times
        smaller than the fp16 reference (at least ``fixed_tokens``, at most ``context_tokens``;
        when even the fixed part is too big the target is out of reach and ``fixed_tokens`` is
        returned)."""
        allowed = context_tokens * self.baseline_token_bytes / target_ratio - self.fixed_bytes
        coded = max(0, math.floor(allowed / self.coded_token_bytes))
        return min(context_tokens, self.fixed_tokens + coded)


def solve_budget(
    seq_len: int,
    head_dim: int,
    key_bits: int,
    value_bits: int,
    target_ratio: float,
    sink_tokens: int,
    window_tokens: int,
    *,
    value_head_dim: int | None = None,
    dtype_bytes: int = FP16_BYTES,
) -> int:
    """Tokens kept per layer and KV head (sinks and window included) for ``seq_len`` tokens of
    context to be ``target_ratio`` times smaller than an fp16 cache.

    Model: the first ``sink_tokens`` and the last ``window_tokens`` tokens are held exactly at
    ``dtype_bytes`` per element; every other kept token costs ``head_dim * key_bits / 8 +
    value_head_dim * value_bits / 8`` bytes of codes plus two 2-byte scales. The reference holds
    ``seq_len * (head_dim + value_head_dim) * 2`` bytes. Bookkeeping (a few bytes per row and
    layer) is left out here; the cache's own solve (:class:`RowCost` from the real tensors)
    counts it.

    Returns:
        An int in ``[min(seq_len, sink_tokens + window_tokens), seq_len]``; the lower end when
        the exact tokens alone exceed the target (the target is then out of reach).
    """
    seq_len = _check_int("seq_len", seq_len, 0)
    d = codec.check_head_dim(head_dim)
    dv = d if value_head_dim is None else codec.check_head_dim(value_head_dim, "value_head_dim")
    kb = codec.check_bits(key_bits, "key_bits")
    vb = codec.check_bits(value_bits, "value_bits")
    ratio = check_ratio("target_ratio", target_ratio)
    sinks = _check_int("sink_tokens", sink_tokens, 0)
    window = _check_int("window_tokens", window_tokens, 0)
    if dtype_bytes not in (1, 2, 4) or isinstance(dtype_bytes, bool):
        raise InvalidArgumentError(f"dtype_bytes must be one of [1, 2, 4], got {dtype_bytes!r}")
    fixed = min(seq_len, sinks + window)
    cost = RowCost(
        fixed_tokens=fixed,
        fixed_bytes=fixed * (d + dv) * dtype_bytes,
        coded_token_bytes=codec.code_bytes(d, kb) + codec.code_bytes(dv, vb) + 2 * SCALE_BYTES,
        baseline_token_bytes=(d + dv) * FP16_BYTES,
    )
    return cost.kept_tokens(seq_len, ratio)


__all__ = ["RowCost", "solve_budget", "check_ratio", "FP16_BYTES", "SCALE_BYTES"]
