// nexusquant e8v1 codec kernels: encode and decode of (n, d) head-vectors (docs/codec.md).
//
// Launch (gpu/kernels.py): block = 128 threads, G = group_size(d) lanes per head-vector,
// grid.x = ceil(n / (128 / G)), dynamic shared memory = 8·sign_words(d) + per-group regions.
// Argument lists: gpu/kernels.py KERNELS["encode"] / KERNELS["decode"].
#include "nq_codec.cuh"
#include "nq_device.cuh"

#define NQ_CODEC_ENTRY(SUFFIX, TYPE)                                                            \
  extern "C" __global__ void nq_encode_##SUFFIX(                                                \
      const TYPE::storage* x, nq::u8* codes, nq::u16* scales, nq::i64 n, int d, int bits,       \
      nq::u64 seed, int candidates) {                                                           \
    nq::DeviceCta cta;                                                                          \
    nq::encode_cta<TYPE>(cta, x, codes, scales, n, d, bits, seed, candidates);                  \
  }                                                                                             \
  extern "C" __global__ void nq_decode_##SUFFIX(                                                \
      const nq::u8* codes, const nq::u16* scales, TYPE::storage* out, nq::i64 n, int d,         \
      int bits, nq::u64 seed) {                                                                 \
    nq::DeviceCta cta;                                                                          \
    nq::decode_cta<TYPE>(cta, codes, scales, out, n, d, bits, seed);                            \
  }

NQ_CODEC_ENTRY(f32, nq::F32)
NQ_CODEC_ENTRY(f16, nq::F16)
NQ_CODEC_ENTRY(bf16, nq::BF16)
