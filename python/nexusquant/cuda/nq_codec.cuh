// nexusquant e8v1 codec: encode and decode of head-vectors by a group of lanes.
//
// The bodies are written against two small interfaces, so that the GPU and the host emulation
// run the same text:
//   Cta   block(axis), threads(), smem(), each_thread(n, f), sync(), each_group(G, f(g, gi))
//   Group size(), each(n, f(i)) [lane-strided loop + barrier], sum(n, f(i)) [FOLD],
//         any(n, f(i)), lanes(f(lane)), reduce<N>(f(lane, part), out), PerLane<S>,
//         pair_lanes(PerLane<F8>, m, f(lane, own, other of lane ^ m))
// On the device (nq_device.cuh) a Group is G lanes of one warp; on the host (tests/cuda_host)
// the lanes are run one after the other and the butterfly is done on an array.
#pragma once

#include "nq_common.cuh"

namespace nq {

// One FWHT_P over w[0..P) in the spec's stage order (h ascending). `pre(j, x)` is applied to
// every input of the first stage, `post(j, x)` to every output of the last one: each is a
// separate IEEE operation, so folding them into the stage changes no bit.
template <class Grp, class Pre, class Post>
NQ_HD void fwht(Grp& g, float* w, int P, Pre pre, Post post) {
  for (int h = 1; h < P; h <<= 1) {
    const bool first = h == 1, last = 2 * h == P;
    g.each(P / 2, [&](int p) {
      const int j = ((p & ~(h - 1)) << 1) | (p & (h - 1));
      float a = w[j], b = w[j + h];
      if (first) {
        a = pre(j, a);
        b = pre(j + h, b);
      }
      float s = add(a, b), t = sub(a, b);
      if (last) {
        s = post(j, s);
        t = post(j + h, t);
      }
      w[j] = s;
      w[j + h] = t;
    });
  }
}

// R(v) for v already multiplied by sign1 (the caller merges it into its load): §2 forward.
template <class Grp>
NQ_HD void rotate_signed(Grp& g, float* v, int d, const u64* signs) {
  const int P = stage_size(d);
  const float c = stage_norm(P);
  auto same = [](int, float x) { return x; };
  auto scale = [c](int, float x) { return mul(x, c); };
  fwht(g, v, P, same, scale);
  if (P < d) {
    const int base = d - P;  // sign2 of coordinate i = base + j is sign d + i
    auto sign2 = [=](int j, float x) { return neg_if(sign_bit(signs, d + base + j), x); };
    fwht(g, v + base, P, sign2, scale);
  }
}

// R⁻¹(v) up to the final sign1, which the caller merges into its store: §2 inverse.
template <class Grp>
NQ_HD void inverse_rotate_unsigned(Grp& g, float* v, int d, const u64* signs) {
  const int P = stage_size(d);
  const float c = stage_norm(P);
  auto same = [](int, float x) { return x; };
  auto scale = [c](int, float x) { return mul(x, c); };
  if (P < d) {
    const int base = d - P;
    auto scale_sign2 = [=](int j, float x) {
      return neg_if(sign_bit(signs, d + base + j), mul(x, c));
    };
    fwht(g, v + base, P, same, scale_sign2);
  }
  fwht(g, v, P, same, scale);
}

// Whether a head-vector of d coordinates is rotated one block per lane, in registers: d a power
// of two with d/8 <= 32, so that group_size(d) = d/8 and R has no tail stage.
NQ_HD bool lane_per_block(int d) { return d >= 8 && (d & (d - 1)) == 0 && d <= 256; }

// One FWHT_d (d = 8·lanes, a power of two) with the last stage's outputs times c, on lane j's
// block j (coordinates 8j..8j+7) in registers: the same operations as fwht() with an identity
// `pre` and a `post` of mul(x, c), stages h ascending. Stages h = 1, 2, 4 pair coordinates of
// one lane; stages h = 8·m pair lane j with lane j ^ m: the lower lane of a pair keeps a + b,
// the upper a − b, with a the lower lane's value (IEEE addition commutes, so a + b is the same
// bits in either lane). This is R for P = d after sign1, and R⁻¹ before it (§2).
template <class Grp, class Lanes>
NQ_HD void fwht_lanes(Grp& g, Lanes& st, int lanes, float c) {
  g.lanes([&](int j) {
    float* v = st(j).v;
    NQ_UNROLL
    for (int h = 1; h < 8; h <<= 1) {
      const bool last = lanes == 1 && h == 4;
      NQ_UNROLL
      for (int i = 0; i < 8; ++i) {
        if (i & h) continue;
        const float a = v[i], b = v[i + h];
        v[i] = last ? mul(add(a, b), c) : add(a, b);
        v[i + h] = last ? mul(sub(a, b), c) : sub(a, b);
      }
    }
  });
  for (int m = 1; m < lanes; m <<= 1) {
    const bool last = 2 * m == lanes;
    g.pair_lanes(st, m, [&](int j, F8& own, const F8& other) {
      const bool upper = (j & m) != 0;
      NQ_UNROLL
      for (int i = 0; i < 8; ++i) {
        const float r = upper ? sub(other.v[i], own.v[i]) : add(own.v[i], other.v[i]);
        own.v[i] = last ? mul(r, c) : r;
      }
    });
  }
}

// Sign bits 8j .. 8j+7 of the rotation's sign1 (bit i of the result: coordinate 8j + i).
NQ_HD u32 block_signs(const u64* signs, int j) {
  return (u32)(signs[j >> 3] >> (8 * (j & 7))) & 0xFFu;
}

// Per-group shared memory of the encoder: v[d], ŷ[d] (binary32) and the 3 candidates' block
// words; the CTA starts with the rotation's sign words. Must match gpu/kernels.py.
NQ_HD int encode_group_floats(int d) { return 2 * d + 2 * 3 * (d / 8); }  // u64 = 2 floats

// §6 for one head-vector x[0..d) (storage type of T) -> d·b/8 code bytes and the fp16 scale,
// trying the first `candidates` (1..3) clipping factors of step 4.
template <class T, class Grp>
NQ_HD void encode_vector(Grp& g, const typename T::storage* x, int d, int bits, int candidates,
                         const u64* signs, float* smem, u8* codes, u16* scale) {
  const int nb = d / 8;
  float* v = smem;
  float* yh = smem + d;
  u64* words = reinterpret_cast<u64*>(smem + 2 * d);
  const int cb = nb * bits;

  // Step 1 (+ the first sign pass of R): widen, note non-finite values.
  const bool bad = g.any(d, [&](int i) {
    const float f = T::load(x[i]);
    v[i] = neg_if(sign_bit(signs, i), f);
    return !is_finite(f);
  });
  float ss = 0.0f, rms = 0.0f;
  if (!bad) {
    rotate_signed(g, v, d, signs);
    ss = g.sum(d, [&](int i) { return mul(v[i], v[i]); });
    rms = sqrt_rn(div(ss, (float)d));
  }
  // Non-finite input or squared norm: NaN scale. ss == 0: zero scale. rms == 0 (ss/d underflows
  // to zero) is a zero vector too, as in the Rust core: A / rms would be infinite.
  if (bad || !is_finite(ss) || rms == 0.0f) {
    const u16 s = (bad || !is_finite(ss)) ? kNanScale : (u16)0;
    g.each(cb, [&](int i) { codes[i] = 0; });
    g.each(1, [&](int) { *scale = s; });
    return;
  }

  // Step 4: the candidates (three unless fewer are asked for).
  int best_t = 0;
  float best_err = 0.0f;
  u16 best_mh = 0;
  for (int t = 0; t < candidates; ++t) {
    const float u = div(alpha(bits, t), rms);
    g.each(nb, [&](int j) {
      float z[8];
      int ph[8];
      NQ_UNROLL
      for (int i = 0; i < 8; ++i) z[i] = mul(v[8 * j + i], u);
      words[t * nb + j] = quantize_block(z, bits, ph);
      NQ_UNROLL
      for (int i = 0; i < 8; ++i) yh[8 * j + i] = mul((float)ph[i], 0.25f);
    });
    const float num = g.sum(d, [&](int i) { return mul(v[i], yh[i]); });
    const float den = g.sum(d, [&](int i) { return mul(yh[i], yh[i]); });
    const float m = den == 0.0f ? 0.0f : div(num, den);
    const u16 mh = scale_bits(m);
    const float mf = f16_to_f32(mh);
    const float err = g.sum(d, [&](int i) {
      const float r = sub(v[i], mul(mf, yh[i]));
      return mul(r, r);
    });
    if (t == 0 || err < best_err) {
      best_t = t;
      best_err = err;
      best_mh = mh;
    }
    g.sync();  // every lane has read ŷ before the next candidate overwrites it
  }

  // Step 5.
  g.each(nb, [&](int j) { store_word(codes + j * bits, words[best_t * nb + j], bits); });
  g.each(1, [&](int) { *scale = best_mh; });
}

// §7 for one head-vector. smem: v[d].
template <class T, class Grp>
NQ_HD void decode_vector(Grp& g, const u8* codes, u16 scale, int d, int bits,
                         const u64* signs, float* v, typename T::storage* out) {
  const float mf = f16_to_f32(scale);
  g.each(d / 8, [&](int j) {
    int ph[8];
    vdec_word(load_word(codes + j * bits, bits), bits, ph);
    NQ_UNROLL
    for (int i = 0; i < 8; ++i) v[8 * j + i] = mul(mul((float)ph[i], 0.25f), mf);
  });
  inverse_rotate_unsigned(g, v, d, signs);
  g.each(d, [&](int i) { out[i] = T::store(neg_if(sign_bit(signs, i), v[i])); });
}

// §7 for one head-vector with lane j holding block j in registers (lane_per_block(d)): the same
// operations as decode_vector, in the same order. Callers pass `bits` as a literal where they
// can: the body is inlined and the constant folds into VDEC's shifts and masks.
template <class T, class Grp>
NQ_HD void decode_vector_lanes(Grp& g, const u8* codes, u16 scale, int d, int bits,
                               const u64* signs, typename T::storage* out) {
  const float mf = f16_to_f32(scale);
  typename Grp::template PerLane<F8> st;
  g.lanes([&](int j) {
    int ph[8];
    vdec_word(load_word(codes + j * bits, bits), bits, ph);
    NQ_UNROLL
    for (int i = 0; i < 8; ++i) st(j).v[i] = mul(mul((float)ph[i], 0.25f), mf);
  });
  fwht_lanes(g, st, d / 8, stage_norm(d));
  g.lanes([&](int j) {
    const u32 sb = block_signs(signs, j);
    typename T::storage o[8];
    NQ_UNROLL
    for (int i = 0; i < 8; ++i) o[i] = T::store(neg_if((sb >> i) & 1u, st(j).v[i]));
    store8(out + 8 * j, o);
  });
}

// Head-vectors per CTA of `threads` threads.
NQ_HD int vectors_per_cta(int d, int threads) { return threads / group_size(d); }

// Kernel bodies: CTA blockIdx.x codes head-vectors [x·V, x·V + V) of n, V = vectors_per_cta.
// Shared memory: sign words (u64[sign_words(d)]), then one region per group.
template <class T, class Cta>
NQ_HD void encode_cta(Cta& cta, const typename T::storage* x, u8* codes, u16* scales, i64 n,
                      int d, int bits, u64 seed, int candidates) {
  const int G = group_size(d);
  const int nw = sign_words(d);
  u64* signs = reinterpret_cast<u64*>(cta.smem());
  float* regions = reinterpret_cast<float*>(signs + nw);
  cta.each_thread(nw, [&](int w) { signs[w] = splitmix64_output(seed, (u64)w); });
  cta.sync();
  const i64 first = cta.block(0) * (i64)(cta.threads() / G);
  const int cb = d * bits / 8;
  cta.each_group(G, [&](auto& g, int gi) {
    const i64 row = first + gi;
    if (row >= n) return;
    encode_vector<T>(g, x + row * d, d, bits, candidates, signs,
                     regions + gi * encode_group_floats(d),
                     codes + row * cb, scales + row);
  });
}

template <class T, class Cta>
NQ_HD void decode_cta(Cta& cta, const u8* codes, const u16* scales, typename T::storage* out,
                      i64 n, int d, int bits, u64 seed) {
  const int G = group_size(d);
  const int nw = sign_words(d);
  u64* signs = reinterpret_cast<u64*>(cta.smem());
  float* regions = reinterpret_cast<float*>(signs + nw);
  cta.each_thread(nw, [&](int w) { signs[w] = splitmix64_output(seed, (u64)w); });
  cta.sync();
  const i64 first = cta.block(0) * (i64)(cta.threads() / G);
  const int cb = d * bits / 8;
  cta.each_group(G, [&](auto& g, int gi) {
    const i64 row = first + gi;
    if (row >= n) return;
    const u8* c = codes + row * cb;
    typename T::storage* o = out + row * d;
    if (!lane_per_block(d)) {
      decode_vector<T>(g, c, scales[row], d, bits, signs, regions + gi * d, o);
    } else if (bits == 2) {
      decode_vector_lanes<T>(g, c, scales[row], d, 2, signs, o);
    } else if (bits == 3) {
      decode_vector_lanes<T>(g, c, scales[row], d, 3, signs, o);
    } else if (bits == 4) {
      decode_vector_lanes<T>(g, c, scales[row], d, 4, signs, o);
    } else {
      decode_vector_lanes<T>(g, c, scales[row], d, bits, signs, o);
    }
  });
}

}  // namespace nq
