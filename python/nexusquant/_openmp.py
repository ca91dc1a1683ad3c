"""The OpenMP wait policy of the CPU path.

On CPU the cache's codec runs between torch's operations, on the Rust core's own threads. Torch's
OpenMP workers do not sleep when an operation ends: by default they spin for a while first,
waiting for the next parallel region, so the codec's threads find the cores busy and torch's next
operation in turn waits for threads the codec kept awake. ``OMP_WAIT_POLICY=PASSIVE`` makes idle
OpenMP workers sleep at once. On the 2-core development machine it raised the CPU decode speed of
K3V2 at 2k context from 50–52 % to 60–65 % of ``DynamicCache``'s (``window=0``; three runs each
of ``nexusquant eval --parts speed --settings K3V2``).

libgomp reads the variable once, when torch loads it, so :func:`prefer_passive` can only act
before ``import torch``; ``import nexusquant`` calls it first thing. It never overrides a value
the user set, and ``NEXUSQUANT_KEEP_OMP_WAIT_POLICY=1`` leaves the variable alone entirely.
"""

from __future__ import annotations

import os
import sys

#: The variable libgomp (torch's OpenMP runtime) reads at load time.
ENV = "OMP_WAIT_POLICY"
#: Set to any non-empty value to keep nexusquant from setting :data:`ENV`.
OPT_OUT = "NEXUSQUANT_KEEP_OMP_WAIT_POLICY"


def prefer_passive() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when nothing has decided it yet: the variable is unset,
    torch is not loaded (later it would have no effect) and :data:`OPT_OUT` is unset. Returns
    whether it set the variable."""
    if ENV in os.environ or os.environ.get(OPT_OUT) or "torch" in sys.modules:
        return False
    os.environ[ENV] = "PASSIVE"
    return True


def wait_policy() -> str:
    """The policy in effect for this process, as recorded with benchmark figures."""
    return os.environ.get(ENV) or "unset (libgomp default: spin, then sleep)"
