// bench-gpu-expert_gemm: the expert GEMMs of one rank (cuda::Blas::gemm_experts) against ONE dense
// cuBLAS GEMM of the same FLOPs — the speed an expert layer would have if all its tokens went to
// one expert. Never run on a GPU (bench/gpu/README.md); without one it exits 77.
//
// For each case (d, d_ff, E experts of f = d_ff / E columns, the UoE cut), each token count T (rows
// routed to this rank's experts, i.e. tokens × top-k), each distribution of T over the experts
// (equal; skewed = Zipf weights 1/(e+1)^s) and each GEMM kind of an MLP expert layer
//   up     h_e = x_e · W1_e      [n_e, d] · [d, f]      (forward, first GEMM)
//   down   y_e = a_e · W2_e      [n_e, f] · [f, d]      (forward, second GEMM)
//   wgrad  dW1_e = x_eᵀ · dh_e   [d, n_e] · [n_e, f]    (backward, weight gradient: K = n_e varies)
// it times, with CUDA events (warm-up, then the median of --iters):
//   dense    one Blas::gemm over all T rows (cublasGemmEx, same compute type): the reference
//   experts  Blas::gemm_experts as the model calls it: strided-batched when all n_e are equal,
//            grouped (cublasGemmGroupedBatchedEx) otherwise — the path taken is printed
//   grouped  equal counts only (E ≥ 3): the same problems with two weight slabs swapped, which
//            defeats the constant-stride test and so times the grouped path on equal shapes
//   loop     one Blas::gemm per expert (the fallback below cuBLAS 12.5)
// and reports TFLOP/s = 2·Σ n_e·N·K / time and the ratio to dense. Every method is first checked
// against dense on small-integer data (exact in fp32 and TF32 whatever the summation order): all
// expert weight slabs hold the same values, so expert rows must equal dense rows bit for bit (for
// wgrad, the sum of the expert slabs must equal the dense product); #wrong counts the elements that
// do not.
//
//   build/bin/bench-gpu-expert_gemm [--cases ref,paper,d1024,d4096] [--tokens 4096,16384,65536]
//                                   [--dist equal,skewed] [--precision fp32,tf32] [--csv FILE]
#include <memory>
#include <string>
#include <vector>

#include "bench/gpu/common.cuh"
#include "runtime/cuda/gemm.cuh"
#include "runtime/cuda/memory.cuh"

namespace {

using namespace uoe;
using namespace uoe::bench_gpu;
using cuda::Blas;
using cuda::DeviceBuffer;
using cuda::ExpertGemmPath;
using cuda::GemmProblem;

constexpr const char* kProg = "bench-gpu-expert_gemm";

struct Case {
  std::string name;
  int d = 0, d_ff = 0, E = 0;
  int f() const { return d_ff / E; }
};

Case parse_case(const std::string& s) {
  if (s == "ref") return {"ref", 128, 512, 4};        // the trainer's reference config (launcher/configs/tiny.ini)
  if (s == "paper") return {"paper", 400, 2100, 4};   // the UoE paper's WikiText-103 scale (wikitext103.ini)
  if (s == "d1024") return {"d1024", 1024, 4096, 8};
  if (s == "d4096") return {"d4096", 4096, 16384, 8};
  Case c;
  char tail = 0;
  if (std::sscanf(s.c_str(), "%d:%d:%d%c", &c.d, &c.d_ff, &c.E, &tail) != 3 || c.d < 1 || c.E < 1 || c.d_ff < c.E)
    fail(kProg, ": --cases: '", s, "' is neither ref, paper, d1024, d4096 nor D:D_FF:EXPERTS with D_FF >= EXPERTS >= 1");
  c.name = "d" + std::to_string(c.d) + "_ff" + std::to_string(c.d_ff) + "_e" + std::to_string(c.E);
  return c;
}

// Rows per expert: equal (the remainder to the first experts) or Zipf(skew), expert 0 the hottest.
std::vector<int> token_counts(int64_t T, int E, const std::string& dist, double skew) {
  std::vector<int> n(E, 0);
  if (dist == "equal") {
    for (int e = 0; e < E; ++e) n[e] = static_cast<int>(T / E + (e < T % E));
    return n;
  }
  std::vector<double> w(E);
  double W = 0;
  for (int e = 0; e < E; ++e) W += w[e] = std::pow(e + 1.0, -skew);
  int64_t given = 0;
  for (int e = 0; e < E; ++e) given += n[e] = static_cast<int>(std::floor(static_cast<double>(T) * w[e] / W));
  for (int e = 0; given < T; e = (e + 1) % E, ++given) ++n[e];
  return n;
}

const char* path_name(ExpertGemmPath p) {
  switch (p) {
    case ExpertGemmPath::none: return "none";
    case ExpertGemmPath::strided_batched: return "strided";
    case ExpertGemmPath::grouped: return "grouped";
    case ExpertGemmPath::loop: return "loop";
  }
  return "?";
}

// out[i] = Σ_e slabs[e·slab + i]
__global__ void sum_slabs_kernel(float* out, const float* slabs, int E, size_t slab) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < slab; i += size_t{gridDim.x} * blockDim.x) {
    float s = 0;
    for (int e = 0; e < E; ++e) s += slabs[e * slab + i];
    out[i] = s;
  }
}

