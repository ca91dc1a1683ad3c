// nexusquant: the device side of the Cta / Group interfaces (see nq_codec.cuh).
#pragma once

#include "nq_common.cuh"

namespace nq {

// G consecutive lanes of one warp (G a power of two <= 32) working on one item. Groups of one
// warp may diverge from each other; every barrier and shuffle uses the group's own mask.
struct DeviceGroup {
  int lane_;
  int size_;
  unsigned mask_;

  __device__ explicit DeviceGroup(int G) : lane_((int)threadIdx.x & (G - 1)), size_(G) {
    const int base = (int)(threadIdx.x & 31u) & ~(G - 1);
    mask_ = G == 32 ? 0xFFFFFFFFu : ((1u << G) - 1u) << base;
  }

  __device__ int size() const { return size_; }
  __device__ void sync() const { __syncwarp(mask_); }

  // f(i) for i in [0, n), lane-strided; then a barrier of the group.
  template <class F>
  __device__ void each(int n, F f) const {
    for (int i = lane_; i < n; i += size_) f(i);
    __syncwarp(mask_);
  }

  // FOLD of f(i), i in [0, n) (codec.md §3), the same value in every lane.
  template <class F>
  __device__ float sum(int n, F f) const {
    float x = lane_fold(lane_, size_, n, f);
    for (int off = size_ >> 1; off >= 1; off >>= 1) x = add(x, __shfl_xor_sync(mask_, x, off));
    return x;
  }

  // Whether f(i) is true for some i in [0, n) (f may write shared memory: it is a phase).
  template <class F>
  __device__ bool any(int n, F f) const {
    bool hit = false;
    for (int i = lane_; i < n; i += size_) hit = f(i) || hit;
    __syncwarp(mask_);
    return __any_sync(mask_, hit) != 0;
  }

  // f(lane) once in each lane, no barrier.
  template <class F>
  __device__ void lanes(F f) const {
    f(lane_);
  }

  // out[k] = sum over the group's lanes of part[k], part filled by f(lane, part) (butterfly
  // order; the same value in every lane).
  template <int N, class F>
  __device__ void reduce(F f, float (&out)[N]) const {
    f(lane_, out);
    for (int off = size_ >> 1; off >= 1; off >>= 1) {
      NQ_UNROLL
      for (int k = 0; k < N; ++k) out[k] = add(out[k], __shfl_xor_sync(mask_, out[k], off));
    }
  }

  // f(lane, own, other) with `other` the state of lane ^ m (m < G) as it was before the phase:
  // 8 XOR shuffles, no barrier (the state lives in registers).
  template <class Lanes, class F>
  __device__ void pair_lanes(Lanes& st, int m, F f) const {
    F8& own = st(lane_);
    F8 other;
    NQ_UNROLL
    for (int i = 0; i < 8; ++i) other.v[i] = __shfl_xor_sync(mask_, own.v[i], m);
    f(lane_, own, other);
  }

  // State private to each lane: one S per thread.
  template <class S>
  struct PerLane {
    S value;
    __device__ S& operator()(int) { return value; }
  };
};

struct DeviceCta {
  __device__ i64 block(int axis) const {
    return axis == 0 ? (i64)blockIdx.x : axis == 1 ? (i64)blockIdx.y : (i64)blockIdx.z;
  }
  __device__ int threads() const { return (int)blockDim.x; }
  __device__ unsigned char* smem() const {
    extern __shared__ __align__(16) unsigned char nq_dynamic_smem[];
    return nq_dynamic_smem;
  }
  template <class F>
  __device__ void each_thread(int n, F f) const {
    for (int i = (int)threadIdx.x; i < n; i += (int)blockDim.x) f(i);
  }
  __device__ void sync() const { __syncthreads(); }
  // f(group, group index) in the group of G lanes this thread belongs to.
  template <class F>
  __device__ void each_group(int G, F f) const {
    DeviceGroup g(G);
    f(g, (int)threadIdx.x / G);
  }
};

}  // namespace nq
