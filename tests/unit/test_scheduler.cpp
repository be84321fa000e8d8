// The communication scheduler and the chunked pipeline (single process: the exchange is local,
// the scheduling and chunking are the real ones).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

#include "tests/common/stepped_model.hpp"
#include "layers/model.hpp"
#include "parallel/exchange.hpp"
#include "parallel/scheduler.hpp"
#include "runtime/clock.hpp"
#include "runtime/rng.hpp"

namespace uoe {
namespace {

TEST(Scheduler, RunsTasksInSubmissionOrderOffTheCallingThread) {
  CommScheduler s(true);
  std::vector<int> order;
  std::thread::id worker;
  for (int i = 0; i < 20; ++i)
    s.submit([&, i] {
      order.push_back(i);
      worker = std::this_thread::get_id();
    });
  s.wait_all();
  ASSERT_EQ(order.size(), 20u);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(order[i], i);
  EXPECT_NE(worker, std::this_thread::get_id());
}

TEST(Scheduler, OverlapIsMeasured) {
  // A task that sleeps 30 ms while the caller "computes" until the task is done, then waits: busy
  // is at least the 30 ms (sleep_for never returns early), exposed is only the caller's time in
  // wait(). No wall-clock window is assumed — on a loaded machine the worker may start late and
  // the caller waits longer for the flag, which changes neither bound: exposed is measured inside
  // the wait() call timed here, so it cannot exceed it, however long that takes.
  CommScheduler s(true);
  std::atomic<bool> done{false};
  const auto t = s.submit([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    done = true;
  });
  while (!done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const auto w0 = std::chrono::steady_clock::now();
  s.wait(t);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
  EXPECT_GE(s.busy_seconds(), 0.030);
  EXPECT_LE(s.exposed_seconds(), waited);
  // Synchronous mode: everything is exposed.
  CommScheduler inline_mode(false);
  inline_mode.submit([] { std::this_thread::sleep_for(std::chrono::milliseconds(5)); });
  EXPECT_GE(inline_mode.busy_seconds(), 0.005);
  EXPECT_DOUBLE_EQ(inline_mode.busy_seconds(), inline_mode.exposed_seconds());
}

// Processor time: a task that computes for 20 ms of its thread's CPU clock is charged at least
// that; one that sleeps 20 ms is charged a small part of its run time. Both modes.
TEST(Scheduler, ProcessorTimeOfTheTasksIsMeasured) {
  for (const bool threaded : {true, false}) {
    SCOPED_TRACE(threaded ? "threaded" : "in line");
    CommScheduler s(threaded);
    s.submit([&] {
      const double c0 = thread_cpu_seconds();
      volatile double x = 0;
      while (thread_cpu_seconds() - c0 < 0.02) x = x + 1;
    });
    s.wait_all();
    EXPECT_GE(s.cpu_seconds(), 0.02);
    EXPECT_GE(s.busy_seconds(), s.cpu_seconds());
    s.reset_counters();
    EXPECT_EQ(s.cpu_seconds(), 0.0);
    s.submit([] { std::this_thread::sleep_for(std::chrono::milliseconds(20)); });
    s.wait_all();
    EXPECT_GE(s.busy_seconds(), 0.019);
    // Safe on a loaded machine: load stretches the wall time (busy), never the processor time a
    // sleeping thread is charged (microseconds), so the ratio only falls.
    EXPECT_LT(s.cpu_seconds(), 0.5 * s.busy_seconds());
  }
}

TEST(Scheduler, FailureReachesTheWaiterAndLaterTasksAreSkipped) {
  std::atomic<int> ran{0};
  {
    CommScheduler s(true);
    s.submit([&] { ++ran; });
    const auto bad = s.submit([] { throw std::runtime_error("peer lost"); });
    const auto after = s.submit([&] { ++ran; });
    s.submit([&] { ++ran; });
    try {
      s.wait(after);
      FAIL() << "the failure was not reported";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "peer lost");
    }
    EXPECT_THROW(s.wait(bad), std::runtime_error);
    EXPECT_THROW(s.wait_all(), std::runtime_error);
  }  // the destructor joins the thread: reaching here without hanging is the shutdown test
  EXPECT_EQ(ran.load(), 1);
  CommScheduler sync(false);
  EXPECT_THROW(sync.submit([] { throw std::runtime_error("x"); }), std::runtime_error);
}

ModelSpec pipeline_spec() {
  ModelSpec s;
  s.layers = 2;
  s.d = 32;
  s.heads = 4;
  s.attn_experts = 2;
  s.attn_topk = 1;
  s.experts = 4;
  s.topk = 2;
  s.d_ff = 64;
  s.vocab = 19;
  s.seq_len = 16;
  s.capacity_factor = 1.25;
  return s;
}

// Loss and gradients of one forward/backward with `chunks` pipelined chunks.
std::pair<double, std::vector<float>> run(int chunks, bool threaded, int B, float router_bias0 = 0) {
  LocalExchange ex;
  const ModelSpec spec = pipeline_spec();
  uoe_test::SteppedModel model(spec, 3, &ex);
  CommScheduler sched(threaded);
  model.set_schedule(&sched, chunks);
  if (router_bias0 != 0)  // skew: every patch picks expert 0 first
    for (const BlockParams& bp : model.blocks()) model.params().value(bp.router_b)[0] = router_bias0;
  std::vector<int32_t> in(B * spec.seq_len), tg(B * spec.seq_len);
  for (size_t i = 0; i < in.size(); ++i) {
    in[i] = static_cast<int32_t>(rng_below(9, 1, i, spec.vocab));
    tg[i] = static_cast<int32_t>(rng_below(9, 2, i, spec.vocab));
  }
  ForwardStats st;
  model.forward_backward(in.data(), tg.data(), B, 1.0f, &st);
  return {st.ce_sum, std::vector<float>(model.params().grads().begin(), model.params().grads().end())};
}

TEST(Pipeline, ChunkCountsAgreeAndAFixedCountIsBitwiseReproducible) {
  const auto one = run(1, false, 4);
  for (int chunks : {2, 4}) {
    const auto a = run(chunks, true, 4);
    const auto b = run(chunks, true, 4);
    EXPECT_EQ(a.first, b.first) << chunks << " chunks: not reproducible";
    EXPECT_EQ(a.second, b.second) << chunks << " chunks: gradients not reproducible";
    // Chunks change the GEMMs' row counts (OpenBLAS may block and round differently) and the
    // order in which weight gradients accumulate over rows: float-rounding differences only.
    EXPECT_NEAR(a.first, one.first, 1e-6 * std::fabs(one.first)) << chunks << " chunks";
    double worst = 0, scale = 0;
    for (size_t i = 0; i < a.second.size(); ++i) {
      worst = std::max(worst, static_cast<double>(std::fabs(a.second[i] - one.second[i])));
      scale = std::max(scale, static_cast<double>(std::fabs(one.second[i])));
    }
    EXPECT_LE(worst, 1e-5 * scale) << chunks << " chunks";  // float rounding of reordered sums
  }
}

TEST(Pipeline, EmptyChunksAndSkewedRoutingDoNotHang) {
  // 2 sequences in 4 chunks: chunks 0 and 2 are empty; all patches prefer expert 0 (capacity drops).
  const auto serial = run(1, false, 2, 8.0f);
  const auto piped = run(4, true, 2, 8.0f);
  EXPECT_NEAR(piped.first, serial.first, 1e-6 * std::fabs(serial.first));  // as above
}

}  // namespace
}  // namespace uoe
