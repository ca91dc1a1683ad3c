"""KV-cache memory calculator: how big a model's KV cache is, and what nexusquant saves.

Units, everywhere in this module:

* sizes are in bytes; printed sizes always carry their unit, ``GB`` = 10^9 bytes and ``GiB`` =
  2^30 bytes (likewise kB/KiB, MB/MiB, TB/TiB);
* token counts written with a suffix use ``k`` = 1,000 and ``M`` = 1,000,000 (so ``128k`` =
  128,000 tokens), and ``Ki`` = 1,024, ``Mi`` = 1,048,576 (``128Ki`` = 131,072 tokens).

The uncompressed reference is an fp16/bf16 cache (2 bytes per element). A compressed
head-vector costs ``head_dim * bits / 8`` bytes of codes plus a 2-byte fp16 scale, for K and
for V (:func:`compressed_bytes_per_token`).

Without ``measured``, :func:`savings_report` gives the presets' nominal ratios: ``lossless`` (no
eviction) what its bits and scales give, the eviction presets their target ratio. With
``measured=True`` it runs the codec on random head-vectors to measure the bytes of codes and
scales, and adds the real overheads: the sink tokens and the recent window held in fp16. The
token budget of an eviction preset comes from ``nexusquant.eviction.solve_budget`` when the
eviction layer is installed, and is otherwise computed here from those same bytes (the report
says which). The contract expected of it::

    solve_budget(seq_len=..., head_dim=..., key_bits=..., value_bits=...,
                 target_ratio=..., sink_tokens=..., window_tokens=...) -> int

returns the tokens kept per layer and KV head (sinks and window included) for ``seq_len``
tokens of context.
"""

from __future__ import annotations

import importlib
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from .codec import check_bits, check_head_dim
from .errors import InvalidArgumentError
from .presets import PRESETS, Preset, get_preset
from .specs import (
    FULL_ATTENTION,
    LAYER_TYPES,
    SLIDING_ATTENTION,
    GPUSpec,
    ModelSpec,
    gpu_spec,
    model_spec,
)

#: Bytes per element of the uncompressed reference cache (fp16/bf16).
FP16_BYTES = 2
#: Bytes of the fp16 scale stored with every compressed head-vector.
SCALE_BYTES = 2
#: First tokens the cache keeps uncompressed (attention sinks), used by ``measured`` reports.
SINK_TOKENS = 4
#: Most recent tokens the cache keeps uncompressed, used by ``measured`` reports.
WINDOW_TOKENS = 128
#: Head-vectors quantized per bit width to measure the codec's bytes.
_MEASURE_VECTORS = 1024
#: Allowed element sizes of an uncompressed cache: fp8, fp16/bf16, fp32.
_DTYPE_BYTES = (1, 2, 4)

_DECIMAL_UNITS = (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3))
_BINARY_UNITS = {"TB": ("TiB", 2**40), "GB": ("GiB", 2**30), "MB": ("MiB", 2**20),
                 "kB": ("KiB", 2**10)}
_SIZE_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_TOKEN_UNITS = {"": 1, "k": 10**3, "m": 10**6, "ki": 2**10, "mi": 2**20}


