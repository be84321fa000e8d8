// Shared pieces of the bench/gpu programs (bench/gpu/README.md): the no-GPU skip (exit 77), the
// banner naming the device and library versions, a small command-line parser, fill / compare
// kernels and statistics. Header-only; included by exactly one .cu per executable.
//
// Nothing in bench/gpu has been run on a GPU (docs/gpu.md); no figure from it has been reported.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "parallel/comm.hpp"
#include "runtime/cuda/check.cuh"
#include "runtime/device.hpp"
#include "runtime/error.hpp"
#include "runtime/rng.hpp"

namespace uoe::bench_gpu {

// The exit status of a program that measured nothing because no usable GPU is present (CTest's and
// Automake's "skipped").
constexpr int kSkipped = 77;

// device_probe()'s reason without its "no usable GPU: " prefix (the callers say that themselves).
inline std::string probe_reason(const DeviceProbe& p) {
  const std::string prefix = "no usable GPU: ";
  return p.message.rfind(prefix, 0) == 0 ? p.message.substr(prefix.size()) : p.message;
}

// Single-process programs: true when a GPU is usable; otherwise prints
// "<prog>: no usable GPU (<reason>); nothing measured" on stderr and returns false.
inline bool gpu_usable(const char* prog) {
  const DeviceProbe p = device_probe();
  if (p.available) return true;
  std::fprintf(stderr, "%s: no usable GPU (%s); nothing measured\n", prog, probe_reason(p).c_str());
  return false;
}

// MPI programs: every rank probes, and all agree. True when every rank can have a GPU of its own
// (a usable GPU, and at least as many GPUs on its node as ranks there: NCCL needs one GPU per
// rank). Otherwise the lowest rank that cannot prints why and every rank returns false.
inline bool gpu_usable_on_every_rank(const char* prog, MPI_Comm world) {
  int rank = 0;
  UOE_CHECK_MPI(MPI_Comm_rank(world, &rank));
  MPI_Comm node = MPI_COMM_NULL;
  UOE_CHECK_MPI(MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node));
  int local_size = 1;
  UOE_CHECK_MPI(MPI_Comm_size(node, &local_size));
  UOE_CHECK_MPI(MPI_Comm_free(&node));
  const DeviceProbe p = device_probe();
  std::string why;
  if (!p.available)
    why = "no usable GPU (" + probe_reason(p) + ")";
  else if (p.count < local_size)
    why = "not enough GPUs: " + std::to_string(local_size) + " ranks on this node but " + std::to_string(p.count) +
          " GPU(s) visible (NCCL needs one GPU per rank)";
  int first_bad = why.empty() ? INT32_MAX : rank;
  UOE_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &first_bad, 1, MPI_INT, MPI_MIN, world));
  if (first_bad == INT32_MAX) return true;
  if (rank == first_bad) {
    int size = 1;
    UOE_CHECK_MPI(MPI_Comm_size(world, &size));
    std::fprintf(stderr, "%s: rank %d of %d: %s; nothing measured\n", prog, rank, size, why.c_str());
  }
  return false;
}

inline std::string version_string(int v, int major_div, int minor_div) {
  return std::to_string(v / major_div) + "." + std::to_string(v % major_div / minor_div);
}

// One line per device: name, SMs, compute capability, memory, driver / runtime / cuBLAS / NCCL.
inline std::string device_banner(int device) {
  cudaDeviceProp prop{};
  UOE_CHECK_CUDA(cudaGetDeviceProperties(&prop, device));
  int driver = 0, runtime = 0, nccl = 0, cb_major = 0, cb_minor = 0, cb_patch = 0;
  UOE_CHECK_CUDA(cudaDriverGetVersion(&driver));
  UOE_CHECK_CUDA(cudaRuntimeGetVersion(&runtime));
  UOE_CHECK_CUBLAS(cublasGetProperty(MAJOR_VERSION, &cb_major));
  UOE_CHECK_CUBLAS(cublasGetProperty(MINOR_VERSION, &cb_minor));
  UOE_CHECK_CUBLAS(cublasGetProperty(PATCH_LEVEL, &cb_patch));
  if (ncclGetVersion(&nccl) != ncclSuccess) nccl = 0;
  char bus[32] = "?";
  (void)cudaDeviceGetPCIBusId(bus, sizeof bus, device);
  std::ostringstream os;
  os << "GPU " << device << ": " << prop.name << " (" << bus << "), " << prop.multiProcessorCount << " SMs, sm_"
     << prop.major << prop.minor << ", " << (prop.totalGlobalMem >> 20) << " MiB; driver "
     << version_string(driver, 1000, 10) << ", runtime " << version_string(runtime, 1000, 10) << ", cuBLAS "
     << cb_major << "." << cb_minor << "." << cb_patch << ", NCCL " << nccl / 10000 << "." << nccl % 10000 / 100
     << "." << nccl % 100;
  return os.str();
}

