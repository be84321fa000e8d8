// bench-sgemm_shapes: the BLAS's sgemm on the expert GEMMs' real shapes, best of R runs each, against
// the FMA peak of the same threads: how the kernels OpenBLAS runs (or OPENBLAS_CORETYPE forces)
// compare on what the model issues, robust to a loaded machine (a best interval, not a mean).
//
//   build/bin/bench-sgemm_shapes [--threads N] [--repeats R] [--rows N] [--precision fp32|bf16]
//   OPENBLAS_CORETYPE=Haswell build/bin/bench-sgemm_shapes    # another core's kernels (the user's choice)
//   build/bin/bench-sgemm_shapes --deep-ab [--threads N] ...  # d 512's NN/NT products: OpenBLAS vs uoe's kernel
//
// Shapes: one expert of an MLP block with `rows` routed rows (default 1024: 2048 tokens × top-2 over
// 4 experts), d = f = 128 (reference config) and 512 (d 512): forward x·W1 and a·W2 (NN),
// backward-data dy·W2ᵀ (NT), weight gradient xᵀ·dh (TN), and a 512³ square for reference.
// --precision bf16 times the model's GEMM at that precision (runtime/gemm.hpp, gemm_mixed, its
// rounding copies included) on each of its CPU paths in turn, whichever the CPU would choose:
// emulated (the fp32 OpenBLAS GEMM on rounded inputs) and oneDNN's bf16 matmul, the latter only
// where this oneDNN has one (otherwise a line says why). FLOPs counted as the product's 2·M·N·K.
// --deep-ab: the NN/NT products of depth 257-512 a d 512 model issues (and two deeper or wider
// ones), each timed with gemm_set_own_deep off (OpenBLAS) and on (uoe's AVX-512 kernel) in turn,
// three times each, best of R per turn: the two sides in one process, a VM's drift on both.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "runtime/bf16.hpp"
#include "runtime/cpu_features.hpp"
#include "runtime/fma_peak.hpp"
#include "runtime/gemm.hpp"
#include "runtime/onednn_gemm.hpp"

namespace {

double best_gflops(bool ta, bool tb, int M, int N, int K, int repeats) {
  std::vector<float> A(static_cast<size_t>(M) * K, 0.01f), B(static_cast<size_t>(K) * N, 0.02f),
      C(static_cast<size_t>(M) * N);
  const int lda = ta ? M : K, ldb = tb ? K : N;
  uoe::gemm_mixed(ta, tb, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, C.data(), N);
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    uoe::gemm_mixed(ta, tb, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, C.data(), N);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  if (C[0] != C[0]) std::fputs("NaN\n", stderr);  // the result is used
  return 2.0 * M * N * static_cast<double>(K) / best * 1e-9;
}

}  // namespace

