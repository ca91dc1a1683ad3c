"""``MemoryReport``: the bytes a ``NexusQuantCache`` really holds, measured from its tensors.

Every byte is counted from the storages of the tensors the cache holds (``untyped_storage()
.nbytes()``, each storage once), so capacity slack and views that pin a larger storage are
counted as held. ``used`` counts only the bytes occupied by stored tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from ..memory import format_bytes

#: Memory components, in report order.
COMPONENTS = ("codes", "scales", "sinks", "window", "bookkeeping", "other_layers")

_DESCRIPTIONS = {
    "codes": "packed E8 codes (K and V)",
    "scales": "fp16 scales, one per coded head-vector",
    "sinks": "sink tokens, model dtype",
    "window": "recent window, model dtype",
    "bookkeeping": "row lengths, padding",
    "other_layers": "transformers' own layers (sliding etc.)",
}


def storage_bytes(tensors: Iterable[torch.Tensor], seen: set[tuple[str, int]]) -> int:
    """Bytes of the distinct storages behind ``tensors`` not already in ``seen`` (updated)."""
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if storage.nbytes() == 0 or key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


@dataclass(frozen=True)
class MemoryReport:
    """What a :class:`~nexusquant.NexusQuantCache` holds, in bytes, and what it saves.

    Attributes:
        allocated: bytes held per component (``codes``, ``scales``, ``sinks``, ``window``,
            ``bookkeeping``: row lengths and padding vectors; ``other_layers``: every tensor held by
            transformers' own layer objects for layers the cache does not compress, e.g.
            sliding-window layers), capacity slack included.
        used: bytes occupied by stored tokens per component (``allocated`` minus unused
            capacity; bookkeeping and other layers count as used).
        tokens_per_row: real tokens stored per row (pads excluded) in a compressed layer.
        seq_length: ``T_abs``, the padded sequence length: what ``cache.get_seq_length()``
            returns and what a ``DynamicCache`` holds per row (pads included).
        batch_size: rows.
        compressed_layers: layers held compressed (the others are in ``other_layers``).
        dtype: the model dtype of the cached tensors (``None`` before the first forward).
        baseline_bytes: what ``DynamicCache(config=...)`` would hold for the same tokens in the
            model dtype: for each compressed layer ``2 * B * kv_heads * T_abs * head_dim *
            dtype_bytes`` (K and V; pads included, as DynamicCache stores them), plus the K/V
            tensors of the other layers as held.
        fp16_baseline_bytes: the same element count at 2 bytes per element.
        cuda_allocated_delta: on CUDA, ``torch.cuda.memory_allocated()`` now minus when the cache
            was created (anything else allocated meanwhile is included); ``None`` off CUDA.
    """

    allocated: dict[str, int]
    used: dict[str, int]
    tokens_per_row: tuple[int, ...]
    seq_length: int
    batch_size: int
    compressed_layers: int
    dtype: torch.dtype | None
    baseline_bytes: int
    fp16_baseline_bytes: int
    cuda_allocated_delta: int | None = None

    @property
    def total(self) -> int:
        """Every byte the cache holds."""
        return sum(self.allocated.values())

    @property
    def used_total(self) -> int:
        """Bytes occupied by stored tokens and bookkeeping (``total`` minus capacity slack)."""
        return sum(self.used.values())

    @property
    def tokens(self) -> int:
        """Real tokens stored, summed over rows (per compressed layer)."""
        return sum(self.tokens_per_row)

    @property
    def ratio(self) -> float:
        """``baseline_bytes / total``: how much smaller than a model-dtype DynamicCache."""
        return self.baseline_bytes / self.total if self.total else float("nan")

    @property
    def fp16_ratio(self) -> float:
        """``fp16_baseline_bytes / total``: how much smaller than an fp16 DynamicCache."""
        return self.fp16_baseline_bytes / self.total if self.total else float("nan")

    @property
    def used_fp16_ratio(self) -> float:
        """``fp16_baseline_bytes / used_total``: the ratio without capacity slack."""
        return self.fp16_baseline_bytes / self.used_total if self.used_total else float("nan")

    def __str__(self) -> str:
        dtype = str(self.dtype).replace("torch.", "") if self.dtype is not None else "-"
        lines = [
            f"NexusQuantCache memory: batch {self.batch_size}, padded length {self.seq_length}, "
            f"{self.tokens} real tokens (per row {list(self.tokens_per_row)}), "
            f"{self.compressed_layers} compressed layers",
            f"  {'component':<14}{'allocated':>16}{'used':>16}  what",
        ]
        for name in COMPONENTS:
            lines.append(
                f"  {name:<14}{self.allocated[name]:>14,} B{self.used[name]:>14,} B  {_DESCRIPTIONS[name]}"
            )
        lines.append(f"  {'total':<14}{self.total:>14,} B{self.used_total:>14,} B  {format_bytes(self.total)}")
        lines.append(
            f"  DynamicCache ({dtype}): {self.baseline_bytes:,} B -> ratio {self.ratio:.2f}x"
        )
        lines.append(
            f"  DynamicCache (fp16):  {self.fp16_baseline_bytes:,} B -> ratio {self.fp16_ratio:.2f}x "
            f"({self.used_fp16_ratio:.2f}x without capacity slack)"
        )
        if self.cuda_allocated_delta is not None:
            lines.append(f"  CUDA allocator delta since creation: {self.cuda_allocated_delta:,} B")
        return "\n".join(lines)


__all__ = ["MemoryReport", "COMPONENTS", "storage_bytes"]