// ---- command line -------------------------------------------------------------------------------
// --name VALUE, --name=VALUE and flags. Unknown options and missing values throw uoe::Error naming
// them; --help / -h sets help().
class Args {
 public:
  Args(const char* prog, const char* usage) : prog_(prog), usage_(usage) {}
  // Declares an option (for --help and for checking); flags take no value.
  void option(const std::string& name, const std::string& value_name, const std::string& text,
              const std::string& def = "") {
    opts_.push_back({name, value_name, text, def});
  }
  void parse(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--help" || a == "-h") {
        help_ = true;
        continue;
      }
      if (a.rfind("--", 0) != 0) fail(prog_, ": unexpected argument '", a, "' (see --help)");
      std::string name = a.substr(2), value;
      bool has_value = false;
      if (const size_t eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_value = true;
      }
      const Opt* o = find(name);
      if (!o) fail(prog_, ": unknown option --", name, " (see --help)");
      if (o->value_name.empty()) {
        if (has_value) fail(prog_, ": --", name, " takes no value");
        values_.insert_or_assign(name, std::string("1"));  // (operator= from "1" trips GCC 12 -Wrestrict)
        continue;
      }
      if (!has_value) {
        if (i + 1 >= argc) fail(prog_, ": --", name, " needs a value (", o->value_name, ")");
        value = argv[++i];
      }
      values_[name] = value;
    }
  }
  bool help() const { return help_; }
  void print_help() const {
    std::printf("Usage: %s\n\nOptions:\n", usage_.c_str());
    for (const Opt& o : opts_) {
      std::string left = "  --" + o.name + (o.value_name.empty() ? "" : " " + o.value_name);
      if (left.size() < 30) left.resize(30, ' ');
      std::printf("%s %s%s\n", left.c_str(), o.text.c_str(),
                  o.def.empty() ? "" : (" (default " + o.def + ")").c_str());
    }
    std::printf("  %-28s this help\n", "--help, -h");
  }
  bool flag(const std::string& name) const { return values_.count(name) > 0; }
  std::string str(const std::string& name) const {
    if (auto it = values_.find(name); it != values_.end()) return it->second;
    const Opt* o = find(name);
    UOE_ASSERT(o != nullptr, "undeclared option ", name);
    return o->def;
  }
  int64_t integer(const std::string& name, int64_t min_value) const {
    const std::string s = str(name);
    char* end = nullptr;
    const long long v = std::strtoll(s.c_str(), &end, 0);
    if (s.empty() || *end != '\0') fail(prog_, ": --", name, " '", s, "' is not an integer");
    if (v < min_value) fail(prog_, ": --", name, " ", v, " must be at least ", min_value);
    return v;
  }
  double real(const std::string& name) const {
    const std::string s = str(name);
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (s.empty() || *end != '\0' || !std::isfinite(v)) fail(prog_, ": --", name, " '", s, "' is not a number");
    return v;
  }
  std::vector<std::string> list(const std::string& name) const {
    std::vector<std::string> out;
    std::stringstream ss(str(name));
    std::string item;
    while (std::getline(ss, item, ','))
      if (!item.empty()) out.push_back(item);
    if (out.empty()) fail(prog_, ": --", name, " needs at least one value");
    return out;
  }
  std::vector<int64_t> int_list(const std::string& name, int64_t min_value) const {
    std::vector<int64_t> out;
    for (const std::string& s : list(name)) {
      char* end = nullptr;
      const long long v = std::strtoll(s.c_str(), &end, 0);
      if (*end != '\0') fail(prog_, ": --", name, ": '", s, "' is not an integer");
      if (v < min_value) fail(prog_, ": --", name, ": ", v, " must be at least ", min_value);
      out.push_back(v);
    }
    return out;
  }

 private:
  struct Opt {
    std::string name, value_name, text, def;
  };
  const Opt* find(const std::string& name) const {
    for (const Opt& o : opts_)
      if (o.name == name) return &o;
    return nullptr;
  }
  std::string prog_, usage_;
  std::vector<Opt> opts_;
  std::map<std::string, std::string> values_;
  bool help_ = false;
};

// Opens --csv FILE for writing (nullptr when name is empty); throws naming the file if it cannot.
inline FILE* open_csv(const char* prog, const std::string& name) {
  if (name.empty()) return nullptr;
  FILE* f = std::fopen(name.c_str(), "w");
  if (!f) fail(prog, ": --csv ", name, ": cannot open for writing: ", std::strerror(errno));
  return f;
}

