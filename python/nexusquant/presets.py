"""Quality presets: named targets for the measured KV-memory ratio against an fp16 cache.

A preset is a *measured* target: the eviction layer solves the token budget from the target
ratio and the real overheads (scales, sinks, recent window, bookkeeping), so that
``cache.memory_report().fp16_ratio`` lands on the target for any head_dim.

Every preset also carries the cache layout it is tuned for. The sinks and the recent window are
held in the model dtype (16 bits per element or more), so at 33x a 128-token window alone would
exceed the whole budget of a 2k-token prompt (128 of the 62 fp16-token equivalents 2048 / 33
allows); the eviction presets therefore keep a small exact window and code everything older.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidArgumentError


@dataclass(frozen=True)
class Preset:
    """One named quality level.

    Attributes:
        name: the preset's name (``quality=`` argument).
        key_bits: bits per element for keys.
        value_bits: bits per element for values.
        target_ratio: the measured fp16-to-compressed KV memory ratio it aims for; ``None``
            means no eviction (the ratio is whatever the bits give, about 4x at 4 bits).
        description: one line for tables and ``--help``.
        sink_tokens: first tokens of each sequence kept in the model dtype, never evicted.
        window: most recent tokens kept in the model dtype (the cache's exact window).
        block: tokens leave the window, and are coded, in blocks of this many.
        observation_window: prompt tokens at the end of the prompt whose queries score the
            others for eviction; they are kept (never evicted) as the recent window.
    """

    name: str
    key_bits: int
    value_bits: int
    target_ratio: float | None
    description: str
    sink_tokens: int = 4
    window: int = 128
    block: int = 64
    observation_window: int = 32


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("lossless", 4, 4, None, "K4V4 codes, no eviction (~4x)"),
        Preset("high", 3, 3, 10.0, "K3V3 codes + eviction to a measured 10x",
               window=32, block=16),
        Preset("balanced", 3, 2, 17.0, "K3V2 codes + eviction to a measured 17x",
               window=16, block=16),
        Preset("max", 2, 2, 33.0, "K2V2 codes + eviction to a measured 33x",
               window=8, block=8),
    )
}


def get_preset(name: str) -> Preset:
    """Return the preset called ``name``; raise InvalidArgumentError naming the choices."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise InvalidArgumentError(
            f"quality must be one of {list(PRESETS)}, got {name!r}"
        ) from None


__all__ = ["Preset", "PRESETS", "get_preset"]
