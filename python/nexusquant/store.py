"""Saving, loading and offloading compressed KV caches.

Two layers live here:

* Low-level ``.nqkv`` file I/O (the format is specified in ``docs/format.md``):
  :func:`write_nqkv`, :func:`read_nqkv`, :func:`inspect_nqkv`, :func:`nqkv_to_bytes` and
  :func:`nqkv_from_bytes`, on :class:`LayerRecord` objects that hold one layer's codec
  parameters and numpy arrays; :func:`inspect_cli` is ``nexusquant inspect FILE [--verify]
  [--json]`` (text by :func:`format_inspect`). Whole caches are saved and loaded by
  :mod:`nexusquant.cache.persist`.
* Stores of serialized caches keyed by token-id prefixes, with longest-prefix lookup and LRU
  eviction within a byte budget: :class:`HostStore` (host RAM) and :class:`DiskStore`
  (a directory, written in the background, found again after a restart).

Each layer holds two raw segments, kept apart because they play different roles: the *sink*
tokens (the first few tokens of the sequence) and the recent *window* (the newest tokens, not
yet compressed). Token order in a layer is sink, compressed, window.

All heavy work (parsing, checksums, file writes, store I/O) runs in Rust with the GIL released.
"""

from __future__ import annotations

import json
import mmap
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from . import _core
from .errors import InvalidArgumentError, ShapeError, UnsupportedDtypeError

__all__ = [
    "LayerRecord",
    "write_nqkv",
    "read_nqkv",
    "inspect_nqkv",
    "format_inspect",
    "inspect_cli",
    "nqkv_to_bytes",
    "nqkv_from_bytes",
    "HostStore",
    "DiskStore",
    "COMPONENTS",
]

#: The eight token components of a layer, in file order.
COMPONENTS = (
    "k_codes",
    "k_scales",
    "v_codes",
    "v_scales",
    "k_sink",
    "v_sink",
    "k_window",
    "v_window",
)

#: numpy dtype (little-endian) of the raw tokens for each ``raw_dtype``; bfloat16 travels as
#: its uint16 bit pattern because numpy has no bfloat16.
RAW_DTYPES = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
}
_AUX_DTYPES = {"int32": np.dtype("<i4"), "int64": np.dtype("<i8")}


@dataclass(eq=False)
class LayerRecord:
    """One layer of a compressed cache, as stored in a ``.nqkv`` file.

    Shapes (``B`` batch, ``H`` KV heads, ``d`` head_dim; ``Tc`` compressed, ``Ts`` sink and
    ``Tw`` window tokens):

    - ``k_codes``: ``(B, H, Tc, d * key_bits // 8)`` uint8; ``v_codes``: same with value_bits.
    - ``k_scales``, ``v_scales``: ``(B, H, Tc)`` uint16, the fp16 scale bits.
    - ``k_sink``, ``v_sink``: ``(B, H, Ts, d)``; ``k_window``, ``v_window``: ``(B, H, Tw, d)``;
      float32 or float16 for ``raw_dtype`` ``"float32"``/``"float16"``, uint16 (the bit
      pattern) for ``"bfloat16"``.
    - ``aux``: small int32/int64 arrays (per-row lengths, positions, ...), names of 1 to 32
      bytes of UTF-8, at most 4 dimensions.

    ``sink_tokens`` and ``window_tokens`` are the cache's configured sizes (the arrays may hold
    fewer); ``sliding_window`` is the model's attention window of a ``"sliding"`` layer.
    Arrays returned by :func:`read_nqkv` are read-only views of the file (not contiguous:
    the file stores tokens first, see ``docs/format.md``).
    """

    key_bits: int
    value_bits: int
    head_dim: int
    k_codes: np.ndarray
    k_scales: np.ndarray
    v_codes: np.ndarray
    v_scales: np.ndarray
    k_sink: np.ndarray
    v_sink: np.ndarray
    k_window: np.ndarray
    v_window: np.ndarray
    raw_dtype: str = "float16"
    key_seed: int = 0
    value_seed: int = 0
    layer_type: str = "full"
    sliding_window: int | None = None
    sink_tokens: int = 0
    window_tokens: int = 0
    codec: str = "e8v1"
    aux: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        """Batch size ``B``."""
        return int(self.k_codes.shape[0])

    @property
    def num_kv_heads(self) -> int:
        """KV heads ``H``."""
        return int(self.k_codes.shape[1])

    @property
    def n_compressed(self) -> int:
        """Compressed tokens held."""
        return int(self.k_codes.shape[2])

    @property
    def n_sink(self) -> int:
        """Raw sink tokens held."""
        return int(self.k_sink.shape[2])

    @property
    def n_window(self) -> int:
        """Raw window tokens held."""
        return int(self.k_window.shape[2])

    def nbytes(self) -> int:
        """Bytes of all arrays (codes, scales, raw tokens, aux)."""
        arrays = [getattr(self, name) for name in COMPONENTS] + list(self.aux.values())
        return int(sum(a.nbytes for a in arrays))


