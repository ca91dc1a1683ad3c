"""The ``nexusquant_snapkv`` attention implementation: the model's own attention, plus the
eviction hook that needs the post-RoPE queries.

Registered once, additively, in transformers' global registries (``AttentionInterface`` and
``AttentionMaskInterface``) under :data:`ATTENTION_NAME`; no transformers class or function is
patched. A model uses it only while a :func:`~nexusquant.eviction.nexusquant_evict` block has set
its decoder config's ``_attn_implementation`` to that name.

The mask function is transformers' ``sdpa_mask`` (a boolean ``(B, 1, q, kv)`` mask, or ``None``
where SDPA's ``is_causal`` suffices), whatever the wrapped implementation: the attention function
turns it into the additive float mask that ``eager`` expects, and hands it to the session
(:class:`AttentionObserver`) so that importance scores see exactly the mask attention used.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Protocol

import torch
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from ..errors import InvalidArgumentError
from .scoring import causal_allowed

#: Name of the attention implementation in transformers' registries.
ATTENTION_NAME = "nexusquant_snapkv"
#: Attention implementations that can be wrapped.
WRAPPABLE = ("sdpa", "eager")


class AttentionObserver(Protocol):
    """What a ``nexusquant_evict`` session provides to the attention function."""

    original: str

    def observe(
        self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
        allowed: torch.Tensor | None, scaling: float,
    ) -> None:
        """Called after attention with the layer's ``(B, Hq, q, d)`` query, ``(B, Hkv, T, d)``
        key and the ``(B, 1, q, T)`` boolean mask (``None``: causal, no padding)."""


#: Active sessions by ``id`` of the decoder config their model's attention modules hold.
_SESSIONS: dict[int, tuple[Any, AttentionObserver]] = {}


def activate(config: Any, observer: AttentionObserver) -> None:
    """Route attention of modules holding ``config`` to ``observer`` (until :func:`deactivate`)."""
    if id(config) in _SESSIONS:
        raise InvalidArgumentError(
            "this model (or one sharing its config object) is already inside a nexusquant_evict "
            "block; blocks on one model cannot be nested"
        )
    _SESSIONS[id(config)] = (config, observer)


def deactivate(config: Any) -> None:
    """Undo :func:`activate` for ``config``."""
    _SESSIONS.pop(id(config), None)


def _observer(module: torch.nn.Module) -> AttentionObserver:
    config = getattr(module, "config", None)
    entry = _SESSIONS.get(id(config))
    if entry is None or entry[0] is not config:
        raise RuntimeError(
            f"attention implementation {ATTENTION_NAME!r} is only usable inside a "
            f"nexusquant_evict block (module {type(module).__name__} is outside one)"
        )
    return entry[1]


def _eager_of(module: torch.nn.Module) -> Callable[..., Any]:
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        raise RuntimeError(
            f"{type(module).__module__} has no eager_attention_forward; nexusquant_evict cannot "
            "wrap this model's eager attention (use attn_implementation='sdpa')"
        )
    return fn


def nexusquant_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's original attention (``sdpa`` or ``eager``), then the session's observer.

    Args:
        query: ``(B, Hq, q, d)`` post-RoPE queries.
        key, value: ``(B, Hkv, T, d)`` the layer's keys and values as the cache returned them.
        attention_mask: ``(B, 1, q, T)`` bool from ``sdpa_mask``, or ``None`` (causal).

    Returns:
        What the original implementation returns: ``(attn_output, attn_weights)``.
    """
    observer = _observer(module)
    if observer.original == "sdpa":
        out = ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)
    else:
        allowed = attention_mask
        if allowed is None:
            allowed = causal_allowed(query.shape[2], key.shape[2], query.device)
        additive = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill_(
            ~allowed, torch.finfo(query.dtype).min
        )
        out = _eager_of(module)(module, query, key, value, additive, **kwargs)
    scaling = kwargs.get("scaling")
    if scaling is None:
        scaling = getattr(module, "scaling", query.shape[-1] ** -0.5)
    with torch.no_grad():
        observer.observe(module, query, key, attention_mask, float(scaling))
    return out


AttentionInterface.register(ATTENTION_NAME, nexusquant_attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


__all__ = ["ATTENTION_NAME", "WRAPPABLE", "AttentionObserver", "activate", "deactivate",
           "nexusquant_attention"]
