"""The ``nexusquant`` command: memory, doctor, bench and the dispatch of demo/eval/inspect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import nexusquant
from nexusquant import cli, doctor


def run(capsys, *argv):
    """Run the command in-process; return (exit status, stdout, stderr)."""
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# --------------------------------------------------------------------------------------------
# frame


def test_no_command_prints_help(capsys):
    status, out, err = run(capsys)
    assert status == 2
    for command in ("memory", "doctor", "bench", "demo", "eval", "inspect"):
        assert command in err


def test_version(capsys):
    status, out, _ = run(capsys, "--version")
    assert status == 0 and nexusquant.__version__ in out


def test_unknown_option_is_a_usage_error(capsys):
    status, _, err = run(capsys, "doctor", "--frobnicate")
    assert status == 2 and "unrecognized arguments: --frobnicate" in err


# --------------------------------------------------------------------------------------------
# memory


def test_memory_table(capsys):
    status, out, _ = run(capsys, "memory", "Mistral-7B", "--seq", "128k", "--gpu", "H100")
    assert status == 0
    assert "16.78 GB = 15.62 GiB" in out  # fp16 KV at 128,000 tokens
    assert "131,072 B" in out
    assert "544,763" in out  # fp16 max tokens beside the weights on an H100
    for name in ("fp16", "lossless", "high", "balanced", "max"):
        assert f"\n{name} " in out
    assert "GB = 10^9 bytes, GiB = 2^30 bytes" in out


def test_memory_json(capsys):
    status, out, _ = run(capsys, "memory", "Mistral-7B", "--seq", "128000", "--json",
                         "--vram", "24GB", "--batch", "2")
    assert status == 0
    d = json.loads(out)
    assert d["kv_bytes_per_token"] == 131_072
    assert d["kv_bytes"] == 2 * 16_777_216_000
    assert d["capacity_bytes"] == 24 * 10**9 and d["batch"] == 2
    assert set(d["caches"]) == {"fp16", "lossless", "high", "balanced", "max"}


def test_memory_seq_units(capsys):
    _, out, _ = run(capsys, "memory", "SmolLM2-135M", "--seq", "128Ki", "--json")
    assert json.loads(out)["seq_len"] == 131_072
    _, out, _ = run(capsys, "memory", "SmolLM2-135M", "--seq", "1M", "--json")
    assert json.loads(out)["kv_bytes"] == 23_040 * 10**6


def test_memory_weights_override(capsys):
    status, out, _ = run(capsys, "memory", "Llama-3.1-70B", "--seq", "32k", "--vram", "80GiB",
                         "--weights", "40GB", "--json")
    assert status == 0
    d = json.loads(out)
    assert d["weights_bytes"] == 40 * 10**9
    assert d["free_bytes"] == 80 * 2**30 - 40 * 10**9


def test_memory_config_path(capsys, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"num_hidden_layers": 2, "num_attention_heads": 4,
                                "hidden_size": 256}))
    status, out, _ = run(capsys, "memory", str(path), "--seq", "10", "--json")
    assert status == 0 and json.loads(out)["kv_bytes"] == 2 * 4 * 64 * 2 * 2 * 10
    status, _, err = run(capsys, "memory", str(path), "--seq", "10", "--gpu", "H100")
    assert status == 2 and "--weights" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["memory", "Mistral-8B", "--seq", "1k"], "did you mean Mistral-7B"),
        (["memory", "Mistral-7B", "--seq", "1k", "--gpu", "H10"], "did you mean H100"),
        (["memory", "Mistral-7B", "--seq", "12x"], "seq must be a token count"),
        (["memory", "Mistral-7B", "--seq", "1k", "--vram", "24G"], "80GiB (2^30 bytes)"),
        (["memory", "Mistral-7B", "--seq", "1k", "--batch", "0"], "positive integer"),
        (["memory", "Mistral-7B", "--seq", "1k", "--gpu", "H100", "--vram", "1GB"],
         "not allowed with argument"),
        (["memory", "Mistral-7B"], "--seq"),
    ],
)
def test_memory_errors_exit_2(capsys, argv, message):
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert message in err
    assert out == ""


def test_memory_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    out_png = tmp_path / "mem.png"
    status, out, err = run(capsys, "memory", "Gemma-2-2B", "--seq", "64k", "--gpu", "L4",
                           "--plot", str(out_png))
    assert status == 0
    assert f"wrote {out_png}" in err
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_memory_plot_unwritable(capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    status, _, err = run(capsys, "memory", "Gemma-2-2B", "--seq", "1k",
                         "--plot", str(tmp_path / "missing-dir" / "x.png"))
    assert status == 2 and "cannot write" in err


def test_memory_plot_without_matplotlib(capsys, monkeypatch, tmp_path):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    status, out, err = run(capsys, "memory", "Gemma-2-2B", "--seq", "1k",
                           "--plot", str(tmp_path / "x.png"))
    assert status == 2 and "pip install matplotlib" in err
    assert "fp16" in out  # the table is printed before the plot is attempted
    assert not (tmp_path / "x.png").exists()


def test_memory_measured(capsys):
    pytest.importorskip("nexusquant._core", reason="nexusquant._core (Rust extension) not built")
    status, out, _ = run(capsys, "memory", "Mistral-7B", "--seq", "128k", "--measured",
                         "--json")
    assert status == 0
    d = json.loads(out)
    assert d["measured"] is True
    assert d["caches"]["lossless"]["ratio"] == pytest.approx(
        128_000 * 512 / (132 * 512 + (128_000 - 132) * 132))


def test_memory_measured_without_core(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "nexusquant._core", None)  # as if the build were missing
    status, out, err = run(capsys, "memory", "Mistral-7B", "--seq", "1k", "--measured")
    assert status == 2
    assert "--measured needs the codec" in err and "nexusquant._core" in err


def test_memory_subprocess():
    package_root = str(Path(nexusquant.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "nexusquant", "memory", "Mistral-7B", "--seq", "128000",
         "--json"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["kv_bytes_per_token"] == 131_072
    assert d["kv_bytes"] == 16_777_216_000


# --------------------------------------------------------------------------------------------
# doctor


def test_doctor_text(capsys):
    status, out, _ = run(capsys, "doctor")
    assert status == 0
    for label in ("python", "torch", "transformers", "core extension", "CuPy",
                  "NVRTC (cuda-bindings)", "NVRTC (CuPy)", "runs on the GPU"):
        assert label in out
    import torch

    assert torch.__version__ in out


def test_doctor_json(capsys):
    status, out, _ = run(capsys, "doctor", "--json")
    assert status == 0
    d = json.loads(out)
    assert set(d) == {"python", "nexusquant", "torch", "transformers", "core", "cupy", "nvrtc",
                      "gpu_path"}
    assert d["torch"]["available"] is True
    assert set(d["nvrtc"]) == {"cuda_bindings", "cupy"}
    try:
        import nexusquant._core  # noqa: F401
    except ImportError:
        assert d["core"]["available"] is False and "not built" in d["core"]["error"]
    else:
        assert d["core"]["available"] is True
    if not d["torch"]["cuda_available"]:
        assert d["gpu_path"]["available"] is False
        assert "no CUDA device visible to torch" in d["gpu_path"]["missing"]


def test_doctor_reports_what_is_missing(capsys, monkeypatch):
    for name in ("cupy", "transformers", "nexusquant._core", "cuda.bindings"):
        monkeypatch.setitem(sys.modules, name, None)

    def broken_torch():
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(doctor, "_torch", broken_torch)
    status, out, _ = run(capsys, "doctor")
    assert status == 0
    assert "missing: RuntimeError: driver exploded" in out
    assert "missing: cupy is not installed" in out
    assert "missing: transformers is not installed" in out
    assert "missing: cuda-bindings is not installed" in out
    assert "not built" in out
    assert "runs on the GPU" in out and "nothing:" in out


def test_doctor_core_build_info(capsys, monkeypatch):
    fake = types.SimpleNamespace(__file__="/x/_core.so",
                                 build_info=lambda: {"version": "9.9", "simd": "avx2"})
    monkeypatch.setitem(sys.modules, "nexusquant._core", fake)
    status, out, _ = run(capsys, "doctor")
    assert status == 0 and "built: version=9.9, simd=avx2" in out


# --------------------------------------------------------------------------------------------
# bench and the subcommands implemented in other modules


@pytest.mark.parametrize(("command", "module"),
                         [("bench", "nexusquant.bench"), ("eval", "nexusquant.eval.harness")])
def test_bench_and_eval_pass_arguments_through(capsys, monkeypatch, command, module):
    seen = []
    monkeypatch.setitem(sys.modules, module,
                        types.SimpleNamespace(main=lambda argv: seen.append(argv) or 3))
    status, _, _ = run(capsys, command, "--threads", "2", "--help")
    assert status == 3
    assert seen == [["--threads", "2", "--help"]]


@pytest.mark.parametrize(
    ("argv", "module", "function"),
    [
        (["demo", "--settings", "exact,max", "--max-new-tokens", "8"], "nexusquant.demo", "run"),
        (["inspect", "cache.nqkv", "--verify"], "nexusquant.store", "inspect_cli"),
    ],
)
def test_external_commands_dispatch(capsys, monkeypatch, argv, module, function):
    seen = []
    monkeypatch.setitem(sys.modules, module,
                        types.SimpleNamespace(**{function: lambda args: seen.append(args)}))
    status, _, _ = run(capsys, *argv)
    assert status == 0
    (args,) = seen
    assert args.command == argv[0]
    if argv[0] == "demo":
        assert args.settings == "exact,max" and args.max_new_tokens == 8 and args.context == 2048
    else:
        assert args.path == "cache.nqkv" and args.verify and not args.json


@pytest.mark.parametrize(
    ("argv", "module"),
    [(["demo"], "nexusquant.demo"), (["eval"], "nexusquant.eval.harness"),
     (["inspect", "x.nqkv"], "nexusquant.store"), (["bench"], "nexusquant.bench")],
)
def test_missing_command_module_exits_2(capsys, monkeypatch, argv, module):
    monkeypatch.setitem(sys.modules, module, None)
    status, out, err = run(capsys, *argv)
    assert status == 2 and out == ""
    assert f"`nexusquant {argv[0]}` is not available in this installation" in err
    assert module in err


def test_command_module_without_its_function(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "nexusquant.store", types.SimpleNamespace())
    status, _, err = run(capsys, "inspect", "x.nqkv")
    assert status == 2 and "nexusquant.store has no inspect_cli()" in err


def test_command_missing_a_dependency(capsys, monkeypatch):
    def import_module(name):
        raise ModuleNotFoundError("No module named 'transformers'", name="transformers")

    monkeypatch.setattr(cli, "importlib", types.SimpleNamespace(import_module=import_module))
    status, _, err = run(capsys, "demo")
    assert status == 2
    assert "needs the package transformers" in err and "nexusquant-kv[hf]" in err
