#include "runtime/onednn_gemm.hpp"

#include <dnnl.hpp>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "runtime/bf16.hpp"
#include "runtime/cpu_features.hpp"
#include "runtime/error.hpp"
#include "runtime/profile.hpp"
#include "runtime/threads.hpp"

namespace uoe {
namespace {
constexpr double kMinParallelMacs = 1 << 19;  // as gemm(): smaller products stay whole
constexpr size_t kMaxCached = 4096;           // primitives; the cache starts over beyond (see Cache)
constexpr int kTile = 16;                     // rows per thread at least

const char* type_name(OnednnInput in) { return in == OnednnInput::bf16 ? "bf16" : "f32"; }
dnnl::memory::data_type data_type(OnednnInput in) {
  return in == OnednnInput::bf16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
}

std::string version() {
  const dnnl_version_t* v = dnnl_version();
  return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
}

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// oneDNN (Debian builds it on OpenMP) plans and runs a primitive with omp_get_max_threads() threads:
// held to 1 while it creates or runs one, so that its plan (how it blocks and splits K) and its bits
// never depend on the process's thread count. The compute pool names its team size on every
// region (runtime/threads.cpp), so it is not affected; the previous value is restored all the same.
class OneOmpThread {
 public:
#ifdef _OPENMP
  OneOmpThread() : saved_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~OneOmpThread() { omp_set_num_threads(saved_); }
#endif
  OneOmpThread(const OneOmpThread&) = delete;
  OneOmpThread& operator=(const OneOmpThread&) = delete;

 private:
#ifdef _OPENMP
  int saved_;
#endif
};

struct Primitive {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul matmul;
  size_t scratch_bytes = 0;
};

// Primitives by (type, M, N, K, alpha, beta). An expert's row count changes from step to step, so
// the shapes seen are many but bounded (a part's rows are whole row periods but for the last); the
// cache starts over when it holds kMaxCached, which a training run does not reach. shared_ptr: a
// thread may still run one that another thread's start-over dropped.
class Cache {
 public:
  // b_trans: B is held transposed, [N, K] row-major (oneDNN's "ba" weights: the layout of a linear
  // layer's weight, which its kernels reorder as they do a plain B — the same bits here). lda > 0: A
  // is held transposed, A[i, k] at A[k·lda + i] (a strided "ba" source: other bits than a plain A
  // for deep products, and its own row period).
  std::shared_ptr<const Primitive> get(OnednnInput in, int M, int N, int K, float alpha, float beta,
                                       bool b_trans = false, int lda = 0) {
    uint32_t a = 0, b = 0;
    std::memcpy(&a, &alpha, sizeof a);
    std::memcpy(&b, &beta, sizeof b);
    const auto key = std::make_tuple(static_cast<int>(in) * 2 + b_trans, M, N, K, lda, a, b);
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = map_.find(key);
    if (it != map_.end()) return it->second;
    if (map_.size() >= kMaxCached) map_.clear();
    auto p = std::make_shared<Primitive>(create(in, M, N, K, alpha, beta, b_trans, lda));
    ++created_;
    map_.emplace(key, p);
    return p;
  }
  int64_t created() {
    std::lock_guard<std::mutex> lock(mutex_);
    return created_;
  }

 private:
  static Primitive create(OnednnInput in, int M, int N, int K, float alpha, float beta, bool b_trans, int lda) {
    using tag = dnnl::memory::format_tag;
    const dnnl::memory::desc a = lda > 0 ? dnnl::memory::desc({M, K}, data_type(in), dnnl::memory::dims{1, lda})
                                         : dnnl::memory::desc({M, K}, data_type(in), tag::ab);
    const dnnl::memory::desc b({K, N}, data_type(in), b_trans ? tag::ba : tag::ab),
        c({M, N}, dnnl::memory::data_type::f32, tag::ab);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // a buffer per calling thread (run())
    if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
    if (beta != 0.0f) {  // beta = 0 writes C without reading it (a NaN there does not survive), as BLAS
      dnnl::post_ops ops;
      ops.append_sum(beta);
      attr.set_post_ops(ops);
    }
    const OneOmpThread one;
    try {
      Primitive p{dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, c), attr, cpu_engine()), {}, 0};
      p.matmul = dnnl::matmul(p.pd);
      p.scratch_bytes = p.pd.scratchpad_desc().get_size();
      return p;
    } catch (const dnnl::error& e) {
      fail(version(), " cannot create a ", type_name(in), " matmul of ", M, "x", N, "x", K, " on this CPU (",
           cpu_isa_describe(cpu_features_detect()), "): ", e.what());
    }
  }

