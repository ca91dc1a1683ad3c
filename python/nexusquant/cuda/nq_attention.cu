// nexusquant fused decode attention kernels (nq_attention.cuh, docs/gpu.md).
//
// nq_attn_partial_<dtype>_b<BPL>: grid (splits, Hkv · head chunks, B), 128 threads;
//   BPL = blocks of 8 per lane: 1 for head_dim <= 256, 2 for <= 512, 4 for <= 1024.
// nq_attn_combine_<dtype>: grid (B · Hq), 32 threads.
// Argument lists: gpu/kernels.py KERNELS["attn_partial"] / KERNELS["attn_combine"].
#include "nq_attention.cuh"
#include "nq_device.cuh"

#define NQ_ATTN_PARTIAL_ENTRY(SUFFIX, TYPE, BPL)                                                \
  extern "C" __global__ void nq_attn_partial_##SUFFIX##_b##BPL(                                 \
      const TYPE::storage* q, const nq::u8* k_codes, const nq::u16* k_scales,                   \
      const nq::u8* v_codes, const nq::u16* v_scales, const nq::i32* lengths,                   \
      const nq::u8* coded_mask, const TYPE::storage* raw_k, const TYPE::storage* raw_v,         \
      const nq::u8* raw_mask, const float* k_bias, const float* v_centre, float* part_o,       \
      float* part_ml, int hq, int hkv, int d,                                                   \
      nq::i64 tc, nq::i64 tr, int sink_slots, int k_bits, int v_bits, int splits,               \
      int coded_splits, int coded_chunk, int raw_chunk, nq::u64 k_seed, float qscale) {         \
    const nq::AttnShape sh{hq,        hkv,    d,      tc,           tr,          sink_slots,    \
                           k_bits,    v_bits, splits, coded_splits, coded_chunk, raw_chunk};    \
    nq::DeviceCta cta;                                                                          \
    nq::attn_partial_cta<TYPE, BPL>(cta, q, k_codes, k_scales, v_codes, v_scales, lengths,      \
                                    coded_mask, raw_k, raw_v, raw_mask, k_bias, v_centre,       \
                                    part_o,                                                     \
                                    part_ml, sh,                                                \
                                    k_seed, qscale);                                            \
  }

#define NQ_ATTN_ENTRIES(SUFFIX, TYPE)                                                           \
  NQ_ATTN_PARTIAL_ENTRY(SUFFIX, TYPE, 1)                                                        \
  NQ_ATTN_PARTIAL_ENTRY(SUFFIX, TYPE, 2)                                                        \
  NQ_ATTN_PARTIAL_ENTRY(SUFFIX, TYPE, 4)                                                        \
  extern "C" __global__ void nq_attn_combine_##SUFFIX(                                          \
      const float* part_o, const float* part_ml, TYPE::storage* out, int d, int splits,         \
      int coded_splits, nq::u64 v_seed) {                                                       \
    nq::DeviceCta cta;                                                                          \
    nq::attn_combine_cta<TYPE>(cta, part_o, part_ml, out, d, splits, coded_splits, v_seed);     \
  }

NQ_ATTN_ENTRIES(f32, nq::F32)
NQ_ATTN_ENTRIES(f16, nq::F16)
NQ_ATTN_ENTRIES(bf16, nq::BF16)