# --------------------------------------------------------------------------------------------
# validation and parsing


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _parse_number(text: str, units: dict[str, int], name: str, allowed: str) -> int:
    match = re.fullmatch(r"\s*([0-9][0-9_,]*(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    error = InvalidArgumentError(f"{name} must be {allowed}, got {text!r}")
    if match is None or match.group(2).lower() not in units:
        raise error
    try:
        value = Decimal(match.group(1).replace("_", "").replace(",", "")) * units[
            match.group(2).lower()]
    except InvalidOperation:
        raise error from None
    if value != value.to_integral_value():
        raise error
    return int(value)


def parse_tokens(text: str) -> int:
    """Parse a token count: ``32768``, ``128k`` (128,000), ``1M`` (10^6), ``128Ki`` (131,072).

    ``k``/``K`` and ``M`` are decimal (1,000 and 1,000,000); ``Ki`` and ``Mi`` are binary.
    """
    return _parse_number(
        str(text), _TOKEN_UNITS, "seq",
        "a token count such as 32768, 128k (=128,000), 128Ki (=131,072) or 1M (=1,000,000)",
    )


def parse_bytes(text: str) -> int:
    """Parse a size with an explicit unit: ``24GB`` (24x10^9), ``80GiB`` (80x2^30), ``512MiB``.

    Units: B, kB, MB, GB, TB (powers of 1000) and KiB, MiB, GiB, TiB (powers of 1024); a bare
    number is a byte count.
    """
    units = dict(_SIZE_UNITS, **{"": 1})
    return _parse_number(
        str(text), units, "size",
        "a size such as 24GB (10^9 bytes) or 80GiB (2^30 bytes); units: B, kB, MB, GB, TB, "
        "KiB, MiB, GiB, TiB",
    )


def format_bytes(n: float, unit: str | None = None) -> str:
    """``n`` bytes in a decimal and a binary unit, e.g. ``"16.78 GB = 15.63 GiB"``.

    ``unit`` (``"kB"``, ``"MB"``, ``"GB"``, ``"TB"``) fixes the decimal unit; by default the
    largest one not above ``n`` is used (plain bytes below 1 kB).
    """
    if unit is None:
        unit = next((u for u, f in _DECIMAL_UNITS if n >= f), None)
        if unit is None:
            return f"{n:,.0f} B"
    factor = dict(_DECIMAL_UNITS)[unit]
    binary, binary_factor = _BINARY_UNITS[unit]
    return f"{n / factor:,.2f} {unit} = {n / binary_factor:,.2f} {binary}"


# --------------------------------------------------------------------------------------------
# exact sizes


def kv_cache_bytes(
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    seq_len: int,
    dtype_bytes: int = 2,
    *,
    sliding_window: int | None = None,
    layer_types: Sequence[str] | None = None,
    batch: int = 1,
) -> int:
    """Exact bytes of an uncompressed KV cache (keys and values) of ``batch`` sequences.

    Every layer holds ``2 * num_kv_heads * head_dim * dtype_bytes`` bytes per token it keeps.
    A sliding-attention layer keeps ``min(seq_len, sliding_window)`` tokens, a full-attention
    layer all ``seq_len``. ``layer_types`` (transformers' names, one of
    ``["full_attention", "sliding_attention"]`` per layer) defaults to every layer full, or
    every layer sliding when only ``sliding_window`` is given (Mistral v0.1's convention).
    ``dtype_bytes``: 1 (fp8), 2 (fp16/bf16) or 4 (fp32).
    """
    num_layers = _check_int("num_layers", num_layers, 1)
    num_kv_heads = _check_int("num_kv_heads", num_kv_heads, 1)
    head_dim = _check_int("head_dim", head_dim, 1)
    seq_len = _check_int("seq_len", seq_len, 0)
    batch = _check_int("batch", batch, 1)
    if dtype_bytes not in _DTYPE_BYTES or isinstance(dtype_bytes, bool):
        raise InvalidArgumentError(
            f"dtype_bytes must be one of {list(_DTYPE_BYTES)}, got {dtype_bytes!r}"
        )
    if sliding_window is not None:
        sliding_window = _check_int("sliding_window", sliding_window, 1)
    types = _check_layer_types(layer_types, num_layers, sliding_window)
    tokens = sum(_layer_tokens(types, sliding_window, seq_len))
    return 2 * tokens * num_kv_heads * head_dim * dtype_bytes * batch


def _check_layer_types(
    layer_types: Sequence[str] | None, num_layers: int, sliding_window: int | None
) -> tuple[str, ...]:
    if layer_types is None:
        kind = FULL_ATTENTION if sliding_window is None else SLIDING_ATTENTION
        return (kind,) * num_layers
    if isinstance(layer_types, str) or len(layer_types) != num_layers:
        raise InvalidArgumentError(
            f"layer_types must be a sequence of num_layers={num_layers} entries from "
            f"{list(LAYER_TYPES)}, got {layer_types!r}"
        )
    bad = sorted({repr(t) for t in layer_types if t not in LAYER_TYPES})
    if bad:
        raise InvalidArgumentError(
            f"layer_types entries must be one of {list(LAYER_TYPES)}, got {', '.join(bad)}"
        )
    if SLIDING_ATTENTION in layer_types and sliding_window is None:
        raise InvalidArgumentError(
            "sliding_window must be a positive integer when layer_types has "
            "'sliding_attention' layers, got None"
        )
    return tuple(layer_types)


def _layer_tokens(types: Sequence[str], window: int | None, seq_len: int) -> list[int]:
    return [min(seq_len, window) if t == SLIDING_ATTENTION else seq_len for t in types]


def compressed_bytes_per_token(head_dim: int, key_bits: int, value_bits: int) -> int:
    """Bytes one token costs per KV head once coded: codes plus an fp16 scale, for K and V.

    ``(head_dim * key_bits / 8 + 2) + (head_dim * value_bits / 8 + 2)``, exact because head_dim
    is a multiple of 8 (in [8, 1024]); bits in 1..8.
    """
    d = check_head_dim(head_dim)
    kb = check_bits(key_bits, "key_bits")
    vb = check_bits(value_bits, "value_bits")
    return (d * kb // 8 + SCALE_BYTES) + (d * vb // 8 + SCALE_BYTES)


def measure_vector_bytes(head_dim: int, bits: int) -> float:
    """Bytes of codes + scales per head-vector, measured by running ``nexusquant.quantize``.

    Quantizes 1024 random fp16 head-vectors and divides the bytes of the codes and scales it
    returns (the per-tensor metadata excluded) by their number.
    """
    import torch  # noqa: PLC0415 - torch is only needed for the measured path

    from .codec import quantize  # noqa: PLC0415

    x = torch.randn(_MEASURE_VECTORS, check_head_dim(head_dim), dtype=torch.float16,
                    generator=torch.Generator().manual_seed(0))
    q = quantize(x, check_bits(bits), seed=0)
    held = q.codes.numel() * q.codes.element_size() + q.scales.numel() * q.scales.element_size()
    return held / _MEASURE_VECTORS


# --------------------------------------------------------------------------------------------
# how a cache configuration grows with the context


@dataclass(frozen=True)
class _Sizer:
    """Bytes one sequence's cache holds at a given context, for one cache configuration.

    ``mode``: ``fp16`` (uncompressed), ``bits`` (every token coded), ``target`` (fp16 bytes
    divided by the preset's target ratio), ``measured`` (measured codec bytes plus sinks and
    window in fp16; with ``target_ratio``, the eviction budget that meets it).
    """

    spec: ModelSpec
    mode: str
    key_bits: int = 16
    value_bits: int = 16
    target_ratio: float | None = None
    vector_bytes: float = 0.0
    solver: Callable[..., int] | None = None

    def _fp16_head(self, tokens: int) -> int:
        return 2 * tokens * self.spec.head_dim * FP16_BYTES

    def _measured_head(self, tokens: int) -> float:
        """Bytes of one layer's KV head holding ``tokens`` tokens of context."""
        fixed = min(tokens, SINK_TOKENS + WINDOW_TOKENS)
        coded = tokens - fixed
        if self.target_ratio is not None:
            coded = min(coded, self._coded_budget(tokens, fixed))
        return self._fp16_head(fixed) + coded * self.vector_bytes

    def _coded_budget(self, tokens: int, fixed: int) -> int:
        if self.solver is not None:
            kept = self.solver(seq_len=tokens, head_dim=self.spec.head_dim,
                               key_bits=self.key_bits, value_bits=self.value_bits,
                               target_ratio=self.target_ratio, sink_tokens=SINK_TOKENS,
                               window_tokens=WINDOW_TOKENS)
            if isinstance(kept, bool) or not isinstance(kept, int) or not fixed <= kept <= tokens:
                raise RuntimeError(
                    f"nexusquant.eviction.solve_budget returned {kept!r} for {tokens} tokens; "
                    f"expected an int in [{fixed}, {tokens}]"
                )
            return kept - fixed
        allowed = self._fp16_head(tokens) / self.target_ratio - self._fp16_head(fixed)
        return max(0, math.floor(allowed / self.vector_bytes))

    def bytes(self, seq_len: int) -> int:
        """Bytes held for one sequence of ``seq_len`` tokens."""
        spec = self.spec
        per_layer = Counter(_layer_tokens(spec.layer_types, spec.sliding_window, seq_len))
        heads = spec.num_kv_heads
        if self.mode == "fp16":
            return sum(n * heads * self._fp16_head(t) for t, n in per_layer.items())
        if self.mode == "bits":
            per_token = compressed_bytes_per_token(spec.head_dim, self.key_bits, self.value_bits)
            return sum(n * t for t, n in per_layer.items()) * heads * per_token
        if self.mode == "target":
            fp16 = sum(n * heads * self._fp16_head(t) for t, n in per_layer.items())
            return math.ceil(fp16 / self.target_ratio)
        return sum(n * math.ceil(heads * self._measured_head(t)) for t, n in per_layer.items())

    def max_tokens(self, free: int, batch: int) -> int | None:
        """Longest context whose cache for ``batch`` sequences fits in ``free`` bytes.

        ``None`` when the cache stops growing (every layer sliding) and fits at its largest.
        """
        def fits(n: int) -> bool:
            return batch * self.bytes(n) <= free

        if not fits(1):
            return 0
        if FULL_ATTENTION not in self.spec.layer_types and fits(self.spec.sliding_window):
            return None
        lo, hi = 1, 2
        while fits(hi):
            lo, hi = hi, hi * 2
        while hi - lo > 1:  # fits(lo) and not fits(hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo


# --------------------------------------------------------------------------------------------
# the report


@dataclass(frozen=True)
class CacheRow:
    """One cache configuration (fp16 or a preset) in a :class:`SavingsReport`.

    Attributes:
        name: ``"fp16"`` or the preset's name.
        key_bits, value_bits: bits per element (16 for fp16).
        target_ratio: the preset's target, ``None`` for fp16 and ``lossless``.
        ratio: fp16 bytes / this configuration's bytes at the report's context.
        kv_bytes_per_token: bytes per token of context, averaged over the report's context.
        kv_bytes: bytes held for ``batch`` sequences of ``seq_len`` tokens.
        max_tokens: longest context that fits beside the weights for ``batch`` sequences;
            ``None`` without a GPU capacity or when unbounded (``max_tokens_unbounded``).
        max_tokens_unbounded: the cache stops growing (sliding layers only) and fits.
        max_sessions: sequences of ``seq_len`` tokens that fit beside the weights; ``None``
            without a GPU capacity.
        basis: how the bytes were obtained.
    """

    name: str
    key_bits: int
    value_bits: int
    target_ratio: float | None
    ratio: float
    kv_bytes_per_token: float
    kv_bytes: int
    max_tokens: int | None
    max_tokens_unbounded: bool
    max_sessions: int | None
    basis: str


@dataclass(frozen=True)
class SavingsReport:
    """What a model's KV cache costs in fp16 and under each preset, and what fits on a GPU.

    ``kv_bytes_per_token`` and ``kv_bytes`` are the fp16 figures; ``rows`` holds fp16 first,
    then one :class:`CacheRow` per preset. ``capacity_bytes``, ``free_bytes`` (capacity minus
    weights) and the rows' ``max_*`` fields are ``None`` without a GPU or ``vram_bytes``.
    """

    model: ModelSpec
    seq_len: int
    batch: int
    gpu: GPUSpec | None
    capacity_bytes: int | None
    weights_bytes: int | None
    free_bytes: int | None
    measured: bool
    rows: tuple[CacheRow, ...]
    notes: tuple[str, ...]
    _sizers: dict[str, _Sizer] = field(repr=False, compare=False)

    @property
    def kv_bytes_per_token(self) -> float:
        """fp16 KV bytes per token of context (averaged over ``seq_len`` for sliding layers)."""
        return self.rows[0].kv_bytes_per_token

    @property
    def kv_bytes(self) -> int:
        """fp16 KV bytes for ``batch`` sequences of ``seq_len`` tokens."""
        return self.rows[0].kv_bytes

    def row(self, name: str) -> CacheRow:
        """The row called ``name`` (``"fp16"`` or a preset name)."""
        for r in self.rows:
            if r.name == name:
                return r
        raise InvalidArgumentError(
            f"name must be one of {[r.name for r in self.rows]}, got {name!r}"
        )

    def kv_bytes_at(self, name: str, seq_len: int) -> int:
        """Bytes the cache ``name`` holds for ``batch`` sequences of ``seq_len`` tokens."""
        self.row(name)
        return self.batch * self._sizers[name].bytes(_check_int("seq_len", seq_len, 0))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary; every size is an integer count of bytes."""
        m = self.model
        return {
            "model": {
                "name": m.name,
                "source": m.source,
                "num_layers": m.num_layers,
                "num_kv_heads": m.num_kv_heads,
                "head_dim": m.head_dim,
                "sliding_window": m.sliding_window,
                "sliding_layers": m.layer_types.count(SLIDING_ATTENTION),
                "param_count": m.param_count,
                "param_basis": m.param_basis,
                "max_context": m.max_context,
            },
            "seq_len": self.seq_len,
            "batch": self.batch,
            "gpu": None if self.gpu is None else {
                "name": self.gpu.name,
                "marketed": self.gpu.marketed,
                "marketed_unit": self.gpu.marketed_unit,
                "bytes": self.gpu.bytes,
                "note": self.gpu.note,
            },
            "capacity_bytes": self.capacity_bytes,
            "weights_bytes": self.weights_bytes,
            "free_bytes": self.free_bytes,
            "measured": self.measured,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_bytes": self.kv_bytes,
            "caches": {r.name: {k: v for k, v in r.__dict__.items() if k != "name"}
                       for r in self.rows},
            "notes": list(self.notes),
        }

    def format(self) -> str:
        """A readable table; every size is labelled with its unit (GB = 10^9, GiB = 2^30)."""
        m = self.model
        lines = [f"KV-cache memory: {m.name}  ({m.source})"]
        lines.append(f"  model    {m.describe_layers()} x {m.num_kv_heads} KV heads x "
                     f"head_dim {m.head_dim}")
        if m.param_count is not None:
            lines.append(f"  weights  {m.param_count:,} parameters ({m.param_basis}): "
                         f"{format_bytes(m.param_count * FP16_BYTES)} in fp16/bf16")
        else:
            lines.append(f"  weights  parameter count {m.param_basis}")
        if self.weights_bytes is not None and self.weights_bytes != m.weights_bytes:
            lines.append(f"           counted as given: {format_bytes(self.weights_bytes)}")
        lines.append(f"  context  {self.seq_len:,} tokens x batch {self.batch}")
        if self.capacity_bytes is not None:
            where = (f"{self.gpu.name} ({self.gpu.marketed} marketed, read as "
                     f"{self.gpu.marketed_unit}): " if self.gpu else "given: ")
            lines.append(f"  GPU      {where}{format_bytes(self.capacity_bytes, 'GB')}")
            lines.append(f"  free     beside the weights: {format_bytes(self.free_bytes, 'GB')}")
        unit = next((u for u, f in _DECIMAL_UNITS if self.kv_bytes >= f), "kB")
        headers = ["cache", "K/V bits", "ratio", "KV per token",
                   f"KV at {self.seq_len:,} tokens"]
        if self.capacity_bytes is not None:
            headers += ["max tokens", f"sessions at {self.seq_len:,}"]
        table = [headers]
        for r in self.rows:
            per_token = (f"{r.kv_bytes_per_token:,.0f} B" if r.kv_bytes_per_token.is_integer()
                         else f"{r.kv_bytes_per_token:,.1f} B")
            cells = [r.name, f"{r.key_bits}/{r.value_bits}", f"{r.ratio:.2f}x", per_token,
                     format_bytes(r.kv_bytes, unit)]
            if self.capacity_bytes is not None:
                tokens = "unbounded" if r.max_tokens_unbounded else f"{r.max_tokens:,}"
                cells += [tokens, f"{r.max_sessions:,}"]
            table.append(cells)
        widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
        lines.append("")
        for i, row in enumerate(table):
            cells = zip(row, widths, strict=True)
            lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                                   for j, (c, w) in enumerate(cells)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("")
        lines.append("Units: GB = 10^9 bytes, GiB = 2^30 bytes (likewise kB/KiB, MB/MiB, TB/TiB);"
                     " B = bytes; token counts k = 1,000.")
        lines.extend(f"Note: {n}" for n in self.notes)
        return "\n".join(lines)


def _eviction_solver() -> Callable[..., int] | None:
    """``nexusquant.eviction.solve_budget`` when the eviction layer provides it, else None."""
    try:
        module = importlib.import_module("nexusquant.eviction")
    except ModuleNotFoundError as exc:
        if exc.name not in ("nexusquant.eviction", "nexusquant"):
            raise
        return None
    return getattr(module, "solve_budget", None)


def _preset_sizers(
    spec: ModelSpec, presets: Sequence[Preset], measured: bool
) -> tuple[dict[str, tuple[_Sizer, str]], list[str]]:
    sizers: dict[str, tuple[_Sizer, str]] = {}
    notes: list[str] = []
    if not measured:
        for p in presets:
            if p.target_ratio is None:
                sizers[p.name] = (_Sizer(spec, "bits", p.key_bits, p.value_bits),
                                  "bits + fp16 scales")
            else:
                sizers[p.name] = (_Sizer(spec, "target", p.key_bits, p.value_bits,
                                         p.target_ratio), "preset target ratio")
        notes.append("nominal ratios: lossless from its bits + fp16 scales (sinks and window "
                     "not counted), eviction presets at their target ratio; --measured / "
                     "measured=True runs the codec and counts the overheads")
        return sizers, notes
    solver = _eviction_solver()
    measured_bytes: dict[int, float] = {}
    for p in presets:
        for b in (p.key_bits, p.value_bits):
            if b not in measured_bytes:
                measured_bytes[b] = measure_vector_bytes(spec.head_dim, b)
        vector = measured_bytes[p.key_bits] + measured_bytes[p.value_bits]
        if p.target_ratio is None:
            basis = "measured codec bytes + fp16 sinks/window"
        elif solver is not None:
            basis = "measured codec bytes; budget from nexusquant.eviction.solve_budget"
        else:
            basis = "measured codec bytes; budget computed here from bytes"
        sizers[p.name] = (_Sizer(spec, "measured", p.key_bits, p.value_bits, p.target_ratio,
                                 vector, solver if p.target_ratio else None), basis)
    notes.append(f"measured: codes + scales from nexusquant.quantize on {_MEASURE_VECTORS} "
                 f"random head-vectors of head_dim {spec.head_dim} "
                 f"({', '.join(f'{b}-bit {v:g} B' for b, v in sorted(measured_bytes.items()))}"
                 f" per head-vector); {SINK_TOKENS} sink tokens and a {WINDOW_TOKENS}-token "
                 f"window held in fp16 per layer")
    if any(p.target_ratio for p in presets):
        notes.append("eviction budgets from nexusquant.eviction.solve_budget" if solver else
                     "nexusquant.eviction is not installed: eviction budgets computed here from "
                     "the measured bytes and the sink/window overheads alone")
    return sizers, notes


def savings_report(
    model: str | ModelSpec,
    seq_len: int,
    *,
    gpu: str | GPUSpec | None = None,
    vram_bytes: int | None = None,
    presets: Iterable[str | Preset] = tuple(PRESETS),
    measured: bool = False,
    batch: int = 1,
    weights_bytes: int | None = None,
) -> SavingsReport:
    """KV memory of ``model`` at ``seq_len`` tokens in fp16 and under each preset.

    Args:
        model: a built-in model name (``nexusquant.specs.MODELS``), a ``config.json`` path, a
            model folder, or a :class:`~nexusquant.specs.ModelSpec`.
        seq_len: tokens of context per sequence (>= 1).
        gpu: a built-in GPU name (``nexusquant.specs.GPUS``) or a GPUSpec; or
        vram_bytes: the GPU memory in bytes (not both).
        presets: preset names or :class:`~nexusquant.presets.Preset` objects to report (or
            one of them).
        measured: measure the codec's bytes and count sinks/window (see the module docstring).
        batch: sequences held at once; ``kv_bytes`` and ``max_tokens`` are for all of them.
        weights_bytes: override the fp16/bf16 weights size (e.g. for quantized weights).

    With a GPU capacity, ``free_bytes`` = capacity - weights (activations, the CUDA context and
    allocator slack are not counted), and every row gets ``max_tokens`` and ``max_sessions``.
    """
    spec = model_spec(model)
    seq_len = _check_int("seq_len", seq_len, 1)
    batch = _check_int("batch", batch, 1)
    if gpu is not None and vram_bytes is not None:
        raise InvalidArgumentError("give gpu or vram_bytes, not both")
    gpu_obj = gpu if isinstance(gpu, GPUSpec) or gpu is None else gpu_spec(gpu)
    capacity = gpu_obj.bytes if gpu_obj else vram_bytes
    if capacity is not None:
        capacity = _check_int("vram_bytes", capacity, 1)
    if weights_bytes is None:
        weights_bytes = spec.weights_bytes
    else:
        weights_bytes = _check_int("weights_bytes", weights_bytes, 0)
    if capacity is not None and weights_bytes is None:
        raise InvalidArgumentError(
            f"weights_bytes is needed with a GPU capacity: {spec.name}'s parameter count is "
            f"{spec.param_basis}; pass weights_bytes (--weights on the command line)"
        )
    if isinstance(presets, (str, Preset)):
        presets = (presets,)
    preset_objs = [p if isinstance(p, Preset) else get_preset(p) for p in presets]

    notes = []
    sizers = {"fp16": (_Sizer(spec, "fp16"), "uncompressed, 2 bytes per element")}
    preset_sizers, preset_notes = _preset_sizers(spec, preset_objs, measured)
    sizers.update(preset_sizers)
    notes += preset_notes
    free = None if capacity is None else max(0, capacity - weights_bytes)
    if capacity is not None:
        notes.append("free memory = capacity - weights; activations, the CUDA context and "
                     "allocator slack are not counted")
        if weights_bytes > capacity:
            notes.append(f"the weights ({format_bytes(weights_bytes)}) do not fit in "
                         f"{format_bytes(capacity)}")
    if spec.max_context is not None and seq_len > spec.max_context:
        notes.append(f"{seq_len:,} tokens exceed the context the config declares "
                     f"({spec.max_context:,})")

    fp16_one = sizers["fp16"][0].bytes(seq_len)
    rows = []
    for name, (sizer, basis) in sizers.items():
        one = sizer.bytes(seq_len)
        ratio = fp16_one / one
        short = sizer.target_ratio is not None and ratio < sizer.target_ratio * (1 - 1e-6)
        if sizer.mode == "measured" and short:
            notes.append(f"{name}: the {sizer.target_ratio:g}x target is out of reach at "
                         f"{seq_len:,} tokens (sink and window tokens stay in fp16); best "
                         f"achievable {ratio:.2f}x")
        max_tokens = None if free is None else sizer.max_tokens(free, batch)
        rows.append(CacheRow(
            name=name,
            key_bits=sizer.key_bits,
            value_bits=sizer.value_bits,
            target_ratio=sizer.target_ratio,
            ratio=ratio,
            kv_bytes_per_token=one / seq_len,
            kv_bytes=one * batch,
            max_tokens=max_tokens,
            max_tokens_unbounded=free is not None and max_tokens is None,
            max_sessions=None if free is None else free // one,
            basis=basis,
        ))
    return SavingsReport(
        model=spec,
        seq_len=seq_len,
        batch=batch,
        gpu=gpu_obj,
        capacity_bytes=capacity,
        weights_bytes=weights_bytes,
        free_bytes=free,
        measured=measured,
        rows=tuple(rows),
        notes=tuple(notes),
        _sizers={name: s for name, (s, _) in sizers.items()},
    )


def plot_report(report: SavingsReport, path: str, *, points: int = 64) -> None:
    """Draw memory (weights + KV cache, in GiB) against context length for every row of
    ``report`` to the PNG file ``path``, with the GPU capacity line when the report has one.

    Needs matplotlib (drawn with the Agg canvas; pyplot's global state is not touched).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(
            "plotting needs matplotlib: pip install matplotlib"
        ) from exc
    points = _check_int("points", points, 2)
    lo, hi = min(1024, report.seq_len), max(4 * report.seq_len, 4096)
    xs = sorted({round(lo * (hi / lo) ** (i / (points - 1))) for i in range(points)})
    weights = report.weights_bytes or 0
    gib = 2**30
    fig = Figure(figsize=(9, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for r in report.rows:
        ys = [(weights + report.kv_bytes_at(r.name, x)) / gib for x in xs]
        ax.plot(xs, ys, label=f"{r.name} ({r.ratio:.1f}x at {report.seq_len:,})")
    if report.weights_bytes:
        ax.axhline(weights / gib, color="grey", linestyle=":", label="weights")
    if report.capacity_bytes is not None:
        name = report.gpu.name if report.gpu else "given"
        ax.axhline(report.capacity_bytes / gib, color="red", linestyle="--",
                   label=f"GPU capacity: {name}, {report.capacity_bytes / gib:,.1f} GiB")
    ax.axvline(report.seq_len, color="black", linewidth=0.8, alpha=0.5,
               label=f"{report.seq_len:,} tokens")
    ax.set_xscale("log")
    ax.set_xlabel("context length (tokens per sequence)")
    what = "weights + KV cache" if report.weights_bytes else "KV cache"
    ax.set_ylabel(f"{what} (GiB = 2^30 bytes)")
    ax.set_title(f"{report.model.name}: {what}, batch {report.batch}"
                 + (" (measured)" if report.measured else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")


__all__ = [
    "FP16_BYTES",
    "SCALE_BYTES",
    "SINK_TOKENS",
    "WINDOW_TOKENS",
    "kv_cache_bytes",
    "compressed_bytes_per_token",
    "measure_vector_bytes",
    "parse_tokens",
    "parse_bytes",
    "format_bytes",
    "CacheRow",
    "SavingsReport",
    "savings_report",
    "plot_report",
]
