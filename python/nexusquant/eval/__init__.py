"""Evaluation of compressed KV caches against the exact cache: perplexity delta, KL divergence,
top-1 agreement, passkey retrieval, measured memory and decode speed
(:mod:`nexusquant.eval.harness`; ``nexusquant eval`` and ``benches/quality.py`` run it)."""

from __future__ import annotations

from .harness import CacheSpec, Score, main, run, run_cli

__all__ = ["CacheSpec", "Score", "main", "run", "run_cli"]