enum class Kind { up, down, wgrad };
const char* kind_name(Kind k) { return k == Kind::up ? "up" : k == Kind::down ? "down" : "wgrad"; }
Kind parse_kind(const std::string& s) {
  if (s == "up") return Kind::up;
  if (s == "down") return Kind::down;
  if (s == "wgrad") return Kind::wgrad;
  fail(kProg, ": --kinds: '", s, "' is not up, down or wgrad");
}

// Device operands of one (case, T): sized for the largest kind, reused by all.
struct Operands {
  DeviceBuffer<float> A, B, C, Cd, S;
};

// One kind's GEMMs over the operands: per-expert problems (weight or output slab of expert e at
// slab index slab_of[e]) and the dense product of the same FLOPs.
struct KindGemms {
  bool trans_a = false;
  int lda = 0, ldb = 0, ldc = 0;
  int dM = 0, dN = 0, dK = 0;  // the dense product [dM, dN] = op(A)[dM, dK] · B[dK, dN]
  size_t a_elems = 0, b_elems = 0, c_elems = 0, cd_elems = 0;
  double flops = 0;
  std::vector<GemmProblem> problems(Operands& o, const std::vector<int>& n, const std::vector<int>& slab_of) const;
  Kind kind = Kind::up;
  int d = 0, f = 0, E = 0;
};

KindGemms kind_gemms(Kind k, int d, int f, int E, int64_t T) {
  KindGemms g;
  g.kind = k;
  g.d = d;
  g.f = f;
  g.E = E;
  const size_t t = static_cast<size_t>(T), slab = static_cast<size_t>(d) * f;
  switch (k) {
    case Kind::up:  // [T, d] · W1_e[d, f] → [T, f]
      g.lda = d, g.ldb = f, g.ldc = f, g.dM = static_cast<int>(T), g.dN = f, g.dK = d;
      g.a_elems = t * d, g.b_elems = E * slab, g.c_elems = t * f, g.cd_elems = t * f;
      break;
    case Kind::down:  // [T, f] · W2_e[f, d] → [T, d]
      g.lda = f, g.ldb = d, g.ldc = d, g.dM = static_cast<int>(T), g.dN = d, g.dK = f;
      g.a_elems = t * f, g.b_elems = E * slab, g.c_elems = t * d, g.cd_elems = t * d;
      break;
    case Kind::wgrad:  // x[T, d]ᵀ · dh[T, f] → dW1_e[d, f]
      g.trans_a = true, g.lda = d, g.ldb = f, g.ldc = f, g.dM = d, g.dN = f, g.dK = static_cast<int>(T);
      g.a_elems = t * d, g.b_elems = t * f, g.c_elems = E * slab, g.cd_elems = slab;
      break;
  }
  g.flops = 2.0 * g.dM * g.dN * static_cast<double>(g.dK);
  return g;
}

std::vector<GemmProblem> KindGemms::problems(Operands& o, const std::vector<int>& n,
                                             const std::vector<int>& slab_of) const {
  std::vector<GemmProblem> p(E);
  const size_t slab = static_cast<size_t>(d) * f;
  int r0 = 0;
  for (int e = 0; e < E; ++e) {
    const size_t r = static_cast<size_t>(r0), s = static_cast<size_t>(slab_of[e]) * slab;
    switch (kind) {
      case Kind::up: p[e] = {n[e], f, d, o.A.data() + r * d, o.B.data() + s, o.C.data() + r * f}; break;
      case Kind::down: p[e] = {n[e], d, f, o.A.data() + r * f, o.B.data() + s, o.C.data() + r * d}; break;
      case Kind::wgrad: p[e] = {d, f, n[e], o.A.data() + r * d, o.B.data() + r * f, o.C.data() + s}; break;
    }
    r0 += n[e];
  }
  return p;
}

