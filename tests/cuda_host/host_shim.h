// Host emulation of the Cta / Group interfaces of python/nexusquant/cuda/nq_codec.cuh.
//
// A HostGroup runs a group's G lanes one after the other, phase by phase: `each` is the
// lane-strided loop of every lane in turn (the device's loop + __syncwarp), `sum` computes each
// lane's lane_fold and then the XOR butterfly on an array of G values exactly as
// __shfl_xor_sync pairs the lanes, and PerLane keeps one state per lane. A HostCta runs its
// groups one after the other between barriers; the driver (nq_host.cpp) runs the grid.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "nq_common.cuh"

namespace nq {

struct HostGroup {
  int size_;

  explicit HostGroup(int G) : size_(G) {}
  int size() const { return size_; }
  void sync() const {}

  template <class F>
  void each(int n, F f) const {
    for (int lane = 0; lane < size_; ++lane)
      for (int i = lane; i < n; i += size_) f(i);
  }

  // The butterfly: lane l adds lane l^off's value, for off = G/2, …, 1; returns lane 0's value
  // after checking that every lane holds the same bits.
  float butterfly(float* x) const {
    for (int off = size_ >> 1; off >= 1; off >>= 1) {
      float next[32];
      for (int l = 0; l < size_; ++l) next[l] = add(x[l], x[l ^ off]);
      for (int l = 0; l < size_; ++l) x[l] = next[l];
    }
    for (int l = 1; l < size_; ++l) {
      if (f32_bits(x[l]) != f32_bits(x[0]) && x[0] == x[0]) {
        std::fprintf(stderr, "butterfly: lanes disagree\n");
        std::abort();
      }
    }
    return x[0];
  }

  template <class F>
  float sum(int n, F f) const {
    float x[32];
    for (int lane = 0; lane < size_; ++lane) x[lane] = lane_fold(lane, size_, n, f);
    return butterfly(x);
  }

  template <class F>
  bool any(int n, F f) const {
    bool hit = false;
    for (int lane = 0; lane < size_; ++lane)
      for (int i = lane; i < n; i += size_) hit = f(i) || hit;
    return hit;
  }

  template <class F>
  void lanes(F f) const {
    for (int lane = 0; lane < size_; ++lane) f(lane);
  }

  template <int N, class F>
  void reduce(F f, float (&out)[N]) const {
    float parts[32][N];
    for (int lane = 0; lane < size_; ++lane) f(lane, parts[lane]);
    for (int k = 0; k < N; ++k) {
      float x[32];
      for (int lane = 0; lane < size_; ++lane) x[lane] = parts[lane][k];
      out[k] = butterfly(x);
    }
  }

  // f(lane, own, other), other = lane ^ m's state before the phase (the device's shuffles).
  template <class Lanes, class F>
  void pair_lanes(Lanes& st, int m, F f) const {
    F8 before[32];
    for (int lane = 0; lane < size_; ++lane) before[lane] = st(lane);
    for (int lane = 0; lane < size_; ++lane) f(lane, st(lane), before[lane ^ m]);
  }

  template <class S>
  struct PerLane {
    S value[32];
    S& operator()(int lane) { return value[lane]; }
  };
};

// One CTA: its block index, thread count and a dynamic shared-memory buffer of exactly the
// size the launch planner asked for (filled with 0xFF bytes, NaN as floats, so that a read of
// memory no phase wrote shows up in the results; AddressSanitizer catches overruns).
struct HostCta {
  i64 bx, by, bz;
  int nthreads;
  std::vector<unsigned char> shared;

  HostCta(i64 x, i64 y, i64 z, int threads, size_t smem_bytes)
      : bx(x), by(y), bz(z), nthreads(threads), shared(smem_bytes, 0xFF) {}

  i64 block(int axis) const { return axis == 0 ? bx : axis == 1 ? by : bz; }
  int threads() const { return nthreads; }
  unsigned char* smem() { return shared.data(); }
  template <class F>
  void each_thread(int n, F f) const {
    for (int i = 0; i < n; ++i) f(i);
  }
  void sync() const {}
  template <class F>
  void each_group(int G, F f) const {
    for (int gi = 0; gi < nthreads / G; ++gi) {
      HostGroup g(G);
      f(g, gi);
    }
  }
};

}  // namespace nq
