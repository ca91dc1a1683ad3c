"""Shared test fixtures: tiny random transformers models built from configs in code (never from a
model hub), hypothesis profiles, and the ``gpu`` marker's skip.

Model factories (also usable directly: ``from conftest import make_tiny_llama``):

* :func:`make_tiny_llama_config` / :func:`make_tiny_llama` - a Llama (or, with
  ``sliding_window``, a Mistral: Llama plus a sliding window on every layer) with any head_dim,
  head counts, layer count and dtype;
* :func:`make_tiny_gemma2` - a Gemma-2 style model whose layers alternate sliding-window and full
  attention (``config.layer_types``);
* :func:`make_char_tokenizer` - a character-level tokenizer with a chat template, for the tiny
  models' vocabulary.

The model factories return a model in eval mode whose generation config never stops early (no EOS) and pads
with token 0. Weights are random with a fixed seed and a large init scale, so that greedy
generations vary from token to token and react to small changes in the cache.

:func:`record_codec_threads` records the ``threads=`` of the codec calls a test makes.

Fixture ``torch_one_thread`` runs a test with one torch thread (the tiny models run several
times faster that way on a loaded 2-core machine). Environment: ``HYPOTHESIS_PROFILE=dev|ci``
picks the hypothesis profile (default ``dev``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("nexusquant") is None:  # running from a source tree, not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("dev", max_examples=25, deadline=None)
    settings.register_profile(
        "ci", max_examples=200, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass

#: Vocabulary of the tiny models.
VOCAB = 256
#: Token ids below this are never drawn by :func:`random_prompt` (0 pads, 1 BOS, 2 EOS).
FIRST_TOKEN = 3


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _gpu_missing()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _gpu_missing() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA device (torch.cuda.is_available() is False)"
    if importlib.util.find_spec("cupy") is None:
        return "needs CuPy (pip install 'nexusquant-kv[cuda]')"
    return None


# --------------------------------------------------------------------------------------------
# tiny models


def _finish(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    model = model.to(dtype).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = 1
    return model


def make_tiny_llama_config(
    head_dim: int = 64,
    num_kv_heads: int = 2,
    num_heads: int = 4,
    layers: int = 2,
    sliding_window: int | None = None,
    *,
    hidden_size: int = 64,
):
    """The config :func:`make_tiny_llama` builds its model from: a ``LlamaConfig``, or a
    ``MistralConfig`` (Llama plus a sliding window on every layer) when ``sliding_window`` is set."""
    from transformers import LlamaConfig, MistralConfig

    common = dict(
        vocab_size=VOCAB,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=2048,
        initializer_range=0.2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if sliding_window is None:
        return LlamaConfig(**common)
    return MistralConfig(**common, sliding_window=sliding_window)


def make_tiny_llama(
    head_dim: int = 64,
    num_kv_heads: int = 2,
    num_heads: int = 4,
    layers: int = 2,
    dtype: torch.dtype = torch.float32,
    sliding_window: int | None = None,
    *,
    hidden_size: int = 64,
    seed: int = 0,
) -> torch.nn.Module:
    """A random ``LlamaForCausalLM`` (``MistralForCausalLM`` when ``sliding_window`` is set).

    Args:
        head_dim: elements per head (any value the model accepts; the codec needs multiples of 8).
        num_kv_heads: KV heads (1 = MQA, < num_heads = GQA).
        num_heads: query heads.
        layers: decoder layers.
        dtype: parameter dtype (float32, float16, bfloat16).
        sliding_window: attention window of every layer (Mistral-style), or None.
        hidden_size: model width (independent of head_dim).
        seed: torch seed for the weights.
    """
    from transformers import LlamaForCausalLM, MistralForCausalLM

    config = make_tiny_llama_config(
        head_dim, num_kv_heads, num_heads, layers, sliding_window, hidden_size=hidden_size
    )
    torch.manual_seed(seed)
    model = (LlamaForCausalLM if sliding_window is None else MistralForCausalLM)(config)
    return _finish(model, dtype)


def make_tiny_gemma2(
    head_dim: int = 64,
    num_kv_heads: int = 2,
    num_heads: int = 4,
    layers: int = 4,
    dtype: torch.dtype = torch.float32,
    sliding_window: int = 16,
    *,
    seed: int = 0,
) -> torch.nn.Module:
    """A random ``Gemma2ForCausalLM``: layers alternate sliding-window (even) and full (odd)
    attention, as ``config.layer_types`` says."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(seed)
    config = Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        sliding_window=sliding_window,
        max_position_embeddings=2048,
        initializer_range=0.2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return _finish(Gemma2ForCausalLM(config), dtype)


def make_char_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` built in code (no download): printable ASCII
    and newline map to ids below :data:`VOCAB`, 0 pads, 1/2 are BOS/EOS; it has a ChatML chat
    template, so chat prompts work with the tiny models."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({ch: i + 4 for i, ch in enumerate(chars)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    template = (
        "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        unk_token="<unk>", chat_template=template,
    )


def random_prompt(length: int, seed: int) -> torch.Tensor:
    """``(1, length)`` int64 token ids in [FIRST_TOKEN, VOCAB)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(FIRST_TOKEN, VOCAB, (1, length), generator=g)


def left_pad(prompts: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad ``(1, n_i)`` prompts into ``input_ids`` and ``attention_mask``, both ``(B, max n_i)``."""
    width = max(p.shape[1] for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - p.shape[1]:] = p[0]
        mask[r, width - p.shape[1]:] = 1
    return ids, mask


@pytest.fixture
def torch_one_thread():
    """Run the test with one torch thread (tiny models run several times faster that way on a
    loaded machine); the previous count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_llama():
    """The :func:`make_tiny_llama` factory."""
    return make_tiny_llama


@pytest.fixture
def tiny_gemma2():
    """The :func:`make_tiny_gemma2` factory."""
    return make_tiny_gemma2


def centred(k: torch.Tensor, first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cache's centring of keys (and values), written out: the centre is the mean of a row's
    first coded vectors ``first`` (per head, in the model dtype); a vector is coded as
    ``k - centre`` when that is shorter than ``k``. Returns (what is coded, which vectors are
    centred, the centre)."""
    centre = first.float().mean(2, keepdim=True).to(k.dtype)
    kf = k.float()
    shifted = kf - centre.float()
    use = shifted.square().sum(-1) < kf.square().sum(-1)
    return torch.where(use[..., None], shifted, kf), use, centre


def record_codec_threads(monkeypatch: pytest.MonkeyPatch, *names: str) -> list[tuple[str, object]]:
    """Wraps the ``nexusquant.codec`` functions ``names`` for the test; returns the list to which
    every call appends ``(name, its threads= keyword)`` before running the real function."""
    from nexusquant import codec  # noqa: PLC0415

    seen: list[tuple[str, object]] = []
    for name in names:
        real = getattr(codec, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            seen.append((_name, kwargs.get("threads")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(codec, name, spy)
    return seen
