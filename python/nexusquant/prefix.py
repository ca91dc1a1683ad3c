"""Prefix reuse: compressed caches of earlier prompts, found again by their token ids.

A :class:`PrefixCache` keeps serialized :class:`~nexusquant.NexusQuantCache` objects (``.nqkv``
bytes, see :mod:`nexusquant.cache.persist`) in a :class:`~nexusquant.store.HostStore` (host RAM)
or :class:`~nexusquant.store.DiskStore` (a directory, found again after a restart), keyed by the
token ids the cache holds. :meth:`PrefixCache.restore` finds the longest stored prefix of a prompt
and returns a cache holding exactly those tokens, so only the rest of the prompt is prefilled::

    store = DiskStore("kv-store", budget_bytes=2 << 30)     # or HostStore(budget_bytes)
    prefixes = PrefixCache(store, key_bits=3, value_bits=2)  # settings of fresh caches
    result = generate_with_prefix(model, input_ids, prefixes, max_new_tokens=64)
    print(result.reused, "prompt tokens reused")

:func:`generate_with_prefix` runs one prompt end to end: it restores the longest stored prefix of
the prompt without its last token, prefills the rest of that part in one forward, stores the
result under those ids, and lets ``generate`` run from the last prompt token. A repeated prompt
therefore reuses all but its last token, and its generation is token for token the one of the
first call: the restored state is bit-identical to the one that call computed. After generating
it also stores the final state under the generated sequence (minus its last token), so a next
turn whose prompt extends this conversation reuses all of it. A prompt that extends a stored one
continues from the stored *compressed* state, exactly as a multi-turn continuation of that cache
would (its new tokens attend to the prefix's codes, as they would in the cache that produced it).

Entries are whole caches of batch 1 (one token sequence each); a prompt shares nothing with an
entry it does not start with.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import numpy as np
import torch

from ._hf import CACHE_KWARGS, cache_kwarg
from .cache import NexusQuantCache, NexusQuantLayer
from .cache.persist import cache_from_bytes, cache_to_records
from .errors import FormatError, InvalidArgumentError, ShapeError
from .store import DiskStore, HostStore, nqkv_to_bytes


def _token_row(input_ids: Any) -> torch.Tensor:
    """``input_ids`` (``(n,)`` or ``(1, n)`` ints: a tensor, array or list) as a ``(n,)`` int64
    CPU tensor."""
    ids = input_ids.detach().cpu() if torch.is_tensor(input_ids) else torch.as_tensor(np.asarray(input_ids))
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise ShapeError(f"input_ids must be (n,) or (1, n) token ids, got shape {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise InvalidArgumentError(f"input_ids must hold integers, got dtype {ids.dtype}")
    return ids.long()


def _batch(cache: NexusQuantCache) -> int:
    """Rows of a filled cache (0 if no layer holds tokens)."""
    for layer in cache.layers:
        if isinstance(layer, NexusQuantLayer):
            if layer.is_initialized:
                return layer.batch
        elif torch.is_tensor(getattr(layer, "keys", None)) and layer.keys.dim() == 4:
            return int(layer.keys.shape[0])
    return 0


class PrefixCache:
    """Compressed caches of batch 1 in a store, keyed by the token ids they hold.

    Args:
        store: a :class:`~nexusquant.store.HostStore` or :class:`~nexusquant.store.DiskStore`.
        **cache_kwargs: :class:`~nexusquant.NexusQuantCache` arguments for the fresh caches
            :meth:`restore` returns when nothing is stored (``key_bits``, ``window``, ...).
            A restored cache has the settings it was saved with.
    """

    def __init__(self, store: HostStore | DiskStore, **cache_kwargs: Any):
        if not isinstance(store, (HostStore, DiskStore)):
            raise InvalidArgumentError(f"store must be a HostStore or a DiskStore, got {type(store).__name__}")
        allowed = [
            name for name, p in inspect.signature(NexusQuantCache.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty
        ]
        unknown = sorted(set(cache_kwargs) - set(allowed))
        if unknown:
            raise InvalidArgumentError(f"PrefixCache got unexpected cache arguments {unknown}; allowed: {sorted(allowed)}")
        self.store = store
        self.cache_kwargs = cache_kwargs

    def save(self, input_ids: Any, cache: NexusQuantCache, *, metadata: dict[str, Any] | None = None) -> int:
        """Store ``cache`` under ``input_ids``, the ``n`` tokens it holds (replacing an entry for
        the same ids; the store evicts least-recently-used entries as its budget requires).

        Args:
            input_ids: ``(n,)`` or ``(1, n)`` token ids; ``cache.get_seq_length()`` must be ``n``.
            cache: a cache of batch 1.
            metadata: JSON-serializable dict saved with the cache.

        Returns:
            The bytes stored.
        """
        ids = _token_row(input_ids)
        if cache.get_seq_length() != ids.numel():
            raise InvalidArgumentError(
                f"cache holds {cache.get_seq_length()} positions but input_ids has {ids.numel()} tokens; "
                "store a cache under exactly the ids it holds"
            )
        meta, records = cache_to_records(cache, metadata=metadata)
        if records[0].batch != 1:
            raise ShapeError(f"a prefix entry holds one sequence, got a cache of batch {records[0].batch}")
        blob = nqkv_to_bytes(meta, records)
        self.store.put(ids.numpy(), blob)
        return len(blob)

    def restore(
        self, input_ids: Any, config: Any, device: str | torch.device = "cpu"
    ) -> tuple[NexusQuantCache, int]:
        """The cache of the longest stored prefix of ``input_ids`` and its length.

        Args:
            input_ids: ``(n,)`` or ``(1, n)`` token ids of a prompt.
            config: the model's config (checked against a stored cache; builds a fresh one).
            device: the model's device.

        Returns:
            ``(cache, n_reused)``: a cache holding exactly the first ``n_reused`` tokens of
            ``input_ids``, or a fresh cache (:attr:`cache_kwargs`) and ``0`` when no stored
            prefix matches. Prefill ``input_ids[n_reused:]`` through it.

        Raises:
            FormatError: a stored entry is damaged (a disk store checks its checksum first).
        """
        ids = _token_row(input_ids)
        found = self.store.lookup(ids.numpy()) if ids.numel() else None
        if found is None:
            return NexusQuantCache(config, **self.cache_kwargs), 0
        n, blob = found
        cache = cache_from_bytes(blob, config, device, offload=self.cache_kwargs.get("offload"))
        if cache.get_seq_length() != n:
            raise FormatError(f"the entry stored under {n} tokens holds a cache of {cache.get_seq_length()} positions")
        return cache, n


class PrefixGeneration(NamedTuple):
    """What :func:`generate_with_prefix` returns.

    Attributes:
        output: ``generate``'s return value (``(1, n + new)`` token ids, or its output object).
        reused: prompt tokens restored from the store instead of computed.
        cache: the cache after generation.
    """

    output: Any
    reused: int
    cache: NexusQuantCache


def generate_with_prefix(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    prefix_cache: PrefixCache,
    *,
    store_output: bool = True,
    **generate_kwargs: Any,
) -> PrefixGeneration:
    """``model.generate`` on one prompt, reusing and storing compressed prefixes (see the
    module docstring).

    Args:
        model: a transformers causal LM.
        input_ids: ``(1, n)`` or ``(n,)`` prompt token ids, ``n >= 1`` (no padding).
        prefix_cache: where prefixes are found and stored.
        store_output: also store the cache after generation under the generated sequence minus
            its last token (only when that cache holds exactly those tokens in one row: not
            under beam search or several return sequences).
        **generate_kwargs: passed to ``generate`` (``max_new_tokens``, ``do_sample``, ...);
            the cache is given by this function, so no ``cache``/``past_key_values``.

    Returns:
        A :class:`PrefixGeneration`: ``generate``'s output, the prompt tokens reused, the cache.
    """
    given = [name for name in CACHE_KWARGS if name in generate_kwargs]
    if given:
        raise InvalidArgumentError(f"generate_with_prefix provides the cache itself; do not pass {given[0]}=")
    mask = generate_kwargs.get("attention_mask")
    if mask is not None and not bool(torch.as_tensor(mask).all()):
        raise InvalidArgumentError("generate_with_prefix takes one unpadded prompt; attention_mask has zeros")
    prompt = _token_row(input_ids)
    if prompt.numel() == 0:
        raise InvalidArgumentError("input_ids must hold at least one token")
    device = next(model.parameters()).device
    head = prompt[:-1]
    cache, reused = prefix_cache.restore(head, model.config, device)
    keyword = cache_kwarg(model)
    if head.numel() > reused:
        forward_kwargs: dict[str, Any] = {keyword: cache, "use_cache": True}
        if "logits_to_keep" in inspect.signature(model.forward).parameters:
            forward_kwargs["logits_to_keep"] = 1
        with torch.no_grad():
            model(input_ids=head[reused:][None].to(device), **forward_kwargs)
        prefix_cache.save(head, cache)
    output = model.generate(prompt[None].to(device), **{keyword: cache}, **generate_kwargs)
    if store_output:
        sequences = output if torch.is_tensor(output) else output.sequences
        if _batch(cache) == 1 and sequences.shape[0] == 1 and cache.get_seq_length() == sequences.shape[1] - 1:
            prefix_cache.save(sequences[0, :-1], cache)
    return PrefixGeneration(output, reused, cache)


__all__ = ["PrefixCache", "PrefixGeneration", "generate_with_prefix"]
