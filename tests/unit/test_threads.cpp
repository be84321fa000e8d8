// The compute threads (runtime/threads.hpp): parallel_ranges covers every item once, in at most
// threads_count() contiguous ranges, runs nested calls in line and passes exceptions on; and the
// promise the split rests on — the same bits for any thread count — checked where the threads are
// used: GEMMs split by rows or columns, and whole training steps (every kernel that splits, the
// attention segments, the combine) on 1, 2 and 3 threads, gradients and losses bit for bit.
#include <gtest/gtest.h>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <atomic>
#include <initializer_list>
#include <mutex>
#include <set>
#include <thread>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "layers/cpu_backend.hpp"
#include "layers/experts.hpp"
#include "layers/model.hpp"
#include "layers/optimizer.hpp"
#include "layers/params.hpp"
#include "layers/train_step.hpp"
#include "parallel/communicator.hpp"
#include "parallel/grad_sync.hpp"
#include "parallel/exchange.hpp"
#include "runtime/gemm.hpp"
#include "runtime/kernels.hpp"
#include "runtime/rng.hpp"
#include "runtime/threads.hpp"

namespace uoe {
namespace {

// Restores the thread count a test changed.
struct ThreadCount {
  int saved = gemm_get_threads();
  ~ThreadCount() { gemm_set_threads(saved); }
};

TEST(Threads, RangesCoverEveryItemOnceInContiguousParts) {
  ThreadCount keep;
  for (int threads : {1, 2, 3, 4}) {
    gemm_set_threads(threads);
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{5}, int64_t{64}, int64_t{1000}, int64_t{1001}})
      for (int64_t grain : {int64_t{1}, int64_t{16}, int64_t{400}}) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        std::atomic<int> calls{0};
        parallel_ranges(n, grain, [&](int64_t b, int64_t e) {
          ASSERT_LT(b, e);
          calls++;
          for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
        });
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "item " << i;
        const int64_t most = std::min<int64_t>(threads, std::max<int64_t>(1, n / grain));
        if (n > 0) {
          EXPECT_LE(calls.load(), most) << "n " << n << " grain " << grain;
          EXPECT_GE(calls.load(), 1);
        }
      }
  }
}

TEST(Threads, SplitsWhenItCanAndNestsInLine) {
  ThreadCount keep;
  gemm_set_threads(2);
  std::atomic<int> outer{0}, inner{0}, inside{0};
  parallel_ranges(100, 10, [&](int64_t, int64_t) {
    outer++;
    inside += threads_inside() ? 1 : 0;
    parallel_ranges(100, 10, [&](int64_t b, int64_t e) {
      inner++;
      EXPECT_EQ(b, 0);
      EXPECT_EQ(e, 100);
    });
  });
  EXPECT_EQ(outer.load(), 2);
  EXPECT_EQ(inside.load(), 2);
  EXPECT_EQ(inner.load(), 2);  // one in-line call per outer range
  EXPECT_FALSE(threads_inside());
}

// The team is the pool's count, not OpenMP's default (a rank given 3 threads on a node of many
// cores must not start one per core, nor fewer): OpenMP's default is set to 1 here, so a team
// that followed it would run the three parts on one thread.
TEST(Threads, TheTeamHasOneThreadPerPart) {
#if defined(_OPENMP)
  ThreadCount keep;
  const int omp_default = omp_get_max_threads();
  omp_set_num_threads(1);
  gemm_set_threads(3);
  std::mutex m;
  std::set<std::thread::id> ids;
  parallel_ranges(300, 1, [&](int64_t, int64_t) {
    const std::lock_guard<std::mutex> lock(m);
    ids.insert(std::this_thread::get_id());
  });
  omp_set_num_threads(omp_default);
  EXPECT_EQ(ids.size(), 3u);
#else
  GTEST_SKIP() << "built without OpenMP: parallel_ranges runs its parts in line";
#endif
}

