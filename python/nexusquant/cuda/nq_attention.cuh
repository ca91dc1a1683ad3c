// nexusquant: fused decode attention of one query token over packed K/V (docs/gpu.md).
//
// Unlike the codec, this math is not bit-specified: dot products and accumulator updates use
// fused multiply-adds (fma_rn), and the tests hold it to the output dtype's error.
//
// Math. Coded keys decode to k = R_k⁻¹(ŷ·m) with ŷ = P̂/4, so q·k = (R_k q)·(ŷ·m) (R is
// orthogonal): the query is rotated once and scored against the codebook points directly. A
// centred key (sign bit of its scale set, when k_bias is given) is k = R_k⁻¹(ŷ·|m|) + c with
// its row's centre c: its score adds k_bias[b, h] = scaling·log2(e)·(q·c), computed by the caller.
// A centred value adds its row's centre in V's rotated domain, v_centre[b, kvh] = R_v(c_v), to
// the coded accumulator (which the combine rotates back).
// Coded values are accumulated in V's rotated domain, Σ p·(ŷ·m), and rotated back once per
// query head after the split-K combine; raw tokens (sinks and the fp window, model dtype) are
// scored with the plain query and accumulated in a second, plain accumulator. Softmax runs in
// base 2: the query carries scaling·log2(e) (and the 1/4 of ŷ for coded keys).
//
// Kernels. attn_partial: CTA (split, kv head × head chunk, batch); one split is either a range
// of coded tokens or a range of raw tokens. Groups of G lanes each take every (threads/G)-th
// token of the range (one lane per 8-element block, BPL blocks per lane) and keep an online
// softmax for the chunk's query heads (GQA: up to 8/BPL heads share each decoded token); the
// CTA merges its groups and writes (acc[d], m, l) per query head and split. attn_combine: one
// CTA of 32 threads per (batch, query head) merges the splits, inverse-rotates the coded part,
// adds the raw part and divides by the softmax sum.
#pragma once

#include "nq_codec.cuh"

