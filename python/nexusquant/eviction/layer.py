"""``EvictableLayer``: a :class:`~nexusquant.cache.NexusQuantLayer` from which tokens can be
physically removed.

Two lengths describe a layer after eviction:

* the *physical* length ``T = cumulative_length``: the rows' stored tokens are right-aligned in
  ``T`` slots (what attention sees, and what the base layer materialises);
* the *absolute* length ``T_abs = T + offset``: what a ``DynamicCache`` that never evicted would
  hold, i.e. the position the next token takes. ``offset`` grows by ``T_before - T_after`` at
  every eviction.

``get_seq_length`` reports ``T_abs``, so ``generate`` slices its inputs and numbers positions as
if nothing were evicted (RoPE positions of new tokens stay the original absolute ones), and
``get_mask_sizes`` reports ``(T + q, offset)``: transformers' mask functions then index the 2-D
padding mask at columns ``[offset, T_abs + q)`` and compare ``kv_idx = offset + j`` with
``q_idx = T_abs + i``, which is the causal order of the compacted slots. The 2-D mask's columns
``[offset, T_abs + q)`` must therefore describe the *compacted* layout; the session's forward
pre-hook writes them (see :mod:`nexusquant.eviction.context`). ``baseline_elements`` counts
``T_abs``, so ``memory_report()`` compares against the full uncompressed context and its
``fp16_ratio`` includes the eviction.

Eviction never touches the sinks or the exact window of a coding layer: only coded tokens are
removed, whole (codes and scales move, nothing is re-quantized), the same number in every KV head
of a row. A pass-through layer (``quantize=False``, everything exact) evicts from its window
instead. The touched buffers are reallocated at their exact new size, so the freed bytes leave
the process's tensors at once (``memory_report()`` shows it).

With decode-time eviction the layer also holds ``decode_scores``: ``(B, H, T)`` float32, the
attention each stored token received since its row's last eviction, right-aligned like the
tokens. It is reported under ``bookkeeping``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..cache import NexusQuantLayer
from ..errors import InvalidArgumentError, ShapeError


class EvictableLayer(NexusQuantLayer):
    """A :class:`NexusQuantLayer` with token eviction (see the module docstring).

    Build one from a layer with :meth:`from_layer`; the constructor takes the
    :class:`NexusQuantLayer` arguments.
    """

    #: transformers' masks cover absolute positions, not the compacted slots a PackedKV maps.
    hands_over_packed = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        #: Positions evicted from the padded length: ``get_seq_length() - cumulative_length``.
        self.offset = 0
        #: ``(B, H, T)`` float32 attention received since each row's last eviction, or None.
        self.decode_scores: torch.Tensor | None = None

    @classmethod
    def from_layer(cls, layer: NexusQuantLayer) -> EvictableLayer:
        """``layer`` itself if already evictable, else an evictable layer holding its state
        (tensors shared, not copied; ``layer`` must not be used afterwards)."""
        if isinstance(layer, cls):
            return layer
        if type(layer) is not NexusQuantLayer:
            raise InvalidArgumentError(
                f"token eviction needs plain NexusQuantLayer layers (it does not combine with "
                f"offload='host' or other layer subclasses), got a {type(layer).__name__}"
            )
        evictable = cls.__new__(cls)
        evictable.__dict__.update(vars(layer))
        evictable.offset = 0
        evictable.decode_scores = None
        return evictable

    # ----------------------------------------------------------------------------------------
    # lengths

    def get_seq_length(self) -> int:
        """The absolute length ``T_abs`` (evicted positions included)."""
        return self.cumulative_length + self.offset

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """``(T + query_length, offset)``: the compacted key slots and where they start in the
        absolute numbering of the 2-D mask."""
        return self.cumulative_length + query_length, self.offset

    def baseline_elements(self) -> int:
        """Elements an uncompressed ``DynamicCache`` would hold for the same context:
        ``B * H * T_abs * (d + dv)``."""
        if not self.is_initialized:
            return 0
        return self.batch * self.heads * self.get_seq_length() * (self.head_dim + self.value_head_dim)

    # ----------------------------------------------------------------------------------------
    # transformers' layer API

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """:meth:`NexusQuantLayer.update`, with ``decode_scores`` (if held) extended by the
        forward's new slots."""
        old_length = self.cumulative_length
        out = super().update(key_states, value_states, *args, **kwargs)
        if self.decode_scores is not None:
            grown = self.cumulative_length - old_length
            self.decode_scores = torch.nn.functional.pad(self.decode_scores, (0, grown))
        return out

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the newest positions: ``-n`` removes ``n``, ``0`` nothing; a positive value is
        the legacy form, the absolute length to keep. Only stored (not evicted) positions can be
        removed."""
        if not self.is_initialized or tokens_to_remove == 0:
            return
        remove = -tokens_to_remove if tokens_to_remove < 0 else max(0, self.get_seq_length() - tokens_to_remove)
        if remove == 0:
            return
        if remove > self.cumulative_length:
            raise InvalidArgumentError(
                f"crop can remove at most the {self.cumulative_length} stored positions of an "
                f"evicted layer, got a request to remove {remove}"
            )
        super().crop(-remove)
        if self.decode_scores is not None:
            self.decode_scores = self.decode_scores[..., : self.cumulative_length].clone()

    def reset(self) -> None:
        """Drop every stored token, the eviction offset and the scores."""
        super().reset()
        self.offset = 0
        self.decode_scores = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the rows for beam search (``decode_scores`` too)."""
        super().reorder_cache(beam_idx)
        if self.decode_scores is not None:
            self.decode_scores = self.decode_scores.index_select(0, beam_idx.to(self.decode_scores.device))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows ``indices`` (``decode_scores`` too)."""
        super().batch_select_indices(indices)
        if self.decode_scores is not None:
            index = indices.to(self.decode_scores.device) if torch.is_tensor(indices) else indices
            self.decode_scores = self.decode_scores[index]

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row ``repeats`` times (``decode_scores`` too)."""
        super().batch_repeat_interleave(repeats)
        if self.decode_scores is not None:
            self.decode_scores = self.decode_scores.repeat_interleave(repeats, dim=0)

    # ----------------------------------------------------------------------------------------
    # memory

    def held_tensors(self) -> dict[str, list[torch.Tensor]]:
        """:meth:`NexusQuantLayer.held_tensors` plus ``decode_scores`` under bookkeeping."""
        held = super().held_tensors()
        if held and self.decode_scores is not None:
            held["bookkeeping"] = [*held["bookkeeping"], self.decode_scores]
        return held

    def used_bytes(self) -> dict[str, int]:
        """:meth:`NexusQuantLayer.used_bytes` plus ``decode_scores`` under bookkeeping."""
        used = super().used_bytes()
        if used and self.decode_scores is not None:
            used["bookkeeping"] += self.decode_scores.untyped_storage().nbytes()
        return used

    # ----------------------------------------------------------------------------------------
    # eviction

    def row_lengths(self) -> list[tuple[int, int, int]]:
        """``(sinks, coded, window)`` token counts of every row."""
        if not self.is_initialized:
            return []
        return [tuple(int(x) for x in row) for row in self.lengths.tolist()]

    def ensure_decode_scores(self) -> torch.Tensor:
        """``decode_scores``, allocated as zeros ``(B, H, T)`` if not held yet."""
        if self.decode_scores is None:
            self.decode_scores = torch.zeros(
                self.batch, self.heads, self.cumulative_length, dtype=torch.float32, device=self.device
            )
        return self.decode_scores

    def evictable_span(self) -> list[tuple[int, int, int]]:
        """Per row, ``(before, count, after)``: the tokens eviction may remove are the row's
        ``count`` stored tokens after its first ``before`` ones, and the last ``after`` stored
        tokens are always kept. A coding layer evicts coded tokens (its exact window is kept); a
        pass-through layer (``quantize=False``) evicts from its window."""
        if self.quantize:
            return [(s, c, w) for s, c, w in self.row_lengths()]
        return [(s + c, w, 0) for s, c, w in self.row_lengths()]

    def evict(self, keep: Sequence[torch.Tensor | None]) -> None:
        """Keep only the given evictable tokens of each row; free the rest.

        Args:
            keep: one entry per row: ``None`` keeps the row whole; otherwise an ``(H, k_r)``
                int64 tensor of indices into the row's evictable span (:meth:`evictable_span`:
                coded slots, or window slots of a pass-through layer), ascending in every head,
                the same count ``k_r`` in every head.

        The evicted part's buffers become ``(B, H, max_r kept_r, ...)`` and the window buffers
        exact-sized, all freshly allocated; ``cumulative_length`` becomes the longest row's
        stored count and ``offset`` absorbs the difference, so ``get_seq_length()`` is
        unchanged. ``decode_scores`` of evicted rows restart at zero.
        """
        if not self.is_initialized:
            raise InvalidArgumentError("evict() needs an initialized layer: run a forward first")
        rows = self.row_lengths()
        if len(keep) != len(rows):
            raise ShapeError(f"keep must have one entry per row ({len(rows)}), got {len(keep)}")
        column = 1 if self.quantize else 2
        names = (("key_codes", "value_codes", "key_scales", "value_scales") if self.quantize
                 else ("window_keys", "window_values"))
        counts = [row[column] for row in rows]
        kept = []
        for r, (count, idx) in enumerate(zip(counts, keep)):
            if idx is None:
                kept.append(count)
                continue
            if idx.dim() != 2 or idx.shape[0] != self.heads or idx.shape[1] > count or (
                idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= count)
            ):
                raise ShapeError(
                    f"keep[{r}] must be (heads={self.heads}, k <= {count}) indices in [0, {count}), "
                    f"got shape {tuple(idx.shape)}"
                )
            kept.append(idx.shape[1])
        capacity = max(kept, default=0)
        for name in names:
            old = getattr(self, name)
            new = old.new_zeros((self.batch, self.heads, capacity, *old.shape[3:]))
            for r, (count, idx) in enumerate(zip(counts, keep)):
                if idx is None:
                    new[r, :, :count] = old[r, :, :count]
                    continue
                index = idx.to(old.device)
                if old.dim() == 4:
                    index = index[..., None].expand(-1, -1, old.shape[3])
                new[r, :, : idx.shape[1]] = torch.gather(old[r], 1, index)
            setattr(self, name, new)
        if self.quantize:
            window = max((w for _, _, w in rows), default=0)
            self.window_keys = self.window_keys[:, :, :window].clone()
            self.window_values = self.window_values[:, :, :window].clone()

        before = self.cumulative_length
        stored_before = [s + c + w for s, c, w in rows]
        new_rows = [list(row) for row in rows]
        for row, k in zip(new_rows, kept):
            row[column] = k
        stored_after = [sum(row) for row in new_rows]
        after = max(stored_after, default=0)
        if self.decode_scores is not None:
            scores = self.decode_scores.new_zeros(self.batch, self.heads, after)
            for r, (idx, n) in enumerate(zip(keep, stored_before)):
                if idx is None and n:
                    scores[r, :, after - n :] = self.decode_scores[r, :, before - n :]
            self.decode_scores = scores
        self.lengths = torch.tensor(new_rows, dtype=torch.int32).reshape(self.batch, 3)
        self.cumulative_length = after
        self.offset += before - after

    def __repr__(self) -> str:
        mode = f"K{self.key_bits}V{self.value_bits}" if self.quantize else "pass-through"
        return (
            f"EvictableLayer({mode}, sink_tokens={self.sink_tokens}, window={self.window}, "
            f"block={self.block}, stored_length={self.cumulative_length}, "
            f"seq_length={self.get_seq_length()})"
        )


__all__ = ["EvictableLayer"]