// ---- statistics -----------------------------------------------------------------------------------
inline double median(std::vector<double> v) {
  UOE_ASSERT(!v.empty(), "median of nothing");
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
inline double minimum(const std::vector<double>& v) {
  UOE_ASSERT(!v.empty(), "minimum of nothing");
  return *std::min_element(v.begin(), v.end());
}

// ---- kernels --------------------------------------------------------------------------------------
inline unsigned grid_for(size_t n, unsigned block) {
  const size_t blocks = (n + block - 1) / block;
  return static_cast<unsigned>(std::min<size_t>(blocks, 65535u * 8u));
}

// p[i] = a small integer in [−r, r] drawn for (seed, stream, i mod period): with period = one
// weight slab, every expert's slab holds the same values. Small integers keep every GEMM below
// exact in fp32 and TF32, whatever the summation order.
__global__ void fill_integers_kernel(float* p, size_t n, size_t period, uint64_t seed, uint64_t stream, int r) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    p[i] = static_cast<float>(static_cast<int>(rng_below(seed, stream, i % period, 2 * r + 1)) - r);
}
inline void fill_integers(float* p, size_t n, size_t period, uint64_t seed, uint64_t stream, int r, cudaStream_t s) {
  if (n == 0) return;
  fill_integers_kernel<<<grid_for(n, 256), 256, 0, s>>>(p, n, period, seed, stream, r);
  UOE_CHECK_LAUNCH("fill_integers_kernel");
}

// p[i] = scale · N(0, 1) for (seed, stream, i).
__global__ void fill_normal_kernel(float* p, size_t n, uint64_t seed, uint64_t stream, float scale) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    p[i] = scale * rng_normal(seed, stream, i);
}
inline void fill_normal(float* p, size_t n, uint64_t seed, uint64_t stream, float scale, cudaStream_t s) {
  if (n == 0) return;
  fill_normal_kernel<<<grid_for(n, 256), 256, 0, s>>>(p, n, seed, stream, scale);
  UOE_CHECK_LAUNCH("fill_normal_kernel");
}

// *wrong += number of i with a[i] != b[i] (NaN counts as different).
__global__ void count_different_kernel(const float* a, const float* b, size_t n, unsigned long long* wrong) {
  unsigned long long local = 0;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    local += !(a[i] == b[i]);
  if (local) atomicAdd(wrong, local);
}

// Max |a − b| and max |b| as float bits (non-negative floats order like their bit patterns, and a
// NaN difference has the largest pattern of all, so it cannot hide).
__global__ void max_difference_kernel(const float* a, const float* b, size_t n, unsigned* max_diff, unsigned* max_ref) {
  float d = 0, r = 0;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    const float di = fabsf(a[i] - b[i]);
    d = (di > d || isnan(di)) ? di : d;
    r = fmaxf(r, fabsf(b[i]));
  }
  atomicMax(max_diff, __float_as_uint(isnan(d) ? __int_as_float(0x7fc00000) : d));
  atomicMax(max_ref, __float_as_uint(r));
}

// A device counter for the compare kernels: zero it, launch, read it back (host wait).
class DeviceCounter {
 public:
  DeviceCounter() { UOE_CHECK_CUDA(cudaMalloc(&p_, 2 * sizeof(unsigned long long))); }
  ~DeviceCounter() { (void)cudaFree(p_); }
  DeviceCounter(const DeviceCounter&) = delete;
  DeviceCounter& operator=(const DeviceCounter&) = delete;

  // Elements where a and b differ.
  unsigned long long count_different(const float* a, const float* b, size_t n, cudaStream_t s) {
    UOE_CHECK_CUDA(cudaMemsetAsync(p_, 0, sizeof(unsigned long long), s));
    if (n) {
      count_different_kernel<<<grid_for(n, 256), 256, 0, s>>>(a, b, n, p_);
      UOE_CHECK_LAUNCH("count_different_kernel");
    }
    unsigned long long h = 0;
    UOE_CHECK_CUDA(cudaMemcpyAsync(&h, p_, sizeof h, cudaMemcpyDeviceToHost, s));
    UOE_CHECK_CUDA(cudaStreamSynchronize(s));
    return h;
  }
  // max |a − b| / max |b| (NaN if any difference is NaN; +inf if b is all zero but a is not).
  double relative_difference(const float* a, const float* b, size_t n, cudaStream_t s) {
    unsigned* u = reinterpret_cast<unsigned*>(p_);
    UOE_CHECK_CUDA(cudaMemsetAsync(u, 0, 2 * sizeof(unsigned), s));
    if (n) {
      max_difference_kernel<<<grid_for(n, 256), 256, 0, s>>>(a, b, n, u, u + 1);
      UOE_CHECK_LAUNCH("max_difference_kernel");
    }
    unsigned h[2] = {0, 0};
    UOE_CHECK_CUDA(cudaMemcpyAsync(h, u, sizeof h, cudaMemcpyDeviceToHost, s));
    UOE_CHECK_CUDA(cudaStreamSynchronize(s));
    float d = 0, r = 0;
    std::memcpy(&d, &h[0], sizeof d);
    std::memcpy(&r, &h[1], sizeof r);
    if (std::isnan(d)) return d;
    if (r == 0) return d == 0 ? 0.0 : INFINITY;
    return static_cast<double>(d) / r;
  }

 private:
  unsigned long long* p_ = nullptr;
};

}  // namespace uoe::bench_gpu
