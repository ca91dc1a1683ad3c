"""``nexusquant_evict(model, quality=...)``: compressed caches with token eviction for every
``generate`` call of a block, and the model restored exactly afterwards.

What the block changes, on the ``model`` instance only (all undone on exit, also on error):

* its decoder config's ``_attn_implementation`` becomes ``"nexusquant_snapkv"``
  (:mod:`nexusquant.eviction.attention`), which runs the original ``sdpa``/``eager`` attention
  and then lets the session see the layer's post-RoPE queries;
* a forward pre-hook and a forward hook on the model: for forwards that use one of the session's
  caches, the pre-hook records the forward (row lengths, whether it ends a prompt) and rewrites
  the 2-D ``attention_mask`` for the compacted cache (below); the hook clears the record;
* ``model.generate`` becomes an instance attribute wrapping the original: a call without a cache
  gets a fresh :class:`~nexusquant.NexusQuantCache` built from the config, a call with a
  ``NexusQuantCache`` uses it (when the block evicts, its full-attention layers become
  :class:`~nexusquant.eviction.layer.EvictableLayer`, keeping their state and settings), any
  other cache is passed through untouched and never evicted.

What counts as a prefill: the wrapper counts the call's prompt tokens ``P`` (the input tokens the
cache does not hold yet, as ``generate`` itself slices them; :meth:`EvictionHandle.prefill`
counts all of its ``input_ids``); the forwards of that call consume them in order, and the
forward that consumes the last one *ends the prompt*. Eviction fires there,
after each layer's attention output is computed, if ``P >= min_prompt_tokens``. Tokens of that
forward beyond the prompt (the draft tokens of assisted or prompt-lookup decoding, verified in the
same forward) are neither scored nor evicted: they stay the newest tokens, so ``crop`` can still
drop the rejected ones. Every other forward - single-token decode steps, speculative verification
steps, chunks of a chunked prefill before the last, forwards outside ``generate`` - never evicts,
except the optional decode-time budget (``decode_budget=True``), which evicts on single-token
decode steps only.

Scores: the softmax attention of the prompt's last ``observation_window`` queries over all keys,
summed over those queries and averaged over the query heads of each KV head
(:func:`~nexusquant.eviction.scoring.attention_mass`, one KV head at a time: never a T x T
matrix), then pooled along the sequence. Under chunked prefill the window's queries that fall in
earlier chunks are scored in their chunk and added (the same result: they cannot see later keys).
With ``decode_budget``, the attention each stored token received from every query since its
row's last eviction, accumulated in ``EvictableLayer.decode_scores`` (4 bytes per token and KV
head, counted in ``memory_report()`` and in the budget) and pooled the same way.

Budget: each row keeps ``EvictionConfig.kept_tokens`` tokens, solved from its own context length
and the layer's real bytes (sink buffer, exact window, codes and scales at each layer's bits,
bookkeeping), the same count in every layer and KV head; never fewer than its sinks, exact window
and last ``observation_window`` tokens. A row is sized from its own tokens only, so a row of a
padded batch keeps what it would keep alone.

Positions and masks: evicted layers report the absolute length (``get_seq_length``) and map the
compacted slots into the 2-D mask's numbering (``get_mask_sizes``), see
:mod:`nexusquant.eviction.layer`. ``generate`` computes ``position_ids`` from the absolute 2-D
mask, so new tokens get their original RoPE positions; the pre-hook rewrites the mask so that its
last ``T + q`` columns describe the compacted rows (each row's stored tokens right-aligned) and
records the same compacted mask in the cache (``set_attention_mask``). Inside the block the cache
needs no ``attach``; a padded batch whose cache was evicted must be continued inside a block.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import codec
from .._hf import CACHE_KWARGS, cache_kwarg, decoder_config, forward_argument, layer_types_and_kwargs
from ..cache import NexusQuantCache, NexusQuantLayer
from ..errors import InvalidArgumentError
from . import attention
from .budget import FP16_BYTES, SCALE_BYTES, RowCost
from .config import EvictionConfig
from .layer import EvictableLayer
from .scoring import attention_mass, causal_allowed, pool_scores, select_tokens

#: Bytes per row of the left-padding record a ``NexusQuantCache`` holds once a mask is set (int64).
PAD_RECORD_BYTES = 8
#: Bytes per token and KV head of ``EvictableLayer.decode_scores`` (float32).
SCORE_BYTES = 4


@dataclass(frozen=True)
class EvictionEvent:
    """One eviction in one layer.

    Attributes:
        kind: ``"prefill"`` (end of a prompt) or ``"decode"`` (decode-time budget).
        layer_idx: the cache layer.
        before, after: tokens stored per row before and after.
    """

    kind: str
    layer_idx: int
    before: tuple[int, ...]
    after: tuple[int, ...]


@dataclass
class EvictionHandle:
    """What ``with nexusquant_evict(model) as handle`` yields.

    Attributes:
        config: the settings of the block.
        cache: the cache of the latest ``generate`` or :meth:`prefill` call (``None`` before
            the first); its ``memory_report()`` gives the measured ratio.
        events: every eviction of the block, in order.
    """

    config: EvictionConfig
    cache: NexusQuantCache | None = None
    events: list[EvictionEvent] = field(default_factory=list)
    _session: _Session | None = field(default=None, repr=False, compare=False)

    def prefill(self, input_ids: torch.Tensor, *, cache: NexusQuantCache | None = None, **kwargs: Any) -> Any:
        """One forward of ``input_ids`` ``(B, n)`` through ``cache`` (a fresh one by default)
        that counts as a prompt: it evicts at its end exactly as ``generate``'s prefill does.
        For loops that drive the model themselves (teacher forcing, custom decoding); later
        forwards inside the block continue from the compacted cache with the right positions.

        Args:
            input_ids: ``(B, n)`` token ids, all new to the cache.
            cache: a ``NexusQuantCache`` to continue, or ``None`` for a fresh one.
            **kwargs: passed to the model's forward (``attention_mask``, ``logits_to_keep``...).

        Returns:
            The model's output; the cache is ``handle.cache``.
        """
        return self._session.prefill(input_ids, cache=cache, **kwargs)


@dataclass
class _Pending:
    """Prompt tokens of the running ``generate`` call not yet consumed by a forward."""

    cache: NexusQuantCache
    total: int
    remaining: int


@dataclass
class _Forward:
    """The running forward of a session cache."""

    cache: NexusQuantCache
    queries: int  # q: positions in this forward
    real: list[int]  # real tokens of each row after this forward (absolute)
    masked: bool  # a 2-D attention mask was given
    in_prompt: bool = False  # the forward brings prompt tokens of an evicting generate call
    observe: tuple[int, int] | None = None  # its queries [lo, hi) in the observation window
    ends_prompt: bool = False  # it brings the prompt's last token: eviction fires
    extra: int = 0  # positions after the prompt's end in this forward (draft tokens)
    budgets: list[int] | None = None  # kept tokens per row, solved once per forward


class _Session:
    """State and hooks of one ``nexusquant_evict`` block on one model."""

    def __init__(self, model: torch.nn.Module, config: EvictionConfig):
        self.model = model
        self.config = config
        self.handle = EvictionHandle(config, _session=self)
        self.text_config = decoder_config(model.config)
        self.original = getattr(self.text_config, "_attn_implementation_internal", None)
        if self.original == attention.ATTENTION_NAME:
            raise InvalidArgumentError(
                "this model is already inside a nexusquant_evict block; blocks on one model "
                "cannot be nested"
            )
        if self.original not in attention.WRAPPABLE:
            raise InvalidArgumentError(
                f"nexusquant_evict wraps models whose attention implementation is one of "
                f"{list(attention.WRAPPABLE)}; this model uses {self.original!r} "
                "(model.set_attn_implementation('sdpa') switches it)"
            )
        if config.evicts:
            types, _ = layer_types_and_kwargs(self.text_config)
            other = sorted(set(types) - {"full_attention"})
            if other:
                raise InvalidArgumentError(
                    f"token eviction supports models whose layers are all full attention; this "
                    f"model also has {other} layers (quality='lossless' works on it)"
                )
        self._signature = inspect.signature(model.forward)
        self._caches: weakref.WeakSet[NexusQuantCache] = weakref.WeakSet()
        self._pending: _Pending | None = None
        self._forward: _Forward | None = None
        #: Per layer, ``(B, H, T)`` scores from observation-window queries of earlier chunks of
        #: the running prompt (chunked prefill).
        self._observed: dict[int, torch.Tensor] = {}
        self._undo: list[Any] = []

    # ----------------------------------------------------------------------------------------
    # install / restore

    def install(self) -> None:
        """Switch the model instance over (see the module docstring); undone by :meth:`restore`,
        also when this raises half-way."""
        model, text = self.model, self.text_config
        try:
            attention.activate(text, self)
            self._undo.append(lambda: attention.deactivate(text))
            text._attn_implementation_internal = attention.ATTENTION_NAME
            self._undo.append(lambda: setattr(text, "_attn_implementation_internal", self.original))
            pre = model.register_forward_pre_hook(self._before_forward, with_kwargs=True)
            self._undo.append(pre.remove)
            post = model.register_forward_hook(self._after_forward, always_call=True)
            self._undo.append(post.remove)
            had_own = "generate" in vars(model)
            own = vars(model).get("generate")
            original = model.generate
            wrapper = functools.wraps(original)(functools.partial(self._generate, original))
            model.generate = wrapper
            self._undo.append(
                (lambda: setattr(model, "generate", own)) if had_own
                else (lambda: vars(model).pop("generate", None))
            )
        except BaseException:
            self.restore()
            raise

    def restore(self) -> None:
        """Undo everything :meth:`install` did, newest first."""
        while self._undo:
            self._undo.pop()()
        self._pending = self._forward = None
        self._observed.clear()

    # ----------------------------------------------------------------------------------------
    # generate

    def _generate(self, original, *args: Any, **kwargs: Any) -> Any:
        cache = next((kwargs[name] for name in CACHE_KWARGS if kwargs.get(name) is not None), None)
        if cache is None:
            cache = self.new_cache()
            kwargs[cache_kwarg(self.model)] = cache
        elif isinstance(cache, NexusQuantCache):
            self.adopt(cache)
        else:
            return original(*args, **kwargs)
        with self._prompt(cache, self._prompt_tokens(cache, args, kwargs)):
            return original(*args, **kwargs)

    def prefill(self, input_ids: torch.Tensor, *, cache: NexusQuantCache | None, **kwargs: Any) -> Any:
        """See :meth:`EvictionHandle.prefill`."""
        if not self._undo:  # restore() has run: the hooks are gone
            raise RuntimeError("handle.prefill is only usable inside its nexusquant_evict block")
        if cache is None:
            cache = self.new_cache()
        elif isinstance(cache, NexusQuantCache):
            self.adopt(cache)
        else:
            raise InvalidArgumentError(f"cache must be a NexusQuantCache or None, got {type(cache).__name__}")
        with self._prompt(cache, input_ids.shape[1]):
            return self.model(input_ids=input_ids, use_cache=True, **{cache_kwarg(self.model): cache}, **kwargs)

    @contextmanager
    def _prompt(self, cache: NexusQuantCache, tokens: int) -> Iterator[None]:
        """Make ``cache`` the handle's cache and, while the block runs, count its next
        ``tokens`` input tokens as a prompt (see the module docstring)."""
        self.handle.cache = cache
        self._pending = _Pending(cache, tokens, tokens) if self.config.evicts and tokens > 0 else None
        self._observed.clear()
        try:
            yield
        finally:
            self._pending = None
            self._observed.clear()

    def new_cache(self) -> NexusQuantCache:
        """A fresh cache with the block's layout (bits, sinks, window, block, seed), adopted."""
        c = self.config
        cache = NexusQuantCache(
            self.model.config, c.key_bits, c.value_bits, sink_tokens=c.sink_tokens,
            window=c.window, block=c.block, seed=c.seed,
        )
        self.adopt(cache)
        return cache

    def adopt(self, cache: NexusQuantCache) -> None:
        """Route ``cache``'s forwards through this session and, when the block evicts, make its
        compressed layers evictable (their state kept)."""
        if self.config.evicts:
            for idx, layer in enumerate(cache.layers):
                if isinstance(layer, NexusQuantLayer):
                    cache.layers[idx] = EvictableLayer.from_layer(layer)
        self._caches.add(cache)

    @staticmethod
    def _prompt_tokens(cache: NexusQuantCache, args: tuple, kwargs: dict) -> int:
        """New tokens the first forwards of this ``generate`` call will bring, as ``generate``
        slices them: the inputs past what the cache holds, unless a longer 2-D mask says the
        inputs are the new tokens alone."""
        embeds = kwargs.get("inputs_embeds")
        inputs = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
        past = cache.get_seq_length()
        if embeds is not None:
            return max(0, embeds.shape[1] - past)
        if inputs is None:
            return 0
        total = inputs.shape[1]
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.shape[-1] != total:
            return total
        return max(0, total - past)

    # ----------------------------------------------------------------------------------------
    # forward hooks

    def _before_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict):
        self._forward = None
        cache = None
        for name in CACHE_KWARGS:
            value = forward_argument(self._signature, name, args, kwargs)
            if value is not None:
                cache = value
                break
        if cache is None or cache not in self._caches:
            return None
        mask = forward_argument(self._signature, "attention_mask", args, kwargs)
        layer = next((l for l in cache.layers if isinstance(l, EvictableLayer)), None)
        if layer is None or not self.config.evicts:
            cache.set_attention_mask(mask)
            return None
        x = forward_argument(self._signature, "input_ids", args, kwargs)
        if x is None:
            x = forward_argument(self._signature, "inputs_embeds", args, kwargs)
        batch, q = x.shape[0], x.shape[1]
        stored = layer.tokens_per_row() or [0] * batch
        physical = layer.cumulative_length if layer.is_initialized else 0
        absolute = layer.get_seq_length() if layer.is_initialized else 0
        if mask is not None:
            if not torch.is_tensor(mask) or mask.dim() != 2 or tuple(mask.shape) != (batch, absolute + q):
                raise InvalidArgumentError(
                    f"attention_mask must be a 2-D (batch, cached + new) = {(batch, absolute + q)} "
                    f"mask for this cache, got {tuple(mask.shape) if torch.is_tensor(mask) else mask!r}"
                )
            first = physical - torch.tensor(stored, device=mask.device)
            past = torch.arange(physical, device=mask.device)[None, :] >= first[:, None]
            compact = torch.cat([past.to(mask.dtype), mask[:, absolute:]], dim=1)
            cache.set_attention_mask(compact)
            wide = torch.cat([mask.new_zeros(batch, absolute - physical), compact], dim=1)
            args, kwargs = self._replace_mask(args, kwargs, wide)
            real = (mask != 0).sum(dim=1).tolist()
        else:
            cache.set_attention_mask(None)
            real = [absolute + q] * batch
        fwd = _Forward(cache, q, real, mask is not None)
        pending = self._pending
        if pending is not None and pending.cache is cache:
            first = pending.total - pending.remaining  # prompt index of this forward's first token
            used = min(q, pending.remaining)
            pending.remaining -= used
            if pending.remaining == 0:
                self._pending = None
            if pending.total >= self.config.min_prompt_tokens:
                fwd.in_prompt = True
                lo = max(0, pending.total - self.config.observation_window - first)
                fwd.observe = (lo, used) if lo < used else None
                fwd.ends_prompt = pending.remaining == 0
                fwd.extra = q - used if fwd.ends_prompt else 0
        self._forward = fwd
        return args, kwargs

    def _replace_mask(self, args: tuple, kwargs: dict, mask: torch.Tensor) -> tuple[tuple, dict]:
        """The forward's arguments with ``attention_mask`` replaced where it was given."""
        position = list(self._signature.parameters).index("attention_mask")
        if "attention_mask" in kwargs or len(args) <= position:
            return args, {**kwargs, "attention_mask": mask}
        return (*args[:position], mask, *args[position + 1 :]), kwargs

    def _after_forward(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        self._forward = None

    # ----------------------------------------------------------------------------------------
    # attention observer (called by nexusquant.eviction.attention)

    def observe(
        self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
        allowed: torch.Tensor | None, scaling: float,
    ) -> None:
        """Score and evict after a layer's attention (see the module docstring for when)."""
        fwd = self._forward
        if fwd is None or not (fwd.in_prompt or self.config.decode_budget):
            return
        idx = module.layer_idx
        layer = fwd.cache.layers[idx]
        if not isinstance(layer, EvictableLayer):
            return
        if allowed is None:
            allowed = causal_allowed(query.shape[2], key.shape[2], key.device)
        if fwd.in_prompt:
            mass = None
            if fwd.observe is not None:
                lo, hi = fwd.observe
                mass = attention_mass(query[:, :, lo:hi], key, allowed[:, :, lo:hi], scaling)
            earlier = self._observed.pop(idx, None)
            if earlier is not None:  # scores of the window's queries in earlier chunks
                earlier = torch.nn.functional.pad(earlier, (0, key.shape[2] - earlier.shape[2]))
                mass = earlier if mass is None else mass + earlier
            if not fwd.ends_prompt:
                if mass is not None:
                    self._observed[idx] = mass
                return
            keep = self._plan(fwd, layer, mass, extra=fwd.extra)
            self._evict(layer, idx, keep, "prefill")
            if self.config.decode_budget:
                layer.ensure_decode_scores()
        else:
            scores = layer.ensure_decode_scores()
            scores += attention_mass(query, key, allowed, scaling)
            if fwd.queries == 1:
                keep = self._plan(fwd, layer, scores, extra=0, slack=self.config.block)
                self._evict(layer, idx, keep, "decode")

    def _evict(self, layer: EvictableLayer, idx: int, keep: list, kind: str) -> None:
        if all(k is None for k in keep):
            return
        before = tuple(layer.tokens_per_row())
        layer.evict(keep)
        self.handle.events.append(EvictionEvent(kind, idx, before, tuple(layer.tokens_per_row())))

    def _plan(
        self, fwd: _Forward, layer: EvictableLayer, scores: torch.Tensor, *, extra: int, slack: int = 0
    ) -> list[torch.Tensor | None]:
        """Indices into each row's evictable span that it keeps (``None``: the row keeps
        everything). A row is evicted only when it holds at least ``slack`` tokens over its
        budget (and at least one).

        Args:
            scores: ``(B, H, T)`` un-pooled scores of the layer's ``T`` slots.
            extra: newest tokens of the forward that are not part of the prompt (kept).
        """
        cfg = self.config
        spans = layer.evictable_span()
        length = layer.cumulative_length
        stored = torch.tensor([sum(span) for span in spans], device=scores.device)
        valid = torch.arange(length, device=scores.device)[None, :] >= (length - stored)[:, None]
        pooled = pool_scores(scores, valid, cfg.kernel_size, cfg.pooling)
        budgets = self._budgets(fwd, layer)
        keep: list[torch.Tensor | None] = []
        for r, (before, count, after) in enumerate(spans):
            protect = min(count, max(0, cfg.observation_window + extra - after))
            target = max(budgets[r] + extra, before + after + protect)
            kept = target - before - after
            if before + count + after - target < slack or kept >= count:
                keep.append(None)
                continue
            first = length - (before + count + after) + before
            keep.append(select_tokens(pooled[r, :, first : first + count], count - protect, protect, kept))
        return keep

    def _budgets(self, fwd: _Forward, layer: EvictableLayer) -> list[int]:
        """Tokens each row may keep for its context (excluding draft tokens), solved once per
        forward: every layer has the same row lengths, so every layer keeps the same counts."""
        if fwd.budgets is None:
            fwd.budgets = [
                self.config.kept_tokens(real - fwd.extra, self._row_cost(fwd.cache, layer, span, fwd.masked))
                for real, span in zip(fwd.real, layer.evictable_span())
            ]
        return fwd.budgets

    def _row_cost(self, cache: NexusQuantCache, layer: EvictableLayer, span: tuple[int, int, int],
                  masked: bool) -> RowCost:
        """Bytes one row holds in all compressed layers, from the layers' real tensors.

        Fixed: the sink buffer (its capacity), the exact window of a coding layer, the row's
        lengths record and centres, the padding record. Per kept token of the evictable span: codes and
        scales at each layer's bits (exact tensors in a pass-through layer). With
        ``decode_budget``, every stored token also has a float32 score per KV head.
        """
        before, _, after = span
        heads, d, dv = layer.heads, layer.head_dim, layer.value_head_dim
        exact = heads * (d * layer.sink_keys.element_size() + dv * layer.sink_values.element_size())
        score = heads * SCORE_BYTES if self.config.decode_budget else 0
        layers = [l for l in cache.layers if isinstance(l, EvictableLayer)]
        per_layer_fixed = (
            layer.sink_keys.shape[2] * exact + (after * exact if layer.quantize else 0)
            + layer.lengths.element_size() * layer.lengths.shape[1] + (before + after) * score
            + heads * (d * layer.key_means.element_size() + dv * layer.value_means.element_size())
        )
        coded = sum(
            (heads * (codec.code_bytes(d, l.key_bits) + codec.code_bytes(dv, l.value_bits) + 2 * SCALE_BYTES)
             if l.quantize else exact) + score
            for l in layers
        )
        return RowCost(
            fixed_tokens=before + after,
            fixed_bytes=len(layers) * per_layer_fixed + (PAD_RECORD_BYTES if masked else 0),
            coded_token_bytes=coded,
            baseline_token_bytes=len(layers) * heads * (d + dv) * FP16_BYTES,
        )


@contextmanager
def nexusquant_evict(
    model: torch.nn.Module, quality: str = "balanced", **overrides: Any
) -> Iterator[EvictionHandle]:
    """Compressed KV caches with token eviction for every ``model.generate`` call in the block.

    Example::

        with nexusquant_evict(model, quality="balanced") as nq:
            out = model.generate(**inputs, max_new_tokens=64)
        print(nq.cache.memory_report())        # fp16_ratio ~ 17x for prompts of 2k+ tokens

    Args:
        model: a transformers causal LM using ``sdpa`` or ``eager`` attention. Eviction needs
            every layer to be full attention; ``quality="lossless"`` works on any model.
        quality: a preset of :data:`nexusquant.presets.PRESETS`: ``"lossless"`` (K4V4, no
            eviction), ``"high"`` (K3V3, 10x), ``"balanced"`` (K3V2, 17x), ``"max"`` (K2V2, 33x).
        **overrides: any :class:`EvictionConfig` field (``key_bits``, ``value_bits``,
            ``target_ratio``, ``evict_ratio``, ``token_budget``, ``sink_tokens``, ``window``,
            ``block``, ``observation_window``, ``pooling``, ``kernel_size``, ``decode_budget``,
            ``min_prompt_tokens``, ``seed``).

    Yields:
        An :class:`EvictionHandle`; ``handle.cache`` is the latest ``generate`` call's cache.

    Raises:
        InvalidArgumentError: an unknown preset or argument, contradicting arguments (two of
            ``target_ratio``/``evict_ratio``/``token_budget``, or one of them with
            ``quality="lossless"``), a model whose attention is not ``sdpa``/``eager``, an
            evicting config on a model with non-full-attention layers, or a nested block on the
            same model.
    """
    config = EvictionConfig.from_quality(quality, **overrides)
    session = _Session(model, config)
    session.install()
    try:
        yield session.handle
    finally:
        session.restore()


__all__ = ["nexusquant_evict", "EvictionHandle", "EvictionEvent"]
