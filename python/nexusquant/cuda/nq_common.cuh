// nexusquant e8v1 codec: the arithmetic shared by every kernel (docs/codec.md, Revision 2).
//
// Everything here is `__host__ __device__`: the kernels compile it with NVRTC, and the host
// emulation (tests/cuda_host/) compiles the very same text with g++ -ffp-contract=off, so the
// CPU runs each thread's float operations in the same order as the GPU.
//
// Float rules: one IEEE binary32 rounding per operation. On the device every operation that
// matters goes through an explicit round-to-nearest intrinsic (__fadd_rn, __fmul_rn, ...) and the
// module is compiled with --fmad=false --ftz=false --prec-div=true --prec-sqrt=true; on the host
// the same wrappers are plain SSE operations with contraction off.
//
// No CUDA headers are included (not even cuda_fp16.h): fp16/bf16 are carried as their 16-bit
// patterns, so the kernels compile with nothing but NVRTC and its built-in declarations.
#pragma once

#ifndef __CUDACC__
#include <cmath>
#include <cstring>
#define __host__
#define __device__
#define __forceinline__ inline __attribute__((always_inline))
#define NQ_UNROLL _Pragma("GCC unroll 32")
#else
#define NQ_UNROLL _Pragma("unroll")
#endif

#define NQ_HD __host__ __device__ __forceinline__