namespace nq {

// Query heads handled by one CTA, for BPL blocks of 8 per lane.
NQ_HD constexpr int attn_max_heads(int bpl) { return 8 / bpl; }

struct AttnShape {
  int hq, hkv, d;
  i64 tc, tr;      // token capacity of the coded and of the raw tensors
  int sink_slots;  // raw slots [0, sink_slots) hold sinks, the rest the window
  int k_bits, v_bits;
  int splits, coded_splits;
  int coded_chunk, raw_chunk;
};

// The token loop of one group: online softmax over tokens begin + gi, begin + gi + stride, …
// that are valid (t < lo_end or hi_begin <= t < hi_end) and kept by `keep` (when given).
// Writes the group's (m, l) and accumulators to st_ml / st_acc.
template <class T, int BPL, class Grp>
NQ_HD void attn_group(Grp& g, int gi, int stride, const AttnShape& sh, bool coded, i64 begin,
                      i64 end, i64 lo_end, i64 hi_begin, i64 hi_end, const u8* keep,
                      const float* qs, int nh, const float* kb, const float* vcr,
                      const u8* kc, const u16* ks, const u8* vc, const u16* vs,
                      const typename T::storage* rk, const typename T::storage* rv,
                      float* st_ml, float* st_acc) {
  constexpr int MAXH = attn_max_heads(BPL);
  const int d = sh.d, nb = d / 8, G = g.size();
  const int kcb = d * sh.k_bits / 8, vcb = d * sh.v_bits / 8;
  struct Acc {
    float a[MAXH][8 * BPL];
  };
  typename Grp::template PerLane<Acc> acc;
  float m[MAXH], l[MAXH];
  NQ_UNROLL
  for (int h = 0; h < MAXH; ++h) {
    m[h] = neg_inf();
    l[h] = 0.0f;
  }
  g.lanes([&](int lane) {
    Acc& A = acc(lane);
    NQ_UNROLL
    for (int h = 0; h < MAXH; ++h) {
      NQ_UNROLL
      for (int i = 0; i < 8 * BPL; ++i) A.a[h][i] = 0.0f;
    }
  });

  for (i64 t = begin + gi; t < end; t += stride) {
    if (!(t < lo_end || (t >= hi_begin && t < hi_end)) || (keep != nullptr && keep[t] == 0)) {
      continue;
    }
    float part[MAXH];
    g.template reduce<MAXH>(
        [&](int lane, float (&pt)[MAXH]) {
          NQ_UNROLL
          for (int h = 0; h < MAXH; ++h) pt[h] = 0.0f;
          NQ_UNROLL
          for (int r = 0; r < BPL; ++r) {
            const int j = lane + G * r;
            if (j >= nb) continue;
            float kf[8];
            if (coded) {
              int ph[8];
              vdec_word(load_word(kc + t * kcb + j * sh.k_bits, sh.k_bits), sh.k_bits, ph);
              NQ_UNROLL
              for (int i = 0; i < 8; ++i) kf[i] = (float)ph[i];
            } else {
              NQ_UNROLL
              for (int i = 0; i < 8; ++i) kf[i] = T::load(rk[t * d + 8 * j + i]);
            }
            NQ_UNROLL
            for (int h = 0; h < MAXH; ++h) {
              if (h >= nh) continue;
              NQ_UNROLL
              for (int i = 0; i < 8; ++i) pt[h] = fma_rn(qs[h * d + 8 * j + i], kf[i], pt[h]);
            }
          }
        },
        part);
    // With centres (kb), a key scale's sign bit flags a centred key: |scale|, plus kb[h].
    const u16 kbits = coded ? ks[t] : (u16)0;
    const bool centred = kb != nullptr && (kbits & 0x8000u) != 0;
    const float kscale = coded ? f16_to_f32(kb != nullptr ? (u16)(kbits & 0x7FFFu) : kbits) : 1.0f;
    // Likewise for values with vcr, the row's value centre in V's rotated domain.
    const u16 vbits = coded ? vs[t] : (u16)0;
    const bool vcentred = vcr != nullptr && (vbits & 0x8000u) != 0;
    const float vscale = coded ? f16_to_f32(vcr != nullptr ? (u16)(vbits & 0x7FFFu) : vbits) : 1.0f;
    float corr[MAXH] = {}, p[MAXH] = {};
    NQ_UNROLL
    for (int h = 0; h < MAXH; ++h) {
      if (h >= nh) continue;
      const float s = centred ? add(mul(part[h], kscale), kb[h]) : mul(part[h], kscale);
      const float mn = max_f(m[h], s);
      corr[h] = exp2_f(sub(m[h], mn));
      p[h] = exp2_f(sub(s, mn));
      l[h] = fma_rn(l[h], corr[h], p[h]);
      m[h] = mn;
    }
    g.lanes([&](int lane) {
      Acc& A = acc(lane);
      NQ_UNROLL
      for (int r = 0; r < BPL; ++r) {
        const int j = lane + G * r;
        if (j >= nb) continue;
        float vf[8];
        if (coded) {
          int ph[8];
          vdec_word(load_word(vc + t * vcb + j * sh.v_bits, sh.v_bits), sh.v_bits, ph);
          NQ_UNROLL
          for (int i = 0; i < 8; ++i) vf[i] = mul(mul((float)ph[i], 0.25f), vscale);
          if (vcentred) {
            NQ_UNROLL
            for (int i = 0; i < 8; ++i) vf[i] = add(vf[i], vcr[8 * j + i]);
          }
        } else {
          NQ_UNROLL
          for (int i = 0; i < 8; ++i) vf[i] = T::load(rv[t * d + 8 * j + i]);
        }
        NQ_UNROLL
        for (int h = 0; h < MAXH; ++h) {
          if (h >= nh) continue;
          NQ_UNROLL
          for (int i = 0; i < 8; ++i)
            A.a[h][8 * r + i] = fma_rn(p[h], vf[i], mul(A.a[h][8 * r + i], corr[h]));
        }
      }
    });
  }

  g.lanes([&](int lane) {
    Acc& A = acc(lane);
    NQ_UNROLL
    for (int r = 0; r < BPL; ++r) {
      const int j = lane + G * r;
      if (j >= nb) continue;
      NQ_UNROLL
      for (int h = 0; h < MAXH; ++h) {
        if (h >= nh) continue;
        NQ_UNROLL
        for (int i = 0; i < 8; ++i) st_acc[(gi * MAXH + h) * d + 8 * j + i] = A.a[h][8 * r + i];
      }
    }
  });
  g.each(1, [&](int) {
    NQ_UNROLL
    for (int h = 0; h < MAXH; ++h) {
      st_ml[(gi * MAXH + h) * 2] = m[h];
      st_ml[(gi * MAXH + h) * 2 + 1] = l[h];
    }
  });
}

// Shared memory of attn_partial, in floats: signs, query heads, group states. Must match
// gpu/kernels.py.
NQ_HD int attn_partial_floats(int d, int bpl, int threads) {
  const int maxh = attn_max_heads(bpl), slots = threads / group_size(d);
  return 2 * sign_words(d) + maxh * d + slots * maxh * (2 + d);
}

template <class T, int BPL, class Cta>
NQ_HD void attn_partial_cta(Cta& cta, const typename T::storage* q, const u8* k_codes,
                            const u16* k_scales, const u8* v_codes, const u16* v_scales,
                            const i32* lengths, const u8* coded_mask,
                            const typename T::storage* raw_k, const typename T::storage* raw_v,
                            const u8* raw_mask, const float* k_bias, const float* v_centre,
                            float* part_o,
                            float* part_ml, const AttnShape& sh, u64 k_seed, float qscale) {
  constexpr int MAXH = attn_max_heads(BPL);
  const int d = sh.d, G = group_size(d), slots = cta.threads() / G;
  const int split = (int)cta.block(0);
  const i64 b = cta.block(2);
  const int group = sh.hq / sh.hkv, chunks = (group + MAXH - 1) / MAXH;
  const int kvh = (int)(cta.block(1) / chunks), hc = (int)(cta.block(1) % chunks);
  const int h0 = kvh * group + hc * MAXH;
  const int nh = group - hc * MAXH < MAXH ? group - hc * MAXH : MAXH;
  const bool coded = split < sh.coded_splits;

  const int nw = sign_words(d);
  u64* signs = reinterpret_cast<u64*>(cta.smem());
  float* qs = reinterpret_cast<float*>(signs + nw);
  float* st_ml = qs + MAXH * d;
  float* st_acc = st_ml + slots * MAXH * 2;

  // The chunk's query heads: R_k q for coded splits, q for raw ones; times the score factor.
  const typename T::storage* qrow = q + (b * sh.hq + h0) * d;
  cta.each_thread(nw, [&](int w) { signs[w] = splitmix64_output(k_seed, (u64)w); });
  cta.sync();
  cta.each_thread(nh * d, [&](int e) {
    const float x = T::load(qrow[e]);
    qs[e] = coded ? neg_if(sign_bit(signs, e % d), x) : x;
  });
  cta.sync();
  if (coded) {
    cta.each_group(G, [&](auto& g, int gi) {
      for (int h = gi; h < nh; h += slots) rotate_signed(g, qs + h * d, d, signs);
    });
    cta.sync();
  }
  const float factor = coded ? mul(qscale, 0.25f) : qscale;
  cta.each_thread(nh * d, [&](int e) { qs[e] = mul(qs[e], factor); });
  cta.sync();

  // This split's token range, the valid tokens of row b (lengths[b] = sink, coded and window
  // tokens: coded [0, c), raw [0, s) and [sink_slots, sink_slots + w); all without lengths), and
  // the (batch, kv head) row of every input.
  const i64 kv_row = b * sh.hkv + kvh;
  i64 begin, end, lo_end, hi_begin = 0, hi_end = 0;
  const u8* keep;
  if (coded) {
    begin = (i64)split * sh.coded_chunk;
    end = begin + sh.coded_chunk < sh.tc ? begin + sh.coded_chunk : sh.tc;
    lo_end = lengths != nullptr ? (i64)lengths[3 * b + 1] : sh.tc;
    keep = coded_mask != nullptr ? coded_mask + b * sh.tc : nullptr;
  } else {
    begin = (i64)(split - sh.coded_splits) * sh.raw_chunk;
    end = begin + sh.raw_chunk < sh.tr ? begin + sh.raw_chunk : sh.tr;
    lo_end = sh.tr;
    if (lengths != nullptr) {
      lo_end = (i64)lengths[3 * b];
      hi_begin = sh.sink_slots;
      hi_end = sh.sink_slots + (i64)lengths[3 * b + 2];
    }
    keep = raw_mask != nullptr ? raw_mask + b * sh.tr : nullptr;
  }
  const u8* kc = k_codes + kv_row * sh.tc * (d * sh.k_bits / 8);
  const u8* vc = v_codes + kv_row * sh.tc * (d * sh.v_bits / 8);
  const u16* ks = k_scales + kv_row * sh.tc;
  const u16* vs = v_scales + kv_row * sh.tc;
  // Centred keys' score bias of the chunk's query heads (coded splits only).
  const float* kb = coded && k_bias != nullptr ? k_bias + b * sh.hq + h0 : nullptr;
  const float* vcr = coded && v_centre != nullptr ? v_centre + kv_row * d : nullptr;
  const typename T::storage* rk = raw_k + kv_row * sh.tr * d;
  const typename T::storage* rv = raw_v + kv_row * sh.tr * d;

  cta.each_group(G, [&](auto& g, int gi) {
    attn_group<T, BPL>(g, gi, slots, sh, coded, begin, end, lo_end, hi_begin, hi_end, keep, qs,
                       nh, kb, vcr, kc, ks, vc, vs, rk, rv, st_ml, st_acc);
  });
  cta.sync();

  // Merge the groups: per head, max m, rescaled sums. Empty groups (l == 0) weigh nothing; a
  // NaN anywhere stays NaN.
  cta.each_thread(nh * d, [&](int e) {
    const int h = e / d, i = e % d;
    float mx = neg_inf();
    for (int s = 0; s < slots; ++s) mx = max_f(mx, st_ml[(s * MAXH + h) * 2]);
    float o = 0.0f, lsum = 0.0f;
    for (int s = 0; s < slots; ++s) {
      const float ls = st_ml[(s * MAXH + h) * 2 + 1];
      if (ls == 0.0f) continue;
      const float w = exp2_f(sub(st_ml[(s * MAXH + h) * 2], mx));
      o = add(o, mul(st_acc[(s * MAXH + h) * d + i], w));
      lsum = add(lsum, mul(ls, w));
    }
    const i64 row = (b * sh.hq + h0 + h) * sh.splits + split;
    part_o[row * d + i] = o;
    if (i == 0) {
      part_ml[row * 2] = mx;
      part_ml[row * 2 + 1] = lsum;
    }
  });
}

// Shared memory of attn_combine, in floats: signs, split weights, the coded accumulator.
NQ_HD int attn_combine_floats(int d, int splits) { return 2 * sign_words(d) + splits + d; }

// One (batch, query head) per CTA (blockIdx.x = b·Hq + h), one group of `threads` lanes.
template <class T, class Cta>
NQ_HD void attn_combine_cta(Cta& cta, const float* part_o, const float* part_ml,
                            typename T::storage* out, int d, int splits, int coded_splits,
                            u64 v_seed) {
  const i64 row = cta.block(0);
  const int nw = sign_words(d);
  u64* signs = reinterpret_cast<u64*>(cta.smem());
  float* w = reinterpret_cast<float*>(signs + nw);
  float* vc = w + splits;
  const float* ml = part_ml + row * splits * 2;
  const float* po = part_o + row * splits * d;

  cta.each_thread(nw, [&](int k) { signs[k] = splitmix64_output(v_seed, (u64)k); });
  float mx = neg_inf();
  for (int s = 0; s < splits; ++s) mx = max_f(mx, ml[2 * s]);
  cta.each_thread(splits, [&](int s) {
    w[s] = ml[2 * s + 1] == 0.0f ? 0.0f : exp2_f(sub(ml[2 * s], mx));
  });
  cta.sync();
  float lsum = 0.0f;
  for (int s = 0; s < splits; ++s) lsum = add(lsum, mul(ml[2 * s + 1], w[s]));

  cta.each_group(cta.threads(), [&](auto& g, int) {
    g.each(d, [&](int i) {
      float a = 0.0f;
      for (int s = 0; s < coded_splits; ++s) a = add(a, mul(po[s * d + i], w[s]));
      vc[i] = a;
    });
    inverse_rotate_unsigned(g, vc, d, signs);
    g.each(d, [&](int i) {
      float a = neg_if(sign_bit(signs, i), vc[i]);
      for (int s = coded_splits; s < splits; ++s) a = add(a, mul(po[s * d + i], w[s]));
      out[row * d + i] = T::store(lsum == 0.0f ? 0.0f : div(a, lsum));
    });
  });
}

}  // namespace nq
