"""Saving a :class:`~nexusquant.NexusQuantCache` to a ``.nqkv`` file and loading it back.

:func:`save_cache` / :func:`load_cache` write and read a file (``docs/format.md``);
:func:`cache_to_bytes` / :func:`cache_from_bytes` do the same with bytes (what
:class:`~nexusquant.prefix.PrefixCache` keeps in a store). A loaded cache continues generation
exactly as the saved one would have: every stored token comes back bit for bit, and so do the
settings and the bookkeeping that decide what happens to the next tokens.

What is stored, per cache layer (one ``.nqkv`` layer record each):

* a full-attention layer (:class:`~nexusquant.cache.layer.NexusQuantLayer`, also
  :class:`~nexusquant.cache.offload.OffloadedLayer` and the eviction's ``EvictableLayer``):
  bits, seed, configured sink and window sizes; the sinks, codes + scales and window, each trimmed
  to the longest row (a shorter row's unused slots are written as zeros); aux arrays
  ``lengths`` ``(B, 3)`` int32 (sink, coded, window tokens per row) and ``seq_length`` ``()``
  int64 (the padded length ``T`` the rows are right-aligned to), ``key_means`` and
  ``value_means`` ``(B, H, d)`` int32 (the float32 bit patterns of the rows' centres; a key or
  value whose scale has its sign bit set was coded relative to it, see
  :mod:`nexusquant.cache.layer`; a file without them has no centred vectors); an
  ``EvictableLayer`` adds
  ``offset`` ``()`` int64 (evicted positions) and, when it holds them, ``decode_scores`` ``(B, H,
  T)`` int32 (the float32 bit patterns of its scores);
* a sliding-window (or chunked) layer, which the cache leaves to transformers'
  ``DynamicSlidingWindowLayer``: its raw keys and values, as they are (``(B, H, T', d)``, pads
  included), as the record's window, and ``seq_length`` ``()`` int64 (its cumulative length).

Any other transformers layer kind (linear attention, KV-shared dummy layers, ...) is rejected by
:func:`save_cache` with :class:`~nexusquant.errors.InvalidArgumentError`, as is a layer with
different key and value head dims (the format has one ``head_dim`` per layer) and a layer that
holds no tokens yet.

The metadata document holds the cache settings (``key_bits``, ``value_bits``, ``sink_tokens``,
``window``, ``block``, ``seed``, ``quantize``), the rows' left padding last recorded, one entry per
layer (kind and class), the model dtype and padded sequence length, the model's identity when a
config is passed (``model_type``, ``name_or_path`` and the non-default config fields), the
nexusquant version, and the caller's own ``metadata`` under ``"user"``.

Loading treats the file as hostile: the format layer verifies every checksum and the layout
(:func:`nexusquant.store.read_nqkv`), then every value the cache relies on (metadata keys and
types, row lengths against array sizes, settings against the layer records) is checked here
before any tensor is built. Every failure raises a :class:`~nexusquant.errors.FormatError`
subclass; a config that does not describe the saved cache raises
:class:`~nexusquant.errors.InvalidArgumentError`.

Importing this module needs the Rust extension (``nexusquant._core``), for the format.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any, Mapping

import numpy as np
import torch

from .. import __version__, codec
from .._hf import DynamicSlidingWindowLayer, decoder_config, transformers_layer
from ..errors import FormatError, InvalidArgumentError, UnsupportedVersionError
from ..store import LayerRecord, nqkv_from_bytes, nqkv_to_bytes, read_nqkv, write_nqkv
from .kvcache import NexusQuantCache, _Layout
from .layer import NexusQuantLayer
from .offload import OffloadedLayer, check_offload, layer_class, link_offload

#: ``metadata["format"]`` of a saved cache, and the version of the layout described above.
CACHE_FORMAT = "nexusquant-cache"
CACHE_FORMAT_VERSION = 1

#: The cache settings saved in ``metadata["cache"]`` (NexusQuantCache constructor arguments).
SETTINGS = ("key_bits", "value_bits", "sink_tokens", "window", "block", "seed", "quantize")

#: Layer kinds in ``metadata["layers"][i]["class"]``.
FULL_CLASSES = ("NexusQuantLayer", "EvictableLayer")
SLIDING_CLASS = "DynamicSlidingWindowLayer"

_TORCH_RAW = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_RAW_TORCH = {name: dtype for dtype, name in _TORCH_RAW.items()}


# --------------------------------------------------------------------------------------------
# public API


def save_cache(
    cache: NexusQuantCache,
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any] | None = None,
    config: Any = None,
) -> int:
    """Write ``cache`` to a ``.nqkv`` file at ``path`` (replaced atomically).

    Args:
        cache: a filled :class:`~nexusquant.NexusQuantCache` (every layer has run a forward).
        path: the file to write.
        metadata: JSON-serializable dict kept in the file under ``"user"``.
        config: the model's config, to record the model's identity (checked by
            :func:`load_cache` when it gets a config).

    Returns:
        The file's length in bytes.

    Raises:
        InvalidArgumentError: a layer that cannot be saved (see the module docstring), or
            ``metadata`` that is not a JSON-serializable dict.
    """
    meta, records = cache_to_records(cache, metadata=metadata, config=config)
    return write_nqkv(path, meta, records)


def load_cache(
    path: str | os.PathLike[str],
    config: Any = None,
    device: str | torch.device = "cpu",
    *,
    offload: str | None = None,
) -> NexusQuantCache:
    """Read a cache written by :func:`save_cache`.

    Args:
        path: the ``.nqkv`` file.
        config: the model's config; checked against the file (layer kinds, KV heads, head_dim,
            model type). ``None``: the cache is built from the file alone.
        device: where the tensors go (the model's device).
        offload: ``"host"`` keeps the packed codes in host memory (see
            :mod:`nexusquant.cache.offload`); ``None`` puts everything on ``device``.

    Returns:
        A :class:`~nexusquant.NexusQuantCache` holding exactly the saved tokens and settings.

    Raises:
        FormatError: (a subclass of it) a damaged or malformed file, or one that is not a saved
            cache.
        InvalidArgumentError: ``config`` does not describe the saved cache, or a bad argument.
        OSError: the file cannot be read.
    """
    check_offload(offload)
    meta, records = read_nqkv(path)
    return cache_from_records(meta, records, config=config, device=device, offload=offload)


def cache_to_bytes(
    cache: NexusQuantCache, *, metadata: Mapping[str, Any] | None = None, config: Any = None
) -> bytes:
    """The bytes :func:`save_cache` would write (arguments as there)."""
    meta, records = cache_to_records(cache, metadata=metadata, config=config)
    return nqkv_to_bytes(meta, records)


def cache_from_bytes(
    data: bytes | bytearray | memoryview | np.ndarray,
    config: Any = None,
    device: str | torch.device = "cpu",
    *,
    offload: str | None = None,
) -> NexusQuantCache:
    """A cache from the bytes of :func:`cache_to_bytes` (arguments and errors as
    :func:`load_cache`)."""
    check_offload(offload)
    meta, records = nqkv_from_bytes(data)
    return cache_from_records(meta, records, config=config, device=device, offload=offload)


# --------------------------------------------------------------------------------------------
# cache -> records


def cache_to_records(
    cache: NexusQuantCache, *, metadata: Mapping[str, Any] | None = None, config: Any = None
) -> tuple[dict[str, Any], list[LayerRecord]]:
    """The ``(metadata, layer records)`` pair :func:`save_cache` writes (arrays copied to host
    memory)."""
    if not isinstance(cache, NexusQuantCache):
        raise InvalidArgumentError(f"cache must be a NexusQuantCache, got {type(cache).__name__}")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidArgumentError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    records, layers = [], []
    for idx, layer in enumerate(cache.layers):
        if isinstance(layer, NexusQuantLayer):
            record, entry = _full_record(idx, layer)
        elif type(layer) is DynamicSlidingWindowLayer:
            record, entry = _sliding_record(idx, layer, cache)
        else:
            raise InvalidArgumentError(
                f"layer {idx}: cannot save a {type(layer).__name__}; a saved cache holds "
                f"NexusQuantLayer (full attention) and DynamicSlidingWindowLayer layers"
            )
        records.append(record)
        layers.append(entry)
    if not records:
        raise InvalidArgumentError("cache has no layers to save")
    pads = cache._pads
    meta: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "version": CACHE_FORMAT_VERSION,
        "nexusquant": __version__,
        "cache": {name: getattr(cache, name) for name in SETTINGS},
        "pads": None if pads is None else [int(p) for p in pads.tolist()],
        "layers": layers,
        "dtype": records[0].raw_dtype,
        "seq_length": cache.get_seq_length(),
    }
    if config is not None:
        meta["model"] = _model_info(config)
    if metadata is not None:
        meta["user"] = dict(metadata)
    return meta, records


def _full_record(idx: int, layer: NexusQuantLayer) -> tuple[LayerRecord, dict[str, Any]]:
    if not layer.is_initialized:
        raise InvalidArgumentError(f"layer {idx} holds no tokens yet: run a forward before saving")
    if layer.head_dim != layer.value_head_dim:
        raise InvalidArgumentError(
            f"layer {idx}: cannot save key head_dim {layer.head_dim} with a different value head_dim "
            f"{layer.value_head_dim} (the .nqkv format has one head_dim per layer)"
        )
    if layer.sink_keys.dtype != layer.sink_values.dtype:
        raise InvalidArgumentError(
            f"layer {idx}: keys ({layer.sink_keys.dtype}) and values ({layer.sink_values.dtype}) must "
            f"have one dtype to be saved"
        )
    kind = _full_class(idx, layer)
    lengths = layer.lengths.to(torch.int32).cpu()
    sinks, coded, window = (lengths[:, i].tolist() for i in range(3))
    aux = {
        "lengths": lengths.numpy().copy(),
        "seq_length": np.array(layer.cumulative_length, dtype=np.int64),
        "key_means": _numpy(layer.key_means.float().contiguous().view(torch.int32)),
        "value_means": _numpy(layer.value_means.float().contiguous().view(torch.int32)),
    }
    if kind == "EvictableLayer":
        aux["offset"] = np.array(layer.offset, dtype=np.int64)
        if layer.decode_scores is not None:
            aux["decode_scores"] = _numpy(layer.decode_scores.float().contiguous().view(torch.int32))
    record = LayerRecord(
        key_bits=layer.key_bits,
        value_bits=layer.value_bits,
        head_dim=layer.head_dim,
        k_codes=_numpy(_trimmed(layer.key_codes, coded)),
        k_scales=_scale_bits(_trimmed(layer.key_scales, coded)),
        v_codes=_numpy(_trimmed(layer.value_codes, coded)),
        v_scales=_scale_bits(_trimmed(layer.value_scales, coded)),
        k_sink=_numpy(_trimmed(layer.sink_keys, sinks)),
        v_sink=_numpy(_trimmed(layer.sink_values, sinks)),
        k_window=_numpy(_trimmed(layer.window_keys, window)),
        v_window=_numpy(_trimmed(layer.window_values, window)),
        raw_dtype=_TORCH_RAW[layer.sink_keys.dtype],
        key_seed=layer.seed,
        value_seed=layer.seed,
        layer_type="full",
        sink_tokens=layer.sink_tokens,
        window_tokens=layer.window,
        aux=aux,
    )
    return record, {"type": "full_attention", "class": kind}


def _full_class(idx: int, layer: NexusQuantLayer) -> str:
    """``"NexusQuantLayer"`` (offloaded or not) or ``"EvictableLayer"``; any other subclass may
    hold state this module does not know, so it is rejected."""
    if type(layer) in (NexusQuantLayer, OffloadedLayer):
        return "NexusQuantLayer"
    from ..eviction.layer import EvictableLayer  # noqa: PLC0415 - eviction builds on the cache

    if type(layer) is EvictableLayer:
        return "EvictableLayer"
    raise InvalidArgumentError(
        f"layer {idx}: cannot save a {type(layer).__name__}; saved full-attention layers are "
        f"NexusQuantLayer, OffloadedLayer or EvictableLayer"
    )


def _sliding_record(
    idx: int, layer: DynamicSlidingWindowLayer, cache: NexusQuantCache
) -> tuple[LayerRecord, dict[str, Any]]:
    if not layer.is_initialized or layer.keys is None or layer.keys.dim() != 4:
        raise InvalidArgumentError(f"layer {idx} holds no tokens yet: run a forward before saving")
    keys, values = layer.keys, layer.values
    if keys.shape != values.shape or keys.dtype != values.dtype or keys.dtype not in _TORCH_RAW:
        raise InvalidArgumentError(
            f"layer {idx}: sliding-window keys {keys.dtype} {tuple(keys.shape)} and values "
            f"{values.dtype} {tuple(values.shape)} must have one shape and one dtype among "
            f"{sorted(_RAW_TORCH)} to be saved"
        )
    b, h, _, d = keys.shape
    empty = keys.new_zeros(b, h, 0, d)
    record = LayerRecord(
        key_bits=cache.key_bits,
        value_bits=cache.value_bits,
        head_dim=d,
        k_codes=np.zeros((b, h, 0, codec.code_bytes(d, cache.key_bits)), dtype=np.uint8),
        k_scales=np.zeros((b, h, 0), dtype=np.uint16),
        v_codes=np.zeros((b, h, 0, codec.code_bytes(d, cache.value_bits)), dtype=np.uint8),
        v_scales=np.zeros((b, h, 0), dtype=np.uint16),
        k_sink=_numpy(empty),
        v_sink=_numpy(empty),
        k_window=_numpy(keys),
        v_window=_numpy(values),
        raw_dtype=_TORCH_RAW[keys.dtype],
        layer_type="sliding",
        sliding_window=int(layer.sliding_window),
        aux={"seq_length": np.array(layer.cumulative_length, dtype=np.int64)},
    )
    return record, {"type": "sliding_attention", "class": SLIDING_CLASS, "record_past": bool(getattr(layer, "record_past", False))}


def _trimmed(t: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """``t[:, :, :max(counts)]`` (``(B, H, T, ...)``) with each row's slots past its own count
    zeroed, so a file holds no stale bytes from unused capacity."""
    n = max(counts, default=0)
    out = t[:, :, :n]
    if any(c < n for c in counts):
        out = out.clone()
        for r, c in enumerate(counts):
            out[r, :, c:] = 0
    return out


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A host numpy array of ``t`` as a layer record holds it: bfloat16 as its uint16 bit
    patterns, every other dtype as itself."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _scale_bits(t: torch.Tensor) -> np.ndarray:
    """The uint16 bit patterns of float16 scales ``t``, on the host."""
    return t.detach().cpu().view(torch.int16).numpy().view(np.uint16)


def _model_info(config: Any) -> dict[str, Any]:
    """The model's identity: type, name or path, and the config fields that differ from its
    class defaults."""
    to_json = getattr(config, "to_json_string", None)
    fields = json.loads(to_json(use_diff=True)) if callable(to_json) else {}
    return {
        "model_type": getattr(config, "model_type", None),
        "name_or_path": getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None),
        "config": fields,
    }


# --------------------------------------------------------------------------------------------
# records -> cache


def cache_from_records(
    meta: Any,
    records: list[LayerRecord],
    *,
    config: Any = None,
    device: str | torch.device = "cpu",
    offload: str | None = None,
) -> NexusQuantCache:
    """Build a cache from ``(metadata, layer records)`` as read from a file (see
    :func:`load_cache` for the arguments and errors). The arrays are copied."""
    device = torch.device(device)
    check_offload(offload)
    settings, entries, pads = _check_meta(meta, len(records))
    batch = _check_batch(records)
    plans = [_check_record(i, rec, entry, settings, batch) for i, (rec, entry) in enumerate(zip(records, entries))]
    if pads is not None and len(pads) != batch:
        raise FormatError(f"metadata pads must hold one entry per row ({batch}), got {len(pads)}")
    if offload is not None and any(e["class"] == "EvictableLayer" for e in entries):
        raise InvalidArgumentError("offload='host' cannot hold EvictableLayer layers (token eviction)")

    types = [e["type"] for e in entries]
    kwargs = [{"sliding_window": rec.sliding_window} if t != "full_attention" else {} for t, rec in zip(types, records)]
    if config is None:
        cache = NexusQuantCache.__new__(NexusQuantCache)
        cache._setup(_Layout(types, kwargs, None), **{**_constructor_defaults(), **settings})
    else:
        cache = NexusQuantCache(config, **settings)
        _check_config(config, cache, meta, records)

    for idx, (rec, entry, aux) in enumerate(zip(records, entries, plans)):
        if entry["type"] == "full_attention":
            cache.layers[idx] = _full_layer(rec, entry, aux, settings, device, offload)
        else:
            cache.layers[idx] = _sliding_layer(rec, entry, aux, kwargs[idx], device)
    link_offload(cache.layers)
    if pads is not None:
        width = max(pads, default=0) + 1
        mask = (torch.arange(width)[None, :] >= torch.tensor(pads)[:, None]).long()
        cache.set_attention_mask(mask)
    return cache


def _constructor_defaults() -> dict[str, Any]:
    """The keyword defaults of ``NexusQuantCache.__init__`` (what ``_setup`` needs besides the
    saved settings)."""
    return {
        name: p.default
        for name, p in inspect.signature(NexusQuantCache.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _full_layer(
    rec: LayerRecord,
    entry: dict[str, Any],
    aux: dict[str, Any],
    settings: dict[str, Any],
    device: torch.device,
    offload: str | None,
) -> NexusQuantLayer:
    kwargs = dict(
        key_bits=rec.key_bits,
        value_bits=rec.value_bits,
        sink_tokens=settings["sink_tokens"],
        window=settings["window"],
        block=settings["block"],
        seed=settings["seed"],
        quantize=settings["quantize"],
    )
    if entry["class"] == "EvictableLayer":
        from ..eviction.layer import EvictableLayer  # noqa: PLC0415 - eviction builds on the cache

        layer: NexusQuantLayer = EvictableLayer(**kwargs)
    else:
        layer = layer_class(offload)(**kwargs)
    dtype = _RAW_TORCH[rec.raw_dtype]
    b, h, d = rec.batch, rec.num_kv_heads, rec.head_dim
    empty = torch.zeros(b, h, 0, d, dtype=dtype, device=device)
    layer.lazy_initialization(empty, empty)
    layer.sink_keys[:, :, : rec.n_sink] = _tensor(rec.k_sink, dtype, device)
    layer.sink_values[:, :, : rec.n_sink] = _tensor(rec.v_sink, dtype, device)
    layer.window_keys = _tensor(rec.k_window, dtype, device)
    layer.window_values = _tensor(rec.v_window, dtype, device)
    code_device = torch.device("cpu") if isinstance(layer, OffloadedLayer) else device
    layer.key_codes = _tensor(rec.k_codes, torch.uint8, code_device)
    layer.value_codes = _tensor(rec.v_codes, torch.uint8, code_device)
    layer.key_scales = _tensor(rec.k_scales, torch.float16, code_device)
    layer.value_scales = _tensor(rec.v_scales, torch.float16, code_device)
    layer.lengths = torch.from_numpy(np.array(aux["lengths"], dtype=np.int32))
    layer.cumulative_length = aux["seq_length"]
    for name in ("key_means", "value_means"):
        means = aux.get(name)
        if means is not None:
            setattr(layer, name, torch.from_numpy(np.array(means, dtype=np.int32)).view(torch.float32).to(device, dtype))
    if isinstance(layer, OffloadedLayer):
        layer.offload_codes()
    if entry["class"] == "EvictableLayer":
        layer.offset = aux["offset"]
        scores = aux.get("decode_scores")
        if scores is not None:
            layer.decode_scores = torch.from_numpy(np.array(scores, dtype=np.int32)).view(torch.float32).to(device)
    return layer


def _sliding_layer(
    rec: LayerRecord, entry: dict[str, Any], aux: dict[str, Any], kwargs: dict[str, Any], device: torch.device
) -> DynamicSlidingWindowLayer:
    layer = transformers_layer("sliding_attention", kwargs)
    dtype = _RAW_TORCH[rec.raw_dtype]
    keys = _tensor(rec.k_window, dtype, device)
    values = _tensor(rec.v_window, dtype, device)
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values
    layer.cumulative_length = aux["seq_length"]
    layer.record_past = entry["record_past"]
    return layer


def _tensor(a: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A C-contiguous copy of the file array ``a`` as a ``dtype`` tensor on ``device``
    (float16/bfloat16 arrive as uint16 bit patterns)."""
    a = np.array(a, order="C")
    if a.itemsize != torch.empty((), dtype=dtype).element_size():
        raise FormatError(f"expected {dtype} data, got {a.dtype}")
    if a.itemsize == 2:
        return torch.from_numpy(a.view(np.int16)).view(dtype).to(device)
    return torch.from_numpy(a).view(dtype).to(device)


# --------------------------------------------------------------------------------------------
# validation of what a file says (FormatError) and of the caller's config (InvalidArgumentError)


def _int(value: Any, where: str, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
        maximum is not None and value > maximum
    ):
        bound = f"[{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise FormatError(f"{where} must be an integer {bound}, got {value!r}")
    return value


def _check_meta(meta: Any, n_records: int) -> tuple[dict[str, Any], list[dict[str, Any]], list[int] | None]:
    """The validated settings, per-layer entries and pads of a saved cache's metadata."""
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        raise FormatError(
            f"not a saved NexusQuantCache: the metadata's \"format\" must be {CACHE_FORMAT!r}"
        )
    version = meta.get("version")
    if version != CACHE_FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"saved cache layout version {version!r} is not supported (this build reads "
            f"{CACHE_FORMAT_VERSION})"
        )
    stored = meta.get("cache")
    if not isinstance(stored, dict):
        raise FormatError("metadata \"cache\" must be an object with the cache settings")
    settings: dict[str, Any] = {}
    for name in ("key_bits", "value_bits"):
        settings[name] = _int(stored.get(name), f"metadata cache.{name}", codec.MIN_BITS, codec.MAX_BITS)
    for name in ("sink_tokens", "window"):
        settings[name] = _int(stored.get(name), f"metadata cache.{name}")
    settings["block"] = _int(stored.get("block"), "metadata cache.block", 1)
    settings["seed"] = _int(stored.get("seed"), "metadata cache.seed", 0, 2**64 - 1)
    if not isinstance(stored.get("quantize"), bool):
        raise FormatError(f"metadata cache.quantize must be true or false, got {stored.get('quantize')!r}")
    settings["quantize"] = stored["quantize"]

    entries = meta.get("layers")
    if not isinstance(entries, list) or len(entries) != n_records:
        raise FormatError(f"metadata \"layers\" must list the file's {n_records} layers")
    for i, e in enumerate(entries):
        ok = isinstance(e, dict) and (
            (e.get("type") == "full_attention" and e.get("class") in FULL_CLASSES)
            or (e.get("type") == "sliding_attention" and e.get("class") == SLIDING_CLASS
                and isinstance(e.get("record_past"), bool))
        )
        if not ok:
            raise FormatError(
                f"metadata layers[{i}] must be a full_attention layer of class {list(FULL_CLASSES)} "
                f"or a sliding_attention layer of class {SLIDING_CLASS!r} with a boolean record_past, "
                f"got {e!r}"
            )
    pads = meta.get("pads")
    if pads is not None:
        if not isinstance(pads, list):
            raise FormatError(f"metadata pads must be a list of integers or null, got {type(pads).__name__}")
        pads = [_int(p, f"metadata pads[{r}]", 0, 2**26) for r, p in enumerate(pads)]
    return settings, entries, pads