TEST(Threads, AnExceptionReachesTheCaller) {
  ThreadCount keep;
  for (int threads : {1, 2}) {
    gemm_set_threads(threads);
    EXPECT_THROW(parallel_ranges(100, 1,
                                 [](int64_t b, int64_t) {
                                   if (b > 0 || threads_count() == 1) throw std::runtime_error("part failed");
                                 }),
                 std::runtime_error);
    EXPECT_FALSE(threads_inside());
  }
}

std::vector<float> values(size_t n, uint64_t stream) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = rng_uniform(5, stream, i) * 2.0f - 1.0f;
  return v;
}

size_t bit_differences(const float* a, const float* b, size_t n) {
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad += std::memcmp(a + i, b + i, sizeof(float)) != 0;
  return bad;
}

// gemm_part_of: the parts of a product, computed one after another on one thread in any order,
// give gemm()'s bits — products it splits, and products it keeps whole (small, or a transposed NT
// copy's), every transpose but TT, beta 0 and not, for 1 to 3 parts.
TEST(Threads, GemmPartsOfAProductGiveTheWholeProductsBits) {
  ThreadCount keep;
  gemm_set_threads(1);
  struct Shape { int M, N, K; };
  for (const Shape sh : {Shape{700, 96, 80}, Shape{128, 128, 1500}, Shape{128, 64, 300}, Shape{16, 64, 40},
                         Shape{33, 65, 700}, Shape{300, 128, 512}})
    for (int t = 0; t < 3; ++t)
      for (float beta : {0.0f, 0.5f}) {
        const bool ta = t == 1, tb = t == 2;
        const int lda = ta ? sh.M : sh.K, ldb = tb ? sh.K : sh.N;
        const auto A = values(static_cast<size_t>(sh.M) * sh.K, 1), B = values(static_cast<size_t>(sh.K) * sh.N, 2),
                   C0 = values(static_cast<size_t>(sh.M) * sh.N, 3);
        std::vector<float> want = C0;
        gemm(ta, tb, sh.M, sh.N, sh.K, 0.75f, A.data(), lda, B.data(), ldb, beta, want.data(), sh.N);
        for (int parts = 1; parts <= 3; ++parts) {
          // C between two guard blocks of 64 rows, which no part may touch.
          const size_t guard = static_cast<size_t>(64) * sh.N, n = C0.size();
          std::vector<float> buf(guard, -7.0f);
          buf.insert(buf.end(), C0.begin(), C0.end());
          buf.insert(buf.end(), guard, -7.0f);
          for (int p = parts - 1; p >= 0; --p)
            gemm_part_of(p, parts, ta, tb, sh.M, sh.N, sh.K, 0.75f, A.data(), lda, B.data(), ldb, beta,
                         buf.data() + guard, sh.N);
          const std::string what = std::string(ta ? "T" : "N") + (tb ? "T" : "N") + " M " + std::to_string(sh.M) +
                                   " N " + std::to_string(sh.N) + " K " + std::to_string(sh.K) + " beta " +
                                   std::to_string(beta) + ", " + std::to_string(parts) + " parts";
          EXPECT_EQ(bit_differences(buf.data() + guard, want.data(), n), 0u) << what;
          size_t touched = 0;
          for (size_t i = 0; i < guard; ++i) touched += (buf[i] != -7.0f) + (buf[guard + n + i] != -7.0f);
          EXPECT_EQ(touched, 0u) << what << ": elements outside C written";
        }
      }
}

