"""Quality presets: named targets for the measured KV-memory ratio against an fp16 cache.

A preset is a *measured* target: the eviction layer solves the token budget from the target
ratio and the real overheads (scales, sinks, recent window, bookkeeping), so that
``cache.memory_report().fp16_ratio`` lands on the target for any head_dim.

Every preset also carries the cache layout it is tuned for. The sinks and the recent window are
held in the model dtype (16 bits per element or more), so at 33x a 128-token window alone would
exceed the whole budget of a 2k-token prompt (128 of the 62 fp16-token equivalents 2048 / 33
allows); the eviction presets therefore keep a small exact window and code everything older.

Bits against eviction at a fixed ratio: spending bits on codes and evicting more measured better
than fewer bits and more tokens kept, keys more than values (SmolLM2-135M, emma.txt, C = 2048,
T = 128, 3 windows, mean KL): at 10x K4V3 0.053, K4V4 0.054, K3V3 0.057; at 17x K3V3 0.090,
K3V2 0.105, K4V2 0.107. At 10x a 16-token exact window beat a 32-token one on all three texts
of ``shared/data`` (K4V3, KL after 2-3 windows: emma 0.048 vs 0.053, alice29 0.066 vs 0.078,
lcet10 0.105 vs 0.133): in a float32 model an exact token costs 8x a 4-bit coded one, and the
budget it frees keeps more of the context. Wider pooling (kernel 11) helped on one text and hurt
on the others, so it stays 7.
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
        Preset("high", 4, 3, 10.0, "K4V3 codes + eviction to a measured 10x",
               window=16, block=16),
        Preset("balanced", 3, 3, 17.0, "K3V3 codes + eviction to a measured 17x",
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
