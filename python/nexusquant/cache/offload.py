"""Host-RAM offload of a :class:`~nexusquant.NexusQuantCache`'s packed codes, with prefetch.

``NexusQuantCache(config, offload="host")`` builds its full-attention layers as
:class:`OffloadedLayer`: a :class:`~nexusquant.cache.layer.NexusQuantLayer` whose packed codes and
scales (the bulk of a long cache) live in host memory, while its sinks and recent window stay on
the model's device::

    key_codes / value_codes     (B, H, Cc, d*bits/8)   uint8    host (pinned when the model is on CUDA)
    key_scales / value_scales   (B, H, Cc)             float16  host (pinned when the model is on CUDA)
    sink_*, window_*            as NexusQuantLayer              the model's device

The layers of a cache form a ring (:func:`link_offload`): when layer ``i``'s ``update`` starts,
it issues the copy of layer ``i + 1``'s codes and scales to the device on a side stream and records
an event, so the copy overlaps layer ``i``'s attention and MLP; layer ``i + 1``'s update makes the
current stream wait for that event and decodes from the device copy. The last layer prefetches the
first for the next forward, so at most two layers' codes are on the device at any time, and only
during a forward (plus the first layer's, between forwards). Codes coded during a forward are
written back to the host buffers (a blocking device-to-host copy of the new slots only, once per
``block`` tokens per row). A prefetched copy carries the version of the host buffers it was taken
from; any later change (write-back, beam reordering, batch selection, reset) makes it stale, and a
stale or missing copy is replaced by a copy on the current stream.

On CPU (a model on the CPU) there is nothing to move: the codes already live in host memory, the
layer behaves exactly like :class:`NexusQuantLayer`, and no CUDA function is ever called.
:meth:`~nexusquant.NexusQuantCache.memory_report` counts the host buffers under ``codes`` and
``scales`` exactly as it counts a non-offloaded layer's (same shapes, same capacity), and the
transient device copies not at all (like the materialised keys and values).

Offload and token eviction do not combine: ``EvictableLayer.from_layer`` accepts only a plain
``NexusQuantLayer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import DeviceError, InvalidArgumentError
from .layer import NexusQuantLayer

#: Values of ``NexusQuantCache(offload=...)``: ``None`` keeps every buffer on the model's device,
#: ``"host"`` keeps the packed codes and scales in host memory.
OFFLOAD_MODES = (None, "host")

#: The four buffers an OffloadedLayer keeps in host memory, in a fixed order.
CODE_BUFFERS = ("key_codes", "key_scales", "value_codes", "value_scales")


def check_offload(offload: object) -> str | None:
    """Return ``offload`` if it is one of :data:`OFFLOAD_MODES`, else raise InvalidArgumentError."""
    if offload not in OFFLOAD_MODES:
        raise InvalidArgumentError(f"offload must be one of {list(OFFLOAD_MODES)}, got {offload!r}")
    return offload  # type: ignore[return-value]


def layer_class(offload: str | None) -> type[NexusQuantLayer]:
    """The layer class of a full-attention layer for ``offload`` (checked):
    :class:`NexusQuantLayer` for ``None``, :class:`OffloadedLayer` for ``"host"``."""
    return NexusQuantLayer if check_offload(offload) is None else OffloadedLayer


def link_offload(layers: Sequence[Any]) -> None:
    """Chain the :class:`OffloadedLayer` objects among ``layers`` (a cache's ``layers``, in
    order) into a prefetch ring sharing one side stream per device: each one's ``update``
    prefetches the next one's codes, the last one's the first one's. Other layers are skipped;
    a single offloaded layer prefetches nothing (its codes are copied when it needs them)."""
    ring = [layer for layer in layers if isinstance(layer, OffloadedLayer)]
    streams = _SideStreams()
    for i, layer in enumerate(ring):
        layer.next_layer = ring[(i + 1) % len(ring)] if len(ring) > 1 else None
        layer.side_streams = streams


class _SideStreams:
    """One CUDA side stream per device, created on first use (never on a CPU-only run)."""

    def __init__(self) -> None:
        self._streams: dict[torch.device, torch.cuda.Stream] = {}

    def get(self, device: torch.device) -> torch.cuda.Stream:
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device=device)
        return stream


@dataclass(frozen=True)
class _Staged:
    """Device copies of a layer's code buffers (in :data:`CODE_BUFFERS` order), the version of
    the host buffers they were copied from, and the event recorded after the copies."""

    tensors: tuple[torch.Tensor, ...]
    version: int
    event: torch.cuda.Event


class OffloadedLayer(NexusQuantLayer):
    """A :class:`NexusQuantLayer` whose packed codes and scales live in host memory (see the
    module docstring). Takes the :class:`NexusQuantLayer` arguments.

    Attributes:
        next_layer: the layer whose codes this layer's ``update`` prefetches (set by
            :func:`link_offload`; ``None``: no prefetch).
        side_streams: the CUDA side streams the prefetch copies run on, shared by a cache's
            layers (set by :func:`link_offload`).
    """

    #: The codes live in host memory, where a fused kernel cannot read them.
    hands_over_packed = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.next_layer: OffloadedLayer | None = None
        self.side_streams = _SideStreams()
        #: Incremented whenever the host code buffers change; a prefetched copy of an older
        #: version is stale.
        self._version = 0
        self._staged: _Staged | None = None

    # ----------------------------------------------------------------------------------------
    # transformers' layer API

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """:meth:`NexusQuantLayer.lazy_initialization`, with the (empty) code and scale buffers
        in host memory. Raises DeviceError for a device other than the CPU or CUDA."""
        if key_states.device.type not in ("cpu", "cuda"):
            raise DeviceError(
                f"offload='host' needs a model on the CPU or a CUDA device, got key_states on "
                f"{key_states.device}"
            )
        super().lazy_initialization(key_states, value_states)
        self.offload_codes()

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`NexusQuantLayer.update` (same arguments and result), run on a device copy of
        the codes; prefetches :attr:`next_layer`'s codes meanwhile and writes the tokens coded by
        this forward back to the host buffers."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.device.type != "cuda":
            return super().update(key_states, value_states, *args, **kwargs)
        host = self._buffers()
        coded_before = self.lengths[:, 1].clone()
        self._set_buffers(self._take_staged())
        if self.next_layer is not None:
            self.next_layer.prefetch()
        try:
            out = super().update(key_states, value_states, *args, **kwargs)
        except BaseException:
            self._set_buffers(host)
            raise
        self._write_back(host, coded_before)
        return out

    def reset(self) -> None:
        """Drop every stored token and any prefetched copy."""
        super().reset()
        self._staged = None
        self._version += 1

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the rows for beam search (host buffers stay in host memory)."""
        super().reorder_cache(beam_idx)
        self.offload_codes()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows ``indices`` (host buffers stay in host memory)."""
        super().batch_select_indices(indices)
        self.offload_codes()

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row ``repeats`` times (host buffers stay in host memory)."""
        super().batch_repeat_interleave(repeats)
        self.offload_codes()

    # ----------------------------------------------------------------------------------------
    # offload

    def offload_codes(self) -> None:
        """Move the code and scale buffers to host memory (pinned for a CUDA layer) if they are
        not there yet, and mark any prefetched copy stale. Called after anything replaces the
        buffers (initialization, row selection, loading a saved cache)."""
        if not self.is_initialized:
            return
        self._set_buffers(tuple(self._to_host(t) for t in self._buffers()))
        self._staged = None
        self._version += 1

    def prefetch(self) -> None:
        """Start copying the code and scale buffers to the device on a side stream (CUDA only;
        nothing if a current copy is already under way, or on CPU)."""
        if not self.is_initialized or self.device.type != "cuda" or (self._staged is not None and self._staged.version == self._version):
            return
        stream = self.side_streams.get(self.device)
        with torch.cuda.stream(stream):
            tensors = tuple(t.to(self.device, non_blocking=True) for t in self._buffers())
            event = torch.cuda.Event()
            event.record(stream)
        self._staged = _Staged(tensors, self._version, event)

    def _take_staged(self) -> tuple[torch.Tensor, ...]:
        """Device copies of the code buffers, usable on the current stream: the prefetched ones
        when current (the current stream waits for their event), else fresh copies."""
        staged, self._staged = self._staged, None
        current = torch.cuda.current_stream(self.device)
        if staged is None or staged.version != self._version:
            return tuple(t.to(self.device, non_blocking=True) for t in self._buffers())
        current.wait_event(staged.event)
        for t in staged.tensors:
            t.record_stream(current)  # allocated on the side stream, used and freed on this one
        return staged.tensors

    def _write_back(self, host: tuple[torch.Tensor, ...], coded_before: torch.Tensor) -> None:
        """Make the host buffers hold what the device buffers hold after an update: a grown
        buffer is copied whole into a new pinned one, otherwise only the slots coded by this
        forward (rows' ``[c_before, c_after)``, as one range over the rows) are copied."""
        device = self._buffers()
        lo = int(coded_before.min()) if coded_before.numel() else 0
        hi = int(self.lengths[:, 1].max()) if self.lengths.numel() else 0
        changed = False
        out = []
        for h, d in zip(host, device):
            if h.shape != d.shape:
                h = self._to_host(d)
                changed = True
            elif hi > lo:
                h[:, :, lo:hi].copy_(d[:, :, lo:hi])
                changed = True
            out.append(h)
        self._set_buffers(tuple(out))
        if changed:
            self._version += 1

    def _to_host(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in host memory: pinned for a CUDA layer (copied unless it already is)."""
        if self.device.type != "cuda":
            return t.cpu()
        if t.device.type == "cpu" and t.is_pinned():
            return t
        out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        out.copy_(t)
        return out

    def _buffers(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, name) for name in CODE_BUFFERS)

    def _set_buffers(self, tensors: tuple[torch.Tensor, ...]) -> None:
        for name, t in zip(CODE_BUFFERS, tensors):
            setattr(self, name, t)

    def __repr__(self) -> str:
        return super().__repr__().replace("NexusQuantLayer", "OffloadedLayer", 1)


__all__ = ["OffloadedLayer", "OFFLOAD_MODES", "CODE_BUFFERS", "check_offload", "layer_class", "link_offload"]
