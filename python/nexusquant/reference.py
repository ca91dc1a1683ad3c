"""Pure-torch reference implementation of the e8v1 codec (``docs/codec.md``).

This module is the oracle: slow, plain and literal. The Rust core and the CUDA kernels are
tested against it, codes and scales byte for byte, decoded values bit for bit. Every float
operation below is one elementwise torch op on float32 (one IEEE rounding each), in the order
the spec gives; sums use :func:`fold_sum`, never ``torch.sum`` (whose order is unspecified).

Shapes: ``x`` is ``(N, d)``; codes are ``(N, d*bits/8)`` uint8; scales are ``(N,)`` int16
holding fp16 bit patterns (use ``.view(torch.float16)`` to read them as numbers).
"""

from __future__ import annotations

import torch

MASK64 = (1 << 64) - 1
FP16_NAN_BITS = 0x7E00

# ALPHA[b] = alpha_b * (1.0, 0.9, 1.1), as decimal literals parsed to binary32 (docs/codec.md).
ALPHA: dict[int, tuple[str, str, str]] = {
    1: ("0.655", "0.5895", "0.7205"),
    2: ("1.01", "0.909", "1.111"),
    3: ("1.765", "1.5885", "1.9415"),
    4: ("3.33", "2.997", "3.663"),
    5: ("6.03", "5.427", "6.633"),
    6: ("11.6", "10.44", "12.76"),
    7: ("22.7", "20.43", "24.97"),
    8: ("42.7", "38.43", "46.97"),
}
INV_SQRT2_BITS = 0x3F3504F3


