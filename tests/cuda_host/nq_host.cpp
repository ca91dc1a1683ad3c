// Host emulation driver: runs the kernels' CTA bodies (python/nexusquant/cuda/*.cuh) on the CPU,
// CTA after CTA over the grid the Python launch planner chose, with the host Cta / Group of
// host_shim.h. Built by tests/cuda_host/harness.py with g++ -ffp-contract=off and
// AddressSanitizer / UndefinedBehaviorSanitizer.
//
// Usage: nq_host <op> key=value ...   Arrays are raw little-endian files named by path; every
// buffer is allocated at its exact size, so an out-of-bounds access is a sanitizer error.
//   encode  dtype n d bits seed candidates grid threads smem x codes(out) scales(out)
//   decode  dtype n d bits seed grid threads smem codes scales out(out)
//   attn_partial  dtype bpl grid_x grid_y grid_z threads smem q k_codes k_scales v_codes v_scales
//                 [lengths] [coded_mask] raw_k raw_v [raw_mask] [k_bias] [v_centre] hq hkv d tc tr sink_slots
//                 k_bits v_bits splits coded_splits coded_chunk raw_chunk k_seed qscale_bits
//                 part_o(out) part_ml(out)
//   attn_combine  dtype grid threads smem part_o part_ml d splits coded_splits v_seed out(out)
//   vdec     bits words(u64) out(out, i32 × 8 per word)
//   convert  f32(in) f16(out) bf16(out) f16_all(out: the 65536 fp16 patterns widened)
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "host_shim.h"
#include "nq_attention.cuh"
#include "nq_codec.cuh"

namespace {

using nq::i64;
using nq::u16;
using nq::u64;
using nq::u8;

[[noreturn]] void fail(const std::string& msg) {
  std::fprintf(stderr, "nq_host: %s\n", msg.c_str());
  std::exit(2);
}

struct Args {
  std::map<std::string, std::string> kv;
  bool has(const std::string& k) const { return kv.count(k) != 0; }
  const std::string& s(const std::string& k) const {
    auto it = kv.find(k);
    if (it == kv.end()) fail("missing argument " + k);
    return it->second;
  }
  i64 i(const std::string& k) const { return std::stoll(s(k)); }
  u64 u(const std::string& k) const { return std::stoull(s(k)); }
};

std::vector<unsigned char> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot read " + path);
  return std::vector<unsigned char>(std::istreambuf_iterator<char>(f), {});
}

template <class E>
std::vector<E> read_array(const Args& a, const std::string& key) {
  const auto bytes = read_bytes(a.s(key));
  if (bytes.size() % sizeof(E)) fail(key + ": size is not a multiple of the element size");
  std::vector<E> out(bytes.size() / sizeof(E));
  if (!bytes.empty()) std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

template <class E>
void write_array(const Args& a, const std::string& key, const std::vector<E>& v) {
  std::ofstream f(a.s(key), std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), (std::streamsize)(v.size() * sizeof(E)));
  if (!f) fail("cannot write " + a.s(key));
}

template <class E>
const E* data_or_null(const std::vector<E>& v) {
  return v.empty() ? nullptr : v.data();
}

template <class T>
void encode(const Args& a) {
  using S = typename T::storage;
  const i64 n = a.i("n");
  const int d = (int)a.i("d"), bits = (int)a.i("bits");
  const auto x = read_array<S>(a, "x");
  if ((i64)x.size() != n * d) fail("x has the wrong size");
  std::vector<u8> codes((size_t)(n * d * bits / 8));
  std::vector<u16> scales((size_t)n);
  for (i64 bx = 0; bx < a.i("grid"); ++bx) {
    nq::HostCta cta(bx, 0, 0, (int)a.i("threads"), (size_t)a.i("smem"));
    nq::encode_cta<T>(cta, x.data(), codes.data(), scales.data(), n, d, bits, a.u("seed"),
                      (int)a.i("candidates"));
  }
  write_array(a, "codes", codes);
  write_array(a, "scales", scales);
}

template <class T>
void decode(const Args& a) {
  using S = typename T::storage;
  const i64 n = a.i("n");
  const int d = (int)a.i("d"), bits = (int)a.i("bits");
  const auto codes = read_array<u8>(a, "codes");
  const auto scales = read_array<u16>(a, "scales");
  if ((i64)codes.size() != n * d * bits / 8 || (i64)scales.size() != n) fail("bad input sizes");
  std::vector<S> out((size_t)(n * d));
  for (i64 bx = 0; bx < a.i("grid"); ++bx) {
    nq::HostCta cta(bx, 0, 0, (int)a.i("threads"), (size_t)a.i("smem"));
    nq::decode_cta<T>(cta, codes.data(), scales.data(), out.data(), n, d, bits, a.u("seed"));
  }
  write_array(a, "out", out);
}

template <class E>
std::vector<E> optional_array(const Args& a, const std::string& key) {
  return a.has(key) ? read_array<E>(a, key) : std::vector<E>();
}