// Products large enough to split (≥ 2^19 multiply-adds), by rows (M large) and by columns (M
// small, N large), every transpose, beta 0 and not: 2 and 3 threads give one thread's bits.
TEST(Threads, GemmSplitsGiveTheSameBits) {
  ThreadCount keep;
  struct Shape { int M, N, K; };
  for (const Shape sh : {Shape{700, 96, 80}, Shape{40, 900, 120}, Shape{128, 128, 1500}, Shape{33, 65, 700}})
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (float beta : {0.0f, 0.5f}) {
          const int lda = ta ? sh.M : sh.K, ldb = tb ? sh.K : sh.N;
          const auto A = values(static_cast<size_t>(sh.M) * sh.K, 1), B = values(static_cast<size_t>(sh.K) * sh.N, 2),
                     C0 = values(static_cast<size_t>(sh.M) * sh.N, 3);
          std::vector<float> want = C0;
          gemm_set_threads(1);
          gemm(ta, tb, sh.M, sh.N, sh.K, 0.75f, A.data(), lda, B.data(), ldb, beta, want.data(), sh.N);
          for (int threads : {2, 3}) {
            gemm_set_threads(threads);
            std::vector<float> got = C0;
            gemm(ta, tb, sh.M, sh.N, sh.K, 0.75f, A.data(), lda, B.data(), ldb, beta, got.data(), sh.N);
            EXPECT_EQ(bit_differences(got.data(), want.data(), got.size()), 0u)
                << (ta ? "T" : "N") << (tb ? "T" : "N") << " M " << sh.M << " N " << sh.N << " K " << sh.K
                << " beta " << beta << ", " << threads << " threads";
          }
        }
}

ModelSpec spec_of(BlockType t, int patch) {
  ModelSpec s;
  s.block_type = t;
  s.layers = 2;
  s.d = 64;
  s.heads = 4;
  s.attn_experts = 4;
  s.attn_topk = 2;
  s.experts = 4;
  s.topk = 2;
  s.d_ff = 512;
  s.vocab = 96;
  s.seq_len = 64;
  s.patch_size = patch;
  s.capacity_factor = 1.0;  // drops happen
  s.aux_loss = 0.01;
  s.z_loss = 0.001;
  return model_spec_resolve(s);
}

struct StepResult {
  std::vector<double> ce;
  std::vector<float> grads, values;
};

// Three AdamW steps of B = 8 sequences (512 rows: every row kernel splits) on `threads` threads.
StepResult train(const ModelSpec& spec, int threads) {
  gemm_set_threads(threads);
  LocalExchange ex;
  Model model(spec, 21, &ex);
  CpuStep step(model);
  AdamW opt(model.params(), AdamWSpec{});
  StepResult r;
  const int B = 8, N = B * spec.seq_len;
  std::vector<int32_t> in(N), tg(N);
  for (int it = 1; it <= 3; ++it) {
    for (int i = 0; i < N; ++i) {
      in[i] = static_cast<int32_t>(rng_below(9, 2 * it, static_cast<uint64_t>(i), spec.vocab));
      tg[i] = static_cast<int32_t>(rng_below(9, 2 * it + 1, static_cast<uint64_t>(i), spec.vocab));
    }
    model.params().zero_grads();
    ForwardStats st;
    step.forward_backward(in.data(), tg.data(), B, 1.0f, &st);
    r.ce.push_back(st.ce_sum);
    r.ce.push_back(st.aux_loss);
    const auto& g = model.params().grads();
    r.grads.insert(r.grads.end(), g.data(), g.data() + model.params().total());
    opt.update(model.params(), 1e-2, it, 1.0f);
  }
  ForwardStats ev;
  step.forward_eval(in.data(), tg.data(), B, &ev);
  r.ce.push_back(ev.ce_sum);
  const auto& v = model.params().values();
  r.values.assign(v.data(), v.data() + model.params().total());
  return r;
}

