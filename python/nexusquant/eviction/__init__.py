"""Token eviction and quality presets.

* :func:`nexusquant_evict` - the context manager: every ``model.generate`` call inside it gets a
  compressed cache whose least-attended tokens are evicted at the end of the prompt
  (:mod:`nexusquant.eviction.context`);
* :func:`solve_budget` - tokens kept per layer and KV head for a target memory ratio
  (:mod:`nexusquant.eviction.budget`);
* :class:`EvictionConfig` - preset + overrides (:mod:`nexusquant.eviction.config`);
* :class:`EvictableLayer` - the cache layer that tokens are removed from
  (:mod:`nexusquant.eviction.layer`); scoring in :mod:`nexusquant.eviction.scoring`, the
  attention hook in :mod:`nexusquant.eviction.attention`.

``solve_budget`` and ``EvictionConfig`` import without transformers (the memory calculator uses
them); the rest loads transformers on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .budget import RowCost, solve_budget
from .config import EvictionConfig

_LAZY = {
    "nexusquant_evict": "nexusquant.eviction.context",
    "EvictionHandle": "nexusquant.eviction.context",
    "EvictionEvent": "nexusquant.eviction.context",
    "EvictableLayer": "nexusquant.eviction.layer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nexusquant.eviction' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["solve_budget", "EvictionConfig", "RowCost", *_LAZY]