template <class T, int BPL>
void attn_partial(const Args& a) {
  using S = typename T::storage;
  const nq::AttnShape sh{(int)a.i("hq"),          (int)a.i("hkv"),         (int)a.i("d"),
                         a.i("tc"),               a.i("tr"),               (int)a.i("sink_slots"),
                         (int)a.i("k_bits"),      (int)a.i("v_bits"),      (int)a.i("splits"),
                         (int)a.i("coded_splits"), (int)a.i("coded_chunk"), (int)a.i("raw_chunk")};
  const auto q = read_array<S>(a, "q");
  const auto kc = read_array<u8>(a, "k_codes");
  const auto ks = read_array<u16>(a, "k_scales");
  const auto vc = read_array<u8>(a, "v_codes");
  const auto vs = read_array<u16>(a, "v_scales");
  const auto lengths = optional_array<int>(a, "lengths");
  const auto cm = optional_array<u8>(a, "coded_mask");
  const auto rk = read_array<S>(a, "raw_k");
  const auto rv = read_array<S>(a, "raw_v");
  const auto rm = optional_array<u8>(a, "raw_mask");
  const auto kb = optional_array<float>(a, "k_bias");
  const auto vcen = optional_array<float>(a, "v_centre");
  const i64 batch = a.i("grid_z");
  std::vector<float> part_o((size_t)(batch * sh.hq * sh.splits * sh.d));
  std::vector<float> part_ml((size_t)(batch * sh.hq * sh.splits * 2));
  const float qscale = nq::f32_from_bits((nq::u32)a.u("qscale_bits"));
  for (i64 z = 0; z < batch; ++z)
    for (i64 y = 0; y < a.i("grid_y"); ++y)
      for (i64 x = 0; x < a.i("grid_x"); ++x) {
        nq::HostCta cta(x, y, z, (int)a.i("threads"), (size_t)a.i("smem"));
        nq::attn_partial_cta<T, BPL>(cta, q.data(), data_or_null(kc), data_or_null(ks),
                                     data_or_null(vc), data_or_null(vs), data_or_null(lengths),
                                     data_or_null(cm), data_or_null(rk), data_or_null(rv),
                                     data_or_null(rm), data_or_null(kb), data_or_null(vcen),
                                     part_o.data(),
                                     part_ml.data(), sh,
                                     a.u("k_seed"), qscale);
      }
  write_array(a, "part_o", part_o);
  write_array(a, "part_ml", part_ml);
}

template <class T>
void attn_partial_bpl(const Args& a) {
  switch (a.i("bpl")) {
    case 1: return attn_partial<T, 1>(a);
    case 2: return attn_partial<T, 2>(a);
    case 4: return attn_partial<T, 4>(a);
    default: fail("bpl must be 1, 2 or 4");
  }
}

template <class T>
void attn_combine(const Args& a) {
  using S = typename T::storage;
  const int d = (int)a.i("d"), splits = (int)a.i("splits");
  const auto part_o = read_array<float>(a, "part_o");
  const auto part_ml = read_array<float>(a, "part_ml");
  const i64 rows = a.i("grid");
  if ((i64)part_o.size() != rows * splits * d || (i64)part_ml.size() != rows * splits * 2)
    fail("bad partial sizes");
  std::vector<S> out((size_t)(rows * d));
  for (i64 x = 0; x < rows; ++x) {
    nq::HostCta cta(x, 0, 0, (int)a.i("threads"), (size_t)a.i("smem"));
    nq::attn_combine_cta<T>(cta, part_o.data(), part_ml.data(), out.data(), d, splits,
                            (int)a.i("coded_splits"), a.u("v_seed"));
  }
  write_array(a, "out", out);
}

void vdec(const Args& a) {
  const int bits = (int)a.i("bits");
  const auto words = read_array<u64>(a, "words");
  std::vector<int> out(words.size() * 8);
  for (size_t w = 0; w < words.size(); ++w) nq::vdec_word(words[w], bits, &out[8 * w]);
  write_array(a, "out", out);
}

void convert(const Args& a) {
  const auto x = read_array<float>(a, "f32");
  std::vector<u16> h(x.size()), b(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    h[i] = nq::f16_bits(x[i]);
    b[i] = nq::bf16_bits(x[i]);
  }
  std::vector<float> all(65536);
  for (int i = 0; i < 65536; ++i) all[i] = nq::f16_to_f32((u16)i);
  write_array(a, "f16", h);
  write_array(a, "bf16", b);
  write_array(a, "f16_all", all);
}

template <template <class> class Op>
void by_dtype(const Args& a) {
  const std::string& dt = a.s("dtype");
  if (dt == "f32") return Op<nq::F32>::run(a);
  if (dt == "f16") return Op<nq::F16>::run(a);
  if (dt == "bf16") return Op<nq::BF16>::run(a);
  fail("dtype must be f32, f16 or bf16");
}

template <class T>
struct EncodeOp {
  static void run(const Args& a) { encode<T>(a); }
};
template <class T>
struct DecodeOp {
  static void run(const Args& a) { decode<T>(a); }
};
template <class T>
struct PartialOp {
  static void run(const Args& a) { attn_partial_bpl<T>(a); }
};
template <class T>
struct CombineOp {
  static void run(const Args& a) { attn_combine<T>(a); }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) fail("usage: nq_host <op> key=value ...");
  Args a;
  for (int k = 2; k < argc; ++k) {
    const std::string arg = argv[k];
    const size_t eq = arg.find('=');
    if (eq == std::string::npos) fail("arguments are key=value, got " + arg);
    a.kv[arg.substr(0, eq)] = arg.substr(eq + 1);
  }
  const std::string op = argv[1];
  if (op == "encode") by_dtype<EncodeOp>(a);
  else if (op == "decode") by_dtype<DecodeOp>(a);
  else if (op == "attn_partial") by_dtype<PartialOp>(a);
  else if (op == "attn_combine") by_dtype<CombineOp>(a);
  else if (op == "vdec") vdec(a);
  else if (op == "convert") convert(a);
  else fail("unknown op " + op);
  return 0;
}