void expect_thread_count_invariant(const ModelSpec& spec) {
  ThreadCount keep;
  const StepResult one = train(spec, 1);
  double sq = 0;
  for (float g : one.grads) sq += static_cast<double>(g) * g;
  ASSERT_GT(sq, 0.0);  // the comparisons below compare something
  for (int threads : {2, 3}) {
    const StepResult many = train(spec, threads);
    EXPECT_EQ(many.ce, one.ce) << threads << " threads: losses";
    ASSERT_EQ(many.grads.size(), one.grads.size());
    EXPECT_EQ(bit_differences(many.grads.data(), one.grads.data(), one.grads.size()), 0u) << threads << " threads: gradients";
    EXPECT_EQ(bit_differences(many.values.data(), one.values.data(), one.values.size()), 0u)
        << threads << " threads: parameters after AdamW";
  }
}

// layernorm_backward (dx by rows, dweight/dbias by columns, over the threads, in register blocks of
// columns) gives the bits of layernorm_row_backward applied row after row — the GPU path's body —
// on any thread count, for widths with and without a partial block.
TEST(Threads, LayerNormBackwardIsTheRowTwinsBits) {
  ThreadCount keep;
  for (int C : {7, 64, 100, 128, 512}) {
    const int N = 203;
    const auto x = values(static_cast<size_t>(N) * C, 11), dout = values(static_cast<size_t>(N) * C, 12),
               w = values(C, 13), dx0 = values(static_cast<size_t>(N) * C, 14), dw0 = values(C, 15),
               db0 = values(C, 16);
    std::vector<float> mean(N), rstd(N);
    for (int i = 0; i < N; ++i) {
      mean[i] = 0.01f * static_cast<float>(i % 7) - 0.03f;
      rstd[i] = 0.9f + 0.001f * static_cast<float>(i % 13);
    }
    std::vector<float> want_dx = dx0, want_dw = dw0, want_db = db0;
    for (int i = 0; i < N; ++i)
      layernorm_row_backward(want_dx.data() + static_cast<size_t>(i) * C, want_dw.data(), want_db.data(),
                             dout.data() + static_cast<size_t>(i) * C, x.data() + static_cast<size_t>(i) * C, w.data(),
                             mean[i], rstd[i], C);
    for (int threads : {1, 2, 3}) {
      gemm_set_threads(threads);
      std::vector<float> dx = dx0, dw = dw0, db = db0;
      layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(), rstd.data(),
                         N, C);
      EXPECT_EQ(bit_differences(dx.data(), want_dx.data(), dx.size()), 0u) << "dx, C " << C << ", " << threads << " threads";
      EXPECT_EQ(bit_differences(dw.data(), want_dw.data(), dw.size()), 0u) << "dweight, C " << C << ", " << threads << " threads";
      EXPECT_EQ(bit_differences(db.data(), want_db.data(), db.size()), 0u) << "dbias, C " << C << ", " << threads << " threads";
    }
  }
}

// sum_rows_into (bias gradients) adds each column's rows in row order, onto what the accumulator
// held: the naive loop's bits, on any thread count and width.
TEST(Threads, SumRowsIntoAddsEachColumnsRowsInOrder) {
  ThreadCount keep;
  for (int C : {7, 64, 100, 130}) {
    const int N = 157;
    const auto x = values(static_cast<size_t>(N) * C, 21), acc0 = values(C, 22);
    std::vector<float> want = acc0;
    for (int i = 0; i < N; ++i)
      for (int c = 0; c < C; ++c) want[c] += x[static_cast<size_t>(i) * C + c];
    for (int threads : {1, 2, 3}) {
      gemm_set_threads(threads);
      std::vector<float> got = acc0;
      sum_rows_into(got.data(), x.data(), N, C);
      EXPECT_EQ(bit_differences(got.data(), want.data(), got.size()), 0u) << "C " << C << ", " << threads << " threads";
    }
  }
}

TEST(Threads, UoeStepsGiveTheSameBitsOnAnyThreadCount) { expect_thread_count_invariant(spec_of(BlockType::uoe, 1)); }
TEST(Threads, UoePatchStepsGiveTheSameBitsOnAnyThreadCount) { expect_thread_count_invariant(spec_of(BlockType::uoe, 4)); }
TEST(Threads, DenseStepsGiveTheSameBitsOnAnyThreadCount) { expect_thread_count_invariant(spec_of(BlockType::dense, 1)); }
TEST(Threads, MoeStepsGiveTheSameBitsOnAnyThreadCount) { expect_thread_count_invariant(spec_of(BlockType::moe, 1)); }