def _array(name: str, value: Any, ndim: int, dtypes: Iterable[np.dtype]) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise InvalidArgumentError(f"{name} must be a numpy array, got {type(value).__name__}")
    allowed = [np.dtype(d) for d in dtypes]
    if value.dtype.newbyteorder("=") not in [d.newbyteorder("=") for d in allowed]:
        names = sorted({d.newbyteorder("=").name for d in allowed})
        raise UnsupportedDtypeError(f"{name} must have dtype in {names}, got {value.dtype}")
    if value.ndim != ndim:
        raise ShapeError(f"{name} must have {ndim} dimensions, got shape {value.shape}")
    return value


def _wire_bytes(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A C-contiguous little-endian copy or view of ``a``, as uint8 ``(..., row_bytes)``."""
    a = np.ascontiguousarray(a, dtype=dtype)
    if dtype.itemsize == 1:
        return a
    return a.reshape(*a.shape[:-1], a.shape[-1], 1).view(np.uint8).reshape(
        *a.shape[:-1], a.shape[-1] * dtype.itemsize
    )


def _to_wire(i: int, layer: LayerRecord) -> dict[str, Any]:
    if not isinstance(layer, LayerRecord):
        raise InvalidArgumentError(
            f"layers[{i}] must be a LayerRecord, got {type(layer).__name__}"
        )
    raw = RAW_DTYPES.get(layer.raw_dtype)
    if raw is None:
        raise UnsupportedDtypeError(
            f"layers[{i}].raw_dtype must be one of {sorted(RAW_DTYPES)}, got {layer.raw_dtype!r}"
        )
    arrays = []
    for name in COMPONENTS:
        value = getattr(layer, name)
        where = f"layers[{i}].{name}"
        if name.endswith("codes"):
            arrays.append(_wire_bytes(_array(where, value, 4, [np.uint8]), np.dtype(np.uint8)))
        elif name.endswith("scales"):
            a = _array(where, value, 3, [np.uint16])
            arrays.append(_wire_bytes(a[..., None], np.dtype("<u2")))
        else:
            arrays.append(_wire_bytes(_array(where, value, 4, [raw]), raw))
    if not isinstance(layer.aux, dict):
        raise InvalidArgumentError(f"layers[{i}].aux must be a dict, got {type(layer.aux).__name__}")
    aux = []
    for name, value in layer.aux.items():
        if not isinstance(name, str):
            raise InvalidArgumentError(f"layers[{i}].aux keys must be str, got {name!r}")
        value = np.asarray(value)
        dtype = {np.dtype(np.int32): "int32", np.dtype(np.int64): "int64"}.get(
            value.dtype.newbyteorder("=")
        )
        if dtype is None:
            raise UnsupportedDtypeError(
                f"layers[{i}].aux[{name!r}] must have dtype in ['int32', 'int64'], got {value.dtype}"
            )
        data = np.ascontiguousarray(value, dtype=_AUX_DTYPES[dtype]).reshape(-1).view(np.uint8)
        aux.append((name, dtype, [int(s) for s in value.shape], data))
    window = layer.sliding_window
    if layer.layer_type == "full" and window not in (None, 0):
        raise InvalidArgumentError(
            f"layers[{i}].sliding_window must be None for a full layer, got {window}"
        )
    return {
        "codec": layer.codec,
        "head_dim": int(layer.head_dim),
        "key_bits": int(layer.key_bits),
        "value_bits": int(layer.value_bits),
        "raw_dtype": layer.raw_dtype,
        "layer_type": layer.layer_type,
        "sliding_window": int(window or 0),
        "key_seed": int(layer.key_seed),
        "value_seed": int(layer.value_seed),
        "sink_tokens": int(layer.sink_tokens),
        "window_tokens": int(layer.window_tokens),
        "arrays": arrays,
        "aux": aux,
    }


def _metadata_json(meta: dict[str, Any]) -> str:
    if not isinstance(meta, dict):
        raise InvalidArgumentError(f"meta must be a dict, got {type(meta).__name__}")
    try:
        return json.dumps(meta, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"meta must be JSON-serializable: {e}") from e


def write_nqkv(path: str | os.PathLike[str], meta: dict[str, Any], layers: list[LayerRecord]) -> int:
    """Writes ``layers`` and the JSON-serializable dict ``meta`` to a ``.nqkv`` file.

    The file is replaced atomically: a temporary file in the same directory is written and
    fsynced, then renamed over ``path`` and the directory fsynced, so a failure leaves any
    previous file intact. Returns the file length in bytes.
    """
    wire = [_to_wire(i, layer) for i, layer in enumerate(layers)]
    return int(_core.write_nqkv(os.fspath(path), _metadata_json(meta), wire))


def nqkv_to_bytes(meta: dict[str, Any], layers: list[LayerRecord]) -> bytes:
    """The bytes :func:`write_nqkv` would write (for :class:`HostStore`/:class:`DiskStore`)."""
    wire = [_to_wire(i, layer) for i, layer in enumerate(layers)]
    return _core.nqkv_to_bytes(_metadata_json(meta), wire)


def _view(buf: np.ndarray, offset: int, tokens: int, batch: int, heads: int, row: int,
          dtype: np.dtype) -> np.ndarray:
    """The ``(B, H, T, row / itemsize)`` view of a token-major component."""
    flat = buf[offset : offset + tokens * batch * heads * row].view(dtype)
    return flat.reshape(tokens, batch, heads, row // dtype.itemsize).transpose(1, 2, 0, 3)


def _records(buf: np.ndarray, parsed: dict[str, Any]) -> list[LayerRecord]:
    layers = []
    for d in parsed["layers"]:
        b, h = d["batch"], d["num_kv_heads"]
        raw = RAW_DTYPES[d["raw_dtype"]]
        arrays = {}
        for name in COMPONENTS:
            offset, tokens, row = d["components"][name]
            if name.endswith("codes"):
                arrays[name] = _view(buf, offset, tokens, b, h, row, np.dtype(np.uint8))
            elif name.endswith("scales"):
                arrays[name] = _view(buf, offset, tokens, b, h, row, np.dtype("<u2"))[..., 0]
            else:
                arrays[name] = _view(buf, offset, tokens, b, h, row, raw)
        aux = {
            name: buf[offset : offset + nbytes].view(_AUX_DTYPES[dtype]).reshape(shape)
            for name, dtype, shape, offset, nbytes in d["aux"]
        }
        layers.append(
            LayerRecord(
                key_bits=d["key_bits"],
                value_bits=d["value_bits"],
                head_dim=d["head_dim"],
                raw_dtype=d["raw_dtype"],
                key_seed=d["key_seed"],
                value_seed=d["value_seed"],
                layer_type=d["layer_type"],
                sliding_window=d["sliding_window"] if d["layer_type"] == "sliding" else None,
                sink_tokens=d["sink_tokens"],
                window_tokens=d["window_tokens"],
                codec=d["codec"],
                aux=aux,
                **arrays,
            )
        )
    return layers


def _load(path: str | os.PathLike[str], use_mmap: bool) -> np.ndarray:
    """The file's bytes as a read-only uint8 array (a memory map, or a copy in memory)."""
    with open(path, "rb") as f:
        if use_mmap and os.fstat(f.fileno()).st_size > 0:
            return np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)
        data = np.frombuffer(f.read(), dtype=np.uint8)
    return data


