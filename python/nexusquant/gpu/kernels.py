"""The CUDA kernels' argument lists and launch configurations: the one table.

Every entry point of ``nexusquant/cuda/*.cu`` is described here: its source file, its name
pattern, and its arguments in order with their C type and the torch dtype a tensor argument must
have. The loader launches from this table, the host emulation (``tests/cuda_host``) feeds the
same argument dictionaries to the CPU build of the kernels, ``tests/test_cuda_compile.py`` checks
the table against the compiled PTX, and ``docs/gpu.md`` prints it (:func:`markdown_table`).

C types: ``u8`` = unsigned char, ``u16`` = unsigned short (fp16/bf16 bit patterns), ``i32`` = int,
``i64`` = long long, ``u64`` = unsigned long long, ``f32`` = float; ``T`` is the element type of the
entry point's dtype (``f32``, ``f16``, ``bf16``). A pointer to a non-const type is an output.
Optional pointers may be ``None`` (a null pointer).

This module imports torch only: no CuPy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Threads per CTA of the codec kernels and of attn_partial; attn_combine uses one warp.
THREADS = 128
COMBINE_THREADS = 32
#: Smallest number of coded tokens per attn_partial CTA, and the raw tokens per CTA.
MIN_CODED_CHUNK = 256
RAW_CHUNK = 256
#: CTAs of attn_partial the planner aims for, per streaming multiprocessor. 16 measured best
#: over 2, 4, 8, 16, 32 on an H200 (benches/gpu_check.py, docs/gpu.md "Measured on an H200"):
#: batch 8 x 128k tokens 19.9 -> 13.0 ms; batch 1 x 128k 1.76 -> 1.84 ms.
CTAS_PER_SM = 16

DTYPE_SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class Arg:
    """One kernel argument: its name, C type, and for pointers the tensor dtype it takes."""

    name: str
    ctype: str
    dtype: str | None = None  # "T" (the entry's dtype) or a torch dtype name; None for scalars
    optional: bool = False
    doc: str = ""

    @property
    def is_pointer(self) -> bool:
        return self.ctype.endswith("*")

    @property
    def is_output(self) -> bool:
        return self.is_pointer and not self.ctype.startswith("const ")

    @property
    def ptx_type(self) -> str:
        """The PTX parameter type this argument lowers to."""
        if self.is_pointer or self.ctype in ("i64", "u64"):
            return "u64"
        return {"i32": "u32", "f32": "f32"}[self.ctype]


@dataclass(frozen=True)
class Kernel:
    """A family of entry points: one per dtype (and per blocks-per-lane for attn_partial)."""

    source: str
    pattern: str  # format string with {dt} and, for attn_partial, {bpl}
    args: tuple[Arg, ...]
    doc: str
    bpls: tuple[int, ...] = ()

    def entry(self, dtype: torch.dtype, bpl: int | None = None) -> str:
        return self.pattern.format(dt=DTYPE_SUFFIX[dtype], bpl=bpl)

    def entries(self) -> list[str]:
        names = []
        for dt in DTYPE_SUFFIX.values():
            for bpl in self.bpls or (None,):
                names.append(self.pattern.format(dt=dt, bpl=bpl))
        return names


_CODES = "(B, Hkv, Tc, d*bits/8)"
KERNELS: dict[str, Kernel] = {
    "encode": Kernel(
        source="nq_codec.cu",
        pattern="nq_encode_{dt}",
        doc="codec.md §6: (n, d) head-vectors -> packed codes and fp16 scales",
        args=(
            Arg("x", "const T*", "T", doc="(n, d) input"),
            Arg("codes", "u8*", "uint8", doc="(n, d*bits/8) packed codes"),
            Arg("scales", "u16*", "float16", doc="(n,) fp16 scales"),
            Arg("n", "i64", doc="head-vectors"),
            Arg("d", "i32", doc="head_dim, a multiple of 8 in [8, 1024]"),
            Arg("bits", "i32", doc="1..8"),
            Arg("seed", "u64", doc="rotation seed"),
            Arg("candidates", "i32", doc="clipping candidates tried, 1..3"),
        ),
    ),
    "decode": Kernel(
        source="nq_codec.cu",
        pattern="nq_decode_{dt}",
        doc="codec.md §7: packed codes and fp16 scales -> (n, d) head-vectors",
        args=(
            Arg("codes", "const u8*", "uint8", doc="(n, d*bits/8)"),
            Arg("scales", "const u16*", "float16", doc="(n,)"),
            Arg("out", "T*", "T", doc="(n, d) output"),
            Arg("n", "i64"),
            Arg("d", "i32"),
            Arg("bits", "i32"),
            Arg("seed", "u64"),
        ),
    ),
    "attn_partial": Kernel(
        source="nq_attention.cu",
        pattern="nq_attn_partial_{dt}_b{bpl}",
        bpls=(1, 2, 4),
        doc="fused decode attention, split-K part: one split of one (batch, kv head, head chunk)",
        args=(
            Arg("q", "const T*", "T", doc="(B, Hq, d) query of the new token"),
            Arg("k_codes", "const u8*", "uint8", doc=_CODES.replace("bits", "k_bits")),
            Arg("k_scales", "const u16*", "float16", doc="(B, Hkv, Tc)"),
            Arg("v_codes", "const u8*", "uint8", doc=_CODES.replace("bits", "v_bits")),
            Arg("v_scales", "const u16*", "float16", doc="(B, Hkv, Tc)"),
            Arg(
                "lengths",
                "const i32*",
                "int32",
                True,
                "(B, 3) sink, coded, window tokens per row; None: every slot valid",
            ),
            Arg("coded_mask", "const u8*", "uint8", True, "(B, Tc) 0 = masked"),
            Arg("raw_k", "const T*", "T", doc="(B, Hkv, Tr, d): sink slots, then window slots"),
            Arg("raw_v", "const T*", "T", doc="(B, Hkv, Tr, d)"),
            Arg("raw_mask", "const u8*", "uint8", True, "(B, Tr) 0 = masked"),
            Arg(
                "k_bias",
                "const f32*",
                "float32",
                True,
                "(B, Hq) scaling·log2(e)·(q·centre) added to centred keys' scores (sign bit of "
                "their scale); None: no key is centred",
            ),
            Arg(
                "v_centre",
                "const f32*",
                "float32",
                True,
                "(B, Hkv, d) R_v(value centre), added to centred values (sign bit of their "
                "scale) in V's rotated domain; None: no value is centred",
            ),
            Arg("part_o", "f32*", "float32", doc="(B, Hq, splits, d) unnormalised outputs"),
            Arg("part_ml", "f32*", "float32", doc="(B, Hq, splits, 2) log2 max and sum"),
            Arg("hq", "i32"),
            Arg("hkv", "i32"),
            Arg("d", "i32"),
            Arg("tc", "i64", doc="coded token capacity"),
            Arg("tr", "i64", doc="raw token capacity (sink slots + window slots)"),
            Arg("sink_slots", "i32", doc="raw slots holding sinks"),
            Arg("k_bits", "i32"),
            Arg("v_bits", "i32"),
            Arg("splits", "i32", doc="coded_splits + raw splits"),
            Arg("coded_splits", "i32"),
            Arg("coded_chunk", "i32", doc="coded tokens per split"),
            Arg("raw_chunk", "i32", doc="raw tokens per split"),
            Arg("k_seed", "u64"),
            Arg("qscale", "f32", doc="scaling * log2(e)"),
        ),
    ),
    "attn_combine": Kernel(
        source="nq_attention.cu",
        pattern="nq_attn_combine_{dt}",
        doc="fused decode attention, combine: splits -> R_v⁻¹(coded) + raw, normalised",
        args=(
            Arg("part_o", "const f32*", "float32", doc="(B, Hq, splits, d)"),
            Arg("part_ml", "const f32*", "float32", doc="(B, Hq, splits, 2)"),
            Arg("out", "T*", "T", doc="(B, Hq, d) output"),
            Arg("d", "i32"),
            Arg("splits", "i32"),
            Arg("coded_splits", "i32"),
            Arg("v_seed", "u64"),
        ),
    ),
}

#: The .cu sources, each compiled as one module.
SOURCES = tuple(sorted({k.source for k in KERNELS.values()}))


# --------------------------------------------------------------------------------------------
# launch configurations (the CUDA side's layouts: nq_codec.cuh, nq_attention.cuh)


@dataclass(frozen=True)
class Launch:
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def group_size(d: int) -> int:
    """Lanes per head-vector: next_pow2(d/8), at most 32 (``nq::group_size``)."""
    return min(32, _next_pow2(d // 8))


def sign_words(d: int) -> int:
    """u64 words holding a rotation's 2d signs (``nq::sign_words``)."""
    return (2 * d + 63) // 64


