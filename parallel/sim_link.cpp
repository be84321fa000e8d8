#include "parallel/sim_link.hpp"

#include <chrono>
#include <thread>

namespace uoe {
namespace {

using Clock = std::chrono::steady_clock;

void sleep_until_model(Clock::time_point t0, double seconds) {
  std::this_thread::sleep_until(t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds)));
}

// Wraps a request so that wait() also waits out the modelled link time.
class DelayedRequest final : public Request::Pending {
 public:
  DelayedRequest(Request inner, Clock::time_point t0, double seconds)
      : inner_(std::move(inner)), t0_(t0), seconds_(seconds) {}
  void wait() override {
    inner_.wait();
    sleep_until_model(t0_, seconds_);
  }

 private:
  Request inner_;
  Clock::time_point t0_;
  double seconds_;
};

std::vector<int> block_totals(const PeerBlocks& b) {
  std::vector<int> per_peer(b.peers(), 0);
  for (int p = 0; p < b.peers(); ++p)
    for (int i = b.first[p]; i < b.first[p + 1]; ++i) per_peer[p] += b.count[i];
  return per_peer;
}

}  // namespace

SimulatedLinkCommunicator::SimulatedLinkCommunicator(Communicator& inner, double gbps, double latency_us)
    : inner_(inner), bytes_per_s_(gbps * 1e9 / 8.0), latency_s_(latency_us * 1e-6) {
  if (!(gbps > 0)) fail("--sim-link-gbps must be positive, got ", gbps);
  if (!(latency_us >= 0)) fail("--sim-link-latency-us must be non-negative, got ", latency_us);
}

void SimulatedLinkCommunicator::delay(Clock::time_point t0, double seconds) {
  modeled_ += seconds;
  sleep_until_model(t0, seconds);
}

int SimulatedLinkCommunicator::log2_ranks() const {
  int steps = 0;
  while ((1 << steps) < size()) ++steps;
  return steps;
}

double SimulatedLinkCommunicator::all_to_all_seconds(const std::vector<int>& out, const std::vector<int>& in,
                                                     size_t elem) const {
  double t_out = 0, t_in = 0;
  for (int p = 0; p < static_cast<int>(out.size()); ++p) {
    if (p == rank()) continue;
    if (out[p] > 0) t_out += link_seconds(static_cast<double>(out[p]) * elem, 1);
    if (in[p] > 0) t_in += link_seconds(static_cast<double>(in[p]) * elem, 1);
  }
  return t_out > t_in ? t_out : t_in;
}

double SimulatedLinkCommunicator::all_reduce_seconds(int count, size_t elem) const {
  const int P = size();
  if (P == 1) return 0;
  const double chunk = static_cast<double>(count) * elem / P;
  return 2.0 * (P - 1) * link_seconds(chunk, 1);
}

void SimulatedLinkCommunicator::barrier() {
  const auto t0 = Clock::now();
  inner_.barrier();
  delay(t0, log2_ranks() * latency_s_);
}

void SimulatedLinkCommunicator::do_all_to_all_v(const void* send, const Displaced& s, void* recv, const Displaced& r,
                                                DType t) {
  const auto t0 = Clock::now();
  inner_.do_all_to_all_v(send, s, recv, r, t);
  delay(t0, all_to_all_seconds(s.counts, r.counts, dtype_size(t)));
}

Request SimulatedLinkCommunicator::do_ialltoallv(const void* send, Displaced s, void* recv, Displaced r, DType t) {
  const auto t0 = Clock::now();
  const double secs = all_to_all_seconds(s.counts, r.counts, dtype_size(t));
  modeled_ += secs;
  Request inner = inner_.do_ialltoallv(send, std::move(s), recv, std::move(r), t);
  return Request(std::make_unique<DelayedRequest>(std::move(inner), t0, secs));
}

void SimulatedLinkCommunicator::do_all_to_all_blocks(const void* send, const PeerBlocks& s, void* recv,
                                                     const PeerBlocks& r, DType t) {
  const auto t0 = Clock::now();
  inner_.do_all_to_all_blocks(send, s, recv, r, t);
  delay(t0, all_to_all_seconds(block_totals(s), block_totals(r), dtype_size(t)));
}

void SimulatedLinkCommunicator::do_all_to_all_matched(const void* send, const PeerBlocks& s, void* recv,
                                                      const PeerBlocks& r, DType t) {
  const auto t0 = Clock::now();
  inner_.do_all_to_all_matched(send, s, recv, r, t);
  delay(t0, all_to_all_seconds(block_totals(s), block_totals(r), dtype_size(t)));
}

void SimulatedLinkCommunicator::do_all_to_all(const void* send, void* recv, int count, DType t) {
  const auto t0 = Clock::now();
  inner_.do_all_to_all(send, recv, count, t);
  const std::vector<int> same(size(), count);
  delay(t0, all_to_all_seconds(same, same, dtype_size(t)));
}

void SimulatedLinkCommunicator::do_all_reduce_sum(void* data, int count, DType t) {
  const auto t0 = Clock::now();
  inner_.do_all_reduce_sum(data, count, t);
  delay(t0, all_reduce_seconds(count, dtype_size(t)));
}

Request SimulatedLinkCommunicator::do_iallreduce_sum(void* data, int count, DType t) {
  const auto t0 = Clock::now();
  const double secs = all_reduce_seconds(count, dtype_size(t));
  modeled_ += secs;
  Request inner = inner_.do_iallreduce_sum(data, count, t);
  return Request(std::make_unique<DelayedRequest>(std::move(inner), t0, secs));
}

void SimulatedLinkCommunicator::do_broadcast(void* data, int count, DType t, int root) {
  const auto t0 = Clock::now();
  inner_.do_broadcast(data, count, t, root);
  delay(t0, log2_ranks() * link_seconds(static_cast<double>(count) * dtype_size(t), 1));
}

}  // namespace uoe