struct Timed {
  double median_us = 0, min_us = 0;
};

// Warm-up, then `iters` runs each between two timing events on stream s; median and minimum.
template <class Op>
Timed time_op(Op&& op, cudaStream_t s, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) op();
  std::vector<cuda::Event> ev;
  ev.reserve(2 * static_cast<size_t>(iters));
  for (int i = 0; i < 2 * iters; ++i) ev.emplace_back(/*timing=*/true);
  for (int i = 0; i < iters; ++i) {
    ev[2 * i].record(s);
    op();
    ev[2 * i + 1].record(s);
  }
  ev.back().synchronize();
  std::vector<double> us;
  for (int i = 0; i < iters; ++i) us.push_back(1e3 * ev[2 * i + 1].ms_since(ev[2 * i]));
  return {median(us), minimum(us)};
}

struct Options {
  std::vector<Case> cases;
  std::vector<int64_t> tokens;
  std::vector<std::string> dists;
  std::vector<Kind> kinds;
  std::vector<bool> tf32;
  double skew = 1.0;
  int warmup = 5, iters = 20, device = 0;
  bool verify = true;
  std::string csv;
};

int run(const Options& o) {
  UOE_CHECK_CUDA(cudaSetDevice(o.device));
  std::printf("# %s: expert GEMMs (cuda::Blas::gemm_experts) vs one dense GEMM of the same FLOPs\n", kProg);
  std::printf("# %s\n", device_banner(o.device).c_str());
  std::printf("# %d warm-up + %d timed runs per row (CUDA events, median); skewed = Zipf %.2f\n", o.warmup, o.iters,
              o.skew);
  std::unique_ptr<FILE, int (*)(FILE*)> csv(open_csv(kProg, o.csv), &std::fclose);
  if (csv)
    std::fprintf(csv.get(),
                 "case,d,d_ff,experts,expert_ff,tokens,dist,max_load,kind,precision,method,path,gflop,time_us_median,"
                 "time_us_min,tflops,vs_dense,wrong,error\n");

  cuda::Stream stream;
  const cudaStream_t s = stream.get();
  Blas blas(s);
  DeviceCounter counter;
  int failures = 0;

  for (const Case& c : o.cases) {
    const int d = c.d, f = c.f(), E = c.E;
    std::printf("\n# case %s: d %d, d_ff %d, %d experts of %d columns\n", c.name.c_str(), d, c.d_ff, E, f);
    std::printf("# %7s %-6s %5s %-5s %-4s %-8s %-8s %9s %10s %10s %8s %8s %7s\n", "tokens", "dist", "load", "kind",
                "prec", "method", "path", "GFLOP", "time(us)", "min(us)", "TFLOP/s", "vs dense", "#wrong");
    for (const int64_t T : o.tokens) {
      // Operands for the largest kind; released and reallocated per (case, T).
      Operands ops;
      const size_t t = static_cast<size_t>(T), slab = static_cast<size_t>(d) * f;
      const size_t need_a = t * std::max(d, f), need_b = std::max(E * slab, t * f),
                   need_c = std::max({t * f, t * d, E * slab}), need_cd = std::max({t * f, t * d, slab});
      const double need_bytes = 4.0 * (need_a + need_b + need_c + need_cd + slab);
      size_t free_b = 0, total_b = 0;
      UOE_CHECK_CUDA(cudaMemGetInfo(&free_b, &total_b));
      if (need_bytes > 0.9 * static_cast<double>(free_b)) {
        std::printf("  %7lld  skipped: needs %.0f MiB of device memory, %zu MiB free\n", static_cast<long long>(T),
                    need_bytes / 1048576, free_b >> 20);
        continue;
      }
      if (T > INT32_MAX) fail(kProg, ": --tokens ", T, " is too large for int GEMM dimensions");
      ops.A.resize(need_a);
      ops.B.resize(need_b);
      ops.C.resize(need_c);
      ops.Cd.resize(need_cd);
      ops.S.resize(slab);

      for (const std::string& dist : o.dists) {
        const std::vector<int> n = token_counts(T, E, dist, o.skew);
        const double max_load = *std::max_element(n.begin(), n.end()) * static_cast<double>(E) / T;
        std::vector<int> identity(E), swapped(E);
        for (int e = 0; e < E; ++e) identity[e] = swapped[e] = e;
        if (E >= 3) std::swap(swapped[E - 1], swapped[E - 2]);
        const bool equal = std::all_of(n.begin(), n.end(), [&](int x) { return x == n[0]; });

        for (const Kind kind : o.kinds) {
          const KindGemms g = kind_gemms(kind, d, f, E, T);
          // Operands: small integers; weight slabs (up/down) all equal to slab 0.
          fill_integers(ops.A.data(), g.a_elems, g.a_elems, 7, 1, 2, s);
          fill_integers(ops.B.data(), g.b_elems, kind == Kind::wgrad ? g.b_elems : slab, 7, 2, 2, s);

          for (const bool tf32 : o.tf32) {
            blas.set_tf32(tf32);
            const char* prec = tf32 ? "tf32" : "fp32";
            auto dense = [&] {
              blas.gemm(g.trans_a, false, g.dM, g.dN, g.dK, 1.0f, ops.A.data(), g.lda, ops.B.data(), g.ldb, 0.0f,
                        ops.Cd.data(), g.ldc);
            };
            const std::vector<GemmProblem> auto_p = g.problems(ops, n, identity);
            const std::vector<GemmProblem> swapped_p = g.problems(ops, n, swapped);
            struct Method {
              const char* name;
              const std::vector<GemmProblem>* p;
              bool loop;
            };
            std::vector<Method> methods = {{"experts", &auto_p, false}};
            if (equal && E >= 3) methods.push_back({"grouped", &swapped_p, false});
            methods.push_back({"loop", &auto_p, true});

            Timed td;
            try {
              dense();
              td = time_op(dense, s, o.warmup, o.iters);
            } catch (const std::exception& e) {
              std::printf("  %7lld %-6s %5.2f %-5s %-4s %-8s failed: %s\n", static_cast<long long>(T), dist.c_str(),
                          max_load, kind_name(kind), prec, "dense", e.what());
              ++failures;
              continue;
            }
            auto print = [&](const char* method, const char* path, const Timed& tm, long long wrong,
                             const std::string& error) {
              const double tflops = error.empty() ? g.flops / (tm.median_us * 1e-6) / 1e12 : 0;
              const double vs = error.empty() ? td.median_us / tm.median_us : 0;
              // #wrong: "-" (CSV: empty) where nothing was checked: the dense reference, --no-verify.
              const std::string wrong_text = wrong >= 0 ? std::to_string(wrong) : "-";
              const std::string wrong_csv = wrong >= 0 ? wrong_text : "";
              if (error.empty())
                std::printf("  %7lld %-6s %5.2f %-5s %-4s %-8s %-8s %9.3f %10.1f %10.1f %8.2f %7.1f%% %7s\n",
                            static_cast<long long>(T), dist.c_str(), max_load, kind_name(kind), prec, method, path,
                            g.flops / 1e9, tm.median_us, tm.min_us, tflops, 100 * vs, wrong_text.c_str());
              else
                std::printf("  %7lld %-6s %5.2f %-5s %-4s %-8s failed: %s\n", static_cast<long long>(T), dist.c_str(),
                            max_load, kind_name(kind), prec, method, error.c_str());
              std::string quoted = error;  // CSV-safe: the message goes in double quotes
              std::replace(quoted.begin(), quoted.end(), '"', '\'');
              if (csv)
                std::fprintf(csv.get(), "%s,%d,%d,%d,%d,%lld,%s,%.4f,%s,%s,%s,%s,%.6f,%.3f,%.3f,%.4f,%.4f,%s,\"%s\"\n",
                             c.name.c_str(), d, c.d_ff, E, f, static_cast<long long>(T), dist.c_str(), max_load,
                             kind_name(kind), prec, method, path, g.flops / 1e9, tm.median_us, tm.min_us, tflops, vs,
                             wrong_csv.c_str(), quoted.c_str());
            };
            print("dense", "gemm", td, -1, "");

            for (const Method& m : methods) {
              std::string error;
              Timed tm;
              long long wrong = -1;
              ExpertGemmPath path = ExpertGemmPath::none;
              auto op = [&] {
                if (m.loop) {
                  for (const GemmProblem& q : *m.p)
                    blas.gemm(g.trans_a, false, q.M, q.N, q.K, 1.0f, q.A, g.lda, q.B, g.ldb, 0.0f, q.C, g.ldc);
                } else {
                  blas.gemm_experts(g.trans_a, false, 1.0f, g.lda, g.ldb, 0.0f, g.ldc, *m.p);
                  path = blas.last_path();
                }
              };
              try {
                if (o.verify) {
                  // ops.Cd holds the dense product (timed above). Poison what the experts write
                  // (NaN), or zero the wgrad slabs, which get summed.
                  UOE_CHECK_CUDA(cudaMemsetAsync(ops.C.data(), kind == Kind::wgrad ? 0 : 0xff,
                                                 g.c_elems * sizeof(float), s));
                  op();
                  const float* got = ops.C.data();
                  if (kind == Kind::wgrad) {
                    sum_slabs_kernel<<<grid_for(slab, 256), 256, 0, s>>>(ops.S.data(), ops.C.data(), E, slab);
                    UOE_CHECK_LAUNCH("sum_slabs_kernel");
                    got = ops.S.data();
                  }
                  wrong = static_cast<long long>(counter.count_different(got, ops.Cd.data(), g.cd_elems, s));
                  if (wrong) ++failures;
                }
                tm = time_op(op, s, o.warmup, o.iters);
              } catch (const std::exception& e) {
                error = e.what();
                ++failures;
              }
              print(m.name, m.loop ? "loop" : path_name(path), tm, wrong, error);
            }
          }
        }
      }
    }
  }
  if (csv) std::printf("\n# results in %s\n", o.csv.c_str());
  if (failures) {
    std::fprintf(stderr, "%s: %d check(s) or method(s) failed (see #wrong and 'failed' above)\n", kProg, failures);
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    Args a(kProg, "bench-gpu-expert_gemm [options]\n\nTimes cuda::Blas::gemm_experts (strided-batched, grouped, "
                  "per-expert loop) against one dense\ncuBLAS GEMM of the same FLOPs. Exits 77 when no GPU is usable.");
    a.option("cases", "LIST", "ref (d 128, d_ff 512, 4 experts), paper (400, 2100, 4), d1024 (1024, 4096, 8), "
             "d4096 (4096, 16384, 8), or D:D_FF:EXPERTS; experts are D_FF/EXPERTS wide", "ref,paper,d1024,d4096");
    a.option("tokens", "LIST", "rows routed to this GPU's experts per GEMM (tokens x top-k)", "4096,16384,65536");
    a.option("dist", "LIST", "equal and/or skewed (Zipf) rows per expert", "equal,skewed");
    a.option("skew", "S", "Zipf exponent of the skewed distribution: expert e gets rows in proportion to 1/(e+1)^S",
             "1.0");
    a.option("kinds", "LIST", "up (x.W1), down (a.W2), wgrad (x^T.dh)", "up,down,wgrad");
    a.option("precision", "LIST", "fp32 (CUBLAS_COMPUTE_32F) and/or tf32 (CUBLAS_COMPUTE_32F_FAST_TF32)", "fp32,tf32");
    a.option("warmup", "N", "untimed runs per row", "5");
    a.option("iters", "N", "timed runs per row (the median is reported)", "20");
    a.option("device", "N", "GPU to use", "0");
    a.option("no-verify", "", "skip the exactness check against the dense product");
    a.option("csv", "FILE", "also write the rows to this CSV file");
    a.parse(argc, argv);
    if (a.help()) {
      a.print_help();
      return 0;
    }
    for (const std::string& c : a.list("cases")) o.cases.push_back(parse_case(c));
    o.tokens = a.int_list("tokens", 1);
    o.dists = a.list("dist");
    for (const std::string& d : o.dists)
      if (d != "equal" && d != "skewed") fail(kProg, ": --dist: '", d, "' is not equal or skewed");
    o.skew = a.real("skew");
    if (o.skew < 0) fail(kProg, ": --skew ", o.skew, " must be >= 0");
    for (const std::string& k : a.list("kinds")) o.kinds.push_back(parse_kind(k));
    for (const std::string& p : a.list("precision")) {
      if (p != "fp32" && p != "tf32") fail(kProg, ": --precision: '", p, "' is not fp32 or tf32");
      o.tf32.push_back(p == "tf32");
    }
    o.warmup = static_cast<int>(a.integer("warmup", 0));
    o.iters = static_cast<int>(a.integer("iters", 1));
    o.device = static_cast<int>(a.integer("device", 0));
    o.verify = !a.flag("no-verify");
    o.csv = a.str("csv");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  if (!gpu_usable(kProg)) return kSkipped;
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", kProg, e.what());
    return 1;
  }
}
