#include "parallel/exchange.hpp"

#include <cstring>

#include "runtime/error.hpp"

namespace uoe {

void ExpertExchange::dispatch_metadata(ExchangePlan&, const std::vector<int>&, const int32_t*, const int32_t*,
                                       ExpertRows&) {
  fail("this expert exchange cannot dispatch row metadata apart from the rows");
}

void ExpertExchange::positions_to_owner(ExchangePlan&, const int32_t*, int32_t*) {
  fail("this expert exchange cannot move row positions apart from the metadata");
}

void ExpertExchange::dispatch_metadata_chunks(std::span<const ChunkMetadata> chunks) {
  for (const ChunkMetadata& c : chunks) {
    if (c.positions_apart) fail("this expert exchange cannot dispatch row metadata without the positions");
    dispatch_metadata(*c.plan, *c.src_offsets, c.seg_src, c.pos_src, *c.dst);
  }
}

void LocalExchange::dispatch_metadata(ExchangePlan& plan, const std::vector<int>& src_offsets, const int32_t* seg_src,
                                      const int32_t* pos_src, ExpertRows& dst) {
  const int R = src_offsets.back();
  plan.send_rows.assign(1, R);
  plan.recv_rows.assign(1, R);
  plan.send_blocks.clear();
  plan.recv_blocks.clear();
  plan.owner_offsets.clear();
  plan.bytes_sent = 0;
  dst.n_experts = static_cast<int>(src_offsets.size()) - 1;
  dst.offsets = src_offsets;
  dst.seg.assign(seg_src, seg_src + R);
  dst.pos.assign(pos_src, pos_src + R);
}

void LocalExchange::dispatch(ExchangePlan& plan, const std::vector<int>& src_offsets, const float* x_src,
                             const int32_t* seg_src, const int32_t* pos_src, int d, ExpertRows& dst) {
  dispatch_metadata(plan, src_offsets, seg_src, pos_src, dst);
  const int R = src_offsets.back();
  dst.x.resize_uninit(static_cast<size_t>(R) * d);
  if (R) std::memcpy(dst.x.data(), x_src, sizeof(float) * R * d);
}

void LocalExchange::to_source(ExchangePlan& plan, const float* owner, float* src, int width) {
  const int R = plan.send_rows[0];
  if (R) std::memcpy(src, owner, sizeof(float) * R * width);
}

void LocalExchange::to_owner(ExchangePlan& plan, const float* src, float* owner, int width) {
  const int R = plan.send_rows[0];
  if (R) std::memcpy(owner, src, sizeof(float) * R * width);
}

void LocalExchange::positions_to_owner(ExchangePlan& plan, const int32_t* src, int32_t* owner) {
  const int R = plan.send_rows[0];
  if (R) std::memcpy(owner, src, sizeof(int32_t) * R);
}

}  // namespace uoe