  int64_t created_ = 0;
  std::mutex mutex_;
  std::map<std::tuple<int, int, int, int, int, uint32_t, uint32_t>, std::shared_ptr<const Primitive>> map_;
};
Cache& cache() {
  static Cache c;
  return c;
}

// C[M,N] (dense) = alpha·A[M,K]·B[K,N] + beta·C, A and B dense in `in`'s type (B as [N, K] when
// b_trans; A as columns lda apart when lda > 0), on the calling thread.
void run(OnednnInput in, int M, int N, int K, float alpha, const void* A, const void* B, float beta, float* C,
         bool b_trans = false, int lda = 0) {
  const std::shared_ptr<const Primitive> p = cache().get(in, M, N, K, alpha, beta, b_trans, lda);
  static thread_local std::unique_ptr<dnnl::stream> stream;
  static thread_local std::vector<unsigned char> scratch;
  if (!stream) stream = std::make_unique<dnnl::stream>(cpu_engine());
  if (scratch.size() < p->scratch_bytes) scratch.resize(p->scratch_bytes);
  dnnl::engine& eng = cpu_engine();
  std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, dnnl::memory(p->pd.src_desc(), eng, const_cast<void*>(A))},
                                             {DNNL_ARG_WEIGHTS, dnnl::memory(p->pd.weights_desc(), eng, const_cast<void*>(B))},
                                             {DNNL_ARG_DST, dnnl::memory(p->pd.dst_desc(), eng, C)}};
  if (p->scratch_bytes > 0) args.emplace(DNNL_ARG_SCRATCHPAD, dnnl::memory(p->pd.scratchpad_desc(), eng, scratch.data()));
  const OneOmpThread one;
  try {
    p->matmul.execute(*stream, args);
    stream->wait();
  } catch (const dnnl::error& e) {
    fail(version(), " failed running a ", type_name(in), " matmul of ", M, "x", N, "x", K, ": ", e.what());
  }
}

// A row of the bf16-rounded input in `in`'s carrier: the bf16 bits, or the same numbers as fp32.
void round_row(uint16_t* out, const float* in, size_t n) { bf16_pack(out, in, n); }
void round_row(float* out, const float* in, size_t n) { bf16_round_copy(out, in, n); }

// out [rows_out, cols_out] dense = the rounded in [rows, cols] (leading dimension ld) in its top-left
// corner, zeros around it. Element-wise: the same bits on any thread count. A transposed operand is
// rounded as it is stored and handed to oneDNN as such (gemm_with): nothing is transposed.
template <class T>
void round_pack(std::vector<T>& out, const float* in, int ld, int rows, int cols, int rows_out, int cols_out) {
  out.resize(static_cast<size_t>(rows_out) * cols_out);
  T* o = out.data();
  const int64_t grain = std::max<int64_t>(kTile, (1 << 14) / std::max(cols, 1));
  parallel_ranges(rows, grain, [=](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      round_row(o + r * cols_out, in + r * ld, static_cast<size_t>(cols));
      std::fill(o + r * cols_out + cols, o + (r + 1) * cols_out, T{});
    }
  });
  std::fill(o + static_cast<size_t>(rows) * cols_out, o + static_cast<size_t>(rows_out) * cols_out, T{});
}