def _check_batch(records: list[LayerRecord]) -> int:
    if not records:
        raise FormatError("a saved cache has at least one layer, the file has none")
    batch = records[0].batch
    for i, rec in enumerate(records):
        if rec.batch != batch:
            raise FormatError(f"layer {i} has batch {rec.batch}, layer 0 has {batch}")
    return batch


def _aux(rec: LayerRecord, i: int, name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    a = rec.aux.get(name)
    if a is None or a.shape != shape or a.dtype.newbyteorder("=") != np.dtype(dtype):
        got = "missing" if a is None else f"{a.dtype} {a.shape}"
        raise FormatError(f"layer {i}: aux array {name!r} must be {dtype} {shape}, got {got}")
    return a


def _check_record(
    i: int, rec: LayerRecord, entry: dict[str, Any], settings: dict[str, Any], batch: int
) -> dict[str, Any]:
    """Check layer record ``i`` against its metadata entry and the settings; return its aux
    values (``lengths`` as a list of rows, the rest as Python ints or arrays)."""
    if rec.codec != codec.CODEC_VERSION:
        raise UnsupportedVersionError(
            f"layer {i} is coded with {rec.codec!r}; this build decodes {codec.CODEC_VERSION!r}"
        )
    seq_length = int(_aux(rec, i, "seq_length", (), "int64"))
    if seq_length < 0:
        raise FormatError(f"layer {i}: seq_length must be >= 0, got {seq_length}")
    if entry["type"] != "full_attention":
        if rec.layer_type != "sliding" or rec.n_sink or rec.n_compressed:
            raise FormatError(
                f"layer {i}: a sliding-window layer is a 'sliding' record with window tokens only, got a "
                f"{rec.layer_type!r} record with {rec.n_sink} sink and {rec.n_compressed} compressed tokens"
            )
        if rec.n_window > seq_length:
            raise FormatError(f"layer {i}: {rec.n_window} tokens held but seq_length is {seq_length}")
        return {"seq_length": seq_length}

    if rec.layer_type != "full":
        raise FormatError(f"layer {i}: a full_attention layer must be a 'full' record, got {rec.layer_type!r}")
    expected = {
        "sink_tokens": (rec.sink_tokens, settings["sink_tokens"]),
        "window_tokens": (rec.window_tokens, settings["window"]),
        "key_seed": (rec.key_seed, settings["seed"]),
        "value_seed": (rec.value_seed, settings["seed"]),
    }
    for name, (got, want) in expected.items():
        if got != want:
            raise FormatError(f"layer {i}: {name} is {got} but the cache settings say {want}")
    if not settings["quantize"] and rec.n_compressed:
        raise FormatError(f"layer {i}: a pass-through cache (quantize=false) holds no codes, got {rec.n_compressed}")
    if rec.n_sink > settings["sink_tokens"]:
        raise FormatError(f"layer {i}: {rec.n_sink} sink tokens held but sink_tokens is {settings['sink_tokens']}")
    lengths = _aux(rec, i, "lengths", (batch, 3), "int32").tolist()
    caps = (rec.n_sink, rec.n_compressed, rec.n_window)
    for r, row in enumerate(lengths):
        if any(n < 0 or n > cap for n, cap in zip(row, caps)) or sum(row) > seq_length:
            raise FormatError(
                f"layer {i}: row {r} lengths (sink, coded, window) = {tuple(row)} must be >= 0, within "
                f"the arrays' {caps} tokens and at most seq_length {seq_length} in total"
            )
    out: dict[str, Any] = {"lengths": lengths, "seq_length": seq_length}
    for name in ("key_means", "value_means"):
        if name in rec.aux:
            means = _aux(rec, i, name, (batch, rec.num_kv_heads, rec.head_dim), "int32")
            if not np.isfinite(np.array(means, dtype=np.int32).view(np.float32)).all():
                raise FormatError(f"layer {i}: {name} must hold finite float32 values")
            out[name] = means
    if entry["class"] == "EvictableLayer":
        out["offset"] = int(_aux(rec, i, "offset", (), "int64"))
        if out["offset"] < 0:
            raise FormatError(f"layer {i}: offset must be >= 0, got {out['offset']}")
        if "decode_scores" in rec.aux:
            out["decode_scores"] = _aux(rec, i, "decode_scores", (batch, rec.num_kv_heads, seq_length), "int32")
    return out


def _check_config(config: Any, cache: NexusQuantCache, meta: dict[str, Any], records: list[LayerRecord]) -> None:
    """Raise InvalidArgumentError unless ``config`` (as built into ``cache``) describes the
    saved layers."""
    if len(cache.layers) != len(records):
        raise InvalidArgumentError(
            f"config describes {len(cache.layers)} cache layers but the saved cache has {len(records)}"
        )
    model = meta.get("model")
    saved_type = model.get("model_type") if isinstance(model, dict) else None
    model_type = getattr(config, "model_type", None)
    if saved_type and model_type and saved_type != model_type:
        raise InvalidArgumentError(
            f"config is a {model_type!r} model but the cache was saved from a {saved_type!r} model"
        )
    text = decoder_config(config)
    heads = getattr(text, "num_key_value_heads", None) or getattr(text, "num_attention_heads", None)
    for idx, (layer, rec) in enumerate(zip(cache.layers, records)):
        if isinstance(layer, NexusQuantLayer):
            ok = rec.layer_type == "full"
        else:
            ok = (type(layer) is DynamicSlidingWindowLayer and rec.layer_type == "sliding"
                  and layer.sliding_window == rec.sliding_window)
        if not ok:
            window = f" (window {rec.sliding_window})" if rec.layer_type == "sliding" else ""
            raise InvalidArgumentError(
                f"config does not match the saved cache: layer {idx} is a {type(layer).__name__} "
                f"for the config but a {rec.layer_type} layer{window} in the file"
            )
        if heads is not None and rec.num_kv_heads != heads:
            raise InvalidArgumentError(
                f"config has {heads} KV heads but layer {idx} of the saved cache has {rec.num_kv_heads}"
            )


__all__ = [
    "save_cache",
    "load_cache",
    "cache_to_bytes",
    "cache_from_bytes",
    "cache_to_records",
    "cache_from_records",
    "CACHE_FORMAT",
    "CACHE_FORMAT_VERSION",
]
