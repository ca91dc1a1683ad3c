"""``EvictionConfig``: the cache layout and eviction settings of one ``nexusquant_evict`` block.

It is built from a quality preset (:mod:`nexusquant.presets`) and explicit overrides. How many
tokens a row keeps is set by exactly one of:

* ``target_ratio`` - the measured fp16-to-compressed memory ratio (what the presets use): the
  count is solved from the cache's real bytes (:class:`~nexusquant.eviction.budget.RowCost`);
* ``evict_ratio`` - the fraction of each row's tokens to evict, in [0, 1);
* ``token_budget`` - a fixed number of tokens per row (sinks and recent window included).

Giving two of them, or any of them with ``quality="lossless"`` (which promises no eviction), is
an error that names the arguments; nothing is silently ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from .. import codec
from ..errors import InvalidArgumentError
from ..presets import get_preset
from .budget import RowCost, check_ratio

#: The arguments that size the eviction; at most one may be given.
SIZING = ("target_ratio", "evict_ratio", "token_budget")
#: Pooling modes of the importance scores.
POOLING = ("avg", "max")


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class EvictionConfig:
    """Cache layout and eviction settings.

    Attributes:
        key_bits, value_bits: bits per element of the coded keys / values (1..8, 2-4 tuned).
        target_ratio: measured fp16 memory ratio to reach (> 1), or None.
        evict_ratio: fraction of each row's tokens to evict, in [0, 1), or None.
        token_budget: tokens kept per row (>= 1), or None. With all three None nothing is
            evicted.
        sink_tokens: first tokens of each row, held exactly and never evicted.
        window: most recent tokens held exactly by the cache (never evicted).
        block: tokens leave the exact window in blocks of this many.
        observation_window: the last this-many prompt tokens: their queries score every other
            token, and they are never evicted.
        pooling: ``"max"`` or ``"avg"`` 1-D pooling of the scores along the sequence. Max
            pooling keeps the neighbourhood of every strongly attended token, so a phrase such as
            a 5-digit pass key survives whole; average pooling lost digits in 1 of 3 passkey
            prompts where max pooling lost none (SmolLM2-135M, 2k tokens, 30 % kept).
        kernel_size: odd pooling width (1: no pooling).
        decode_budget: also evict while decoding, whenever a row holds ``block`` tokens more
            than its budget (scores: attention accumulated over the decode steps since the row's
            last eviction).
        min_prompt_tokens: a generate call whose prompt brings fewer new tokens than this does
            not evict at its prefill.
        seed: rotation seed of the codec.
        quality: the preset this config was built from, if any.
    """

    key_bits: int
    value_bits: int
    target_ratio: float | None = None
    evict_ratio: float | None = None
    token_budget: int | None = None
    sink_tokens: int = 4
    window: int = 128
    block: int = 64
    observation_window: int = 32
    pooling: str = "max"
    kernel_size: int = 7
    decode_budget: bool = False
    min_prompt_tokens: int = 2
    seed: int = 0
    quality: str | None = None

    def __post_init__(self) -> None:
        codec.check_bits(self.key_bits, "key_bits")
        codec.check_bits(self.value_bits, "value_bits")
        given = [name for name in SIZING if getattr(self, name) is not None]
        if len(given) > 1:
            raise InvalidArgumentError(
                f"give at most one of {', '.join(SIZING)}; got {' and '.join(given)}"
            )
        if self.target_ratio is not None:
            check_ratio("target_ratio", self.target_ratio)
        if self.evict_ratio is not None and (
            isinstance(self.evict_ratio, bool)
            or not isinstance(self.evict_ratio, (int, float))
            or not 0 <= self.evict_ratio < 1
        ):
            raise InvalidArgumentError(
                f"evict_ratio must be a number in [0, 1), got {self.evict_ratio!r}"
            )
        if self.token_budget is not None:
            _check_int("token_budget", self.token_budget, 1)
        _check_int("sink_tokens", self.sink_tokens, 0)
        _check_int("window", self.window, 0)
        _check_int("block", self.block, 1)
        _check_int("observation_window", self.observation_window, 1)
        _check_int("min_prompt_tokens", self.min_prompt_tokens, 1)
        if self.pooling not in POOLING:
            raise InvalidArgumentError(f"pooling must be one of {list(POOLING)}, got {self.pooling!r}")
        if _check_int("kernel_size", self.kernel_size, 1) % 2 == 0:
            raise InvalidArgumentError(f"kernel_size must be odd, got {self.kernel_size}")
        if not isinstance(self.decode_budget, bool):
            raise InvalidArgumentError(f"decode_budget must be True or False, got {self.decode_budget!r}")
        if self.decode_budget and not self.evicts:
            raise InvalidArgumentError(
                "decode_budget=True needs a budget: give target_ratio, evict_ratio or token_budget "
                "(or an evicting quality)"
            )
        codec.check_seed(self.seed)

    @classmethod
    def from_quality(cls, quality: str = "balanced", **overrides: object) -> EvictionConfig:
        """The config of preset ``quality`` with ``overrides`` applied.

        Raises:
            InvalidArgumentError: unknown preset or override name, two sizing arguments, a
                sizing argument with ``quality="lossless"``, or an invalid value.
        """
        preset = get_preset(quality)
        allowed = [f.name for f in fields(cls) if f.name != "quality"]
        unknown = sorted(set(overrides) - set(allowed))
        if unknown:
            raise InvalidArgumentError(
                f"unexpected arguments {unknown}; nexusquant_evict accepts quality and {allowed}"
            )
        sizing = [name for name in SIZING if overrides.get(name) is not None]
        if preset.target_ratio is None and sizing:
            raise InvalidArgumentError(
                f"quality={quality!r} keeps every token, so it cannot be combined with "
                f"{' and '.join(f'{n}={overrides[n]!r}' for n in sizing)}; use an evicting quality "
                "('high', 'balanced', 'max') or drop the argument"
            )
        base = cls(
            key_bits=preset.key_bits,
            value_bits=preset.value_bits,
            target_ratio=preset.target_ratio,
            sink_tokens=preset.sink_tokens,
            window=preset.window,
            block=preset.block,
            observation_window=preset.observation_window,
            quality=preset.name,
        )
        if sizing:  # an explicit sizing replaces the preset's target ratio
            base = replace(base, target_ratio=None)
        return replace(base, **overrides)

    @property
    def evicts(self) -> bool:
        """Whether any budget is set."""
        return any(getattr(self, name) is not None for name in SIZING)

    def kept_tokens(self, context_tokens: int, cost: RowCost) -> int:
        """Tokens a row with ``context_tokens`` tokens of context may keep (before the sinks and
        the recent window are added back if the budget is smaller than they are).

        ``cost`` prices the row's bytes; only ``target_ratio`` reads it.
        """
        if self.target_ratio is not None:
            return cost.kept_tokens(context_tokens, self.target_ratio)
        if self.evict_ratio is not None:
            return context_tokens - math.floor(self.evict_ratio * context_tokens)
        if self.token_budget is not None:
            return min(context_tokens, self.token_budget)
        return context_tokens


__all__ = ["EvictionConfig", "SIZING", "POOLING"]
