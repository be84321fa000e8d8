#include "parallel/mpi_exchange.hpp"

#include "runtime/bf16.hpp"
#include "runtime/watchdog.hpp"

#include <algorithm>
#include <chrono>
#include <string>
#include <climits>
#include <span>

namespace uoe {
namespace {

// Adds the wall time of a scope to a counter, however the scope is left.
class ScopedTimer {
 public:
  explicit ScopedTimer(double& acc) : acc_(acc), t0_(std::chrono::steady_clock::now()) {}
  ~ScopedTimer() { acc_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }

 private:
  double& acc_;
  std::chrono::steady_clock::time_point t0_;
};

// Both sides of a row exchange cut each peer's rows into one block per expert of the owner, so
// that the communicator can move every block as its own contiguous message (all_to_all_matched).
// Source side: the rows for owner q are contiguous (grouped by global expert), cut at its experts.
PeerBlocks source_layout(const ExchangePlan& plan, int width) {
  const int n = static_cast<int>(plan.send_rows.size());
  const int El = n ? static_cast<int>(plan.send_blocks.size()) / n : 0;
  PeerBlocks l;
  l.first.resize(n + 1);
  l.offset.resize(plan.send_blocks.size());
  l.count.resize(plan.send_blocks.size());
  int64_t row = 0;
  for (int q = 0; q < n; ++q) {
    l.first[q] = q * El;
    for (int j = 0; j < El; ++j) {
      const int b = q * El + j;
      UOE_ASSERT((row + plan.send_blocks[b]) * width <= INT_MAX, "source buffer exceeds MPI's int offsets");
      l.offset[b] = static_cast<int>(row * width);
      l.count[b] = plan.send_blocks[b] * width;
      row += plan.send_blocks[b];
    }
  }
  l.first[n] = n * El;
  return l;
}

// Owner side: source s's rows for local expert j sit after the rows of sources 0..s-1 in that
// expert's part of owner order.
PeerBlocks owner_layout(const ExchangePlan& plan, int width) {
  const int n = static_cast<int>(plan.recv_rows.size());
  const int El = static_cast<int>(plan.owner_offsets.size()) - 1;
  PeerBlocks l;
  l.first.resize(n + 1);
  l.offset.resize(plan.recv_blocks.size());
  l.count.resize(plan.recv_blocks.size());
  std::vector<int64_t> next(plan.owner_offsets.begin(), plan.owner_offsets.end() - 1);  // [El]
  for (int s = 0; s < n; ++s) {
    l.first[s] = s * El;
    for (int j = 0; j < El; ++j) {
      const int b = s * El + j;
      UOE_ASSERT((next[j] + plan.recv_blocks[b]) * width <= INT_MAX, "owner buffer exceeds MPI's int offsets");
      l.offset[b] = static_cast<int>(next[j] * width);
      l.count[b] = plan.recv_blocks[b] * width;
      next[j] += plan.recv_blocks[b];
    }
  }
  l.first[n] = n * El;
  return l;
}

int total(const std::vector<int>& v) {
  int64_t s = 0;
  for (const int x : v) s += x;
  return static_cast<int>(s);
}

// Rows this rank exchanges with ranks other than itself.
int64_t remote_rows(const std::vector<int>& rows, int me) {
  int64_t s = 0;
  for (size_t p = 0; p < rows.size(); ++p)
    if (static_cast<int>(p) != me) s += rows[p];
  return s;
}

}  // namespace

MpiExchange::MpiExchange(Communicator& ep_group, Communicator* payload)
    : comm_(ep_group), data_(payload ? *payload : ep_group) {
  if (data_.size() != comm_.size() || data_.rank() != comm_.rank())
    fail("expert exchange: the payload communicator (rank ", data_.rank(), " of ", data_.size(),
         ") is not the expert-parallel group (rank ", comm_.rank(), " of ", comm_.size(), ")");
  // src_rank · 2^20 must fit in int32 for the largest source rank.
  if (comm_.size() > (INT32_MAX >> kSegmentBits) + 1)
    fail("--ep ", comm_.size(), " exceeds ", (INT32_MAX >> kSegmentBits) + 1,
         ", the largest expert-parallel group whose segment ids fit in int32");
}

void MpiExchange::local_experts(int experts, int* begin, int* end) const {
  const int n = comm_.size(), r = comm_.rank();
  if (experts % n != 0)
    fail("expert count ", experts, " is not divisible by the expert-parallel group size --ep ", n,
         ": each rank must own the same number of experts (check --experts, --attn-experts and --ep)");
  *begin = r * (experts / n);
  *end = (r + 1) * (experts / n);
}

void MpiExchange::dispatch(ExchangePlan& plan, const std::vector<int>& src_offsets, const float* x_src,
                           const int32_t* seg_src, const int32_t* pos_src, int d, ExpertRows& dst) {
  dispatch_metadata(plan, src_offsets, seg_src, pos_src, dst);
  WatchScope watch("expert exchange (dispatch) " + plan.where);
  const ScopedTimer timer(seconds_);
  // Payload, straight from the caller's rows into owner order.
  const int R_src = src_offsets.back(), R_dst = dst.offsets.back();
  dst.x.resize_uninit(static_cast<size_t>(R_dst) * d);  // every row is written by the exchange
  const double before = payload_;
  move_rows(x_src, static_cast<size_t>(R_src) * d, source_layout(plan, d), dst.x.data(), static_cast<size_t>(R_dst) * d,
            owner_layout(plan, d), static_cast<double>(remote_rows(plan.send_rows, comm_.rank())),
            static_cast<double>(remote_rows(plan.recv_rows, comm_.rank())), d);
  plan.bytes_sent += payload_ - before;
}

bool MpiExchange::bf16_rows() const {
  return compute_precision() == Precision::bf16 && (&data_ == &comm_ || narrowing_ != nullptr);
}

void MpiExchange::move_rows(const float* send, size_t send_n, const PeerBlocks& send_layout, float* recv,
                            size_t recv_n, const PeerBlocks& recv_layout, double remote_out, double remote_in,
                            int width) {
  if (bf16_rows() && &data_ != &comm_) {
    uint16_t* s16 = narrowing_->narrow_send_buffer(send_n);
    uint16_t* r16 = narrowing_->narrow_recv_buffer(recv_n);
    narrowing_->narrow(s16, send, send_n);
    data_.all_to_all_matched<uint16_t>(std::span<const uint16_t>(s16, send_n), send_layout,
                                       std::span<uint16_t>(r16, recv_n), recv_layout);
    narrowing_->widen(recv, r16, recv_n);
  } else if (bf16_rows()) {
    send16_.resize(send_n);
    recv16_.resize(recv_n);
    bf16_pack(send16_.data(), send, send_n);
    data_.all_to_all_matched<uint16_t>(send16_, send_layout, recv16_, recv_layout);
    bf16_unpack(recv, recv16_.data(), recv_n);
  } else {
    data_.all_to_all_matched<float>(std::span<const float>(send, send_n), send_layout, std::span<float>(recv, recv_n),
                                    recv_layout);
  }
  const double row_bytes = static_cast<double>(bf16_rows() ? sizeof(uint16_t) : sizeof(float)) * width;
  bytes_ += remote_out * row_bytes;
  payload_ += remote_out * row_bytes;
  link_bytes_ += std::max(remote_out, remote_in) * row_bytes;
}

void MpiExchange::dispatch_metadata(ExchangePlan& plan, const std::vector<int>& src_offsets, const int32_t* seg_src,
                                    const int32_t* pos_src, ExpertRows& dst) {
  const ChunkMetadata one{&plan, &src_offsets, seg_src, pos_src, &dst};
  dispatch_metadata_chunks(std::span<const ChunkMetadata>(&one, 1));
}

void MpiExchange::dispatch_metadata_chunks(std::span<const ChunkMetadata> chunks) {
  const int C = static_cast<int>(chunks.size());
  UOE_ASSERT(C > 0);
  WatchScope watch(C == 1 ? "expert exchange (dispatch) " + chunks[0].plan->where
                          : "expert exchange (dispatch, the metadata of all " + std::to_string(C) + " chunks) " +
                                chunks[0].plan->where);
  const ScopedTimer timer(seconds_);
  const int n = comm_.size(), me = comm_.rank();
  const int E = static_cast<int>(chunks[0].src_offsets->size()) - 1;
  int e0 = 0, e1 = 0;
  local_experts(E, &e0, &e1);  // same E on every rank, so a throw here is a throw everywhere
  const int El = e1 - e0;
  // Each row's metadata: its sequence, and its position unless the caller moves those itself.
  const bool apart = chunks[0].positions_apart;
  for (const ChunkMetadata& k : chunks) UOE_ASSERT(k.positions_apart == apart);
  const int w = apart ? 1 : 2;

  // 1. Headers: for each owner, [status, then for each chunk the rows for each of its El experts].
  // A bad segment id is found locally, but throwing before this collective would leave the other
  // ranks waiting in it; the status travels with the counts so that every rank of the group throws
  // together.
  int32_t status = 0, bad_seg = 0;
  for (const ChunkMetadata& k : chunks) {
    const std::vector<int>& off = *k.src_offsets;
    UOE_ASSERT(static_cast<int>(off.size()) == E + 1 && off[0] == 0);
    for (int i = 0; i < off[E] && status == 0; ++i)
      if (k.seg_src[i] < 0 || k.seg_src[i] >= kSegmentsPerRank) {
        status = 1;
        bad_seg = k.seg_src[i];
      }
  }
  const int H = 1 + C * El;
  header_send_.resize(static_cast<size_t>(n) * H);
  header_recv_.resize(static_cast<size_t>(n) * H);
  for (int q = 0; q < n; ++q) {
    header_send_[q * H] = status;
    for (int ch = 0; ch < C; ++ch) {
      const std::vector<int>& off = *chunks[ch].src_offsets;
      for (int j = 0; j < El; ++j) header_send_[q * H + 1 + ch * El + j] = off[q * El + j + 1] - off[q * El + j];
    }
  }
  comm_.all_to_all<int32_t>(header_send_, header_recv_);
  for (int s = 0; s < n; ++s)
    if (header_recv_[s * H] != 0) {
      if (s == me)
        fail("segment id ", bad_seg, " outside [0, 2^", kSegmentBits, ") on rank ", me,
             " of the expert-parallel group: a micro-batch may hold at most 2^", kSegmentBits, " sequences");
      fail("rank ", s, " of the expert-parallel group sent a segment id outside [0, 2^", kSegmentBits,
           ") (see that rank's error)");
    }

  // 2. Each chunk's plan: rows per peer and per (peer, expert) block, owner offsets per local expert.
  // Its metadata goes in one collective with every other chunk's: for each peer, chunk after chunk,
  // the chunk's blocks at their place in the chunks' concatenated buffers.
  src_base_.assign(C + 1, 0);
  dst_base_.assign(C + 1, 0);
  PeerBlocks send_l, recv_l;
  send_l.first.resize(n + 1);
  recv_l.first.resize(n + 1);
  for (int q = 0; q <= n; ++q) send_l.first[q] = recv_l.first[q] = q * C * El;
  send_l.offset.resize(static_cast<size_t>(n) * C * El);
  send_l.count.resize(send_l.offset.size());
  recv_l.offset.resize(send_l.offset.size());
  recv_l.count.resize(send_l.offset.size());
  double bytes = static_cast<double>(n - 1) * H * sizeof(int32_t);
  for (int ch = 0; ch < C; ++ch) {
    ExchangePlan& plan = *chunks[ch].plan;
    ExpertRows& dst = *chunks[ch].dst;
    const std::vector<int>& off = *chunks[ch].src_offsets;
    auto rows_from = [&](int s, int j) { return header_recv_[s * H + 1 + ch * El + j]; };
    plan.send_rows.assign(n, 0);
    plan.recv_rows.assign(n, 0);
    plan.send_blocks.resize(static_cast<size_t>(n) * El);
    plan.recv_blocks.resize(static_cast<size_t>(n) * El);
    for (int q = 0; q < n; ++q) {
      plan.send_rows[q] = off[(q + 1) * El] - off[q * El];
      for (int j = 0; j < El; ++j) {
        plan.send_blocks[q * El + j] = off[q * El + j + 1] - off[q * El + j];
        plan.recv_blocks[q * El + j] = rows_from(q, j);
        plan.recv_rows[q] += rows_from(q, j);
      }
    }
    dst.n_experts = El;
    dst.offsets.assign(El + 1, 0);
    for (int j = 0; j < El; ++j) {
      int rows = 0;
      for (int s = 0; s < n; ++s) rows += rows_from(s, j);
      dst.offsets[j + 1] = dst.offsets[j] + rows;
    }
    plan.owner_offsets = dst.offsets;
    src_base_[ch + 1] = src_base_[ch] + off[E];
    dst_base_[ch + 1] = dst_base_[ch] + dst.offsets[El];
    UOE_ASSERT(w * std::max(src_base_[ch + 1], dst_base_[ch + 1]) <= INT_MAX, "row metadata exceeds MPI's int offsets");
    const PeerBlocks src2 = source_layout(plan, w), own2 = owner_layout(plan, w);
    for (int q = 0; q < n; ++q)
      for (int j = 0; j < El; ++j) {
        const size_t b = q * El + j, at = (static_cast<size_t>(q) * C + ch) * El + j;
        send_l.offset[at] = src2.offset[b] + static_cast<int>(w * src_base_[ch]);
        send_l.count[at] = src2.count[b];
        recv_l.offset[at] = own2.offset[b] + static_cast<int>(w * dst_base_[ch]);
        recv_l.count[at] = own2.count[b];
      }
    // The rows' metadata (and the headers, on the first chunk); the payload is counted by whoever
    // moves it.
    plan.bytes_sent = static_cast<double>(remote_rows(plan.send_rows, me)) * w * sizeof(int32_t) +
                      (ch == 0 ? bytes : 0.0);
  }
  // One collective carries every chunk's metadata: its link time follows the larger direction.
  int64_t meta_out = 0, meta_in = 0;
  for (const ChunkMetadata& k : chunks) {
    bytes_ += k.plan->bytes_sent;
    meta_out += remote_rows(k.plan->send_rows, me);
    meta_in += remote_rows(k.plan->recv_rows, me);
  }
  link_bytes_ += static_cast<double>(std::max(meta_out, meta_in)) * w * sizeof(int32_t) + bytes;

  // 3. Metadata, (seg, pos) per row (seg alone with the positions apart), landing in owner order;
  // then seg made unique per source.
  meta_send_.resize(static_cast<size_t>(src_base_[C]) * w);
  meta_recv_.resize(static_cast<size_t>(dst_base_[C]) * w);
  for (int ch = 0; ch < C; ++ch) {
    int32_t* out = meta_send_.data() + w * src_base_[ch];
    const int64_t rows = src_base_[ch + 1] - src_base_[ch];
    if (apart) {
      std::copy(chunks[ch].seg_src, chunks[ch].seg_src + rows, out);
      continue;
    }
    for (int64_t i = 0; i < rows; ++i) {
      out[2 * i] = chunks[ch].seg_src[i];
      out[2 * i + 1] = chunks[ch].pos_src[i];
    }
  }
  comm_.all_to_all_matched<int32_t>(meta_send_, send_l, meta_recv_, recv_l);
  for (int ch = 0; ch < C; ++ch) {
    const ExchangePlan& plan = *chunks[ch].plan;
    ExpertRows& dst = *chunks[ch].dst;
    const int32_t* in = meta_recv_.data() + w * dst_base_[ch];
    const int R_dst = dst.offsets[El];
    dst.seg.resize(R_dst);
    if (apart) dst.pos.clear();
    else dst.pos.resize(R_dst);
    std::vector<int> next(dst.offsets.begin(), dst.offsets.end() - 1);  // [El] owner order
    for (int s = 0; s < n; ++s)
      for (int j = 0; j < El; ++j) {
        const int r1 = next[j] + plan.recv_blocks[s * El + j];
        if (apart)
          for (int r = next[j]; r < r1; ++r) dst.seg[r] = in[r] + s * kSegmentsPerRank;
        else
          for (int r = next[j]; r < r1; ++r) {
            dst.seg[r] = in[2 * r] + s * kSegmentsPerRank;
            dst.pos[r] = in[2 * r + 1];
          }
        next[j] = r1;
      }
  }
}

// Each owner gathers a source's rows from their per-expert blocks; they land packed by owner on the
// source, which is the source's own order (rows grouped by global expert).
void MpiExchange::to_source(ExchangePlan& plan, const float* owner, float* src, int width) {
  WatchScope watch("expert exchange (return to sources) " + plan.where);
  const ScopedTimer timer(seconds_);
  const size_t R_dst = plan.owner_offsets.back(), R_src = total(plan.send_rows);
  move_rows(owner, R_dst * width, owner_layout(plan, width), src, R_src * width, source_layout(plan, width),
            static_cast<double>(remote_rows(plan.recv_rows, comm_.rank())),
            static_cast<double>(remote_rows(plan.send_rows, comm_.rank())), width);
}

// The reverse: packed by owner on the source, scattered into per-expert blocks on the owner.
void MpiExchange::to_owner(ExchangePlan& plan, const float* src, float* owner, int width) {
  WatchScope watch("expert exchange (to owners) " + plan.where);
  const ScopedTimer timer(seconds_);
  const size_t R_dst = plan.owner_offsets.back(), R_src = total(plan.send_rows);
  move_rows(src, R_src * width, source_layout(plan, width), owner, R_dst * width, owner_layout(plan, width),
            static_cast<double>(remote_rows(plan.send_rows, comm_.rank())),
            static_cast<double>(remote_rows(plan.recv_rows, comm_.rank())), width);
}

// The positions alone, the same way as to_owner's rows, as int32 (never narrowed); counted as
// metadata (bytes_sent, link_bytes), not as payload.
void MpiExchange::positions_to_owner(ExchangePlan& plan, const int32_t* src, int32_t* owner) {
  WatchScope watch("expert exchange (row positions to owners) " + plan.where);
  const ScopedTimer timer(seconds_);
  const size_t R_dst = plan.owner_offsets.back(), R_src = total(plan.send_rows);
  data_.all_to_all_matched<int32_t>(std::span<const int32_t>(src, R_src), source_layout(plan, 1),
                                    std::span<int32_t>(owner, R_dst), owner_layout(plan, 1));
  const double out = static_cast<double>(remote_rows(plan.send_rows, comm_.rank()));
  const double in = static_cast<double>(remote_rows(plan.recv_rows, comm_.rank()));
  bytes_ += out * sizeof(int32_t);
  link_bytes_ += std::max(out, in) * sizeof(int32_t);
}

}  // namespace uoe
