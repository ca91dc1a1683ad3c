"""``NexusQuantCache``: a transformers ``Cache`` whose full-attention layers hold packed codes.

Use it like any transformers cache::

    cache = NexusQuantCache(model.config, key_bits=3, value_bits=2)
    with cache.attach(model):              # needed for left-padded batches (see below)
        out = model.generate(**inputs, cache=cache, max_new_tokens=64)
    print(cache.memory_report())

On transformers >= 5.24 the keyword is ``cache=``; ``past_key_values=`` also works there (with
transformers' deprecation warning) and is the only one before 5.24 (``nexusquant._hf.cache_kwarg``
gives the right one for a model).

Layers: one :class:`~nexusquant.cache.layer.NexusQuantLayer` per full-attention layer; every other
layer kind (sliding-window and chunked attention, linear attention, KV-shared "dummy" layers)
keeps transformers' own layer class, exactly as ``DynamicCache(config=...)`` builds it. A
sliding-window layer holds at most ``sliding_window - 1`` tokens, so it is small next to the
full-attention layers at the lengths where memory matters; it is stored exactly and reported
under ``other_layers`` by :meth:`NexusQuantCache.memory_report`. (A model whose every layer
slides, e.g. a Mistral config with ``sliding_window`` set, therefore gets no compression.)

Padding: the Cache API never sees the 2-D attention mask, so a padded batch must tell the cache
which positions are left padding, through :meth:`NexusQuantCache.set_attention_mask` or, simpler,
``with cache.attach(model):`` which installs a forward pre-hook on that model instance (removed
on exit) that passes each forward's ``attention_mask`` on. Without a mask every position is a
real token, which is right for unpadded batches. Only left padding is supported (what
``generate`` produces for decoder-only models); a mask with zeros after a row's first real token
is rejected.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from .. import codec
from .._hf import (
    CACHE_KWARGS,
    Cache,
    DynamicLayer,
    DynamicSlidingWindowLayer,
    decoder_config,
    forward_argument,
    layer_types_and_kwargs,
    transformers_layer,
)
from ..errors import InvalidArgumentError, ShapeError
from .layer import NexusQuantLayer
from .offload import layer_class, link_offload
from .report import COMPONENTS, MemoryReport, storage_bytes

#: The layer type the cache compresses; every other type keeps transformers' layer class.
COMPRESSED_LAYER_TYPE = "full_attention"


# --------------------------------------------------------------------------------------------
# validation


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_bits_pair(name: str, pair: object) -> tuple[int, int]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise InvalidArgumentError(f"{name} must be a (key_bits, value_bits) pair, got {pair!r}")
    return codec.check_bits(pair[0], f"{name}[0] (key bits)"), codec.check_bits(pair[1], f"{name}[1] (value bits)")


def _config_int(config: Any, name: str) -> int | None:
    value = getattr(config, name, None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"config.{name} must be a positive integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# model layout


@dataclass(frozen=True)
class _Layout:
    """Per-layer cache types of a model, and its head geometry when known."""

    layer_types: list[str]
    layer_kwargs: list[dict[str, Any]]
    head_dim: int | None

    @classmethod
    def from_config(cls, config: Any) -> _Layout:
        if config is None:
            raise InvalidArgumentError(
                "config must be a transformers model config (e.g. model.config), got None"
            )
        text = decoder_config(config)
        layers = _config_int(text, "num_hidden_layers")
        heads = _config_int(text, "num_attention_heads")
        head_dim = _config_int(text, "head_dim")
        hidden = _config_int(text, "hidden_size")
        if layers is None or heads is None or (head_dim is None and hidden is None):
            missing = [n for n, v in (("num_hidden_layers", layers), ("num_attention_heads", heads))
                       if v is None]
            if head_dim is None and hidden is None:
                missing.append("head_dim or hidden_size")
            raise InvalidArgumentError(
                f"config must define num_hidden_layers, num_attention_heads and head_dim or "
                f"hidden_size (positive integers); {type(config).__name__} lacks {', '.join(missing)}"
            )
        if head_dim is None:
            head_dim = hidden // heads
        types, kwargs = layer_types_and_kwargs(text)
        return cls(types, kwargs, head_dim)

    @classmethod
    def from_dynamic_cache(cls, cache: Cache) -> _Layout:
        types, kwargs = [], []
        for layer in cache.layers:
            if isinstance(layer, DynamicSlidingWindowLayer):
                types.append("sliding_attention")
                kwargs.append({"sliding_window": layer.sliding_window})
            elif isinstance(layer, DynamicLayer):
                types.append(COMPRESSED_LAYER_TYPE)
                kwargs.append({})
            else:
                raise InvalidArgumentError(
                    f"without a config, compress_kv_cache handles DynamicLayer and "
                    f"DynamicSlidingWindowLayer layers, got {type(layer).__name__}; pass config="
                )
        return cls(types, kwargs, None)


#: Values of ``NexusQuantCache(attention=...)``.
ATTENTION_MODES = ("auto", "fused", "dequantize")


def _is_nexusquant_attention(name: str | None) -> bool:
    """Whether transformers' attention function registered as ``name`` is nexusquant's."""
    if not isinstance(name, str):
        return False
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: PLC0415

    from ..gpu.attention import nexusquant_attention  # noqa: PLC0415 - imports no CuPy

    return ALL_ATTENTION_FUNCTIONS.get(name) is nexusquant_attention


# --------------------------------------------------------------------------------------------
# the cache


class NexusQuantCache(Cache):
    """A transformers ``Cache`` holding full-attention layers as packed E8 codes + fp16 scales.

    Each full-attention layer keeps the first ``sink_tokens`` real tokens of every row and its
    most recent tokens (``window``, plus up to ``block - 1`` not yet coded) in the model dtype;
    older tokens leave the window in blocks of ``block`` and are coded once, at ``key_bits`` /
    ``value_bits`` bits per element plus a 2-byte scale per head-vector. Coded tokens are never
    re-quantized, across any number of ``generate`` calls. See :mod:`nexusquant.cache.layer` for
    the storage layout and :mod:`nexusquant.cache.kvcache` for padding and layer kinds.

    Args:
        config: the model's config (``model.config``); needs ``num_hidden_layers``,
            ``num_attention_heads`` and ``head_dim`` or ``hidden_size``.
        key_bits, value_bits: bits per element, 1..8 (2, 3, 4 tuned). Values with fewer bits
            than the layer's keys, and keys when ``window == 0`` and ``sink_tokens == 0``, are
            stored with the unbiased fp16 scale (each decodes with ``<k̂, k> = |k|²``) instead
            of the codec's least-squares one; see ``NexusQuantLayer.unbiased_keys`` and
            ``NexusQuantLayer._unbias_scales``.
        sink_tokens: first real tokens per row kept in the model dtype (>= 0).
        window: most recent tokens kept in the model dtype (>= 0).
        block: tokens leave the window in blocks of this many (>= 1).
        layer_bits: ``{layer_idx: (key_bits, value_bits)}`` overrides for full-attention layers.
        boundary_layers: the first and last this many layers use ``boundary_bits`` (0: none).
        boundary_bits: ``(key_bits, value_bits)`` of the boundary layers.
        seed: rotation seed of the codec, in [0, 2^64).
        quantize: ``False`` codes nothing: every token is kept exactly in the model dtype
            (pass-through; generations equal ``DynamicCache``'s).
        offload: ``None`` keeps every buffer on the model's device; ``"host"`` keeps the packed
            codes and scales in host memory (pinned on CUDA) and prefetches the next layer's
            during each layer's update (see :mod:`nexusquant.cache.offload`).
        attention: how single-token decode steps reach attention: ``"auto"`` (default) hands
            the packed codes to nexusquant's fused attention when the model runs it
            (``attn_implementation="nexusquant"``) and decodes one layer at a time otherwise;
            ``"fused"`` requires the fused attention; ``"dequantize"`` always decodes (see
            :meth:`hands_over`). Offloaded and evicting layers always decode.

    Raises:
        BitsError: a bit width outside 1..8.
        HeadDimError: the model's head_dim is not a multiple of 8 in [8, 1024] (quantize only).
        InvalidArgumentError: any other argument out of range, or a config without head
            information.
    """

    def __init__(
        self,
        config: Any,
        key_bits: int = 3,
        value_bits: int = 2,
        *,
        sink_tokens: int = 4,
        window: int = 128,
        block: int = 64,
        layer_bits: Mapping[int, tuple[int, int]] | None = None,
        boundary_layers: int = 0,
        boundary_bits: tuple[int, int] = (4, 4),
        seed: int = 0,
        quantize: bool = True,
        offload: str | None = None,
        attention: str = "auto",
    ):
        layout = _Layout.from_config(config)
        if quantize:
            codec.check_head_dim(layout.head_dim, "config head_dim")
        self._setup(
            layout,
            key_bits=key_bits,
            value_bits=value_bits,
            sink_tokens=sink_tokens,
            window=window,
            block=block,
            layer_bits=layer_bits,
            boundary_layers=boundary_layers,
            boundary_bits=boundary_bits,
            seed=seed,
            quantize=quantize,
            offload=offload,
            attention=attention,
            attention_config=decoder_config(config),
        )

    def _setup(
        self,
        layout: _Layout,
        *,
        key_bits: int,
        value_bits: int,
        sink_tokens: int,
        window: int,
        block: int,
        layer_bits: Mapping[int, tuple[int, int]] | None,
        boundary_layers: int,
        boundary_bits: tuple[int, int],
        seed: int,
        quantize: bool,
        offload: str | None,
        attention: str = "auto",
        attention_config: Any = None,
    ) -> None:
        key_bits = codec.check_bits(key_bits, "key_bits")
        value_bits = codec.check_bits(value_bits, "value_bits")
        sink_tokens = _check_int("sink_tokens", sink_tokens, 0)
        window = _check_int("window", window, 0)
        block = _check_int("block", block, 1)
        seed = codec.check_seed(seed)
        if not isinstance(quantize, bool):
            raise InvalidArgumentError(f"quantize must be True or False, got {quantize!r}")
        if attention not in ATTENTION_MODES:
            raise InvalidArgumentError(
                f"attention must be one of {list(ATTENTION_MODES)}, got {attention!r}"
            )
        if attention == "fused" and attention_config is None:
            raise InvalidArgumentError(
                "attention='fused' needs the model's config (NexusQuantCache(model.config, ...) or "
                "compress_kv_cache(..., config=model.config)) to check its attention implementation"
            )
        layer_cls = layer_class(offload)
        n = len(layout.layer_types)
        boundary_layers = _check_int("boundary_layers", boundary_layers, 0)
        if boundary_layers > n:
            raise InvalidArgumentError(
                f"boundary_layers must be in [0, {n}] (the model's layer count), got {boundary_layers}"
            )
        boundary_bits = _check_bits_pair("boundary_bits", boundary_bits)
        overrides: dict[int, tuple[int, int]] = {}
        if layer_bits is not None:
            if not isinstance(layer_bits, Mapping):
                raise InvalidArgumentError(
                    f"layer_bits must be a dict {{layer_idx: (key_bits, value_bits)}}, got {layer_bits!r}"
                )
            for idx, pair in layer_bits.items():
                if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)) or not 0 <= idx < n:
                    raise InvalidArgumentError(
                        f"layer_bits keys must be layer indices in [0, {n - 1}], got {idx!r}"
                    )
                if layout.layer_types[idx] != COMPRESSED_LAYER_TYPE:
                    raise InvalidArgumentError(
                        f"layer_bits[{idx}]: layer {idx} is a {layout.layer_types[idx]} layer, which "
                        f"the cache keeps uncompressed; only {COMPRESSED_LAYER_TYPE} layers take bits"
                    )
                overrides[int(idx)] = _check_bits_pair(f"layer_bits[{idx}]", pair)

        layers = []
        for idx, (kind, kwargs) in enumerate(zip(layout.layer_types, layout.layer_kwargs)):
            if kind != COMPRESSED_LAYER_TYPE:
                layers.append(transformers_layer(kind, kwargs))
                continue
            bits = (key_bits, value_bits)
            if idx < boundary_layers or idx >= n - boundary_layers:
                bits = boundary_bits
            bits = overrides.get(idx, bits)
            layers.append(
                layer_cls(
                    key_bits=bits[0],
                    value_bits=bits[1],
                    sink_tokens=sink_tokens,
                    window=window,
                    block=block,
                    seed=seed,
                    quantize=quantize,
                )
            )
        super().__init__(layers=layers)
        link_offload(self.layers)
        self.offload = offload
        self.key_bits, self.value_bits = key_bits, value_bits
        self.sink_tokens, self.window, self.block = sink_tokens, window, block
        self.seed, self.quantize = seed, quantize
        self.attention = attention
        #: The decoder config whose ``_attn_implementation`` decides the hand-over (or None).
        self._attention_config = attention_config
        #: Left padding of each row, ``(B,)`` int64 on CPU, from the last recorded mask.
        self._pads: torch.Tensor | None = None
        self._cuda_mark = (
            (torch.cuda.current_device(), torch.cuda.memory_allocated())
            if torch.cuda.is_available() and torch.cuda.is_initialized()
            else None
        )

    # ----------------------------------------------------------------------------------------
    # Cache API

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store a layer's new keys ``(B, H, q, d)`` and values; return ``(B, H, T + q, d)`` keys
        and values for attention (see :meth:`NexusQuantLayer.update`)."""
        layer = self.layers[layer_idx]
        if isinstance(layer, NexusQuantLayer):
            packed = key_states.shape[2] == 1 and layer.hands_over_packed and self.hands_over()
            return layer.update(
                key_states, value_states, pads=self._row_pads(key_states.shape[0]), packed=packed
            )
        return layer.update(key_states, value_states, *args, **kwargs)

    def hands_over(self) -> bool:
        """Whether single-token decode steps hand the layers' packed state to fused attention
        instead of decoding it (``attention`` argument; ``docs/gpu.md``, "Hand-over from the
        cache"): ``"auto"`` does when the model's attention implementation is
        :func:`nexusquant.gpu.nexusquant_attention` (registered with
        :func:`nexusquant.gpu.register_attention` and loaded with
        ``attn_implementation="nexusquant"``), ``"fused"`` requires it, ``"dequantize"`` never
        does. Any other attention function would attend to the sink and window tokens alone.

        Raises:
            InvalidArgumentError: ``attention="fused"`` and the model's attention is another.
        """
        if self.attention == "dequantize":
            return False
        name = getattr(self._attention_config, "_attn_implementation", None)
        fused = _is_nexusquant_attention(name)
        if self.attention == "fused" and not fused:
            raise InvalidArgumentError(
                f"attention='fused' needs a model whose attention implementation is nexusquant's "
                f"(nexusquant.gpu.register_attention(), then attn_implementation='nexusquant'); "
                f"this model uses {name!r}"
            )
        return fused

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the rows for beam search (every layer and the recorded padding)."""
        super().reorder_cache(beam_idx)
        if self._pads is not None:
            self._pads = self._pads.index_select(0, beam_idx.cpu())

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows ``indices`` (every layer and the recorded padding)."""
        super().batch_select_indices(indices)
        if self._pads is not None:
            self._pads = self._pads[indices.cpu() if torch.is_tensor(indices) else indices]

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row ``repeats`` times (every layer and the recorded padding)."""
        super().batch_repeat_interleave(repeats)
        if self._pads is not None:
            self._pads = self._pads.repeat_interleave(repeats, dim=0)

    def reset(self) -> None:
        """Drop every stored token and the recorded padding; settings are kept."""
        super().reset()
        self._pads = None

    # ----------------------------------------------------------------------------------------
    # persistence

    def save(self, path, *, metadata=None, config=None) -> int:
        """Write the cache to a ``.nqkv`` file (atomically); returns its length in bytes.
        See :func:`nexusquant.cache.persist.save_cache`."""
        from .persist import save_cache  # noqa: PLC0415 - the format needs the Rust extension

        return save_cache(self, path, metadata=metadata, config=config)

    @classmethod
    def load(cls, path, config=None, device="cpu", *, offload=None) -> NexusQuantCache:
        """A cache read from a ``.nqkv`` file written by :meth:`save`, ready to continue
        generation. See :func:`nexusquant.cache.persist.load_cache`."""
        from .persist import load_cache  # noqa: PLC0415 - the format needs the Rust extension

        return load_cache(path, config, device, offload=offload)

    # ----------------------------------------------------------------------------------------
    # padding

    def set_attention_mask(self, attention_mask: torch.Tensor | None) -> None:
        """Record each row's left padding for the next forwards.

        Args:
            attention_mask: ``(B, L)`` 2-D mask (any dtype; nonzero = real token) covering the
                cached and the new positions, left-padded; ``None``: no padding.

        Raises:
            InvalidArgumentError: not a 2-D tensor, or zeros after a row's first real token.
        """
        if attention_mask is None:
            self._pads = None
            return
        if not torch.is_tensor(attention_mask) or attention_mask.dim() != 2:
            raise InvalidArgumentError(
                "attention_mask must be a 2-D (batch, seq) tensor or None, got "
                f"{tuple(attention_mask.shape) if torch.is_tensor(attention_mask) else type(attention_mask).__name__}"
            )
        real = (attention_mask != 0).cpu()
        length = real.shape[1]
        pads = torch.where(real.any(dim=1), real.int().argmax(dim=1), length).long()
        bad = (real.sum(dim=1) != length - pads).nonzero().flatten().tolist()
        if bad:
            raise InvalidArgumentError(
                f"attention_mask must be left-padded (zeros only before a row's first real token); "
                f"rows {bad} have zeros after it"
            )
        self._pads = pads

    @contextmanager
    def attach(self, model: torch.nn.Module) -> Iterator[NexusQuantCache]:
        """Pass each forward's ``attention_mask`` of ``model`` to :meth:`set_attention_mask`.

        Installs a forward pre-hook on this ``model`` instance (no transformers class is
        patched) and removes it on exit. Forwards that run with a different cache are ignored.
        """
        signature = inspect.signature(model.forward)

        def hook(module, args, kwargs):
            for name in CACHE_KWARGS:
                other = forward_argument(signature, name, args, kwargs)
                if other is not None and other is not self:
                    return None
            self.set_attention_mask(forward_argument(signature, "attention_mask", args, kwargs))
            return None

        handle = model.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()

    def _row_pads(self, batch: int) -> list[int] | None:
        if self._pads is None:
            return None
        if self._pads.shape[0] != batch:
            raise ShapeError(
                f"the recorded attention mask has {self._pads.shape[0]} rows but the forward has "
                f"{batch}; record the mask of this batch (cache.attach(model) does it per forward)"
            )
        return self._pads.tolist()

    # ----------------------------------------------------------------------------------------
    # memory

    def memory_report(self) -> MemoryReport:
        """Measure the bytes held, by component, against ``DynamicCache`` (see :class:`MemoryReport`)."""
        seen: set[tuple[str, int]] = set()
        allocated = dict.fromkeys(COMPONENTS, 0)
        used = dict.fromkeys(COMPONENTS, 0)
        baseline = fp16_baseline = 0
        tokens: list[int] = []
        dtype = None
        compressed = 0
        device = None
        for layer in self.layers:
            if isinstance(layer, NexusQuantLayer):
                compressed += 1
                for name, tensors in layer.held_tensors().items():
                    allocated[name] += storage_bytes(tensors, seen)
                for name, nbytes in layer.used_bytes().items():
                    used[name] += nbytes
                if layer.is_initialized:
                    elements = layer.baseline_elements()
                    baseline += elements * torch.empty((), dtype=layer.dtype).element_size()
                    fp16_baseline += elements * 2
                    tokens = tokens or layer.tokens_per_row()
                    dtype = dtype or layer.dtype
                    device = device or layer.device
                continue
            for t in _tensors_of(layer):
                nbytes = storage_bytes([t], seen)
                allocated["other_layers"] += nbytes
                used["other_layers"] += nbytes
                baseline += nbytes
                fp16_baseline += nbytes // t.element_size() * 2 if t.is_floating_point() else nbytes
                if t.is_floating_point():
                    dtype = dtype or t.dtype
                    device = device or t.device
        if self._pads is not None:
            nbytes = storage_bytes([self._pads], seen)
            allocated["bookkeeping"] += nbytes
            used["bookkeeping"] += nbytes
        cuda_delta = None
        if self._cuda_mark is not None and device is not None and device.type == "cuda":
            index, before = self._cuda_mark
            cuda_delta = torch.cuda.memory_allocated(index) - before
        batch = len(tokens) or (self._pads.shape[0] if self._pads is not None else 0)
        return MemoryReport(
            allocated=allocated,
            used=used,
            tokens_per_row=tuple(tokens),
            seq_length=self.get_seq_length(),
            batch_size=batch,
            compressed_layers=compressed,
            dtype=dtype,
            baseline_bytes=baseline,
            fp16_baseline_bytes=fp16_baseline,
            cuda_allocated_delta=cuda_delta,
        )

    def __repr__(self) -> str:
        mode = f"K{self.key_bits}V{self.value_bits}" if self.quantize else "pass-through"
        return (
            f"NexusQuantCache({mode}, layers={len(self.layers)}, sink_tokens={self.sink_tokens}, "
            f"window={self.window}, block={self.block}, seq_length={self.get_seq_length()})"
        )


def _tensors_of(obj: Any) -> list[torch.Tensor]:
    """Tensors held by a transformers layer object: its attributes, and inside lists, tuples and
    dicts of them."""
    found: list[torch.Tensor] = []

    def visit(value: Any) -> None:
        if torch.is_tensor(value):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)

    for value in vars(obj).values():
        visit(value)
    return found


# --------------------------------------------------------------------------------------------
# conversion


def compress_kv_cache(
    dynamic_cache: Cache,
    key_bits: int = 3,
    value_bits: int = 2,
    *,
    config: Any = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> NexusQuantCache:
    """A :class:`NexusQuantCache` holding the tokens of a filled ``DynamicCache``.

    Full-attention layers (``DynamicLayer``) are compressed as if their tokens had arrived in one
    forward; sliding-window layers are copied unchanged. The source cache is not modified.

    Args:
        dynamic_cache: a ``DynamicCache`` with ``(B, H, T, d)`` keys and values per layer.
        key_bits, value_bits: bits per element (1..8, 2-4 tuned).
        config: the model config; ``None`` infers the layer kinds from the cache's layers and the
            heads and head_dim from its tensors.
        attention_mask: ``(B, T)`` left-padded 2-D mask of the cached positions, if the batch is
            padded (pads are then not stored); ``None``: every position is a real token.
        **kwargs: any other :class:`NexusQuantCache` argument (``sink_tokens``, ``window``, ...).

    Returns:
        The new cache, ready to continue generation.
    """
    if not isinstance(dynamic_cache, Cache):
        raise InvalidArgumentError(
            f"dynamic_cache must be a transformers Cache (DynamicCache), got {type(dynamic_cache).__name__}"
        )
    defaults = {
        name: p.default
        for name, p in inspect.signature(NexusQuantCache.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise InvalidArgumentError(
            f"compress_kv_cache got unexpected arguments {unknown}; allowed: {sorted(defaults)}"
        )
    settings = {**defaults, **kwargs, "key_bits": key_bits, "value_bits": value_bits}
    if config is not None:
        cache = NexusQuantCache(config, **settings)
    else:
        cache = NexusQuantCache.__new__(NexusQuantCache)
        cache._setup(_Layout.from_dynamic_cache(dynamic_cache), **settings)
    if len(cache.layers) != len(dynamic_cache.layers):
        raise InvalidArgumentError(
            f"config describes {len(cache.layers)} cache layers but dynamic_cache has "
            f"{len(dynamic_cache.layers)}"
        )
    cache.set_attention_mask(attention_mask)
    for idx, (target, source) in enumerate(zip(cache.layers, dynamic_cache.layers)):
        if isinstance(target, NexusQuantLayer):
            if isinstance(source, DynamicSlidingWindowLayer) or not isinstance(source, DynamicLayer):
                raise InvalidArgumentError(
                    f"layer {idx}: config says full attention but dynamic_cache holds a "
                    f"{type(source).__name__}"
                )
            if source.is_initialized and source.keys is not None and source.keys.numel():
                cache.update(source.keys, source.values, idx)
        else:
            cache.layers[idx] = _copy_layer(source, type(target))
    return cache


def _copy_layer(source: Any, expected: type) -> Any:
    """A copy of a transformers layer (tensors cloned), checked to be of the ``expected`` class."""
    if type(source) is not expected:
        raise InvalidArgumentError(
            f"dynamic_cache holds a {type(source).__name__} where the config expects a {expected.__name__}"
        )
    clone = expected.__new__(expected)
    clone.__dict__.update(
        {k: v.clone() if torch.is_tensor(v) else v for k, v in vars(source).items()}
    )
    return clone


__all__ = ["NexusQuantCache", "compress_kv_cache", "COMPRESSED_LAYER_TYPE"]