// As gemm()'s probe (runtime/gemm.cpp): the smallest candidate period whose row splits give the
// whole product's bits, at three depths (the last deeper than oneDNN's blocks of depth) and with beta
// 0 and 1, or 0 (products stay whole). a_trans: with A held transposed, as gemm_with hands a
// transposed A over (its parts are column ranges of the stored copy).
template <class T>
int probe_row_period(OnednnInput in, bool a_trans) {
  std::vector<float> A, B, C0, whole, parts;
  std::vector<T> a, b;
  for (int period : {4, 8, 16, 24, 32, 48, 64, 96, 128}) {
    bool same = true;
    const int M = 5 * period + period / 2 + 3, N = 64;
    for (int K : {96, 320, 1056})
      for (float beta : {0.0f, 1.0f}) {
        if (!same) break;
        // A as op(A) is read: [M, K] plain, or stored [K, M] when a_trans.
        A.resize(static_cast<size_t>(M) * K);
        B.resize(static_cast<size_t>(K) * N);
        C0.resize(static_cast<size_t>(M) * N);
        for (size_t i = 0; i < A.size(); ++i) A[i] = static_cast<float>((i * 2654435761u) % 1999) * 1e-3f - 1.0f;
        for (size_t i = 0; i < B.size(); ++i) B[i] = static_cast<float>((i * 40503u) % 1997) * 1e-3f - 1.0f;
        for (size_t i = 0; i < C0.size(); ++i) C0[i] = static_cast<float>((i * 7919u) % 1993) * 1e-3f - 1.0f;
        if (a_trans) round_pack(a, A.data(), M, K, M, K, M);
        else round_pack(a, A.data(), K, M, K, M, K);
        round_pack(b, B.data(), N, K, N, K, N);
        whole = C0;
        parts = C0;
        const int lda = a_trans ? M : 0;
        auto at = [&](int m) { return a.data() + (a_trans ? static_cast<size_t>(m) : static_cast<size_t>(m) * K); };
        run(in, M, N, K, 1.0f, at(0), b.data(), beta, whole.data(), false, lda);
        const int cut[] = {0, period, 3 * period, M};
        for (int p = 0; p < 3; ++p)
          run(in, cut[p + 1] - cut[p], N, K, 1.0f, at(cut[p]), b.data(), beta,
              parts.data() + static_cast<size_t>(cut[p]) * N, false, lda);
        same = std::memcmp(whole.data(), parts.data(), whole.size() * sizeof(float)) == 0;
      }
    if (same) return period;
  }
  return 0;
}

// The rows of C that a primitive computes come in multiples of a quantum (the row period, at
// least kRowQuantum rows: 32 at periods up to 32), and the depth in multiples of kDepthQuantum
// (zeros beyond K in both rounded copies: each adds an exact zero to every sum): an expert's rows
// change from step to step, and a primitive created for every new row count cost ~1-2 ms each,
// ~100 a step at d 512 — more than the products. With the quanta a run meets a few dozen shapes
// per product kind, each created once.
constexpr int kRowQuantum = 32;
constexpr int kDepthQuantum = 32;

