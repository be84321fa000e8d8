// The expert exchange of docs/model.md (Expert parallelism) over an expert-parallel group of ep ranks.
//
// Placement: rank r of the group owns global experts [r·E/ep, (r+1)·E/ep), for attention and MLP
// experts alike. Source rows arrive grouped by global expert, so the rows for owner q are one
// contiguous block (its experts, in order) and are sent straight from the caller's buffer.
//
// Owner order: for local expert j, the rows from source 0, then source 1, …, each source's rows in
// the order it sent them (token order, so one sequence's rows stay contiguous and in position order).
// Received data lands directly in that order, never staged and permuted afterwards: both sides cut
// a peer's rows into one block per expert of the owner, and each block travels as its own
// contiguous message (Communicator::all_to_all_matched). An earlier form received each source's
// rows as one message scattered by a derived datatype; Open MPI's shared-memory single-copy path
// (CMA) does not take those, and the exchange ran at 45-86% of raw MPI_Alltoallv at 1-4 MB
// (bench/README-alltoall.md).
//
// Segment ids: sequence ids are only unique per source rank, so the owner rewrites them to
// seg_src + src_rank · 2^20. A source's seg must lie in [0, 2^20) (a micro-batch of at most 2^20
// sequences), and ep ≤ 2048 keeps the result within int32.
//
// Every rank takes part in every exchange, with zero rows when it has none: counts travel first
// (one all-to-all), then the rows' metadata and payload. A block cut into chunks sends every
// chunk's counts in one all-to-all and every chunk's metadata in one more (dispatch_metadata_chunks),
// then each chunk's rows on their own.
//
// Precision: with --precision bf16 (runtime/bf16.hpp) the rows travel as bf16, half the bytes: the
// exchange rounds them to bf16 (round to nearest even) before they leave and widens them to fp32 on
// arrival, for every row, those kept on this rank included, so every layout sees the same values
// (the step rounds what it would lose here anyway: layers/step.hpp). Only where the rows are host
// memory (no payload communicator) or where the payload communicator's memory has a RowNarrowing
// (the NCCL communicator: set_row_narrowing); otherwise they travel as fp32. Gradients are not
// exchanged here: their all-reduce stays fp32 (parallel/grad_sync.hpp).
#pragma once
#include <cstdint>
#include <vector>

#include "parallel/comm.hpp"
#include "parallel/exchange.hpp"

namespace uoe {

class MpiExchange final : public ExpertExchange {
 public:
  static constexpr int kSegmentBits = 20;
  static constexpr int32_t kSegmentsPerRank = int32_t{1} << kSegmentBits;

  // `ep_group` is the expert-parallel group; it must outlive the exchange. Counts and row metadata
  // always travel over it (host data); the rows themselves (dispatch's payload, to_source,
  // to_owner) and positions_to_owner's positions over `payload` when given — the same ranks in the same order, e.g. an
  // NcclCommunicator whose spans are device memory — else over ep_group too.
  explicit MpiExchange(Communicator& ep_group, Communicator* payload = nullptr);

  void dispatch(ExchangePlan& plan, const std::vector<int>& src_offsets, const float* x_src,
                const int32_t* seg_src, const int32_t* pos_src, int d, ExpertRows& dst) override;
  void dispatch_metadata(ExchangePlan& plan, const std::vector<int>& src_offsets, const int32_t* seg_src,
                         const int32_t* pos_src, ExpertRows& dst) override;
  void dispatch_metadata_chunks(std::span<const ChunkMetadata> chunks) override;
  void to_source(ExchangePlan& plan, const float* owner, float* src, int width) override;
  void to_owner(ExchangePlan& plan, const float* src, float* owner, int width) override;
  void positions_to_owner(ExchangePlan& plan, const int32_t* src, int32_t* owner) override;
  // Rows over the payload communicator travel as bf16 in bf16 through `n` (its memory's staging and
  // conversions; must outlive the exchange). Null: fp32 there.
  void set_row_narrowing(RowNarrowing* n) { narrowing_ = n; }
  // Throws uoe::Error if ep does not divide `experts`.
  void local_experts(int experts, int* begin, int* end) const override;

  // Metrics, accumulated over every call since the last reset_counters(): wall seconds inside the
  // exchange (collectives, waiting for slower ranks, and the index work around them) and payload
  // bytes sent to OTHER ranks (rows kept on this rank cost no traffic).
  double comm_seconds() const override { return seconds_; }
  double bytes_sent() const override { return bytes_; }
  double link_bytes() const override { return link_bytes_; }
  double payload_bytes_sent() const override { return payload_; }
  void reset_counters() override {
    seconds_ = 0;
    bytes_ = 0;
    link_bytes_ = 0;
    payload_ = 0;
  }

 private:
  Communicator& comm_;
  Communicator& data_;  // the rows' communicator (comm_ unless a payload one was given)
  double seconds_ = 0, bytes_ = 0, link_bytes_ = 0, payload_ = 0;
  // Rows as bf16 (see Precision above) and the bytes of one row element on the wire.
  bool bf16_rows() const;
  // One block of rows [send_n] → [recv_n] along the two layouts, in the wire's precision; counts
  // `remote_out` rows of `width` as sent, and the larger of them and `remote_in` (the rows received
  // from other ranks) as the link's.
  void move_rows(const float* send, size_t send_n, const PeerBlocks& send_layout, float* recv, size_t recv_n,
                 const PeerBlocks& recv_layout, double remote_out, double remote_in, int width);
  std::vector<uint16_t> send16_, recv16_;           // bf16 staging of the rows (host payload)
  RowNarrowing* narrowing_ = nullptr;               // bf16 staging elsewhere (a payload communicator's)
  // Workspace reused across calls.
  std::vector<int32_t> header_send_, header_recv_;  // [ep, 1 + chunks·E/ep]: status, rows per chunk and local expert
  std::vector<int32_t> meta_send_, meta_recv_;      // [Σ R_src, w] / [Σ R_dst, w]: seg (and pos), chunk after chunk
  std::vector<int64_t> src_base_, dst_base_;        // [chunks] each chunk's first row in meta_send_ / meta_recv_
};

}  // namespace uoe