def codec_launch(op: str, n: int, d: int) -> Launch:
    """Launch of ``encode`` or ``decode`` over ``n`` head-vectors of dimension ``d``."""
    per_cta = THREADS // group_size(d)
    group_floats = 2 * d + 6 * (d // 8) if op == "encode" else d  # nq::encode_group_floats
    return Launch(
        grid=(math.ceil(n / per_cta), 1, 1),
        block=(THREADS, 1, 1),
        shared_mem=8 * sign_words(d) + 4 * per_cta * group_floats,
    )


def blocks_per_lane(d: int) -> int:
    """Blocks of 8 elements per lane in attn_partial: 1 (d <= 256), 2 (<= 512), 4 (<= 1024)."""
    nb = d // 8
    return 1 if nb <= 32 else 2 if nb <= 64 else 4


def max_heads(bpl: int) -> int:
    """Query heads one attn_partial CTA handles (``nq::attn_max_heads``)."""
    return 8 // bpl


@dataclass(frozen=True)
class AttentionPlan:
    """Split-K plan of one fused decode attention call."""

    bpl: int
    head_chunks: int
    coded_splits: int
    coded_chunk: int
    raw_splits: int
    raw_chunk: int
    partial: Launch
    combine: Launch

    @property
    def splits(self) -> int:
        return self.coded_splits + self.raw_splits


def attention_plan(
    batch: int, hq: int, hkv: int, d: int, tc: int, tr: int, sm_count: int
) -> AttentionPlan:
    """Split the coded tokens so that the grid fills ``sm_count`` SMs about ``CTAS_PER_SM`` times
    (at least ``MIN_CODED_CHUNK`` tokens per split); raw tokens go in splits of ``RAW_CHUNK``."""
    bpl = blocks_per_lane(d)
    chunks = math.ceil((hq // hkv) / max_heads(bpl))
    base = batch * hkv * chunks
    if tc > 0:
        want = max(1, math.ceil(CTAS_PER_SM * sm_count / base))
        coded_splits = min(want, math.ceil(tc / MIN_CODED_CHUNK))
        coded_chunk = math.ceil(tc / coded_splits)
        coded_splits = math.ceil(tc / coded_chunk)
    else:
        coded_splits, coded_chunk = 0, 1
    raw_splits = math.ceil(tr / RAW_CHUNK)
    splits = coded_splits + raw_splits
    slots = THREADS // group_size(d)
    mh = max_heads(bpl)
    partial_floats = 2 * sign_words(d) + mh * d + slots * mh * (2 + d)  # attn_partial_floats
    combine_floats = 2 * sign_words(d) + splits + d  # attn_combine_floats
    return AttentionPlan(
        bpl=bpl,
        head_chunks=chunks,
        coded_splits=coded_splits,
        coded_chunk=coded_chunk,
        raw_splits=raw_splits,
        raw_chunk=RAW_CHUNK,
        partial=Launch((splits, hkv * chunks, batch), (THREADS, 1, 1), 4 * partial_floats),
        combine=Launch((batch * hq, 1, 1), (COMBINE_THREADS, 1, 1), 4 * combine_floats),
    )


def markdown_table() -> str:
    """The argument table as Markdown (docs/gpu.md embeds it; a test keeps them equal)."""
    lines = []
    for key, k in KERNELS.items():
        names = ", ".join(f"`{n}`" for n in k.entries())
        lines += [f"#### `{key}` ({k.source}): {k.doc}", "", f"Entry points: {names}", ""]
        lines += ["| # | argument | C type | tensor dtype | notes |", "|---|---|---|---|---|"]
        for i, a in enumerate(k.args):
            dtype = a.dtype or ""
            notes = a.doc + (" (optional: None = null)" if a.optional else "")
            lines.append(f"| {i} | `{a.name}` | `{a.ctype}` | {dtype} | {notes} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


__all__ = [
    "Arg",
    "Kernel",
    "KERNELS",
    "SOURCES",
    "THREADS",
    "Launch",
    "AttentionPlan",
    "codec_launch",
    "attention_plan",
    "group_size",
    "sign_words",
    "blocks_per_lane",
    "max_heads",
    "markdown_table",
]