def nqkv_from_bytes(data: bytes | bytearray | memoryview | np.ndarray) -> tuple[dict[str, Any], list[LayerRecord]]:
    """Parses ``.nqkv`` bytes (e.g. a store's blob) into ``(meta, layers)``; every checksum is
    verified. The arrays are read-only views of ``data``."""
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if buf.dtype != np.uint8 or buf.ndim != 1:
        raise InvalidArgumentError(f"data must be bytes or a 1-D uint8 array, got {buf.dtype} {buf.shape}")
    parsed = _core.parse_nqkv(buf, True)
    return json.loads(parsed["metadata"]), _records(buf, parsed)


def read_nqkv(path: str | os.PathLike[str], *, mmap: bool = True) -> tuple[dict[str, Any], list[LayerRecord]]:
    """Reads a ``.nqkv`` file into ``(meta, layers)``, verifying every checksum.

    With ``mmap=True`` the file is memory-mapped and the arrays are read-only views of the
    mapping (nothing is copied; pages are read on first touch). With ``mmap=False`` the file is
    read into memory first. A malformed file raises a :class:`nexusquant.errors.FormatError`
    subclass.
    """
    return nqkv_from_bytes(_load(path, mmap))


def inspect_nqkv(path: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """A summary of a ``.nqkv`` file: version, metadata, layers, bytes by component and the
    checksum status of every chunk.

    A damaged chunk is reported (``chunks[i]["ok"] is False``, listed in ``corrupt_chunks``),
    never raised; only a broken structure (header, section table, layer table, metadata)
    raises a :class:`nexusquant.errors.FormatError` subclass, since nothing can be located.
    With ``verify=False`` the data sections are not read: their ``crc_computed`` and ``ok``
    (and the summary's ``ok``) are ``None``.
    """
    buf = _load(path, True)
    parsed = _core.parse_nqkv(buf, False)
    if verify:
        status = {i: (stored, computed) for i, stored, computed in _core.check_nqkv_chunks(buf)}
    else:
        status = {
            i: (crc, None) for i, (kind, *_, crc) in enumerate(parsed["sections"])
            if kind not in ("metadata", "layer_table", "aux_directory")
        }
    sections = parsed["sections"]
    by_component: dict[str, int] = {"header": 64, "section_table": 40 * len(sections)}
    chunks = []
    used = 64 + 40 * len(sections)
    for i, (kind, component, layer, index, tokens, offset, length, crc) in enumerate(sections):
        key = component if kind == "chunk" else kind
        by_component[key] = by_component.get(key, 0) + length
        used += length
        if i in status:
            stored, computed = status[i]
            chunks.append(
                {
                    "section": i,
                    "kind": kind,
                    "layer": layer,
                    "component": component,
                    "index": index,
                    "tokens": tokens,
                    "offset": offset,
                    "length": length,
                    "crc_stored": stored,
                    "crc_computed": computed,
                    "ok": None if computed is None else stored == computed,
                }
            )
    by_component["padding"] = parsed["file_len"] - used
    layers = []
    for d in parsed["layers"]:
        d = dict(d)
        del d["components"]
        d["aux"] = {name: {"dtype": dt, "shape": list(shape)} for name, dt, shape, _, _ in d["aux"]}
        layers.append(d)
    corrupt = [c for c in chunks if c["ok"] is False]
    major, minor = parsed["version"]
    return {
        "path": os.fspath(path),
        "version": f"{major}.{minor}",
        "file_bytes": parsed["file_len"],
        "header": {
            "magic": bytes(buf[:8]),
            "major": major,
            "minor": minor,
            "file_len": parsed["file_len"],
            "layer_count": len(parsed["layers"]),
            "section_count": len(sections),
        },
        "metadata": json.loads(parsed["metadata"]),
        "layers": layers,
        "bytes_by_component": by_component,
        "chunks": chunks,
        "corrupt_chunks": corrupt,
        "ok": not corrupt if verify else None,
    }


def format_inspect(info: dict[str, Any], *, metadata_chars: int = 400) -> str:
    """Human-readable text of an :func:`inspect_nqkv` summary: header, metadata (compact JSON,
    cut after ``metadata_chars`` characters), one line per layer, bytes by component (share of
    the file) and the checksum status (every damaged chunk named)."""
    h = info["header"]
    lines = [
        f"{info['path']}: .nqkv {info['version']}, {info['file_bytes']:,} bytes, "
        f"{h['layer_count']} layers, {h['section_count']} sections",
    ]
    meta = json.dumps(info["metadata"], ensure_ascii=False, separators=(",", ":"))
    if len(meta) > metadata_chars:
        meta = f"{meta[:metadata_chars]}... ({len(meta):,} characters; --json prints all)"
    lines.append(f"metadata: {meta}")
    lines.append("layers:")
    lines.append(
        f"  {'#':>4}  {'type':<8}{'codec':<6}{'batch':>6}{'heads':>6}{'dim':>5}  {'bits':<5}"
        f"{'raw':<9}{'sink':>6}{'coded':>9}{'window':>8}  aux"
    )
    for i, d in enumerate(info["layers"]):
        kind = d["layer_type"] if d["layer_type"] == "full" else f"slide{d['sliding_window']}"
        aux = " ".join(
            f"{name}{list(a['shape'])}:{a['dtype']}" for name, a in d["aux"].items()
        ) or "-"
        lines.append(
            f"  {i:>4}  {kind:<8}{d['codec']:<6}{d['batch']:>6}{d['num_kv_heads']:>6}{d['head_dim']:>5}  "
            f"K{d['key_bits']}V{d['value_bits']:<2}{d['raw_dtype']:<9}{d['n_sink']:>6}"
            f"{d['n_compressed']:>9}{d['n_window']:>8}  {aux}"
        )
    lines.append("bytes by component:")
    total = info["file_bytes"] or 1
    for name, nbytes in info["bytes_by_component"].items():
        lines.append(f"  {name:<15}{nbytes:>15,} B {100 * nbytes / total:>7.2f} %")
    lines.append(f"  {'file':<15}{info['file_bytes']:>15,} B")
    chunks = info["chunks"]
    if info["ok"] is None:
        lines.append(f"checksums: {len(chunks)} data sections not verified (--verify checks them)")
    elif info["ok"]:
        lines.append(f"checksums: {len(chunks)} data sections verified, all OK")
    else:
        bad = info["corrupt_chunks"]
        lines.append(f"checksums: {len(bad)} of {len(chunks)} data sections DAMAGED:")
        for c in bad:
            where = (f"layer {c['layer']} {c['component']} chunk {c['index']} (tokens {c['tokens']})"
                     if c["kind"] == "chunk" else f"layer {c['layer']} {c['kind']} {c['index']}")
            lines.append(
                f"  section {c['section']}: {where} at offset {c['offset']:,}, {c['length']:,} B: "
                f"stored crc {c['crc_stored']:#010x}, computed {c['crc_computed']:#010x}"
            )
    return "\n".join(lines)


def inspect_cli(args: Any) -> int:
    """``nexusquant inspect FILE [--verify] [--json]``: print :func:`format_inspect` (or, with
    ``--json``, the :func:`inspect_nqkv` summary as JSON, the magic as hex).

    Returns the exit status: 0, or 1 when ``--verify`` finds a damaged chunk, or 2 when the
    file cannot be read. A broken structure raises a :class:`nexusquant.errors.FormatError`
    subclass (the command prints it and exits 2).
    """
    try:
        info = inspect_nqkv(args.path, verify=args.verify)
    except OSError as e:
        print(f"nexusquant inspect: error: cannot read {args.path!r}: {e.strerror or e}", file=sys.stderr)
        return 2
    if args.json:
        doc = dict(info, header=dict(info["header"], magic=info["header"]["magic"].hex()))
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        print(format_inspect(info))
    return 1 if info["ok"] is False else 0


def _token_ids(token_ids: Any) -> np.ndarray:
    """``token_ids`` (a sequence of ints, a 1-D numpy array or a CPU torch tensor) as a
    contiguous uint32 array."""
    if hasattr(token_ids, "detach") and hasattr(token_ids, "cpu"):
        token_ids = token_ids.detach().cpu().numpy()
    ids = np.asarray(token_ids)
    if ids.ndim != 1:
        raise ShapeError(f"token_ids must be 1-D, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise UnsupportedDtypeError(f"token_ids must hold integers, got dtype {ids.dtype}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) > 0xFFFFFFFF):
        raise InvalidArgumentError(
            f"token_ids must be in [0, 4294967295], got values in [{int(ids.min())}, {int(ids.max())}]"
        )
    return np.ascontiguousarray(ids, dtype=np.uint32)


