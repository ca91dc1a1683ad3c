"""Model and GPU specifications for the memory calculator.

Two sources of model shapes:

* the built-in table :data:`MODELS`, the published ``config.json`` figures of a few common
  models (only the fields that size the KV cache and the weights), with their published
  parameter counts;
* a transformers ``config.json`` file or a local model folder, read with :mod:`json` alone
  (no transformers import), see :func:`model_from_config`.

GPU capacities (:data:`GPUS`): NVIDIA markets memory in "GB" but means binary gigabytes (the
memory chips come in powers of two; an "80GB" H100 or A100 is 80 x 2^30 bytes of memory). Every
entry therefore records the marketed figure *and* that it is read as GiB, and the byte count
used is ``marketed x 2^30``. The driver reports a little less than that (ECC and reserved
memory, e.g. an H100 80GB shows 81,559 MiB rather than 81,920 MiB); pass an exact
``vram_bytes`` / ``--vram`` when you know the usable figure.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import InvalidArgumentError

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"
#: The layer types the calculator sizes (transformers' names).
LAYER_TYPES = (FULL_ATTENTION, SLIDING_ATTENTION)
#: Older transformers configs spell full attention this way.
_LEGACY_LAYER_TYPES = {"attention": FULL_ATTENTION}

#: Bytes per weight of an fp16/bf16 checkpoint: the weights figures assume one of those dtypes.
WEIGHT_DTYPE_BYTES = 2
#: A safetensors header larger than this is refused (the safetensors library uses the same cap).
MAX_SAFETENSORS_HEADER = 100_000_000
#: Config keys that mark a mixture-of-experts model, whose weights the dense formula cannot size.
_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
#: Model types with four RMS norms per decoder layer instead of two.
_FOUR_NORM_TYPES = {"gemma2", "gemma3", "gemma3_text"}
#: Model types whose q/k/v projections carry a bias even without ``attention_bias``.
_QKV_BIAS_TYPES = {"qwen2"}


@dataclass(frozen=True)
class ModelSpec:
    """The shapes of a decoder-only transformer that size its KV cache and weights.

    Attributes:
        name: display name (built-in name or the config's path).
        num_layers: decoder layers, each with its own K and V cache.
        num_kv_heads: key/value heads per layer (GQA/MQA share them across query heads).
        head_dim: elements per head-vector.
        layer_types: one of :data:`LAYER_TYPES` per layer.
        sliding_window: tokens a sliding-attention layer keeps; ``None`` without such layers.
        param_count: number of weights, ``None`` when unknown.
        param_basis: where ``param_count`` comes from (published figure, safetensors headers,
            estimate from the config), or why it is unknown.
        max_context: the context length the config declares (``max_position_embeddings``).
        source: where the shapes come from (a model repository id or a file path).
    """

    name: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    layer_types: tuple[str, ...]
    sliding_window: int | None
    param_count: int | None
    param_basis: str
    max_context: int | None
    source: str

    @property
    def weights_bytes(self) -> int | None:
        """Bytes of the weights in fp16/bf16, ``None`` when the parameter count is unknown."""
        return None if self.param_count is None else self.param_count * WEIGHT_DTYPE_BYTES

    def describe_layers(self) -> str:
        """One phrase such as ``"13 sliding-window (4096) + 13 full-attention layers"``."""
        sliding = self.layer_types.count(SLIDING_ATTENTION)
        if sliding == 0:
            return f"{self.num_layers} full-attention layers"
        if sliding == self.num_layers:
            return f"{self.num_layers} sliding-window ({self.sliding_window}) layers"
        return (
            f"{sliding} sliding-window ({self.sliding_window}) + "
            f"{self.num_layers - sliding} full-attention layers"
        )


@dataclass(frozen=True)
class GPUSpec:
    """One GPU's memory capacity.

    Attributes:
        name: short name (``"H100"``).
        marketed: the capacity as the vendor writes it (``"80GB"``).
        marketed_unit: how the calculator reads the marketed figure: ``"GiB"`` (2^30 bytes).
        bytes: the capacity used, ``marketed x 2^30``.
        note: what the driver really reports or other caveats.
    """

    name: str
    marketed: str
    marketed_unit: str
    bytes: int
    note: str


def _gpu(name: str, gib: int, note: str) -> GPUSpec:
    return GPUSpec(name, f"{gib}GB", "GiB", gib * 2**30, note)


GPUS: dict[str, GPUSpec] = {
    g.name: g
    for g in (
        _gpu("RTX 3090", 24, "GDDR6X; nvidia-smi shows 24,576 MiB"),
        _gpu("A10G", 24, "GDDR6 with ECC; the driver reports about 22.5 GiB usable"),
        _gpu("L4", 24, "GDDR6 with ECC; the driver reports about 22.5 GiB usable"),
        _gpu("A100-40GB", 40, "HBM2"),
        _gpu("A100-80GB", 80, "HBM2e; nvidia-smi shows 81,920 MiB"),
        _gpu("H100", 80, "HBM3, 80GB parts; nvidia-smi shows 81,559 MiB"),
        _gpu("H200", 141, "HBM3e; nvidia-smi shows 143,771 MiB (140.4 GiB)"),
        _gpu("B200", 192, "HBM3e; HGX/DGX B200 systems expose 180 GB per GPU"),
    )
}

_GPU_ALIASES = {
    "3090": "RTX 3090",
    "GeForce RTX 3090": "RTX 3090",
    "A100": "A100-80GB",
    "A100-40G": "A100-40GB",
    "A100-80G": "A100-80GB",
    "H100-80GB": "H100",
    "H100-SXM": "H100",
    "H100-PCIe": "H100",
    "H200-141GB": "H200",
    "B200-192GB": "B200",
}


@dataclass(frozen=True)
class _BuiltinModel:
    name: str
    repo: str
    param_count: int
    config: Mapping[str, Any]


def _cfg(model_type: str, layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int,
         intermediate: int, vocab: int, tied: bool, max_pos: int, **extra: Any) -> dict[str, Any]:
    return {
        "model_type": model_type,
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "intermediate_size": intermediate,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "max_position_embeddings": max_pos,
        **extra,
    }


# Published config.json figures (the fields that matter here) and published parameter counts.
# tests/test_memory.py checks that the dense-decoder formula reproduces every count.
_BUILTIN_MODELS = (
    # v0.3 (and v0.2) have no sliding window; v0.1 had a 4096-token window on every layer.
    _BuiltinModel("Mistral-7B", "mistralai/Mistral-7B-v0.3", 7_248_023_552,
                  _cfg("mistral", 32, 4096, 32, 8, 128, 14336, 32768, False, 32768,
                       sliding_window=None)),
    _BuiltinModel("Llama-3-8B", "meta-llama/Meta-Llama-3-8B", 8_030_261_248,
                  _cfg("llama", 32, 4096, 32, 8, 128, 14336, 128256, False, 8192)),
    _BuiltinModel("Llama-3.1-70B", "meta-llama/Llama-3.1-70B", 70_553_706_496,
                  _cfg("llama", 80, 8192, 64, 8, 128, 28672, 128256, False, 131072)),
    _BuiltinModel("Llama-3.1-405B", "meta-llama/Llama-3.1-405B", 405_853_388_800,
                  _cfg("llama", 126, 16384, 128, 8, 128, 53248, 128256, False, 131072)),
    _BuiltinModel("Qwen2.5-7B", "Qwen/Qwen2.5-7B", 7_615_616_512,
                  _cfg("qwen2", 28, 3584, 28, 4, 128, 18944, 152064, False, 131072,
                       use_sliding_window=False, sliding_window=131072, max_window_layers=28)),
    _BuiltinModel("Gemma-2-2B", "google/gemma-2-2b", 2_614_341_888,
                  _cfg("gemma2", 26, 2304, 8, 4, 256, 9216, 256000, True, 8192,
                       sliding_window=4096)),
    _BuiltinModel("SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M", 134_515_008,
                  _cfg("llama", 30, 576, 9, 3, 64, 1536, 49152, True, 8192)),
    _BuiltinModel("TinyLlama-1.1B", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", 1_100_048_384,
                  _cfg("llama", 22, 2048, 32, 4, 64, 5632, 32000, False, 2048)),
)

_MODEL_ALIASES = {
    "Mistral-7B-v0.3": "Mistral-7B",
    "Mistral-7B-Instruct-v0.3": "Mistral-7B",
    "Meta-Llama-3-8B": "Llama-3-8B",
    "Llama-3-8B-Instruct": "Llama-3-8B",
    "Llama-3.1-8B": "Llama-3-8B",  # same shapes as Llama 3 8B
    "Llama-3.1-8B-Instruct": "Llama-3-8B",
    "Llama-3.1-70B-Instruct": "Llama-3.1-70B",
    "Llama-3.1-405B-Instruct": "Llama-3.1-405B",
    "Qwen2.5-7B-Instruct": "Qwen2.5-7B",
    "gemma-2-2b-it": "Gemma-2-2B",
    "SmolLM2-135M-Instruct": "SmolLM2-135M",
    "TinyLlama-1.1B-Chat": "TinyLlama-1.1B",
}


def _key(name: str) -> str:
    """Lookup key: lower case without spaces, dashes, underscores or a vendor prefix."""
    key = re.sub(r"[\s_\-]", "", name.rsplit("/", 1)[-1]).lower()
    return re.sub(r"^(nvidia|geforce)", "", key)


def _lookup(name: str, canonical: list[str], aliases: Mapping[str, str], what: str,
            hint: str) -> str:
    table = {_key(n): n for n in canonical}
    table.update({_key(a): n for a, n in aliases.items()})
    found = table.get(_key(name))
    if found is not None:
        return found
    close = difflib.get_close_matches(_key(name), list(table), n=3, cutoff=0.6)
    suggestions = list(dict.fromkeys(table[c] for c in close))
    did_you_mean = f"did you mean {' or '.join(suggestions)}? " if suggestions else ""
    raise InvalidArgumentError(
        f"unknown {what} {name!r}: {did_you_mean}{what} must be one of {canonical}{hint}"
    )


def gpu_spec(name: str) -> GPUSpec:
    """Return the built-in GPU called ``name`` (case, spaces and dashes ignored).

    Raises InvalidArgumentError listing the known GPUs and the closest matches.
    """
    if not isinstance(name, str):
        raise InvalidArgumentError(f"gpu must be a GPU name such as 'H100', got {name!r}")
    return GPUS[_lookup(name, list(GPUS), _GPU_ALIASES, "gpu", "; or give vram_bytes")]


def model_spec(model: str | os.PathLike[str] | ModelSpec) -> ModelSpec:
    """Resolve ``model``: a :class:`ModelSpec`, a built-in name, a ``config.json`` or a folder.

    A folder must hold ``config.json``; if it also holds ``*.safetensors`` files, the parameter
    count is read from their headers (exact). Unknown names raise InvalidArgumentError with the
    closest built-in names.
    """
    if isinstance(model, ModelSpec):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise InvalidArgumentError(
            f"model must be a built-in model name, a config.json path or a model folder, "
            f"got {model!r}"
        )
    path = Path(model)
    if path.is_dir():
        return model_from_folder(path)
    if path.is_file():
        return model_from_config(_read_json(path), name=str(path), source=str(path))
    text = str(model)
    if text.endswith(".json"):
        raise InvalidArgumentError(f"model config {text!r} does not exist")
    hint = ", a config.json path or a local model folder"
    if os.sep in text:
        hint += f" ({text!r} is no existing path either)"
    return MODELS[_lookup(text, list(MODELS), _MODEL_ALIASES, "model", hint)]


def model_from_folder(folder: str | os.PathLike[str]) -> ModelSpec:
    """Read ``folder/config.json`` and count the weights in ``folder/*.safetensors`` if any."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InvalidArgumentError(f"model folder {str(folder)!r} has no config.json")
    spec = model_from_config(_read_json(config_path), name=str(folder), source=str(config_path))
    shards = _weight_files(folder)
    if not shards:
        return spec
    count = sum(safetensors_param_count(p) for p in shards)
    return replace(spec, param_count=count,
                   param_basis=f"counted from {len(shards)} safetensors file(s)")


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files that make up the model, each counted once.

    ``model.safetensors.index.json`` names the shards when present (repositories such as
    Mistral's also ship a ``consolidated.safetensors`` copy that must not be added); otherwise
    ``model.safetensors``, otherwise every ``*.safetensors`` file.
    """
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        weight_map = _read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not all(
            isinstance(f, str) and Path(f).name == f for f in weight_map.values()
        ):
            raise InvalidArgumentError(
                f"{str(index_path)!r}: weight_map must map tensor names to file names"
            )
        return [folder / f for f in sorted(set(weight_map.values()))]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else sorted(folder.glob("*.safetensors"))


def _read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object file; raise InvalidArgumentError naming the file otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgumentError(f"cannot read {str(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"{str(path)!r} is not a JSON object")
    return data


def safetensors_param_count(path: str | os.PathLike[str]) -> int:
    """Number of tensor elements declared in a ``.safetensors`` file's header.

    The header is parsed defensively: its declared length is checked against the file size and
    :data:`MAX_SAFETENSORS_HEADER`, and every entry must have a list of non-negative int shapes.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            prefix = f.read(8)
            size = path.stat().st_size
            if len(prefix) != 8:
                raise InvalidArgumentError(f"{str(path)!r} is too short to be a safetensors file")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(MAX_SAFETENSORS_HEADER, size - 8):
                raise InvalidArgumentError(
                    f"{str(path)!r}: safetensors header length {header_len} exceeds the file "
                    f"or the {MAX_SAFETENSORS_HEADER}-byte limit"
                )
            header = json.loads(f.read(header_len).decode("utf-8"))
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read {str(path)!r}: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgumentError(f"{str(path)!r}: bad safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidArgumentError(f"{str(path)!r}: safetensors header is not a JSON object")
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise InvalidArgumentError(f"{str(path)!r}: tensor {name!r} has no valid shape")
        total += math.prod(shape)
    return total


def _positive_int(cfg: Mapping[str, Any], key: str, source: str) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{source}: {key} must be a positive integer, got {value!r}")
    return value


def _layer_types(cfg: Mapping[str, Any], num_layers: int, source: str) -> tuple[str, ...]:
    """The attention type of every layer, following transformers' rules for each family."""
    declared = cfg.get("layer_types")
    if declared is not None:
        if not isinstance(declared, list) or len(declared) != num_layers:
            raise InvalidArgumentError(
                f"{source}: layer_types must be a list of {num_layers} entries "
                f"(num_hidden_layers), got {declared!r}"
            )
        types = tuple(_LEGACY_LAYER_TYPES.get(t, t) for t in declared)
        unsupported = sorted({str(t) for t in types if t not in LAYER_TYPES})
        if unsupported:
            raise InvalidArgumentError(
                f"{source}: layer_types entries must be one of {list(LAYER_TYPES)} for the KV "
                f"calculator, got {unsupported}"
            )
        return types
    if cfg.get("sliding_window") is None:
        return (FULL_ATTENTION,) * num_layers
    if "use_sliding_window" in cfg:  # Qwen2 family: layers from max_window_layers on slide
        if not cfg["use_sliding_window"]:
            return (FULL_ATTENTION,) * num_layers
        first = cfg.get("max_window_layers", 0)
        return tuple(SLIDING_ATTENTION if i >= first else FULL_ATTENTION
                     for i in range(num_layers))
    pattern = cfg.get("sliding_window_pattern")
    if pattern is None and cfg.get("model_type") == "gemma2":
        pattern = 2
    if pattern is not None:  # Gemma 2/3, Cohere 2: every pattern-th layer is global
        if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 1:
            raise InvalidArgumentError(
                f"{source}: sliding_window_pattern must be a positive integer, got {pattern!r}"
            )
        return tuple(SLIDING_ATTENTION if (i + 1) % pattern else FULL_ATTENTION
                     for i in range(num_layers))
    return (SLIDING_ATTENTION,) * num_layers  # Mistral v0.1: a window on every layer


def estimate_param_count(cfg: Mapping[str, Any]) -> int | None:
    """Parameters of a dense gated-MLP decoder (Llama, Mistral, Qwen2, Gemma families).

    ``None`` for mixture-of-experts configs or when a needed field is missing. Counts the
    embeddings (twice unless tied), q/k/v/o projections (with biases where the family has
    them), the gated MLP and the RMS norms.
    """
    if "text_config" in cfg and isinstance(cfg["text_config"], dict):
        cfg = cfg["text_config"]
    if any(cfg.get(k) for k in _MOE_KEYS):
        return None
    try:
        layers = int(cfg["num_hidden_layers"])
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        inter = int(cfg["intermediate_size"])
        vocab = int(cfg["vocab_size"])
    except (KeyError, TypeError, ValueError):
        return None
    q, kv = heads * head_dim, kv_heads * head_dim
    attn = 2 * hidden * q + 2 * hidden * kv
    model_type = cfg.get("model_type")
    if cfg.get("attention_bias"):
        attn += q + 2 * kv + hidden
    elif model_type in _QKV_BIAS_TYPES:
        attn += q + 2 * kv
    norms = (4 if model_type in _FOUR_NORM_TYPES else 2) * hidden
    embeddings = vocab * hidden * (1 if cfg.get("tie_word_embeddings", False) else 2)
    return embeddings + hidden + layers * (attn + 3 * hidden * inter + norms)


def model_from_config(cfg: Mapping[str, Any], *, name: str, source: str) -> ModelSpec:
    """Build a :class:`ModelSpec` from a transformers ``config.json`` dictionary.

    Handles ``num_key_value_heads`` missing (= ``num_attention_heads``), ``head_dim`` missing
    (= ``hidden_size // num_attention_heads``), ``layer_types``, ``sliding_window`` with the
    Mistral (every layer), Qwen2 (``use_sliding_window``/``max_window_layers``) and Gemma
    (alternating, ``sliding_window_pattern``) conventions, and multimodal configs whose text
    model sits under ``text_config``. A config lacking a field the KV size needs raises
    InvalidArgumentError naming the missing fields.
    """
    if "text_config" in cfg and isinstance(cfg["text_config"], dict):
        cfg = cfg["text_config"]
    need = ["num_hidden_layers"]
    if cfg.get("num_key_value_heads") is None or cfg.get("head_dim") is None:
        need.append("num_attention_heads")
    if cfg.get("head_dim") is None:
        need.append("hidden_size")
    missing = [k for k in need if cfg.get(k) is None]
    if missing:
        raise InvalidArgumentError(
            f"{source}: the config lacks {missing}, needed to size the KV cache "
            f"(fields used: num_hidden_layers, num_key_value_heads or num_attention_heads, "
            f"head_dim or hidden_size)"
        )
    layers = _positive_int(cfg, "num_hidden_layers", source)
    if cfg.get("num_key_value_heads") is not None:
        kv_heads = _positive_int(cfg, "num_key_value_heads", source)
    else:
        kv_heads = _positive_int(cfg, "num_attention_heads", source)
    if cfg.get("head_dim") is not None:
        head_dim = _positive_int(cfg, "head_dim", source)
    else:
        head_dim = (_positive_int(cfg, "hidden_size", source)
                    // _positive_int(cfg, "num_attention_heads", source))
    layer_types = _layer_types(cfg, layers, source)
    window = None
    if SLIDING_ATTENTION in layer_types:
        window = cfg.get("sliding_window")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise InvalidArgumentError(
                f"{source}: sliding-window layers need sliding_window as a positive integer, "
                f"got {window!r}"
            )
    params = estimate_param_count(cfg)
    if params is not None:
        basis = "estimated from the config (dense decoder formula)"
    elif any(cfg.get(k) for k in _MOE_KEYS):
        basis = "unknown: mixture-of-experts config (give the model folder with its safetensors)"
    else:
        basis = "unknown: the config lacks hidden_size, intermediate_size or vocab_size"
    max_context = cfg.get("max_position_embeddings")
    if isinstance(max_context, bool) or not isinstance(max_context, int):
        max_context = None
    return ModelSpec(
        name=name,
        num_layers=layers,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        layer_types=layer_types,
        sliding_window=window,
        param_count=params,
        param_basis=basis,
        max_context=max_context,
        source=source,
    )


#: The built-in models by name.
MODELS: dict[str, ModelSpec] = {
    m.name: replace(model_from_config(m.config, name=m.name, source=m.repo),
                    param_count=m.param_count, param_basis="published")
    for m in _BUILTIN_MODELS
}


def builtin_config(name: str) -> dict[str, Any]:
    """The published ``config.json`` fields stored for the built-in model ``name`` (a copy)."""
    return dict(next(m.config for m in _BUILTIN_MODELS if m.name == name))


__all__ = [
    "FULL_ATTENTION",
    "SLIDING_ATTENTION",
    "LAYER_TYPES",
    "WEIGHT_DTYPE_BYTES",
    "ModelSpec",
    "GPUSpec",
    "MODELS",
    "GPUS",
    "model_spec",
    "model_from_config",
    "model_from_folder",
    "gpu_spec",
    "estimate_param_count",
    "safetensors_param_count",
    "builtin_config",
]
