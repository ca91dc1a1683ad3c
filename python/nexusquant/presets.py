"""Quality presets: named targets for the measured KV-memory ratio against an fp16 cache.

A preset is a *measured* target: the eviction layer solves the token budget from the target
ratio and the real overheads (scales, sinks, recent window, bookkeeping), so that
``cache.memory_report().fp16_ratio`` lands on the target for any head_dim.
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
    """

    name: str
    key_bits: int
    value_bits: int
    target_ratio: float | None
    description: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("lossless", 4, 4, None, "K4V4 codes, no eviction (~4x)"),
        Preset("high", 3, 3, 10.0, "K3V3 codes + eviction to a measured 10x"),
        Preset("balanced", 3, 2, 17.0, "K3V2 codes + eviction to a measured 17x"),
        Preset("max", 2, 2, 33.0, "K2V2 codes + eviction to a measured 33x"),
    )
}


def get_preset(name: str) -> Preset:
    """Return the preset called ``name``; raise InvalidArgumentError naming the choices."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InvalidArgumentError(
            f"quality must be one of {list(PRESETS)}, got {name!r}"
        ) from None


__all__ = ["Preset", "PRESETS", "get_preset"]