def f32(value: float | str) -> torch.Tensor:
    """A 0-d float32 tensor holding ``value`` rounded once to binary32."""
    return torch.tensor(float(value), dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# 1. signs


def splitmix64_outputs(seed: int, count: int) -> list[int]:
    """The first ``count`` outputs of splitmix64 started at ``state = seed``."""
    state = seed & MASK64
    out = []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        out.append(z ^ (z >> 31))
    return out


def signs(seed: int, count: int) -> torch.Tensor:
    """Signs ``k = 0 .. count-1`` as a bool tensor (True = negate)."""
    words = splitmix64_outputs(seed, (count + 63) // 64)
    return torch.tensor([(words[k // 64] >> (k % 64)) & 1 == 1 for k in range(count)])


# --------------------------------------------------------------------------------------------
# 2. rotation


def stage_size(d: int) -> int:
    """P: the largest power of two <= d."""
    return 1 << (d.bit_length() - 1)


def stage_norm(p: int) -> torch.Tensor:
    """c_P as a binary32 scalar: 2^-k for P = 4^k, 2^-k * 0x3F3504F3 for P = 2*4^k."""
    log2 = p.bit_length() - 1
    c = torch.tensor(2.0 ** -(log2 // 2), dtype=torch.float32)
    if log2 % 2:
        inv_sqrt2 = torch.tensor([INV_SQRT2_BITS], dtype=torch.int32).view(torch.float32)[0]
        c = c * inv_sqrt2
    return c


def fwht(w: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard transform of the last axis (length P), stages h ascending."""
    n, p = w.shape
    h = 1
    while h < p:
        v = w.reshape(n, p // (2 * h), 2, h)
        a, b = v[:, :, 0, :], v[:, :, 1, :]
        w = torch.stack((a + b, a - b), dim=2).reshape(n, p)
        h *= 2
    return w


def _apply_signs(v: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    return torch.where(neg, -v, v)


def rotate(v: torch.Tensor, seed: int) -> torch.Tensor:
    """R(v) for float32 ``v`` of shape (N, d)."""
    n, d = v.shape
    p = stage_size(d)
    c = stage_norm(p)
    s = signs(seed, 2 * d).to(v.device)
    v = _apply_signs(v, s[:d])
    head = fwht(v[:, :p]) * c
    v = torch.cat((head, v[:, p:]), dim=1)
    if p < d:
        tail = _apply_signs(v[:, d - p :], s[2 * d - p : 2 * d])
        tail = fwht(tail) * c
        v = torch.cat((v[:, : d - p], tail), dim=1)
    return v


def inverse_rotate(v: torch.Tensor, seed: int) -> torch.Tensor:
    """R^-1(v) for float32 ``v`` of shape (N, d)."""
    n, d = v.shape
    p = stage_size(d)
    c = stage_norm(p)
    s = signs(seed, 2 * d).to(v.device)
    if p < d:
        tail = fwht(v[:, d - p :]) * c
        tail = _apply_signs(tail, s[2 * d - p : 2 * d])
        v = torch.cat((v[:, : d - p], tail), dim=1)
    head = fwht(v[:, :p]) * c
    v = torch.cat((head, v[:, p:]), dim=1)
    return _apply_signs(v, s[:d])


# --------------------------------------------------------------------------------------------
# 3. canonical sum


def fold_sum(a: torch.Tensor) -> torch.Tensor:
    """FOLD over the last axis: zero-pad to a power of two, then halve: a[i] += a[i + n/2]."""
    n = a.shape[-1]
    n2 = 1 << max(0, (n - 1).bit_length())
    if n2 != n:
        a = torch.cat((a, a.new_zeros(*a.shape[:-1], n2 - n)), dim=-1)
    while n2 > 1:
        n2 //= 2
        a = a[..., :n2] + a[..., n2 : 2 * n2]
    return a[..., 0]


# --------------------------------------------------------------------------------------------
# 4. E8 nearest point


def _qd8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = torch.round(w)  # round half to even
    e = w - f
    odd = (f.to(torch.int64).sum(-1) % 2) != 0
    k = torch.argmax(e.abs(), dim=-1, keepdim=True)
    ek = torch.gather(e, -1, k)
    step = torch.where(ek >= 0, 1.0, -1.0)
    fk = torch.gather(f, -1, k) + step
    f_fix = f.scatter(-1, k, fk)
    f = torch.where(odd.unsqueeze(-1), f_fix, f)
    e_fix = e.scatter(-1, k, torch.gather(w, -1, k) - fk)
    e = torch.where(odd.unsqueeze(-1), e_fix, e)
    return f, e


def qe8(z: torch.Tensor) -> torch.Tensor:
    """Nearest E8 point to float32 ``z`` (..., 8), in half-units (int64)."""
    a, ea = _qd8(z)
    w = z - 0.5
    b, eb = _qd8(w)
    da = fold_sum(ea * ea)
    db = fold_sum(eb * eb)
    ya = 2 * a.to(torch.int64)
    yb = 2 * b.to(torch.int64) + 1
    return torch.where((da <= db).unsqueeze(-1), ya, yb)


# --------------------------------------------------------------------------------------------
# 5. Voronoi code


def coords(y: torch.Tensor, q: int) -> torch.Tensor:
    """COORDS: half-unit E8 points (..., 8) -> codes in [0, q) (int64)."""
    y7 = y[..., 7]
    c = [None] * 8
    c[7] = y7
    c[6] = (y[..., 6] - y7) // 2
    for k in range(5, 0, -1):
        c[k] = (y[..., k] - y7) // 2 + c[k + 1]
    c[0] = ((y[..., 0] - y7) // 2 + c[1]) // 2
    return torch.stack(c, dim=-1) & (q - 1)


def vdec(c: torch.Tensor, q: int) -> torch.Tensor:
    """VDEC: codes (..., 8) in [0, q) -> the coset's codebook point of E8 + 1/4, quarter-units."""
    c7 = c[..., 7]
    y = [None] * 8
    y[7] = c7
    y[6] = 2 * c[..., 6] + c7
    for k in range(1, 6):
        y[k] = 2 * (c[..., k] - c[..., k + 1]) + c7
    y[0] = 2 * (2 * c[..., 0] - c[..., 1]) + c7
    p = 2 * torch.stack(y, dim=-1) + 1
    z = p.to(torch.float32) / float(4 * q)
    return p - 2 * q * qe8(z)


# --------------------------------------------------------------------------------------------
# packing


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(N, d) codes in [0, 2^bits) -> (N, d*bits/8) uint8, LSB-first, blocks of 8 codes."""
    n, d = codes.shape
    blocks = codes.reshape(n, d // 8, 8).to(torch.int64)
    word = torch.zeros(n, d // 8, dtype=torch.int64)
    for k in range(8):
        word = word | (blocks[..., k] << (bits * k))
    out = [((word >> (8 * i)) & 0xFF) for i in range(bits)]
    return torch.stack(out, dim=-1).reshape(n, d * bits // 8).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, d: int) -> torch.Tensor:
    """Inverse of :func:`pack`: (N, d*bits/8) uint8 -> (N, d) int64."""
    n = packed.shape[0]
    by = packed.reshape(n, d // 8, bits).to(torch.int64)
    word = torch.zeros(n, d // 8, dtype=torch.int64)
    for i in range(bits):
        word = word | (by[..., i] << (8 * i))
    mask = (1 << bits) - 1
    codes = [(word >> (bits * k)) & mask for k in range(8)]
    return torch.stack(codes, dim=-1).reshape(n, d)


# --------------------------------------------------------------------------------------------
# 6./7. encode and decode


def _to_fp16_saturating(m: torch.Tensor) -> torch.Tensor:
    h = m.to(torch.float16)
    big = torch.tensor(65504.0, dtype=torch.float16)
    return torch.where(torch.isinf(h), torch.copysign(big, h), h)


def _nearest_shifted(z: torch.Tensor, q: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest point of E8 + 1/4 to z: (codes, codebook point in quarter-units, is it in the cell)."""
    y = qe8(z - 0.25)
    code = coords(y, q)
    p = vdec(code, q)
    inside = (p == 2 * y + 1).all(-1)
    return code, p, inside


def _quantize_blocks(z: torch.Tensor, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Code (M, 8) scaled blocks: returns (codes, reconstruction in quarter-units)."""
    code, p, inside = _nearest_shifted(z, q)
    bad = ~inside
    for s in range(1, 17):
        if not bool(bad.any()):
            break
        beta = f32((16 - s) / 16)
        idx = bad.nonzero().squeeze(-1)
        cb, pb, ok = _nearest_shifted(z[idx] * beta, q)
        done = idx[ok]
        code[done] = cb[ok]
        p[done] = pb[ok]
        bad[done] = False
    return code, p


def encode(
    x: torch.Tensor, bits: int, seed: int, candidates: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode (N, d) float tensor -> (codes (N, d*bits/8) uint8, scales (N,) int16 fp16 bits),
    trying the first ``candidates`` (1..3; ``None``: 1 up to 4 bits, 3 above) clipping factors of
    §6 step 4."""
    if candidates is None:
        from .codec import default_candidates  # noqa: PLC0415 - the library's rule, one place

        candidates = default_candidates(bits)
    n, d = x.shape
    q = 1 << bits
    v = x.to(torch.float32)
    finite = torch.isfinite(v).all(-1)
    v = torch.where(finite.unsqueeze(-1), v, torch.zeros_like(v))
    v = rotate(v, seed)
    ss = fold_sum(v * v)
    nan_vec = ~finite | ~torch.isfinite(ss)
    # torch's float32 sqrt on CPU is not always correctly rounded; the square root of a
    # binary32 value taken in binary64 and rounded once is (the spec asks for IEEE sqrt).
    rms = torch.sqrt((ss / f32(d)).double()).to(torch.float32)
    zero_vec = ((ss == 0) | (rms == 0)) & ~nan_vec
    live = ~nan_vec & ~zero_vec
    rms = torch.where(live, rms, torch.ones_like(rms))
    v = torch.where(live.unsqueeze(-1), v, torch.zeros_like(v))

    best_err = None
    best_codes = torch.zeros(n, d, dtype=torch.int64)
    best_scale = torch.zeros(n, dtype=torch.float16)
    for alpha in ALPHA[bits][:candidates]:
        u = f32(alpha) / rms
        z = v * u.unsqueeze(-1)
        code, yh = _quantize_blocks(z.reshape(-1, 8), q)
        code = code.reshape(n, d)
        yhat = yh.reshape(n, d).to(torch.float32) * 0.25
        num = fold_sum(v * yhat)
        den = fold_sum(yhat * yhat)
        m = torch.where(den == 0, torch.zeros_like(num), num / torch.where(den == 0, 1.0, den))
        mh = _to_fp16_saturating(m)
        mf = mh.to(torch.float32)
        r = v - mf.unsqueeze(-1) * yhat
        err = fold_sum(r * r)
        if best_err is None:
            take = torch.ones(n, dtype=torch.bool)
        else:
            take = err < best_err
        best_err = err if best_err is None else torch.where(take, err, best_err)
        best_codes = torch.where(take.unsqueeze(-1), code, best_codes)
        best_scale = torch.where(take, mh, best_scale)

    best_codes = torch.where(live.unsqueeze(-1), best_codes, torch.zeros_like(best_codes))
    scale_bits = best_scale.view(torch.int16)
    scale_bits = torch.where(live, scale_bits, torch.zeros_like(scale_bits))
    scale_bits = torch.where(
        nan_vec, torch.tensor(FP16_NAN_BITS, dtype=torch.int16), scale_bits
    )
    return pack(best_codes, bits), scale_bits


def decode(
    codes: torch.Tensor, scales: torch.Tensor, bits: int, seed: int, d: int, dtype: torch.dtype
) -> torch.Tensor:
    """Decode (N, d*bits/8) uint8 codes and (N,) fp16-bit scales to an (N, d) tensor of dtype."""
    n = codes.shape[0]
    q = 1 << bits
    c = unpack(codes, bits, d).reshape(n, d // 8, 8)
    yh = vdec(c, q).reshape(n, d)
    mf = scales.view(torch.float16).to(torch.float32)
    v = (yh.to(torch.float32) * 0.25) * mf.unsqueeze(-1)
    v = inverse_rotate(v, seed)
    return v.to(dtype)


__all__ = [
    "ALPHA",
    "signs",
    "rotate",
    "inverse_rotate",
    "fold_sum",
    "qe8",
    "coords",
    "vdec",
    "pack",
    "unpack",
    "encode",
    "decode",
]
