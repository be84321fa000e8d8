// Simulated links: a Communicator decorator that makes each collective take as long as it would
// over a network of the given bandwidth and latency, so inter-node clusters can be emulated on one
// machine for scheduler work, tests and scaling studies (--sim-link-gbps, --sim-link-latency-us).
//
// Model. Every rank has one full-duplex link; the messages a rank sends in one collective leave
// one after another, as do the ones it receives, each costing latency + bytes / bandwidth:
//   all-to-all(v):  t = max(Σ_out, Σ_in) over the peers other than itself with a non-empty
//                   message, Σ = messages·latency + bytes / bandwidth;
//   all-reduce:     ring: 2(P−1) steps of bytes/P each: t = 2(P−1)·(latency + bytes / (P·bandwidth));
//   broadcast:      t = ⌈log2 P⌉ · (latency + bytes / bandwidth) (a binomial tree);
//   barrier:        t = ⌈log2 P⌉ · latency.
// The real collective runs first (shared memory, fast); the thread then SLEEPS until t has passed
// since the call began (sleep_until: no CPU burnt, so computation on the other thread proceeds as
// it would beside a real NIC). If the real call took longer than t, nothing is added. Non-blocking
// collectives apply the delay in wait(). Rows a rank keeps for itself cost nothing.
#pragma once
#include <chrono>

#include "parallel/comm.hpp"

namespace uoe {

class SimulatedLinkCommunicator final : public Communicator {
 public:
  // `inner` does the real work and must outlive this; gbps is gigabits per second (1e9 bit/s).
  SimulatedLinkCommunicator(Communicator& inner, double gbps, double latency_us);
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  void barrier() override;
  // Seconds the model charges for sending `bytes` in `messages` messages.
  double link_seconds(double bytes, double messages) const { return messages * latency_s_ + bytes / bytes_per_s_; }
  // Total link time the model has charged so far (what the collectives cost on the emulated network).
  double modeled_seconds() const { return modeled_; }

 protected:
  void do_all_to_all_v(const void* send, const Displaced& s, void* recv, const Displaced& r, DType t) override;
  Request do_ialltoallv(const void* send, Displaced s, void* recv, Displaced r, DType t) override;
  void do_all_to_all_blocks(const void* send, const PeerBlocks& s, void* recv, const PeerBlocks& r,
                            DType t) override;
  void do_all_to_all_matched(const void* send, const PeerBlocks& s, void* recv, const PeerBlocks& r,
                             DType t) override;
  void do_all_to_all(const void* send, void* recv, int count, DType t) override;
  void do_all_reduce_sum(void* data, int count, DType t) override;
  Request do_iallreduce_sum(void* data, int count, DType t) override;
  void do_broadcast(void* data, int count, DType t, int root) override;

 private:
  // Model time of an all-to-all whose per-peer element counts are `out` and `in`.
  double all_to_all_seconds(const std::vector<int>& out, const std::vector<int>& in, size_t elem) const;
  double all_reduce_seconds(int count, size_t elem) const;
  int log2_ranks() const;

  void delay(std::chrono::steady_clock::time_point t0, double seconds);

  Communicator& inner_;
  double bytes_per_s_, latency_s_;
  double modeled_ = 0;
};

}  // namespace uoe