// GradientSync's Σ g² with each tensor's sum formed on the compute threads: the bits of the sums
// formed one tensor after another, on 1, 2 and 3 threads (tensors of very different sizes).
TEST(Threads, GradientSumOfSquaresOverThreadsIsTheSerialSumsBits) {
  ThreadCount keep;
  LocalExchange ex;
  Model model(spec_of(BlockType::uoe, 1), 5, &ex);
  ParamStore& ps = model.params();
  for (size_t i = 0; i < ps.total(); ++i)
    ps.grads().data()[i] = static_cast<float>(rng_below(4, 0, i, 2001)) * 1e-3f - 1.0f;
  SelfCommunicator self;
  GradientSync sync(grad_tensors(ps), model_gradient_buckets(model), self, self, self);
  const double serial = sync.global_sum_squares([](const float* g, size_t n) { return grad_sum_squares(g, n); });
  EXPECT_GT(serial, 0.0);
  for (int threads : {1, 2, 3}) {
    gemm_set_threads(threads);
    const double parallel = sync.global_sum_squares();
    EXPECT_EQ(std::memcmp(&parallel, &serial, sizeof serial), 0) << threads << " threads: " << parallel << " vs " << serial;
  }
}

// A switch of the experts' work split (layers/experts.hpp; on by default) off, then on, on each
// thread count: the same losses, gradients and weights after three steps, bit for bit. The switch
// is left on.
void expect_switch_keeps_bits(void (*set)(bool), std::initializer_list<int> thread_counts) {
  ThreadCount keep;
  struct Restore {
    void (*set)(bool);
    ~Restore() { set(true); }
  } restore{set};
  const ModelSpec spec = spec_of(BlockType::uoe, 1);
  for (int threads : thread_counts) {
    set(false);
    const StepResult off = train(spec, threads);
    set(true);
    const StepResult on = train(spec, threads);
    EXPECT_EQ(on.ce, off.ce) << threads << " threads: losses";
    EXPECT_EQ(bit_differences(on.grads.data(), off.grads.data(), off.grads.size()), 0u) << threads << " threads";
    EXPECT_EQ(bit_differences(on.values.data(), off.values.data(), off.values.size()), 0u) << threads << " threads";
  }
}

// The experts' chains on each thread's rows (experts_set_row_parts) against each product and row
// kernel split over the threads in turn: the same bits on 2 and 3 threads.
TEST(Threads, ExpertRowPartsGiveTheBitsOfProductsSplitOneByOne) {
  if (!gemm_rows_independent(false, false, spec_of(BlockType::uoe, 1).d))
    GTEST_SKIP() << "this CPU runs the experts' products in OpenBLAS: no row parts to compare";
  expect_switch_keeps_bits(experts_set_row_parts, {2, 3});
}

// The experts' weight gradients as whole products, each on one thread (experts_set_whole_weights),
// against every thread's row part of each product: the same bits on 2 and 3 threads, and on 5,
// where the smaller model's products are too few to go whole (row parts).
TEST(Threads, WholeWeightProductsGiveTheBitsOfRowParts) {
  expect_switch_keeps_bits(experts_set_whole_weights, {2, 3, 5});
}

// The threads' balanced shares (experts_set_balanced: contiguous runs of the experts' rows taken
// together, attention segments by Σ L²) against the per-expert, per-count cuts: the same bits on 2,
// 3 and 4 threads.
TEST(Threads, BalancedSharesGiveTheBitsOfEvenCuts) { expect_switch_keeps_bits(experts_set_balanced, {2, 3, 4}); }

}  // namespace
}  // namespace uoe
