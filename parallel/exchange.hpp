// Moving routed rows between the ranks that route them (sources) and the ranks that own their
// experts (owners). layers/ routes locally and lists its rows grouped by GLOBAL expert; an
// ExpertExchange brings them to the owners' local experts (dispatch), and moves row blocks back
// and forth for combine (outputs → sources) and backward (output grads → owners, input grads →
// sources). The single-rank exchange is the identity; the MPI one is the all-to-all of
// docs/model.md, Expert parallelism.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "parallel/expert_rows.hpp"

namespace uoe {

// What one dispatch decided: enough to move any [rows, width] block the same way again.
struct ExchangePlan {
  std::vector<int> send_rows;  // [ranks] rows this rank sends to each owner
  std::vector<int> recv_rows;  // [ranks] rows this rank receives from each source
  // The same, per expert: send_blocks[q·El + j] rows go to owner q's j-th local expert, and
  // recv_blocks[s·El + j] rows come from source s for this rank's j-th local expert (El experts
  // per rank). owner_offsets [El + 1]: where each local expert's rows start in owner order
  // (expert-major, sources in rank order within an expert). Empty for the identity exchange.
  std::vector<int> send_blocks, recv_blocks, owner_offsets;
  double bytes_sent = 0;       // payload bytes this rank sent (for metrics)
  // Where the caller is (e.g. "layer 2 attention (block 4), chunk 1 of 4"), for the collective
  // watchdog's report. Kept per plan (per chunk) so the communication thread reads its own copy.
  std::string where;
};

// One chunk's arguments to dispatch_metadata, for the batched form (every chunk of a block at once).
struct ChunkMetadata {
  ExchangePlan* plan;
  const std::vector<int>* src_offsets;
  const int32_t* seg_src;
  const int32_t* pos_src;
  ExpertRows* dst;
  // The positions do not go with the metadata (pos_src unused, dst.pos left empty): the caller
  // moves them with positions_to_owner, where they live (a GPU's memory). Every chunk of a call,
  // and every rank of the group, must say the same.
  bool positions_apart = false;
};

// Rows narrowed to bf16 for the wire where they are not host memory (a GPU's: the NCCL
// communicator implements it on its stream): staging of n elements for each side, and the
// conversions, ordered before and after the communicator's transfer.
class RowNarrowing {
 public:
  virtual ~RowNarrowing() = default;
  virtual uint16_t* narrow_send_buffer(size_t n) = 0;
  virtual uint16_t* narrow_recv_buffer(size_t n) = 0;
  virtual void narrow(uint16_t* out, const float* in, size_t n) = 0;  // to bf16 (runtime/bf16.hpp's body)
  virtual void widen(float* out, const uint16_t* in, size_t n) = 0;   // back to fp32, complete as a transfer is
};

class ExpertExchange {
 public:
  virtual ~ExpertExchange() = default;
  // Rows on the source side: grouped by global expert (src_offsets [E + 1]), x_src [R_src, d],
  // seg/pos per row. Fills `dst` (this rank's local experts, expert-major, segments contiguous).
  virtual void dispatch(ExchangePlan& plan, const std::vector<int>& src_offsets, const float* x_src,
                        const int32_t* seg_src, const int32_t* pos_src, int d, ExpertRows& dst) = 0;
  // dispatch without the payload: fills the plan and dst's n_experts, offsets, seg and pos (host
  // data), leaving dst.x alone; to_owner(plan, x_src, x_owner, d) then moves the rows, so a caller
  // whose rows live elsewhere (the device step's, on a GPU) moves them with the same plan. dispatch
  // is exactly this followed by that.
  virtual void dispatch_metadata(ExchangePlan& plan, const std::vector<int>& src_offsets, const int32_t* seg_src,
                                 const int32_t* pos_src, ExpertRows& dst);
  // dispatch_metadata for each chunk of a block, in one go: the same plans and rows as one call per
  // chunk. The MPI exchange moves every chunk's counts in one collective and their row metadata in
  // another (2 collectives a block instead of 2 per chunk: fewer rendezvous on the communication
  // thread, fewer host synchronisations on the GPU path). The default makes one call per chunk.
  virtual void dispatch_metadata_chunks(std::span<const ChunkMetadata> chunks);
  // Owner-order block [R_dst, width] → source order [R_src, width] (outputs; input gradients).
  virtual void to_source(ExchangePlan& plan, const float* owner, float* src, int width) = 0;
  // Source-order block [R_src, width] → owner order [R_dst, width] (output gradients).
  virtual void to_owner(ExchangePlan& plan, const float* src, float* owner, int width) = 0;
  // The rows' positions [R_src] → owner order [R_dst], one int32 per row, exactly (never narrowed
  // as rows are with --precision bf16), over the rows' communicator: for a caller whose positions
  // live with its rows (ChunkMetadata::positions_apart). The default refuses.
  virtual void positions_to_owner(ExchangePlan& plan, const int32_t* src, int32_t* owner);
  // Global experts [expert_begin, expert_end) live here, for `experts` global experts.
  virtual void local_experts(int experts, int* begin, int* end) const = 0;
  // True when owner order IS source order and nothing moves (one rank owns every expert): the
  // model then gathers rows straight into ExpertRows and lets the experts read and write its
  // source-order buffers, skipping the four copies an identity exchange would make per block.
  virtual bool identity() const { return false; }
  // Metrics since the last reset_counters(): wall seconds inside exchanges and payload bytes sent
  // to other ranks. Zero for an exchange that moves nothing between ranks.
  // bytes_sent counts the rows and their counts and metadata; payload_bytes_sent the rows alone
  // (half as many bytes with --precision bf16, where rows travel as bf16).
  virtual double comm_seconds() const { return 0; }
  virtual double bytes_sent() const { return 0; }
  // The same traffic as the busier direction of this rank's link sees it: per collective, the
  // larger of the bytes sent to and received from other ranks (what a full-duplex link's time
  // follows; bytes_sent() alone misses a rank that receives more than it sends).
  virtual double link_bytes() const { return 0; }
  virtual double payload_bytes_sent() const { return 0; }
  virtual void reset_counters() {}
};

// One rank owns every expert: rows stay where they are.
class LocalExchange final : public ExpertExchange {
 public:
  void dispatch(ExchangePlan& plan, const std::vector<int>& src_offsets, const float* x_src,
                const int32_t* seg_src, const int32_t* pos_src, int d, ExpertRows& dst) override;
  void dispatch_metadata(ExchangePlan& plan, const std::vector<int>& src_offsets, const int32_t* seg_src,
                         const int32_t* pos_src, ExpertRows& dst) override;
  void to_source(ExchangePlan& plan, const float* owner, float* src, int width) override;
  void to_owner(ExchangePlan& plan, const float* src, float* owner, int width) override;
  void positions_to_owner(ExchangePlan& plan, const int32_t* src, int32_t* owner) override;
  void local_experts(int experts, int* begin, int* end) const override {
    *begin = 0;
    *end = experts;
  }
  bool identity() const override { return true; }
};

}  // namespace uoe