template <class T>
void gemm_with(OnednnInput in, bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
               const float* B, int ldb, float beta, float* C, int ldc) {
  static thread_local std::vector<T> a, b;
  static thread_local std::vector<float> c_dense;
  // Rows can be cut (and a cut's rows padded) only where the row period says cuts keep the bits.
  const int period = onednn_row_period(in, trans_a);
  const int quantum = period > 0 ? period * std::max(1, kRowQuantum / period) : 0;
  const int Kp = (K + kDepthQuantum - 1) / kDepthQuantum * kDepthQuantum;
  // Both operands rounded as they are stored, each padded with zeros to the quantised depth; A's
  // copy has a quantum of zero rows of op(A) past M, which the last cut's padded rows read. A
  // transposed A is [Kp, M + quantum] (op(A)'s rows are its columns, lda_p apart), a transposed B
  // [N, Kp] (oneDNN's "ba" weights).
  const int lda_p = trans_a ? M + quantum : 0;
  if (trans_a) round_pack(a, A, lda, K, M, Kp, M + quantum);
  else round_pack(a, A, lda, M, K, M + quantum, Kp);
  if (trans_b) round_pack(b, B, ldb, N, K, N, Kp);
  else round_pack(b, B, ldb, K, N, Kp, N);
  // oneDNN gets a dense C: a padded one goes through a copy (the model's never is).
  float* c = C;
  if (ldc != N) {
    c_dense.resize(static_cast<size_t>(M) * N);
    c = c_dense.data();
    if (beta != 0.0f)
      for (int i = 0; i < M; ++i) std::copy(C + static_cast<size_t>(i) * ldc, C + static_cast<size_t>(i) * ldc + N, c + static_cast<size_t>(i) * N);
  }
  // Pointers, not the thread_local copies themselves: the worker threads below have their own.
  const T* ap = a.data();
  const T* bp = b.data();
  auto a_row = [&](int64_t m) { return ap + (trans_a ? m : m * Kp); };  // op(A)'s row m
  // Rows [m0, m1) of C: whole quanta straight into C, the rest as one quantum through a scratch C
  // whose padded rows are dropped (no quantum: all of them straight into C).
  auto rows = [&](int64_t m0, int64_t m1) {
    const int64_t whole = quantum > 0 ? (m1 - m0) / quantum * quantum : m1 - m0, rest = m1 - m0 - whole;
    if (whole > 0) run(in, static_cast<int>(whole), N, Kp, alpha, a_row(m0), bp, beta, c + m0 * N, trans_b, lda_p);
    if (rest == 0) return;
    static thread_local std::vector<float> tail;
    tail.resize(static_cast<size_t>(quantum) * N);
    float* out = c + (m0 + whole) * N;
    if (beta != 0.0f) std::copy(out, out + rest * N, tail.data());
    run(in, quantum, N, Kp, alpha, a_row(m0 + whole), bp, beta, tail.data(), trans_b, lda_p);
    std::copy(tail.data(), tail.data() + rest * N, out);
  };
  const int threads = threads_inside() ? 1 : threads_count();
  const int tiles = period > 0 && threads > 1 && static_cast<double>(M) * N * K >= kMinParallelMacs
                        ? (M + period - 1) / period : 0;
  if (tiles >= 2) {
    parallel_ranges(tiles, 1, [&](int64_t t0, int64_t t1) { rows(t0 * period, std::min<int64_t>(M, t1 * period)); });
  } else {
    rows(0, M);
  }
  if (ldc != N)
    for (int i = 0; i < M; ++i) std::copy(c + static_cast<size_t>(i) * N, c + static_cast<size_t>(i) * N + N, C + static_cast<size_t>(i) * ldc);
}
}  // namespace

namespace {
std::string try_create(OnednnInput in) {
  try {
    cache().get(in, 16, 16, 16, 1.0f, 0.0f);
    return std::string();
  } catch (const Error& e) {
    return std::string(e.what());
  }
}
}  // namespace

std::string onednn_unavailable(OnednnInput in) {
  if (in == OnednnInput::bf16) {
    static const std::string why = try_create(OnednnInput::bf16);
    return why;
  }
  static const std::string why = try_create(OnednnInput::f32);
  return why;
}

std::string onednn_describe(OnednnInput in) {
  if (!onednn_unavailable(in).empty()) return version();
  return version() + " " + cache().get(in, 1024, 128, 128, 1.0f, 0.0f)->pd.impl_info_str();
}

int64_t onednn_primitives_created() { return cache().created(); }

int onednn_row_period(OnednnInput in, bool a_trans) {
  if (!onednn_unavailable(in).empty()) return 0;
  if (in == OnednnInput::bf16) {
    static const int plain = probe_row_period<uint16_t>(OnednnInput::bf16, false);
    static const int transposed = probe_row_period<uint16_t>(OnednnInput::bf16, true);
    return a_trans ? transposed : plain;
  }
  static const int plain = probe_row_period<float>(OnednnInput::f32, false);
  static const int transposed = probe_row_period<float>(OnednnInput::f32, true);
  return a_trans ? transposed : plain;
}

void onednn_gemm(OnednnInput in, bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                 int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  const ProfileScope profile(Phase::gemm);
  UOE_ASSERT(M > 0 && N > 0 && K > 0);
  const std::string why = onednn_unavailable(in);
  if (!why.empty()) throw Error(why);
  if (in == OnednnInput::bf16) gemm_with<uint16_t>(in, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else gemm_with<float>(in, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace uoe
