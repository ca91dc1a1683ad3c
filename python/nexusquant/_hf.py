"""Shims over the transformers versions nexusquant supports (>= 5.17).

Everything that differs between those versions and that the cache integration, the evaluation
harness or the tests rely on lives here, so that the rest of the code reads as if there were one
transformers:

* the keyword the model's ``forward`` and ``generate`` take the cache under: ``cache`` from
  5.24 on (``past_key_values`` still accepted there, with a deprecation warning), only
  ``past_key_values`` before;
* ``get_layer_types_and_kwargs`` returns one kwargs dict for all layers in 5.17 and one per layer
  later.

(``crop`` takes a legacy positive final length in 5.17 and only a negative count later;
``NexusQuantLayer.crop`` accepts both.)

Importing this module imports transformers; ``import nexusquant`` never does.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

try:
    import transformers
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "nexusquant's transformers integration needs transformers >= 5.17: "
        "pip install 'nexusquant-kv[hf]'"
    ) from exc

from transformers.cache_utils import (
    DYNAMIC_LAYER_TYPE_MAPPING,
    Cache,
    CacheLayerMixin,
    DynamicLayer,
    DynamicSlidingWindowLayer,
    get_layer_types_and_kwargs,
)

MIN_TRANSFORMERS = (5, 17)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


if _version_tuple(transformers.__version__) < MIN_TRANSFORMERS:  # pragma: no cover
    raise ImportError(
        f"nexusquant's transformers integration needs transformers >= "
        f"{'.'.join(map(str, MIN_TRANSFORMERS))}, found {transformers.__version__}: "
        "pip install -U 'transformers>=5.17'"
    )

#: Names a model's ``forward`` may take the cache under, newest first.
CACHE_KWARGS = ("cache", "past_key_values")


def cache_kwarg(model: torch.nn.Module) -> str:
    """The keyword ``model.forward`` (and so ``model.generate``) takes the cache under.

    ``"cache"`` on transformers >= 5.24 models, ``"past_key_values"`` before.
    """
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def decoder_config(config: Any) -> Any:
    """The text decoder's config of a (possibly multimodal) model config."""
    get = getattr(config, "get_text_config", None)
    return get(decoder=True) if callable(get) else config


def layer_types_and_kwargs(config: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """Per-layer cache types (``"full_attention"``, ``"sliding_attention"``, ...) and the kwargs
    transformers passes to each layer's cache class, as ``DynamicCache(config=...)`` would use."""
    types, kwargs = get_layer_types_and_kwargs(config)
    types = list(types)
    if isinstance(kwargs, dict):  # transformers < 5.18: one dict for every layer
        kwargs = [dict(kwargs) for _ in types]
    return types, [dict(k) for k in kwargs]


def transformers_layer(layer_type: str, kwargs: dict[str, Any]) -> Any:
    """A fresh transformers cache layer of ``layer_type``, as ``DynamicCache`` builds it."""
    return DYNAMIC_LAYER_TYPE_MAPPING[layer_type](**kwargs)


def forward_argument(signature: inspect.Signature, name: str, args: tuple, kwargs: dict) -> Any:
    """The value of argument ``name`` in a call ``forward(*args, **kwargs)`` (``None`` if absent)."""
    if name in kwargs:
        return kwargs[name]
    if not args:
        return None
    try:
        bound = signature.bind_partial(*args, **kwargs)
    except TypeError:
        return None
    return bound.arguments.get(name)


__all__ = [
    "Cache",
    "CacheLayerMixin",
    "DynamicLayer",
    "DynamicSlidingWindowLayer",
    "CACHE_KWARGS",
    "cache_kwarg",
    "decoder_config",
    "layer_types_and_kwargs",
    "transformers_layer",
    "forward_argument",
]
