"""One full-attention decoder layer's compressed KV cache.

Storage of one layer (B rows, H KV heads, d = head_dim; ``S`` = ``sink_tokens``)::

    row r's real tokens, oldest first:   [ sinks | coded ...................... | window ]
                                           s_r     c_r                            w_r

    sink_keys / sink_values     (B, H, S, d)            model dtype   the first min(S, n_r) tokens
    key_codes / value_codes     (B, H, Cc, d*bits/8)    uint8         slots [0, c_r) of row r
    key_scales / value_scales   (B, H, Cc)              float16       one per coded head-vector;
                                                                      sign bit set: centred
    key_means / value_means     (B, H, d)               model dtype   each row's centres
    window_keys / window_values (B, H, Cw, d)           model dtype   slots [0, w_r) of row r
    lengths                     (B, 3)                  int32 (CPU)   [s_r, c_r, w_r]

Only a row's *real* tokens are stored: left padding is never stored, so a row holds exactly what
running it alone would hold (block boundaries are counted per row). Keys are stored as
transformers hands them over, i.e. after RoPE. A token enters the sinks while they are not full,
the window otherwise; when a row's window reaches ``window + block`` tokens its oldest tokens are
coded, a whole number of blocks at a time, and those codes are never touched again (multi-turn
reuse re-quantizes nothing). Keys and values are coded relative to a centre when that makes them
smaller (:meth:`NexusQuantLayer._centred`): the first tokens a row codes fix its centres, the
mean of their keys (values) per head, and every key coded afterwards is coded as ``k - centre``
if ``|k - centre| < |k|`` (flagged by the sign bit of its scale, which the codec never sets) and
as ``k`` otherwise; decoding adds the centre back to flagged head-vectors. Values coded with fewer
bits than the keys, and keys of layers that keep no exact tokens (``window=0, sink_tokens=0``),
get the unbiased scale instead of the codec's least-squares one
(:meth:`NexusQuantLayer._unbias_scales`). With ``quantize=False`` nothing is ever coded: the window
grows without bound and holds the model's tensors exactly.

Attention (CPU path): :meth:`NexusQuantLayer.update` materialises the layer's keys and values as
``(B, H, T, d)`` tensors of the model dtype, ``T`` being the padded sequence length that
``DynamicCache`` would hold: row r's ``n_r`` tokens are right-aligned (they end at ``T``, which puts
every token back at its absolute position under left padding) and the pad slots are zeros, which
the model's own mask hides. The tensors are transient: peak memory is the compressed cache plus one
layer's uncompressed K/V. Tokens of the current forward are returned exactly, even those coded
during it (a prompt attends to itself exactly; the codes serve every later forward).
:meth:`NexusQuantLayer.packed_view` exposes the raw storage for a fused kernel.

Buffers grow geometrically (by an eighth, at least :data:`GROWTH_MIN_TOKENS` tokens); the first
allocation is exact. Capacity slack is reported as allocated-but-unused bytes.

Extension points for token eviction (implemented by ``nexusquant.eviction.layer.EvictableLayer``,
a subclass): every buffer is ``(B, H, capacity, ...)`` with per-row counts shared by the heads of
a row, so removing tokens is a per-row gather along dim 2 of a component (codes and scales move
whole, nothing is re-quantized; the same count in every head) followed by new ``lengths``.
Materialisation stays right-aligned, so after eviction ``cumulative_length`` is the longest row's
stored count: a subclass reports the absolute length from ``get_seq_length`` and the compacted
one from ``get_mask_sizes``, and a forward pre-hook rewrites the 2-D ``attention_mask`` keyword
to the compacted left-padded layout (passing it on with ``NexusQuantCache.set_attention_mask``)
while ``position_ids`` keep the true positions (the stored keys already carry their RoPE).
``held_tensors``/``used_bytes``/``baseline_elements`` are what ``memory_report`` reads, so a
subclass holding more tensors (e.g. attention scores) extends them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import codec
from .._hf import CacheLayerMixin
from ..codec import Backend
from ..errors import InvalidArgumentError, ShapeError

#: Codec backend used by the cache (``None``: the codec's default for the tensors' device, i.e.
#: the Rust core on CPU and the CUDA kernels on GPU; ``"reference"``: the pure-torch oracle).
CODEC_BACKEND: Backend | None = None

#: Threads of the codec calls the cache makes while the model runs (decoding for attention,
#: coding new tokens, the fused CPU attention): ``1`` runs them on the calling thread, ``None``
#: on every core. The model's own operations already use the cores through torch's thread
#: pool, and at these sizes (a few thousand head-vectors per call) a second pool beside it
#: costs more than it gains. Measured inside SmolLM2-135M's decode steps at 2k tokens of
#: context on 2 cores: one layer's keys decoded in 0.93-1.07 ms on one thread, 1.42-1.48 ms on
#: both. Whole decode steps (K3V2, tokens/s): in one process, caches alternating, 3.95 vs 3.86
#: with the defaults and 3.74 vs 3.43 with ``window=0``; in separate ``nexusquant eval --parts
#: speed`` runs, 4.18 vs 3.52 with the defaults (that box's run-to-run noise is ~10 %).
CODEC_THREADS: int | None = 1

#: Clipping candidates the cache's encoder tries (``docs/codec.md`` §6 step 4): all three, for
#: 0.06 / 0.15 / 0.44 dB more SQNR at 2 / 3 / 4 bits than the codec's default of one (iid
#: Gaussian, head_dim 128). Quality comes first here: coding a decode step's new tokens is a
#: few hundred head-vectors, and every preset's figures were measured with three.
CODEC_CANDIDATES = 3

#: Smallest growth step of a buffer, in tokens.
GROWTH_MIN_TOKENS = 64
#: Buffers grow by ``capacity // GROWTH_DIVISOR`` (at least GROWTH_MIN_TOKENS) when full.
GROWTH_DIVISOR = 8

# Columns of ``NexusQuantLayer.lengths``.
_SINKS, _CODED, _WINDOW = 0, 1, 2


@dataclass(frozen=True)
class PackedLayerView:
    """The raw storage of one :class:`NexusQuantLayer`, for kernels that read it in place.

    Row r's tokens, oldest first, are ``sink_*[r, :, :lengths[r, 0]]``, then the coded
    head-vectors in slots ``[0, lengths[r, 1])`` of ``*_codes``/``*_scales``, then
    ``window_*[r, :, :lengths[r, 2]]``; they end at position ``seq_length`` (right-aligned, pads
    before them). Slots past a row's count are unused capacity. The tensors are the layer's own
    (not copies): read them, do not modify them.

    Attributes:
        key_codes: ``(B, H, Cc, head_dim*key_bits/8)`` uint8.
        key_scales: ``(B, H, Cc)`` float16; a set sign bit means "centred": the key is
            ``decode(code, |scale|) + key_means[r, h]``.
        value_codes: ``(B, H, Cc, value_head_dim*value_bits/8)`` uint8.
        value_scales: ``(B, H, Cc)`` float16; the sign bit as for keys, with ``value_means``.
        sink_keys: ``(B, H, sink_tokens, head_dim)`` model dtype.
        sink_values: ``(B, H, sink_tokens, value_head_dim)`` model dtype.
        window_keys: ``(B, H, Cw, head_dim)`` model dtype.
        window_values: ``(B, H, Cw, value_head_dim)`` model dtype.
        lengths: ``(B, 3)`` int32 on CPU: sink, coded and window token counts per row.
        key_means: ``(B, H, head_dim)`` model dtype: each row's key centre (zeros until the row
            codes its first tokens).
        value_means: ``(B, H, value_head_dim)`` model dtype: each row's value centre.
        key_bits, value_bits: bits per element of the codes.
        seed: rotation seed of both codes.
        head_dim, value_head_dim: elements per key / value head-vector.
        seq_length: the padded length ``T`` the rows are right-aligned to.
    """

    key_codes: torch.Tensor
    key_scales: torch.Tensor
    value_codes: torch.Tensor
    value_scales: torch.Tensor
    sink_keys: torch.Tensor
    sink_values: torch.Tensor
    window_keys: torch.Tensor
    window_values: torch.Tensor
    lengths: torch.Tensor
    key_means: torch.Tensor
    value_means: torch.Tensor
    key_bits: int
    value_bits: int
    seed: int
    head_dim: int
    value_head_dim: int
    seq_length: int


@dataclass(frozen=True)
class _RowPlan:
    """What one forward does to one row (or to all rows when they share it)."""

    sinks: int  # s: sink tokens before
    coded: int  # c: coded tokens before
    window: int  # w: window tokens before
    new: int  # m: real tokens in this forward
    to_sinks: int  # of which the first ones fill the sinks
    to_code: int  # window tokens coded by this forward (oldest first)

    @property
    def stored_after(self) -> int:
        return self.sinks + self.coded + self.window + self.new

    @property
    def window_after(self) -> int:
        return self.window + self.new - self.to_sinks - self.to_code

    def stored(self) -> _RowPlan:
        """The row as it is after this forward stored its tokens (nothing new pending)."""
        return _RowPlan(
            self.sinks + self.to_sinks, self.coded + self.to_code, self.window_after, 0, 0, 0
        )


def _grown(buf: torch.Tensor, needed: int, limit: int | None = None) -> torch.Tensor:
    """``buf`` with capacity (dim 2) at least ``needed``: unchanged if it has it, else a zero
    buffer grown geometrically (exactly ``needed`` when empty, never above ``limit``) holding a
    copy of ``buf``."""
    cap = buf.shape[2]
    if needed <= cap:
        return buf
    new_cap = needed if cap == 0 else max(needed, cap + max(GROWTH_MIN_TOKENS, cap // GROWTH_DIVISOR))
    if limit is not None:
        new_cap = max(needed, min(new_cap, limit))
    grown = buf.new_zeros((buf.shape[0], buf.shape[1], new_cap, *buf.shape[3:]))
    grown[:, :, :cap] = buf
    return grown


def centred_flags(scales: torch.Tensor) -> torch.Tensor | None:
    """Which coded head-vectors are centred (the sign bit of their fp16 scale), or None if none
    is."""
    flags = scales.view(torch.int16) < 0
    return flags if bool(flags.any()) else None


def _nbytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


class NexusQuantLayer(CacheLayerMixin):
    """Compressed KV cache of one full-attention layer (see the module docstring for the layout).

    Args:
        key_bits, value_bits: bits per element of the key / value codes (1..8, 2-4 tuned).
        sink_tokens: first real tokens of each row kept in the model dtype (>= 0).
        window: most recent tokens kept in the model dtype (>= 0).
        block: tokens leave the window in blocks of this many (>= 1).
        seed: rotation seed of the codec.
        quantize: ``False`` stores every token exactly (pass-through, for equivalence tests).
    """

    is_sliding = False
    is_compileable = False
    #: Whether :meth:`update` can hand its state over as a packed view (``packed=True``) instead
    #: of decoded K/V; subclasses whose storage a fused kernel cannot read in place say False.
    hands_over_packed = True

    def __init__(
        self,
        *,
        key_bits: int,
        value_bits: int,
        sink_tokens: int,
        window: int,
        block: int,
        seed: int,
        quantize: bool,
    ):
        super().__init__()
        self.key_bits = key_bits
        self.value_bits = value_bits
        self.sink_tokens = sink_tokens
        self.window = window
        self.block = block
        self.seed = seed
        self.quantize = quantize
        #: Passing ``crop`` back to an earlier length leaves a trace once tokens were coded.
        self.is_croppable = not quantize
        self.cumulative_length = 0
        self._clear()

    def _clear(self) -> None:
        self.is_initialized = False
        self.cumulative_length = 0
        self.lengths: torch.Tensor | None = None
        self.sink_keys = self.sink_values = None
        self.window_keys = self.window_values = None
        self.key_codes = self.key_scales = None
        self.value_codes = self.value_scales = None
        self.key_means = self.value_means = None

    # ----------------------------------------------------------------------------------------
    # transformers' layer API

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Allocate the (empty) buffers for the batch size, heads, head_dim, dtype and device of
        ``key_states`` ``(B, H, q, d)`` and ``value_states`` ``(B, H, q, dv)``."""
        if key_states.dim() != 4 or value_states.dim() != 4:
            raise ShapeError(
                "key_states and value_states must be (batch, kv_heads, seq, head_dim), got shapes "
                f"{tuple(key_states.shape)} and {tuple(value_states.shape)}"
            )
        batch, heads, _, d = key_states.shape
        dv = value_states.shape[-1]
        if tuple(value_states.shape[:2]) != (batch, heads):
            raise ShapeError(
                f"value_states must have batch and kv_heads {(batch, heads)} like key_states, got "
                f"shape {tuple(value_states.shape)}"
            )
        codec.check_dtype(key_states.dtype, "key_states.dtype")
        codec.check_dtype(value_states.dtype, "value_states.dtype")
        if self.quantize:
            codec.check_head_dim(d, "head_dim (key_states.shape[-1])")
            codec.check_head_dim(dv, "head_dim (value_states.shape[-1])")
        self.device = key_states.device
        self.dtype = key_states.dtype
        self.batch, self.heads, self.head_dim, self.value_head_dim = batch, heads, d, dv
        k_opts = {"dtype": key_states.dtype, "device": self.device}
        v_opts = {"dtype": value_states.dtype, "device": self.device}
        u8 = {"dtype": torch.uint8, "device": self.device}
        f16 = {"dtype": torch.float16, "device": self.device}
        self.sink_keys = torch.zeros(batch, heads, self.sink_tokens, d, **k_opts)
        self.sink_values = torch.zeros(batch, heads, self.sink_tokens, dv, **v_opts)
        self.window_keys = torch.zeros(batch, heads, 0, d, **k_opts)
        self.window_values = torch.zeros(batch, heads, 0, dv, **v_opts)
        self.key_codes = torch.zeros(batch, heads, 0, codec.code_bytes(d, self.key_bits), **u8)
        self.value_codes = torch.zeros(batch, heads, 0, codec.code_bytes(dv, self.value_bits), **u8)
        self.key_scales = torch.zeros(batch, heads, 0, **f16)
        self.value_scales = torch.zeros(batch, heads, 0, **f16)
        self.key_means = torch.zeros(batch, heads, d, **k_opts)
        self.value_means = torch.zeros(batch, heads, dv, **v_opts)
        self.lengths = torch.zeros(batch, 3, dtype=torch.int32)
        self.cumulative_length = 0
        self.is_initialized = True

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        *args,
        pads: list[int] | None = None,
        packed: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the forward's new tokens and return the layer's keys and values for attention.

        Args:
            key_states: ``(B, H, q, d)`` the forward's keys (post-RoPE), model dtype.
            value_states: ``(B, H, q, dv)`` the forward's values.
            pads: left-padding length of each row (leading zeros of the 2-D attention mask);
                ``None``: no padding. Positions before ``pads[r]`` are not stored.
            packed: hand the state over to a fused attention function instead of decoding it
                (``docs/gpu.md``, "Hand-over from the cache"); only where
                :attr:`hands_over_packed`.

        Returns:
            ``(keys, values)``: ``(B, H, T + q, d)`` and ``(B, H, T + q, dv)`` in the model dtype,
            each row's tokens right-aligned, coded tokens decoded, pad slots zero. A forward of
            several tokens (a prompt) sees its own tokens exactly, also those it codes; a
            single-token forward sees the layer as stored after it (tokens it moved out of the
            window decoded), which is what a fused kernel reads. With ``packed``: the raw sink and window slots ``(B, H, Tr, d)`` (keys) and ``(B, H, Tr,
            dv)`` (values), the :class:`~nexusquant.gpu.attention.PackedKV` of the whole layer
            attached to the keys (:func:`~nexusquant.gpu.attention.packed_view` finds it);
            nothing is decoded.
        """
        if packed and not self.hands_over_packed:
            raise InvalidArgumentError(
                f"{type(self).__name__} cannot hand its storage over to fused attention (packed=True)"
            )
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._check_input(key_states, value_states)
        q = key_states.shape[2]
        plans = self._plans(q, pads)
        self._reserve(plans)
        if all(p == plans[0] for p in plans):
            groups = [(slice(None), plans[0])]
        else:
            groups = [(slice(r, r + 1), p) for r, p in enumerate(plans)]
        total = self.cumulative_length + q
        # A prompt attends to its own tokens exactly; a single-token step attends to what the
        # layer holds after storing it (the same tokens coded or not as a fused kernel sees them).
        after = q == 1
        if not (packed or after):
            keys = self._materialise(groups, key_states, total, values=False)
            values = self._materialise(groups, value_states, total, values=True)
        for rows, plan in groups:
            self._store(rows, plan, key_states, value_states)
        self.lengths = torch.tensor(
            [[p.sinks + p.to_sinks, p.coded + p.to_code, p.window_after] for p in plans],
            dtype=torch.int32,
        ).reshape(self.batch, 3)
        self.cumulative_length = total
        if packed:
            from ..gpu.attention import PackedKV, attach_packed  # noqa: PLC0415 - no cupy import

            view = PackedKV.from_layer_view(self.packed_view())
            return attach_packed(view.raw_k, view), view.raw_v
        if after:
            stored = [(rows, plan.stored()) for rows, plan in groups]
            keys = self._materialise(stored, key_states, total, values=False)
            values = self._materialise(stored, value_states, total, values=True)
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """``(kv_length, kv_offset)`` for the mask: the padded length plus the query, offset 0."""
        return self.cumulative_length + query_length, 0

    def get_seq_length(self) -> int:
        """The padded sequence length ``T`` (what ``DynamicCache`` would report)."""
        return self.cumulative_length

    def get_max_length(self) -> int:
        """No maximum: ``-1``."""
        return -1

    def reset(self) -> None:
        """Drop every stored token and buffer; the next update starts afresh."""
        self._clear()

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last ``-tokens_to_remove`` positions (a positive value is the legacy form:
        the length to keep). Each row loses its newest tokens: window, then coded (their codes are
        dropped), then sinks. Capacity is kept."""
        if not self.is_initialized:
            return
        length = self.cumulative_length
        remove = -tokens_to_remove if tokens_to_remove < 0 else max(0, length - tokens_to_remove)
        remove = min(remove, length)
        if remove == 0:
            return
        rows = []
        for s, c, w in self.lengths.tolist():
            left = remove
            drop_w = min(left, w)
            left -= drop_w
            drop_c = min(left, c)
            left -= drop_c
            drop_s = min(left, s)
            rows.append([s - drop_s, c - drop_c, w - drop_w])
        self.lengths = torch.tensor(rows, dtype=torch.int32).reshape(self.batch, 3)
        self.cumulative_length = length - remove

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the rows for beam search: row i becomes old row ``beam_idx[i]``."""
        if self.is_initialized:
            self._apply_rows(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows ``indices`` (integer indices or a boolean mask over rows)."""
        if self.is_initialized:
            self._apply_rows(lambda t: t[indices.to(t.device) if torch.is_tensor(indices) else indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row ``repeats`` times in place (row i becomes rows i*repeats ...)."""
        if self.is_initialized:
            self._apply_rows(lambda t: t.repeat_interleave(repeats, dim=0))

    # ----------------------------------------------------------------------------------------
    # nexusquant API

    def packed_view(self) -> PackedLayerView:
        """The layer's storage, for a fused kernel (see :class:`PackedLayerView`)."""
        if not self.is_initialized:
            raise InvalidArgumentError("packed_view() needs an initialized layer: run a forward first")
        return PackedLayerView(
            key_codes=self.key_codes,
            key_scales=self.key_scales,
            value_codes=self.value_codes,
            value_scales=self.value_scales,
            sink_keys=self.sink_keys,
            sink_values=self.sink_values,
            window_keys=self.window_keys,
            window_values=self.window_values,
            lengths=self.lengths,
            key_means=self.key_means,
            value_means=self.value_means,
            key_bits=self.key_bits,
            value_bits=self.value_bits,
            seed=self.seed,
            head_dim=self.head_dim,
            value_head_dim=self.value_head_dim,
            seq_length=self.cumulative_length,
        )

    def tokens_per_row(self) -> list[int]:
        """Real tokens stored per row (sinks + coded + window)."""
        if not self.is_initialized:
            return []
        return [int(n) for n in self.lengths.sum(dim=1).tolist()]

    def held_tensors(self) -> dict[str, list[torch.Tensor]]:
        """Every tensor the layer holds, by memory component (codes, scales, sinks, window,
        bookkeeping: row lengths and centres)."""
        if not self.is_initialized:
            return {}
        return {
            "codes": [self.key_codes, self.value_codes],
            "scales": [self.key_scales, self.value_scales],
            "sinks": [self.sink_keys, self.sink_values],
            "window": [self.window_keys, self.window_values],
            "bookkeeping": [self.lengths, self.key_means, self.value_means],
        }

    def used_bytes(self) -> dict[str, int]:
        """Bytes occupied by stored tokens, by component (allocated capacity excluded)."""
        if not self.is_initialized:
            return {}
        s, c, w = (int(x) for x in self.lengths.sum(dim=0).tolist())
        h = self.heads
        per_token = {
            "codes": h * (self.key_codes.shape[-1] + self.value_codes.shape[-1]),
            "scales": h * 2 * self.key_scales.element_size(),
            "exact": h * (self.head_dim * self.sink_keys.element_size()
                          + self.value_head_dim * self.sink_values.element_size()),
        }
        return {
            "codes": c * per_token["codes"],
            "scales": c * per_token["scales"],
            "sinks": s * per_token["exact"],
            "window": w * per_token["exact"],
            "bookkeeping": _nbytes(self.lengths) + _nbytes(self.key_means) + _nbytes(self.value_means),
        }

    def baseline_elements(self) -> int:
        """Elements ``DynamicCache`` would hold for this layer: ``B * H * T * (d + dv)``."""
        if not self.is_initialized:
            return 0
        return self.batch * self.heads * self.cumulative_length * (self.head_dim + self.value_head_dim)

    # ----------------------------------------------------------------------------------------
    # internals

    def _check_input(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        expected_k = (self.batch, self.heads, self.head_dim)
        expected_v = (self.batch, self.heads, self.value_head_dim)
        got_k = (key_states.shape[0], key_states.shape[1], key_states.shape[-1])
        got_v = (value_states.shape[0], value_states.shape[1], value_states.shape[-1])
        if key_states.dim() != 4 or got_k != expected_k or got_v != expected_v:
            raise ShapeError(
                f"key/value states must be (batch, kv_heads, seq, head_dim) with (batch, kv_heads, "
                f"head_dim) = {expected_k} / {expected_v} as when the cache was filled, got "
                f"{tuple(key_states.shape)} / {tuple(value_states.shape)}; use batch_select_indices, "
                "batch_repeat_interleave or reset to change the batch"
            )
        if key_states.shape[2] != value_states.shape[2]:
            raise ShapeError(
                f"key_states and value_states must have the same seq length, got "
                f"{key_states.shape[2]} and {value_states.shape[2]}"
            )
        if key_states.dtype != self.dtype or key_states.device != self.device:
            raise ShapeError(
                f"key_states must be {self.dtype} on {self.device} like the cached tokens, got "
                f"{key_states.dtype} on {key_states.device}"
            )

    def _plans(self, q: int, pads: list[int] | None) -> list[_RowPlan]:
        """Per-row plan of a forward of ``q`` positions, checking ``pads`` against the storage."""
        length = self.cumulative_length
        plans = []
        for r, (s, c, w) in enumerate(self.lengths.tolist()):
            pad = 0 if pads is None else pads[r]
            stored = s + c + w
            if stored != max(0, length - pad):
                raise InvalidArgumentError(
                    f"attention mask and cache disagree: row {r} has {pad} leading pad positions, so "
                    f"it should hold {max(0, length - pad)} of the {length} cached positions, but it "
                    f"holds {stored}; give every forward the same left-padded 2-D attention_mask "
                    "(use `with cache.attach(model):` or cache.set_attention_mask(mask))"
                )
            new = q - min(q, max(0, pad - length))
            to_sinks = min(self.sink_tokens - s, new)
            pending = w + new - to_sinks
            to_code = 0
            if self.quantize and pending - self.window >= self.block:
                to_code = (pending - self.window) // self.block * self.block
            plans.append(_RowPlan(s, c, w, new, to_sinks, to_code))
        return plans

    def _reserve(self, plans: list[_RowPlan]) -> None:
        """Grow the code and window buffers to what the plans need."""
        coded = max(p.coded + p.to_code for p in plans)
        window = max(p.window_after for p in plans)
        limit = self.window + self.block - 1 if self.quantize else None
        # Contiguous, so that the codec writes each (row, head)'s codes in place.
        self.key_codes = _grown(self.key_codes, coded).contiguous()
        self.value_codes = _grown(self.value_codes, coded).contiguous()
        self.key_scales = _grown(self.key_scales, coded).contiguous()
        self.value_scales = _grown(self.value_scales, coded).contiguous()
        self.window_keys = _grown(self.window_keys, window, limit)
        self.window_values = _grown(self.window_values, window, limit)

    def _materialise(
        self, groups: list[tuple[slice, _RowPlan]], states: torch.Tensor, total: int, *, values: bool
    ) -> torch.Tensor:
        """``(B, H, total, d)`` keys (or values) for attention, rows right-aligned."""
        if values:
            sinks, window, means = self.sink_values, self.window_values, self.value_means
            codes, scales, bits, dim = self.value_codes, self.value_scales, self.value_bits, self.value_head_dim
        else:
            sinks, window, means = self.sink_keys, self.window_keys, self.key_means
            codes, scales, bits, dim = self.key_codes, self.key_scales, self.key_bits, self.head_dim
        q = states.shape[2]
        # Every slot a row's tokens fill is written below; only left-padding slots need zeros.
        padded = any(plan.stored_after != total for _, plan in groups)
        full = (states.new_zeros if padded else states.new_empty)(self.batch, self.heads, total, dim)
        for rows, plan in groups:
            dst = full[rows]
            at = total - plan.stored_after
            if plan.sinks:
                dst[:, :, at : at + plan.sinks] = sinks[rows, :, : plan.sinks]
                at += plan.sinks
            if plan.coded:
                # Decoded straight into the attention buffer: no per-layer temporary, no concat.
                g = dst.shape[0] * self.heads
                # Centred head-vectors (sign bit of the scale) get their row's centre back.
                codec.decode_groups(
                    codes[rows].view(g, codes.shape[2], -1)[:, : plan.coded],
                    scales[rows].view(g, scales.shape[2])[:, : plan.coded],
                    dst.view(g, total, dim)[:, at : at + plan.coded],
                    bits=bits,
                    seed=self.seed,
                    threads=CODEC_THREADS,
                    backend=CODEC_BACKEND,
                    centres=means[rows].reshape(g, dim).float(),
                )
                at += plan.coded
            if plan.window:
                dst[:, :, at : at + plan.window] = window[rows, :, : plan.window]
                at += plan.window
            if plan.new:
                dst[:, :, at : at + plan.new] = states[rows, :, q - plan.new :]
        return full

    def _store(
        self, rows: slice, plan: _RowPlan, key_states: torch.Tensor, value_states: torch.Tensor
    ) -> None:
        """Append the rows' new real tokens: sinks first, then the window, then code the oldest
        window blocks past ``window + block``."""
        q = key_states.shape[2]
        first = q - plan.new
        for states, sinks, window, codes, scales, bits, means, unbiased in (
            (key_states, self.sink_keys, self.window_keys, self.key_codes, self.key_scales, self.key_bits,
             self.key_means, self.unbiased_keys),
            (value_states, self.sink_values, self.window_values, self.value_codes, self.value_scales,
             self.value_bits, self.value_means, self.unbiased_values),
        ):
            if plan.to_sinks:
                sinks[rows, :, plan.sinks : plan.sinks + plan.to_sinks] = (
                    states[rows, :, first : first + plan.to_sinks]
                )
            fresh = states[rows, :, first + plan.to_sinks :]
            if not plan.to_code:
                if fresh.shape[2]:
                    window[rows, :, plan.window : plan.window + fresh.shape[2]] = fresh
                continue
            pending = torch.cat([window[rows, :, : plan.window], fresh], dim=2) if plan.window else fresh
            # Coded straight into the buffers' slices (no temporaries).
            g = pending.shape[0] * self.heads
            span = slice(plan.coded, plan.coded + plan.to_code)
            x = pending[:, :, : plan.to_code].reshape(g, plan.to_code, -1)
            code_view = codes[rows].view(g, codes.shape[2], -1)[:, span]
            scale_view = scales[rows].view(g, scales.shape[2])[:, span]
            if plan.coded == 0:
                means[rows] = self._centre_of(x).view_as(means[rows])
            x, centred = self._centred(x, means[rows].reshape(g, 1, -1))
            codec.encode_groups(
                x,
                code_view,
                scale_view,
                bits=bits,
                seed=self.seed,
                threads=CODEC_THREADS,
                backend=CODEC_BACKEND,
                candidates=CODEC_CANDIDATES,
            )
            if unbiased:
                self._unbias_scales(x, code_view, scale_view, bits)
            scale_view.view(torch.int16).bitwise_or_(centred.to(torch.int16) * -0x8000)
            if plan.window_after:
                window[rows, :, : plan.window_after] = pending[:, :, plan.to_code :]

    @property
    def unbiased_keys(self) -> bool:
        """Whether coded keys get the unbiased scale (:meth:`_unbias_scales`): when the layer
        keeps no exact tokens (``window == 0`` and ``sink_tokens == 0``), so that attention only
        ever sees coded keys.

        The least-squares scale shrinks every key by about ``1 - 1/SQNR``, which scales every
        logit ``q·k`` by the same factor: a higher softmax temperature, systematically flatter
        attention. The keys' random error ``e`` works the other way: ``E[exp(q·(k + e))] =
        exp(q·k + var(q·e)/2)``, so coded keys gain weight against exact ones. When every key is
        coded that gain cancels in the softmax's normalisation and only the shrinkage is left;
        next to exact sinks and a window the shrinkage roughly offsets it. Measured with
        SmolLM2-135M (``--chunk 512``, 3 windows, mean KL of the rotation seeds; least-squares →
        unbiased): ``window=0`` on emma.txt (seeds 0-2) K4V4 0.00197 → 0.00179 (PPL Δ +0.35 % →
        +0.28 %), K3V3 0.0099 → 0.0083 (+1.21 → +0.89 %), K3V2 0.0151 → 0.0144 (+1.54 → +1.27 %),
        K2V2 0.0558 → 0.0453 (+4.71 → +4.27 %); with the defaults (4 sinks, window 128, K3V2,
        seeds 0-5) KL 0.00410 → 0.00419 on emma.txt and 0.00884 → 0.00855 on lcet10.txt, but
        PPL Δ +0.38 → +0.56 % and +0.98 → +1.23 %, so layers with exact tokens keep the
        least-squares scale. Scaling keys beyond unbiased (to their own norm, or 0.5 % more)
        measured worse at K4V4 ``window=0`` (0.00184, 0.00193).
        """
        return self.window == 0 and self.sink_tokens == 0

    @property
    def unbiased_values(self) -> bool:
        """Whether coded values get the unbiased scale (:meth:`_unbias_scales`): when the keys have
        more bits than the values."""
        return self.value_bits < self.key_bits

    def _unbias_scales(self, x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, bits: int) -> None:
        """Replace the codec's least-squares scales of the head-vectors ``x`` ``(G, N, d)`` just
        coded into ``codes`` / ``scales`` by the scales that make each decode unbiased along
        itself: ``<v̂, v> = |v|²``.

        The least-squares scale shrinks every decoded vector towards zero by about ``1 - 1/SQNR``
        (10 % at 2 bits). For keys that is a common temperature on every logit (see
        :attr:`unbiased_keys`). Attention sums values over many tokens: their independent errors
        average out, a common shrinkage does not. When the keys have more bits than the values
        the attention weights are accurate and the shrinkage is the larger error; with equally
        coarse keys the shrinkage pays for itself. Measured with SmolLM2-135M (KL divergence,
        ``window=0``, chunked protocol, 3 windows, least-squares keys): K3V2 0.0296 → 0.0222 on
        emma.txt and 0.0410 → 0.0339 on lcet10.txt, K4V2 0.0251 → 0.0149 on lcet10.txt; K3V3 and
        K2V2 (not changed here) got 1-10 % worse with it; with unbiased keys, K4V4 measured the
        same KL either way (0.00179). The codes are the codec's; only the fp16 scale differs (NaN
        and zero scales stay as they are).
        """
        xf = x.float()
        decoded = torch.empty(xf.shape, dtype=torch.float32, device=xf.device)
        codec.decode_groups(
            codes, scales, decoded, bits=bits, seed=self.seed, threads=CODEC_THREADS, backend=CODEC_BACKEND
        )
        num = (xf * xf).sum(-1)
        den = (xf * decoded).sum(-1)
        ok = (den > 0) & torch.isfinite(num) & torch.isfinite(den)
        factor = torch.where(ok, num / torch.where(ok, den, 1.0), 1.0)
        fp16_max = torch.finfo(torch.float16).max
        scales.copy_((scales.float() * factor).clamp(-fp16_max, fp16_max).to(torch.float16))

    def _centre_of(self, x: torch.Tensor) -> torch.Tensor:
        """The centre of the head-vectors ``x`` ``(G, N, d)``: the mean of each group's finite
        vectors, in the model dtype (zeros where there is none, or where the mean does not fit
        the dtype)."""
        xf = x.float()
        finite = torch.isfinite(xf).all(-1, keepdim=True)
        total = torch.where(finite, xf, 0.0).sum(1)
        mean = total / finite.sum(1).clamp(min=1)
        centre = mean.to(self.dtype)
        return torch.where(torch.isfinite(centre), centre, 0)

    @staticmethod
    def _centred(x: torch.Tensor, centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head-vectors ``x`` ``(G, N, d)`` to code and which of them are centred:
        ``x - centre`` where that is shorter than ``x``, ``x`` elsewhere (NaN/Inf vectors stay as
        they are).

        Post-RoPE keys carry a large common component in their slowly rotating channels (and a
        few outlier channels), values a smaller one, and the codec's error grows with a vector's
        norm; the centre removes it where it is present, while a vector unlike the others (the
        first token, which many heads use as an attention sink) keeps its own, smaller norm.
        Measured with SmolLM2-135M (KL divergence, ``window=0``, chunked protocol, 3 windows,
        emma.txt, 3 seeds): keys centred, K3V2 0.0222 -> 0.0158, K3V3 0.0158 -> 0.0104, K2V2
        0.0987 -> 0.0612, K4V4 0.0033 -> 0.0020; values centred too (round-trip simulation),
        K2V2 0.0612 -> 0.0558, K3V2 0.0158 -> 0.0151. Centring every key instead of choosing
        made K3V2 worse (0.039), through the sink token.
        """
        xf = x.float()
        shifted = xf - centre.float()
        centred = shifted.square().sum(-1) < xf.square().sum(-1)
        if not bool(centred.any()):
            return x, centred
        return torch.where(centred.unsqueeze(-1), shifted, xf), centred

    def _apply_rows(self, fn) -> None:
        """Apply a row selection ``fn`` (along dim 0) to every buffer and to the lengths."""
        for name in ("sink_keys", "sink_values", "window_keys", "window_values", "key_codes",
                     "value_codes", "key_scales", "value_scales", "key_means", "value_means", "lengths"):
            setattr(self, name, fn(getattr(self, name)))
        self.batch = self.lengths.shape[0]

    def __repr__(self) -> str:
        mode = f"K{self.key_bits}V{self.value_bits}" if self.quantize else "pass-through"
        return (
            f"NexusQuantLayer({mode}, sink_tokens={self.sink_tokens}, window={self.window}, "
            f"block={self.block}, seq_length={self.cumulative_length})"
        )


__all__ = ["NexusQuantLayer", "PackedLayerView", "CODEC_BACKEND", "CODEC_CANDIDATES", "CODEC_THREADS", "centred_flags"]