class _Store:
    """Shared behaviour of the two stores."""

    _inner: Any

    def put(self, token_ids: Any, blob: bytes) -> None:
        """Stores ``blob`` under the token-id prefix ``token_ids`` (replacing an entry with the
        same ids), evicting least-recently-used entries as the budget requires. An entry larger
        than the whole budget raises :class:`nexusquant.errors.StoreError`."""
        self._inner.put(_token_ids(token_ids), bytes(blob))

    def lookup(self, token_ids: Any) -> tuple[int, bytes] | None:
        """``(matched_tokens, blob)`` for the longest stored prefix of ``token_ids`` (marked
        as recently used), or ``None``. Costs ``O(n + k)`` for ``n`` ids and ``k`` distinct
        stored prefix lengths."""
        return self._inner.lookup(_token_ids(token_ids))

    def __len__(self) -> int:
        return len(self._inner)

    @property
    def nbytes(self) -> int:
        """Bytes held (a host store counts blob bytes, a disk store bytes on disk)."""
        return int(self._inner.nbytes)

    @property
    def budget_bytes(self) -> int:
        """The byte budget."""
        return int(self._inner.budget_bytes)

    def flush(self) -> None:
        """Waits for pending writes (nothing to wait for in a host store)."""

    def close(self) -> None:
        """Releases the store (a disk store flushes first)."""

    def __enter__(self) -> "_Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HostStore(_Store):
    """Serialized caches in host RAM, keyed by token-id prefixes, with longest-prefix lookup
    and LRU eviction within ``budget_bytes`` (the sum of blob lengths). Thread-safe."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise InvalidArgumentError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self._inner = _core.HostStore(int(budget_bytes))

    def __repr__(self) -> str:
        return f"HostStore(entries={len(self)}, nbytes={self.nbytes}, budget_bytes={self.budget_bytes})"


class DiskStore(_Store):
    """Serialized caches in a directory, one file per entry, keyed by token-id prefixes, with
    longest-prefix lookup and LRU eviction within ``budget_bytes`` of disk. Thread-safe.

    ``put`` returns at once; a background thread writes entries in batches (each file written
    atomically). :meth:`flush` waits and raises for failed writes; :meth:`close` (or leaving a
    ``with`` block) flushes and stops the thread. Reopening the directory, also from another
    process after this one ended, finds the entries again; damaged entry files are skipped
    and listed by :meth:`corrupt_entries`. One process at a time may use a directory.
    """

    def __init__(self, path: str | os.PathLike[str], budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise InvalidArgumentError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self._inner = _core.DiskStore(os.fspath(path), int(budget_bytes))

    @property
    def path(self) -> str:
        """The store's directory."""
        return os.fspath(self._inner.path)

    def flush(self) -> None:
        """Waits until every queued write is on disk; raises
        :class:`nexusquant.errors.StoreError` if any background write failed."""
        self._inner.flush()

    def close(self) -> None:
        """Flushes and stops the background writer; later calls raise
        :class:`nexusquant.errors.StoreError`. Closing twice is harmless."""
        self._inner.close()

    def corrupt_entries(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of every damaged or unreadable entry file met so far."""
        return [(os.fspath(p), reason) for p, reason in self._inner.corrupt_entries()]

    def __repr__(self) -> str:
        return (
            f"DiskStore(path={self.path!r}, entries={len(self)}, nbytes={self.nbytes}, "
            f"budget_bytes={self.budget_bytes})"
        )
