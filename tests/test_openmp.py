"""``import nexusquant`` prefers OMP_WAIT_POLICY=PASSIVE (see nexusquant._openmp), and only when
nothing else decided the policy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nexusquant import _openmp

PYTHON_DIR = str(Path(__file__).resolve().parent.parent / "python")


def _policy_after(code: str, **env: str) -> str:
    """OMP_WAIT_POLICY as a fresh interpreter sees it after running ``code``."""
    clean = {k: v for k, v in os.environ.items() if k not in (_openmp.ENV, _openmp.OPT_OUT)}
    clean["PYTHONPATH"] = PYTHON_DIR + os.pathsep + clean.get("PYTHONPATH", "")
    clean.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", code + "\nimport os; print(os.environ.get('OMP_WAIT_POLICY', '-'))"],
        env=clean, capture_output=True, text=True, timeout=120, check=True,
    )
    return proc.stdout.strip().splitlines()[-1]


def test_import_sets_passive_before_torch():
    assert _policy_after("import nexusquant") == "PASSIVE"


def test_user_setting_wins():
    assert _policy_after("import nexusquant", OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


def test_opt_out_leaves_it_unset():
    assert _policy_after("import nexusquant", NEXUSQUANT_KEEP_OMP_WAIT_POLICY="1") == "-"


def test_too_late_after_torch_is_loaded():
    # libgomp has read the environment already: setting it now would only mislead.
    assert _policy_after("import torch, nexusquant") == "-"


@pytest.mark.parametrize("value, shown", [("PASSIVE", "PASSIVE"), (None, "unset")])
def test_wait_policy_is_recorded(monkeypatch, value, shown):
    if value is None:
        monkeypatch.delenv(_openmp.ENV, raising=False)
    else:
        monkeypatch.setenv(_openmp.ENV, value)
    assert _openmp.wait_policy().startswith(shown)
