"""The evaluation harness (nexusquant.eval.harness) on a tiny model: the figures it computes mean
what they say. The real-model benchmark is benches/quality.py (never run by tests)."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from conftest import make_char_tokenizer, make_tiny_llama
from transformers import DynamicCache

import nexusquant as nq
from nexusquant import NexusQuantCache, errors
from nexusquant.eval import harness
from nexusquant.presets import PRESETS

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def text_ids(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 256, (n,), generator=g)


def test_score_matches_the_definitions():
    exact = torch.log_softmax(torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), dim=-1)
    approx = torch.log_softmax(torch.tensor([[1.0, 0.5, -1.0], [1.0, 0.0, 0.0]]), dim=-1)
    targets = torch.tensor([0, 1])
    score = harness.Score()
    score.add(exact, approx, targets)
    f = score.figures()
    nll = -(approx[0, 0] + approx[1, 1]) / 2
    exact_nll = -(exact[0, 0] + exact[1, 1]) / 2
    assert f["ppl"] == pytest.approx(math.exp(nll))
    assert f["ppl_delta_pct"] == pytest.approx(100 * (math.exp(nll - exact_nll) - 1))
    kl = sum(float((exact[i].exp() * (exact[i] - approx[i])).sum()) for i in range(2)) / 2
    assert f["kl"] == pytest.approx(kl) and f["kl"] > 0
    assert f["top1"] == 0.5


def test_quality_of_an_exact_setting_is_exact_and_coding_costs_something():
    model = make_tiny_llama()
    specs = [harness.CacheSpec("K4V4 w0", "nexusquant", 4, 4, 0, 0, 1),
             harness.CacheSpec("K2V2 w0", "nexusquant", 2, 2, 0, 0, 1),
             harness.CacheSpec("K3V2 default", "nexusquant", 3, 2, 4, 128, 64)]
    out = harness.quality(model, text_ids(400), specs, context=40, tokens=8, windows=2, chunk=1,
                          log=lambda *a: None)
    r = out["results"]
    # at 48 tokens the default window holds everything: the cache is exact
    assert r["K3V2 default"]["kl"] == 0 and r["K3V2 default"]["top1"] == 1
    assert r["K3V2 default"]["ppl"] == pytest.approx(out["exact_ppl"])
    assert 0 < r["K4V4 w0"]["kl"] < r["K2V2 w0"]["kl"]
    assert r["K4V4 w0"]["fp16_ratio"] > 1 and r["K2V2 w0"]["fp16_ratio"] > r["K4V4 w0"]["fp16_ratio"]
    assert len(out["offsets"]) == 2 and out["offsets"][1] > out["offsets"][0] + 48


def test_chunked_feeding_equals_token_by_token_when_nothing_is_coded():
    model = make_tiny_llama()
    ids = text_ids(30).unsqueeze(0)
    results = []
    for chunk in (1, 5):
        cache, _ = harness.prefill(model, ids[:, :10])
        results.append(harness.forced_logprobs(model, cache, ids[:, 10:], chunk))
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-4)
    assert results[0].shape == (20, 256)


def test_quanto_fill_and_memory_are_measured():
    if harness.quanto_available() is not None:
        pytest.skip(harness.quanto_available())
    model = make_tiny_llama()
    prefilled, _ = harness.prefill(model, text_ids(200).unsqueeze(0))
    cache = harness.CacheSpec("quanto int4", "quanto", nbits=4).fill(model, prefilled)
    assert cache.get_seq_length() == 200
    mem = harness.cache_memory(model, cache, 200)
    assert 0 < mem["bytes"] < harness.fp16_bytes(model, 1, 200)


def test_held_bytes_of_a_dynamic_cache():
    model = make_tiny_llama()
    cache, _ = harness.prefill(model, text_ids(50).unsqueeze(0))
    expected = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert harness.held_bytes(cache) == expected
    assert harness.fp16_bytes(model, 1, 50) == expected // 2  # float32 model


def test_passkey_prompt_has_the_needle_and_about_the_length():
    tok = make_char_tokenizer()
    ids = harness.passkey_prompt(tok, 2000, 0.5, 12345)
    text = tok.decode(ids[0])
    assert abs(ids.shape[1] - 2000) < 100
    assert text.endswith("The pass key is") and "The pass key is 12345." in text
    assert abs(text.index("12345") / len(text) - 0.5) < 0.1


def test_passkey_and_speed_run_on_every_cache(monkeypatch):
    monkeypatch.setattr(harness, "PASSKEY_NEW_TOKENS", 3)
    monkeypatch.setattr(harness, "SPEED_STEPS", 4)
    model = make_tiny_llama()
    specs = [harness.CacheSpec("K3V2 w0", "nexusquant", 3, 2, 0, 0, 1)]
    out = harness.passkey(model, make_char_tokenizer(), specs, lengths=(150,), log=lambda *a: None)
    assert out["total"] == 6 and set(out["passed"]) == {"exact", "K3V2 w0"}
    assert all(0 <= v <= 6 for v in out["passed"].values())
    assert len({p["number"] for p in out["prompts"]}) == 6
    calls = []
    forward = model.forward

    def counting(*args, **kwargs):
        calls.append(kwargs["past_key_values"] if "past_key_values" in kwargs else kwargs.get("cache"))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    speed = harness.decode_speed(model, text_ids(100), specs, context=60)
    assert set(speed) == {"exact", "K3V2 w0"} and all(v > 0 for v in speed.values())
    # after the prefill: 2 warm-up + 4 timed steps per cache (4 rounds of 1), the caches taking turns
    caches = calls[1:]
    assert len(caches) == 2 * (2 + 4) and len({id(c) for c in caches}) == 2
    assert all(c.get_seq_length() == 60 + 6 for c in caches)
    timed = [id(c) for c in caches[4:]]
    assert timed[0] != timed[1] and timed[2] != timed[3]


def test_format_and_settings_arguments(tmp_path):
    result = {
        "machine": harness.machine_info(), "model": "tiny", "text": "t.txt", "text_tokens": 10,
        "quanto": "not installed", "settings": ["K3V2 w0"],
        "quality": {"context": 8, "tokens": 2, "chunk": 1, "offsets": [0], "exact_ppl": 2.0,
                    "exact_memory": {"bytes": 100, "fp16_ratio": 0.5, "used_fp16_ratio": 0.5},
                    "results": {"K3V2 w0": {"ppl": 2.1, "ppl_delta_pct": 5.0, "kl": 0.01, "top1": 0.9,
                                            "bytes": 10, "fp16_ratio": 5.0, "used_fp16_ratio": 5.5}},
                    "seed_summary": {"K3V2 w0": {"seeds": 3, "kl_mean": 0.0123, "kl_min": 0.01,
                                                 "kl_max": 0.015, "ppl_delta_pct_mean": 4.0}}},
        "passkey": {"total": 6, "passed": {"exact": 6, "K3V2 w0": 5}, "prompts": [{"tokens": 1000}] * 6},
        "speed": {"context": 8, "tokens_per_s": {"exact": 10.0, "K3V2 w0": 7.0}},
        "seconds": 60.0,
    }
    text = harness.format_result(result)
    assert "K3V2 w0" in text and "5/6" in text and "70 % of exact" in text
    assert "KL mean 0.01230 (min 0.01000, max 0.01500) over 3 seeds" in text
    harness.plot_result(result, str(tmp_path / "plot.png"))
    assert (tmp_path / "plot.png").stat().st_size > 0
    only_passkey = {k: v for k, v in result.items() if k not in ("quality", "speed")}
    text = harness.format_result(only_passkey)
    assert "5/6" in text and "KL" in text and "tokens/s" not in text
    with pytest.raises(errors.InvalidArgumentError, match="--plot needs the quality part"):
        harness.plot_result(only_passkey, str(tmp_path / "other.png"))

    assert harness.parse_settings("K3V2, k4v4") == [(3, 2), (4, 4)]
    with pytest.raises(errors.InvalidArgumentError, match="settings must be a comma-separated list like K3V2"):
        harness.parse_settings("K9V2")
    text_file = tmp_path / "t.txt"
    text_file.write_text("hello")
    cli = argparse.Namespace(text=str(text_file), quality=["lossless", "balanced"], seq=4096,
                             json=True, model=None, device="cpu", command="eval")
    cfg = harness._config_from(cli)
    presets = [(PRESETS[n].key_bits, PRESETS[n].value_bits) for n in ("lossless", "balanced")]
    assert cfg.settings == presets and cfg.context == 4096 and cfg.windows == 3
    quick = harness._config_from(argparse.Namespace(text=str(text_file), settings="K2V2", quick=True))
    assert (quick.context, quick.tokens, quick.windows, quick.passkey_lengths) == (512, 64, 1, (1024,))
    with pytest.raises(errors.InvalidArgumentError, match="parts must be a comma-separated subset"):
        harness._config_from(argparse.Namespace(text=str(text_file), parts="quality,plots"))
    assert harness._config_from(argparse.Namespace(text=str(text_file), parts="passkey")).parts == ("passkey",)
    with pytest.raises(errors.InvalidArgumentError, match="text must be a text file"):
        harness._config_from(argparse.Namespace(text=str(tmp_path / "missing.txt")))


def test_specs_cover_both_protocols():
    specs = harness.cache_specs([(3, 2)], quanto=True)
    assert [s.name for s in specs] == ["K3V2 w0", "K3V2 default", "K3V2 rtn", "quanto int4", "quanto int2"]
    assert (specs[0].sink_tokens, specs[0].window, specs[0].block) == (0, 0, 1)
    assert (specs[1].sink_tokens, specs[1].window, specs[1].block) == (4, 128, 64)
    model = make_tiny_llama()
    cache = specs[0].fill(model, DynamicCache(config=model.config))
    assert isinstance(cache, NexusQuantCache) and cache.get_seq_length() == 0


def test_several_rotation_seeds_run_every_coded_cache_per_seed_and_are_summarised(tmp_path):
    specs = harness.cache_specs([(3, 2)], quanto=False, seeds=(0, 5))
    assert [s.name for s in specs] == ["K3V2 w0 s0", "K3V2 default s0", "K3V2 rtn s0",
                                       "K3V2 w0 s5", "K3V2 default s5", "K3V2 rtn s5"]
    assert [s.seed for s in specs] == [0, 0, 0, 5, 5, 5]
    model = make_tiny_llama()
    exact = DynamicCache(config=model.config)
    x = torch.randn(1, 2, 20, 64, generator=torch.Generator().manual_seed(3))
    exact.update(x, x, 0)
    w0 = [specs[0].fill(model, exact), specs[3].fill(model, exact)]
    assert [c.layers[0].seed for c in w0] == [0, 5]
    assert not torch.equal(w0[0].layers[0].key_codes, w0[1].layers[0].key_codes)
    rtn = [specs[2].fill(model, exact), specs[5].fill(model, exact)]
    assert not torch.equal(rtn[0].layers[0].keys, rtn[1].layers[0].keys)

    out = harness.quality(model, text_ids(300), specs[:1] + specs[3:4], context=30, tokens=6, windows=1,
                          chunk=1, log=lambda *a: None)
    summary = harness.seed_summary(out["results"])
    kls = [out["results"][n]["kl"] for n in ("K3V2 w0 s0", "K3V2 w0 s5")]
    assert summary == {"K3V2 w0": {
        "seeds": 2, "kl_mean": pytest.approx(sum(kls) / 2), "kl_min": min(kls), "kl_max": max(kls),
        "ppl_delta_pct_mean": pytest.approx(sum(out["results"][n]["ppl_delta_pct"]
                                                for n in ("K3V2 w0 s0", "K3V2 w0 s5")) / 2)}}

    text_file = tmp_path / "t.txt"
    text_file.write_text("hello")
    cfg = harness._config_from(argparse.Namespace(text=str(text_file), seeds="3,1,3"))
    assert cfg.seeds == (3, 1)
    assert harness._config_from(argparse.Namespace(text=str(text_file))).seeds == (0,)
    for bad in ("a", "-1", "1,,2"):
        with pytest.raises(errors.InvalidArgumentError, match="seeds must be comma-separated integers"):
            harness._config_from(argparse.Namespace(text=str(text_file), seeds=bad))


def test_rtn_baseline_rounds_every_token_to_the_scalar_grid():
    """The simulated scalar baseline stores _core.scalar_roundtrip of each head-vector: after
    the rotation every value sits on its vector's uniform 2^b-level grid, and it is worse than
    the E8 codec at the same bits on the same data."""
    from nexusquant import reference

    model = make_tiny_llama()
    exact = DynamicCache(config=model.config)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 40, 64, generator=g)
    exact.update(x, 2 * x, 0)
    spec = harness.cache_specs([(4, 3)], quanto=False)[2]
    cache = spec.fill(model, exact)
    keys, values = cache.layers[0].keys, cache.layers[0].values
    assert keys.shape == x.shape and not torch.equal(keys, x)
    for stored, bits in ((keys, 4), (values, 3)):
        rotated = reference.rotate(stored.reshape(-1, 64).double(), 0)
        scale = rotated.abs().amax(dim=1, keepdim=True)
        for row in (rotated / scale * 1e3).round():
            assert 2 <= row.unique().numel() <= 2**bits
    e8 = nq.dequantize(nq.quantize(x, 4))
    assert ((keys - x) ** 2).sum() > ((e8 - x) ** 2).sum()
    assert math.isnan(harness.cache_memory(model, cache, 40)["bytes"])


def test_rtn_baseline_attends_like_a_window_0_nexusquant_cache():
    """A forward of several tokens sees its own tokens exactly and the stored ones rounded; a
    single-token step sees its own token rounded too (what NexusQuantCache does with window 0)."""
    model = make_tiny_llama()
    cache = harness.RoundTripCache(model.config, 4, 3)
    g = torch.Generator().manual_seed(1)
    first, chunk, step = (torch.randn(1, 2, n, 64, generator=g) for n in (10, 5, 1))
    cache.update(first, first, 0)
    keys, values = cache.update(chunk, -chunk, 0)
    assert keys.shape[2] == 15
    assert torch.equal(keys[:, :, 10:], chunk) and torch.equal(values[:, :, 10:], -chunk)
    assert torch.equal(keys[:, :, :10], cache.layers[0].keys[:, :, :10])
    assert not torch.equal(keys[:, :, :10], first)
    stored = cache.layers[0].keys[:, :, 10:15]
    assert not torch.equal(stored, chunk)  # what later forwards see is rounded
    keys, _ = cache.update(step, step, 0)
    assert torch.equal(keys, cache.layers[0].keys) and not torch.equal(keys[:, :, -1:], step)


def test_run_cli_end_to_end_on_a_saved_tiny_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(harness, "PASSKEY_NEW_TOKENS", 2)
    monkeypatch.setattr(harness, "SPEED_STEPS", 2)
    monkeypatch.setattr(harness, "quanto_available", lambda: "skipped in this test")
    make_tiny_llama().save_pretrained(tmp_path / "model")
    make_char_tokenizer().save_pretrained(tmp_path / "model")
    text = tmp_path / "text.txt"
    text.write_text("It was a bright cold day in April, and the clocks were striking thirteen. " * 20)
    out_json = tmp_path / "out.json"
    status = harness.main([
        "--model", str(tmp_path / "model"), "--text", str(text), "--settings", "K4V4",
        "--context", "40", "--tokens", "4", "--windows", "2", "--passkey-lengths", "120",
        "--json", str(out_json), "--threads", "1",
    ])
    assert status == 0
    printed = capsys.readouterr().out
    assert "K4V4 w0" in printed and "K4V4 default" in printed and "tokens/s" in printed
    result = json.loads(out_json.read_text())
    assert set(result["quality"]["results"]) == {"K4V4 w0", "K4V4 default", "K4V4 rtn"}
    assert math.isnan(result["quality"]["results"]["K4V4 rtn"]["bytes"])
    assert result["passkey"]["total"] == 6 and result["quanto"] == "skipped in this test"
    assert harness.main(["--text", str(tmp_path / "nope.txt")]) == 2