namespace nq {

typedef unsigned char u8;
typedef unsigned short u16;
typedef int i32;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

// ---------------------------------------------------------------------------------------------
// IEEE binary32 operations, one rounding each (round to nearest even)

NQ_HD float add(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
NQ_HD float sub(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
NQ_HD float mul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
NQ_HD float div(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
NQ_HD float sqrt_rn(float a) {
#ifdef __CUDA_ARCH__
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}
// Fused a·b + c, one rounding: only for attention, whose results are not bit-specified (the
// codec never contracts).
NQ_HD float fma_rn(float a, float b, float c) {
#ifdef __CUDA_ARCH__
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
// Round half to even (the spec's rint).
NQ_HD float rint_even(float a) {
#ifdef __CUDA_ARCH__
  return rintf(a);
#else
  return std::rint(a);
#endif
}
NQ_HD float exp2_f(float a) {
#ifdef __CUDA_ARCH__
  return exp2f(a);
#else
  return std::exp2(a);
#endif
}
NQ_HD float max_f(float a, float b) {
#ifdef __CUDA_ARCH__
  return fmaxf(a, b);
#else
  return std::fmax(a, b);
#endif
}

NQ_HD u32 f32_bits(float a) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(a);
#else
  u32 u;
  std::memcpy(&u, &a, 4);
  return u;
#endif
}
NQ_HD float f32_from_bits(u32 u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float a;
  std::memcpy(&a, &u, 4);
  return a;
#endif
}
NQ_HD float neg_inf() { return f32_from_bits(0xFF800000u); }
NQ_HD bool is_finite(float a) { return (f32_bits(a) & 0x7F800000u) != 0x7F800000u; }
NQ_HD float neg_if(bool neg, float a) { return neg ? -a : a; }

// ---------------------------------------------------------------------------------------------
// fp16 / bf16 <-> binary32. Widening is exact; narrowing rounds to nearest even.

// Software binary32 -> fp16 bits, round to nearest even, subnormals kept, NaN -> quiet NaN.
NQ_HD u16 f16_bits_soft(float f) {
  const u32 x = f32_bits(f);
  const u32 sign = (x >> 16) & 0x8000u;
  const u32 ax = x & 0x7FFFFFFFu;
  if (ax >= 0x7F800000u) {  // Inf or NaN
    return (u16)(sign | (ax > 0x7F800000u ? 0x7E00u : 0x7C00u));
  }
  if (ax >= 0x477FF000u) {  // rounds to >= 2^16: overflow to Inf
    return (u16)(sign | 0x7C00u);
  }
  if (ax < 0x38800000u) {  // below 2^-14: fp16 subnormal (or zero)
    if (ax < 0x33000000u) return (u16)sign;  // below half the smallest subnormal: +-0
    const u32 e = ax >> 23;                  // 102 .. 112
    const u32 m = (ax & 0x7FFFFFu) | 0x800000u;
    const u32 shift = 126u - e;  // value = m * 2^(e-150); unit 2^-24 -> m >> (126 - e)
    u32 h = m >> shift;
    const u32 rem = m & ((1u << shift) - 1u);
    const u32 half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return (u16)(sign | h);
  }
  u32 h = ((ax - 0x38000000u) >> 13);  // rebias exponent 127 -> 15, keep 10 mantissa bits
  const u32 rem = ax & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return (u16)(sign | h);
}

NQ_HD u16 f16_bits(float f) {
#ifdef __CUDA_ARCH__
  u16 h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
#else
  return f16_bits_soft(f);
#endif
}

NQ_HD float f16_to_f32_soft(u16 h) {
  const u32 sign = ((u32)h & 0x8000u) << 16;
  const u32 e = ((u32)h >> 10) & 0x1Fu;
  u32 m = (u32)h & 0x3FFu;
  if (e == 0x1Fu) return f32_from_bits(sign | 0x7F800000u | (m << 13));
  if (e != 0) return f32_from_bits(sign | ((e + 112u) << 23) | (m << 13));
  if (m == 0) return f32_from_bits(sign);
  u32 exp = 113u;  // normalise the subnormal: value = m * 2^-24
  while ((m & 0x400u) == 0) {
    m <<= 1;
    --exp;
  }
  return f32_from_bits(sign | (exp << 23) | ((m & 0x3FFu) << 13));
}

NQ_HD float f16_to_f32(u16 h) {
#ifdef __CUDA_ARCH__
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
#else
  return f16_to_f32_soft(h);
#endif
}

NQ_HD u16 bf16_bits_soft(float f) {
  const u32 x = f32_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (u16)((x >> 16) | 0x0040u);  // quiet NaN
  const u32 rounding = 0x7FFFu + ((x >> 16) & 1u);
  return (u16)((x + rounding) >> 16);
}

NQ_HD u16 bf16_bits(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  u16 h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
#else
  return bf16_bits_soft(f);
#endif
}

NQ_HD float bf16_to_f32(u16 h) { return f32_from_bits((u32)h << 16); }

// Element types of the kernels' tensors: the stored type and exact conversions.
struct F32 {
  typedef float storage;
  static NQ_HD float load(float v) { return v; }
  static NQ_HD float store(float v) { return v; }
};
struct F16 {
  typedef u16 storage;
  static NQ_HD float load(u16 v) { return f16_to_f32(v); }
  static NQ_HD u16 store(float v) { return f16_bits(v); }
};
struct BF16 {
  typedef u16 storage;
  static NQ_HD float load(u16 v) { return bf16_to_f32(v); }
  static NQ_HD u16 store(float v) { return bf16_bits(v); }
};

// Eight consecutive coordinates held by one lane (the lane-per-block paths of nq_codec.cuh).
struct F8 {
  float v[8];
};

// p[0..8) = o[0..8): one 16-byte store (two for binary32) when p is 16-byte aligned on the
// device, element stores otherwise and on the host. Same bytes either way.
#ifdef __CUDA_ARCH__
struct __align__(16) U4 {
  u32 x, y, z, w;
};
#endif
NQ_HD void store8(u16* p, const u16 (&o)[8]) {
#ifdef __CUDA_ARCH__
  if ((reinterpret_cast<u64>(p) & 15u) == 0) {
    U4 w;
    w.x = (u32)o[0] | ((u32)o[1] << 16);
    w.y = (u32)o[2] | ((u32)o[3] << 16);
    w.z = (u32)o[4] | ((u32)o[5] << 16);
    w.w = (u32)o[6] | ((u32)o[7] << 16);
    *reinterpret_cast<U4*>(p) = w;
    return;
  }
#endif
  NQ_UNROLL
  for (int i = 0; i < 8; ++i) p[i] = o[i];
}
NQ_HD void store8(float* p, const float (&o)[8]) {
#ifdef __CUDA_ARCH__
  if ((reinterpret_cast<u64>(p) & 15u) == 0) {
    U4 a, b;
    a.x = f32_bits(o[0]);
    a.y = f32_bits(o[1]);
    a.z = f32_bits(o[2]);
    a.w = f32_bits(o[3]);
    b.x = f32_bits(o[4]);
    b.y = f32_bits(o[5]);
    b.z = f32_bits(o[6]);
    b.w = f32_bits(o[7]);
    reinterpret_cast<U4*>(p)[0] = a;
    reinterpret_cast<U4*>(p)[1] = b;
    return;
  }
#endif
  NQ_UNROLL
  for (int i = 0; i < 8; ++i) p[i] = o[i];
}

// fp16 bits of m, round to nearest even, +-Inf saturated to +-65504 (codec.md §6 step 4).
NQ_HD u16 scale_bits(float m) {
  u16 h = f16_bits(m);
  if ((h & 0x7FFFu) == 0x7C00u) h = (u16)((h & 0x8000u) | 0x7BFFu);
  return h;
}

constexpr u16 kNanScale = 0x7E00;

// ---------------------------------------------------------------------------------------------
// §1 signs: sign k is bit k%64 of splitmix64 output k/64. Output n is the mix of the state after
// n+1 steps, seed + (n+1)·γ, so any word can be computed directly.

NQ_HD u64 splitmix64_output(u64 seed, u64 n) {
  u64 z = seed + (n + 1ull) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
// Words holding the 2d signs of a rotation (stage 1 uses k < d, stage 2 uses k = d + i).
NQ_HD int sign_words(int d) { return (2 * d + 63) / 64; }
NQ_HD bool sign_bit(const u64* words, int k) { return (words[k >> 6] >> (k & 63)) & 1ull; }

// ---------------------------------------------------------------------------------------------
// §2 rotation constants

NQ_HD int stage_size(int d) {  // P: the largest power of two <= d
  int p = 1;
  while (2 * p <= d) p *= 2;
  return p;
}
NQ_HD float stage_norm(int p) {  // c_P
  int log2 = 0;
  while ((1 << log2) < p) ++log2;
  const float c = f32_from_bits((u32)(127 - log2 / 2) << 23);  // 2^-(log2/2), exact
  return (log2 & 1) ? mul(c, f32_from_bits(0x3F3504F3u)) : c;
}
NQ_HD int next_pow2(int n) {
  int p = 1;
  while (p < n) p *= 2;
  return p;
}

// Lanes that work on one head-vector: one lane per 8-element block, a power of two, at most a
// warp. The FOLD layout below needs next_pow2(d) >= 8·G, which this choice guarantees.
NQ_HD int group_size(int d) {
  const int g = next_pow2(d / 8);
  return g < 32 ? g : 32;
}

// ---------------------------------------------------------------------------------------------
// §3 FOLD, split between lanes. Lane `lane` of G holds the elements lane + G·k, k < n2/G (+0.0
// past n, the spec's padding) and folds them in halving order; the G lane values are then
// folded by an XOR butterfly with offsets G/2, G/4, …, 1, which is the rest of the halving
// order. lane_fold is that lane's share; the butterfly lives in the group types.

template <int H>
NQ_HD void fold_step(float (&a)[32], int per) {  // a[k] += a[k + H], k < H, when H < per
  if (H < per) {
    NQ_UNROLL
    for (int k = 0; k < H; ++k) a[k] = add(a[k], a[k + H]);
  }
}

template <class F>
NQ_HD float lane_fold(int lane, int G, int n, F f) {
  const int per = next_pow2(n) / G;  // 1 .. 32
  float a[32];
  NQ_UNROLL
  for (int k = 0; k < 32; ++k) {
    const int i = lane + G * k;
    a[k] = (k < per && i < n) ? f(i) : 0.0f;
  }
  fold_step<16>(a, per);
  fold_step<8>(a, per);
  fold_step<4>(a, per);
  fold_step<2>(a, per);
  fold_step<1>(a, per);
  return a[0];
}

// FOLD of 8 values (one block), in-thread.
NQ_HD float fold8(const float a[8]) {
  const float b0 = add(a[0], a[4]), b1 = add(a[1], a[5]), b2 = add(a[2], a[6]),
              b3 = add(a[3], a[7]);
  return add(add(b0, b2), add(b1, b3));
}

// ---------------------------------------------------------------------------------------------
// §4 QE8 on binary32 input (the encoder's nearest-point search), result in half-units.

NQ_HD float qd8(const float w[8], float f[8]) {  // returns FOLD(e·e)
  float e[8];
  int sum = 0;
  NQ_UNROLL
  for (int i = 0; i < 8; ++i) {
    f[i] = rint_even(w[i]);
    e[i] = sub(w[i], f[i]);
    sum += (int)f[i];
  }
  if (sum & 1) {
    int k = 0;
    float best = e[0] < 0.0f ? -e[0] : e[0];
    NQ_UNROLL
    for (int i = 1; i < 8; ++i) {
      const float a = e[i] < 0.0f ? -e[i] : e[i];
      if (a > best) {
        best = a;
        k = i;
      }
    }
    NQ_UNROLL
    for (int i = 0; i < 8; ++i) {
      if (i == k) {
        f[i] = e[i] >= 0.0f ? add(f[i], 1.0f) : sub(f[i], 1.0f);
        e[i] = sub(w[i], f[i]);
      }
    }
  }
  float sq[8];
  NQ_UNROLL
  for (int i = 0; i < 8; ++i) sq[i] = mul(e[i], e[i]);
  return fold8(sq);
}

NQ_HD void qe8(const float z[8], int y[8]) {
  float a[8], b[8], w[8];
  const float da = qd8(z, a);
  NQ_UNROLL
  for (int i = 0; i < 8; ++i) w[i] = sub(z[i], 0.5f);
  const float db = qd8(w, b);
  NQ_UNROLL
  for (int i = 0; i < 8; ++i) y[i] = da <= db ? 2 * (int)a[i] : 2 * (int)b[i] + 1;
}

// ---------------------------------------------------------------------------------------------
// §5 Voronoi code on E8 + 1/4

// COORDS(Y) & (q-1), packed as the block's 8b-bit word (§8: code k at bits [b·k, b·k+b)).
NQ_HD u64 coords_word(const int y[8], int bits) {
  const int mask = (1 << bits) - 1;
  int c[8];
  c[7] = y[7];
  c[6] = (y[6] - y[7]) >> 1;
  NQ_UNROLL
  for (int k = 5; k >= 1; --k) c[k] = ((y[k] - y[7]) >> 1) + c[k + 1];
  c[0] = (((y[0] - y[7]) >> 1) + c[1]) >> 1;
  u64 word = 0;
  NQ_UNROLL
  for (int k = 0; k < 8; ++k) word |= (u64)(c[k] & mask) << (bits * k);
  return word;
}

// VDEC of a block word: the codebook point P̂ in quarter-units.
//
// The spec computes K = QE8(P / 4q) in binary32. Here P is an odd integer and 4q = 2^(b+2), so
// every value of that computation is an exact multiple of 1/(4q) far inside binary32's range
// (|e|·4q <= 4q <= 2^10, e² and their FOLD < 2^24 units): the float operations are exact and
// are replaced by the same integer operations. rint(P/4q) never meets a tie (P is odd), so
// it is floor((P + 2q) / 4q) = (P + 2q) >> (b+2) on D8, and P >> (b+2) on D8 + 1/2
// (rint((P - 2q)/4q)). Residuals are kept in units of 1/(4q). Identity with the float form is
// checked exhaustively for b <= 2 and on random codes for every b by tests/test_cuda_host.py.
NQ_HD void vdec_word(u64 word, int bits, int ph[8]) {
  const int mask = (1 << bits) - 1;
  const int q2 = 1 << (bits + 1);  // 2q
  const int sh = bits + 2;         // 4q = 1 << sh
  const int q4 = 1 << sh;
  int c[8];
  NQ_UNROLL
  for (int k = 0; k < 8; ++k) c[k] = (int)((word >> (bits * k)) & (u64)mask);
  int p[8];
  p[7] = 2 * c[7] + 1;
  p[6] = 2 * (2 * c[6] + c[7]) + 1;
  NQ_UNROLL
  for (int k = 1; k <= 5; ++k) p[k] = 2 * (2 * (c[k] - c[k + 1]) + c[7]) + 1;
  p[0] = 2 * (2 * (2 * c[0] - c[1]) + c[7]) + 1;

  int fa[8], ea[8], fb[8], eb[8];
  int sa = 0, sb = 0;
  NQ_UNROLL
  for (int i = 0; i < 8; ++i) {
    fa[i] = (p[i] + q2) >> sh;
    ea[i] = p[i] - fa[i] * q4;
    fb[i] = p[i] >> sh;
    eb[i] = p[i] - q2 - fb[i] * q4;
    sa += fa[i];
    sb += fb[i];
  }
  if (sa & 1) {
    int k = 0, best = ea[0] < 0 ? -ea[0] : ea[0];
    NQ_UNROLL
    for (int i = 1; i < 8; ++i) {
      const int a = ea[i] < 0 ? -ea[i] : ea[i];
      if (a > best) {
        best = a;
        k = i;
      }
    }
    NQ_UNROLL
    for (int i = 0; i < 8; ++i) {
      if (i == k) {
        fa[i] += ea[i] >= 0 ? 1 : -1;
        ea[i] = p[i] - fa[i] * q4;
      }
    }
  }
  if (sb & 1) {
    int k = 0, best = eb[0] < 0 ? -eb[0] : eb[0];
    NQ_UNROLL
    for (int i = 1; i < 8; ++i) {
      const int a = eb[i] < 0 ? -eb[i] : eb[i];
      if (a > best) {
        best = a;
        k = i;
      }
    }
    NQ_UNROLL
    for (int i = 0; i < 8; ++i) {
      if (i == k) {
        fb[i] += eb[i] >= 0 ? 1 : -1;
        eb[i] = p[i] - q2 - fb[i] * q4;
      }
    }
  }
  int da = 0, db = 0;
  NQ_UNROLL
  for (int i = 0; i < 8; ++i) {
    da += ea[i] * ea[i];
    db += eb[i] * eb[i];
  }
  NQ_UNROLL
  for (int i = 0; i < 8; ++i) {
    const int k = da <= db ? 2 * fa[i] : 2 * fb[i] + 1;  // half-units
    ph[i] = p[i] - k * q2;
  }
}

// One block of the encoder (§6 step 4): z = v·u for 8 coordinates -> packed code word and P̂
// (quarter-units), with the overload retries.
NQ_HD u64 quantize_block(const float z[8], int bits, int ph[8]) {
  float w[8];
  int y[8];
  NQ_UNROLL
  for (int i = 0; i < 8; ++i) w[i] = sub(z[i], 0.25f);
  qe8(w, y);
  u64 word = coords_word(y, bits);
  vdec_word(word, bits, ph);
  bool inside = true;
  NQ_UNROLL
  for (int i = 0; i < 8; ++i) inside = inside && ph[i] == 2 * y[i] + 1;
  for (int s = 1; s <= 16 && !inside; ++s) {
    const float beta = mul((float)(16 - s), 0.0625f);  // (16 - s)/16, exact
    NQ_UNROLL
    for (int i = 0; i < 8; ++i) w[i] = sub(mul(z[i], beta), 0.25f);
    qe8(w, y);
    word = coords_word(y, bits);
    vdec_word(word, bits, ph);
    inside = true;
    NQ_UNROLL
    for (int i = 0; i < 8; ++i) inside = inside && ph[i] == 2 * y[i] + 1;
  }
  return word;
}

// §8: a block's word is `bits` bytes, little-endian.
NQ_HD u64 load_word(const u8* p, int bits) {
  u64 w = 0;
  for (int i = 0; i < bits; ++i) w |= (u64)p[i] << (8 * i);
  return w;
}
NQ_HD void store_word(u8* p, u64 w, int bits) {
  for (int i = 0; i < bits; ++i) p[i] = (u8)(w >> (8 * i));
}

// ALPHA[b][t] (codec.md §6): float literals parse to the same binary32 values as the table.
NQ_HD float alpha(int bits, int t) {
  switch (bits * 3 + t) {
    case 3: return 0.655f;
    case 4: return 0.5895f;
    case 5: return 0.7205f;
    case 6: return 1.01f;
    case 7: return 0.909f;
    case 8: return 1.111f;
    case 9: return 1.765f;
    case 10: return 1.5885f;
    case 11: return 1.9415f;
    case 12: return 3.33f;
    case 13: return 2.997f;
    case 14: return 3.663f;
    case 15: return 6.03f;
    case 16: return 5.427f;
    case 17: return 6.633f;
    case 18: return 11.6f;
    case 19: return 10.44f;
    case 20: return 12.76f;
    case 21: return 22.7f;
    case 22: return 20.43f;
    case 23: return 24.97f;
    case 24: return 42.7f;
    case 25: return 38.43f;
    default: return 46.97f;  // bits 8, t = 2
  }
}

}  // namespace nq