int main(int argc, char** argv) {
  uoe::blas_kernels_select();
  int threads = 1, repeats = 30, rows = 1024;
  bool deep_ab = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--rows") && i + 1 < argc) rows = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--deep-ab")) deep_ab = true;
    else if (!std::strcmp(argv[i], "--precision") && i + 1 < argc) {
      try {
        uoe::compute_precision_set(uoe::precision_parse(argv[++i]));
      } catch (const std::exception& e) {
        std::fprintf(stderr, "bench-sgemm_shapes: %s\n", e.what());
        return 2;
      }
    } else {
      std::fprintf(stderr,
                   "bench-sgemm_shapes: unknown argument '%s' (--threads N, --repeats R, --rows N, --precision P, --deep-ab)\n",
                   argv[i]);
      return 2;
    }
  }
  uoe::gemm_set_threads(threads);
  const uoe::FmaPeak fma = uoe::fma_peak_measure(uoe::cpu_features_detect(), threads);
  std::printf("# bench-sgemm_shapes: %s\n", uoe::blas_kernels_summary().c_str());
  std::printf("# %s; %s; best of %d\n", uoe::gemm_describe().c_str(), uoe::fma_peak_describe(fma).c_str(), repeats);
  std::printf("# precision %s%s\n", uoe::precision_name(uoe::compute_precision()),
              uoe::compute_precision() == uoe::Precision::bf16 ? (": uoe-train would run " + uoe::gemm_bf16_describe()).c_str()
                                                                 : "");
  struct Shape {
    const char* what;
    bool ta, tb;
    int M, N, K;
  };
  if (deep_ab) {
    if (!uoe::gemm_rows_independent(false, false, 512)) {  // uoe's kernel takes no depth-512 product here
      std::printf("# --deep-ab: at precision %s with %s, uoe's kernel takes no fp32 product of depth 512: nothing to "
                  "compare\n", uoe::precision_name(uoe::compute_precision()), uoe::gemm_describe().c_str());
      return 0;
    }
    const Shape deep[] = {{"x*W1 NN", false, false, rows, 512, 512},       {"dy*W2^T NT", false, true, rows, 512, 512},
                          {"x*Wqkv NN", false, false, rows, 384, 512},     {"dqkv*Wqkv^T NT", false, true, rows, 512, 384},
                          {"do*Wo^T NT", false, true, rows, 128, 512},     {"logits NT", false, true, 2 * rows, 256, 512},
                          {"x*W1 NN wide", false, false, rows, 2048, 512}, {"dh*W1^T NT deep", false, true, rows, 512, 2048}};
    std::printf("%-36s %12s %12s %8s\n", "GEMM (MxNxK)", "OpenBLAS", "uoe kernel", "ratio");
    for (const Shape& s : deep) {  // off and on in turn, three turns each, best of R per turn
      double g[2] = {0, 0};
      for (int turn = 0; turn < 6; ++turn) {
        uoe::gemm_set_own_deep(turn % 2 == 1);
        g[turn % 2] = std::max(g[turn % 2], best_gflops(s.ta, s.tb, s.M, s.N, s.K, repeats));
      }
      uoe::gemm_set_own_deep(true);
      char label[96];
      std::snprintf(label, sizeof label, "%s %dx%dx%d", s.what, s.M, s.N, s.K);
      std::printf("%-36s %12.1f %12.1f %7.3fx%s\n", label, g[0], g[1], g[1] / g[0],
                  s.K > 512 ? "  (deeper than 512: OpenBLAS either way)" : "");
    }
    return 0;
  }
  std::vector<Shape> shapes;
  for (int d : {128, 512}) {
    shapes.push_back({"x*W1 NN", false, false, rows, d, d});
    shapes.push_back({"dy*W2^T NT", false, true, rows, d, d});
    shapes.push_back({"x^T*dh TN", true, false, d, d, rows});
  }
  shapes.push_back({"square NN", false, false, 512, 512, 512});
  const auto table = [&](const char* path) {
    std::printf("%-43s %10s %8s\n", "GEMM (MxNxK)", "GFLOP/s", "of FMA");
    double sum = 0;
    for (const Shape& s : shapes) {
      const double g = best_gflops(s.ta, s.tb, s.M, s.N, s.K, repeats);
      sum += g;
      char label[96];
      std::snprintf(label, sizeof label, "%s%s%s %dx%dx%d", path, *path ? " " : "", s.what, s.M, s.N, s.K);
      std::printf("%-43s %10.1f %7.1f%%\n", label, g, 100.0 * g / fma.gflops);
    }
    std::printf("%-43s %10.1f\n", (std::string(path) + (*path ? " " : "") + "mean").c_str(),
                sum / static_cast<double>(shapes.size()));
  };
  if (uoe::compute_precision() == uoe::Precision::fp32) {
    table("");
    return 0;
  }
  {
    const uoe::ScopedBf16Gemm emulated(uoe::Bf16GemmForce::emulated);
    std::printf("# bf16 path emulated: %s\n", uoe::gemm_bf16_describe().c_str());
    table("emulated");
  }
  const std::string why = uoe::onednn_unavailable(uoe::OnednnInput::bf16);
  if (!why.empty()) {
    std::printf("# bf16 path onednn: not run, %s\n", why.c_str());
    return 0;
  }
  const uoe::ScopedBf16Gemm onednn(uoe::Bf16GemmForce::onednn);
  std::printf("# bf16 path onednn: %s\n", uoe::gemm_bf16_describe().c_str());
  table("onednn");
  return 0;
}
