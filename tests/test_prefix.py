"""Prefix reuse over host and disk stores (``nexusquant.prefix``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_llama, random_prompt

import nexusquant
from nexusquant import NexusQuantCache, errors
from nexusquant._hf import cache_kwarg
from nexusquant.prefix import PrefixCache, generate_with_prefix
from nexusquant.store import DiskStore, HostStore

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SETTINGS = dict(key_bits=3, value_bits=2, sink_tokens=2, window=8, block=8)
TESTS = Path(__file__).resolve().parent
#: Where the ``nexusquant`` this process imported lives, for the child processes.
PACKAGE_ROOT = str(Path(nexusquant.__file__).resolve().parents[1])
GREEDY = dict(max_new_tokens=10, do_sample=False)


def test_repeated_prompt_reuses_its_prefix_and_generates_the_same_tokens():
    model = make_tiny_llama()
    prompt = random_prompt(60, seed=40)
    prefixes = PrefixCache(HostStore(1 << 24), **SETTINGS)
    first = generate_with_prefix(model, prompt, prefixes, **GREEDY)
    assert first.reused == 0 and len(prefixes.store) == 2  # the prompt and the conversation
    second = generate_with_prefix(model, prompt, prefixes, **GREEDY)
    assert second.reused == 59
    assert torch.equal(second.output, first.output)
    # A run without a store (a fresh one) computes the same tokens.
    alone = generate_with_prefix(model, prompt, PrefixCache(HostStore(1 << 24), **SETTINGS), **GREEDY)
    assert alone.reused == 0 and torch.equal(alone.output, first.output)
    assert first.output.shape == (1, 70) and torch.equal(first.output[:, :60], prompt)


def test_next_turn_reuses_the_whole_conversation():
    model = make_tiny_llama()
    prefixes = PrefixCache(HostStore(1 << 24), **SETTINGS)
    turn1 = generate_with_prefix(model, random_prompt(50, seed=41), prefixes, **GREEDY)
    prompt2 = torch.cat([turn1.output, random_prompt(15, seed=42)], dim=1)
    turn2 = generate_with_prefix(model, prompt2, prefixes, **GREEDY)
    assert turn2.reused == turn1.output.shape[1] - 1
    # Continuing the first turn's cache by hand gives the same tokens.
    cache = turn1.cache
    head = prompt2[:, :-1]
    with torch.no_grad():
        model(input_ids=head[:, cache.get_seq_length():], use_cache=True, **{cache_kwarg(model): cache})
    expected = model.generate(prompt2, attention_mask=torch.ones_like(prompt2),
                              **{cache_kwarg(model): cache}, **GREEDY)
    assert torch.equal(turn2.output, expected)


def test_restore_returns_the_longest_prefix_or_a_fresh_cache():
    model = make_tiny_llama()
    prefixes = PrefixCache(HostStore(1 << 24), **SETTINGS)
    cache, n = prefixes.restore(random_prompt(30, seed=43), model.config)
    assert n == 0 and cache.get_seq_length() == 0 and cache.window == 8
    ids = random_prompt(30, seed=43)
    with torch.no_grad():
        model(input_ids=ids[:, :20], use_cache=True, **{cache_kwarg(model): cache})
    stored = prefixes.save(ids[:, :20], cache)
    assert stored > 0 and prefixes.store.nbytes == stored
    restored, n = prefixes.restore(ids[0], model.config)
    assert n == 20 and restored.get_seq_length() == 20
    other, n = prefixes.restore(random_prompt(30, seed=44), model.config)
    assert n == 0


def test_save_and_generate_argument_errors():
    model = make_tiny_llama()
    prefixes = PrefixCache(HostStore(1 << 24), **SETTINGS)
    cache = NexusQuantCache(model.config, **SETTINGS)
    ids = random_prompt(10, seed=45)
    with torch.no_grad():
        model(input_ids=ids, use_cache=True, **{cache_kwarg(model): cache})
    with pytest.raises(errors.InvalidArgumentError, match="cache holds 10 positions but input_ids has 9"):
        prefixes.save(ids[:, :9], cache)
    batch = NexusQuantCache(model.config, **SETTINGS)
    with torch.no_grad():
        model(input_ids=ids.repeat(2, 1), use_cache=True, **{cache_kwarg(model): batch})
    with pytest.raises(errors.ShapeError, match="batch 2"):
        prefixes.save(ids, batch)
    with pytest.raises(errors.ShapeError):
        prefixes.restore(ids.repeat(2, 1), model.config)
    with pytest.raises(errors.InvalidArgumentError, match="provides the cache itself"):
        generate_with_prefix(model, ids, prefixes, **{cache_kwarg(model): cache})
    with pytest.raises(errors.InvalidArgumentError, match="attention_mask has zeros"):
        generate_with_prefix(model, ids, prefixes, attention_mask=torch.zeros_like(ids))
    with pytest.raises(errors.InvalidArgumentError, match="unexpected cache arguments"):
        PrefixCache(HostStore(10), bits=3)
    with pytest.raises(errors.InvalidArgumentError, match="HostStore or a DiskStore"):
        PrefixCache({})


def test_disk_store_entries_are_found_by_a_new_process(tmp_path):
    model = make_tiny_llama()
    prompt = random_prompt(60, seed=46)
    with DiskStore(tmp_path / "store", 1 << 26) as store:
        first = generate_with_prefix(model, prompt, PrefixCache(store, **SETTINGS), **GREEDY)
    assert first.reused == 0

    code = f"""
        import torch
        torch.set_num_threads(1)
        from conftest import make_tiny_llama, random_prompt
        from nexusquant.prefix import PrefixCache, generate_with_prefix
        from nexusquant.store import DiskStore
        model = make_tiny_llama()
        with DiskStore({os.fspath(tmp_path / 'store')!r}, 1 << 26) as store:
            result = generate_with_prefix(model, random_prompt(60, seed=46), PrefixCache(store),
                                          max_new_tokens=10, do_sample=False)
            print(len(store), store.corrupt_entries(), result.reused)
        print(" ".join(map(str, result.output[0].tolist())))
    """
    pythonpath = os.pathsep.join([PACKAGE_ROOT, str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=pythonpath)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    counts, tokens = result.stdout.strip().splitlines()[-2:]
    assert counts == "2 [] 59"
    assert tokens.split() == [str(t) for t in first.output[0].tolist()]
