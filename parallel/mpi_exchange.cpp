#include "parallel/mpi_exchange.hpp"

#include "runtime/watchdog.hpp"

#include <chrono>
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

// Per-peer element counts for rows of `width` elements.
std::vector<int> scaled(const std::vector<int>& rows, int width) {
  std::vector<int> c(rows.size());
  for (size_t p = 0; p < rows.size(); ++p) {
    const int64_t n = int64_t{rows[p]} * width;
    UOE_ASSERT(n <= INT_MAX, "exchange of ", n, " elements to one rank exceeds MPI's int counts");
    c[p] = static_cast<int>(n);
  }
  return c;
}

// Where each source's rows sit in owner order, as blocks of `width`-element rows: maximal runs of
// consecutive owner positions in plan.owner_row (at most one run per local expert and source).
// dispatch makes owner_row strictly increasing over each source's rows, so "row i+m lies m rows
// after row i" holds for a prefix of the rest of the source's rows, and each run's end is found by
// binary search: O(runs · log rows) per call instead of a pass over every row.
PeerBlocks owner_layout(const ExchangePlan& plan, int width) {
  PeerBlocks l;
  l.first.reserve(plan.recv_rows.size() + 1);
  l.first.push_back(0);
  int i = 0;
  for (const int rows : plan.recv_rows) {
    const int end = i + rows;
    while (i < end) {
      const int r0 = plan.owner_row[i];
      int len = 1, past = end - i;  // the run covers [i, i+len) and ends at or before i+past
      while (len < past) {
        const int mid = (len + past) / 2;
        if (plan.owner_row[i + mid] == r0 + mid)
          len = mid + 1;
        else
          past = mid;
      }
      const int64_t off = int64_t{r0} * width;
      UOE_ASSERT(off + int64_t{len} * width <= INT_MAX, "owner buffer exceeds MPI's int offsets");
      l.offset.push_back(static_cast<int>(off));
      l.count.push_back(len * width);
      i += len;
    }
    l.first.push_back(static_cast<int>(l.offset.size()));
  }
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

MpiExchange::MpiExchange(Communicator& ep_group) : comm_(ep_group) {
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
  WatchScope watch("expert exchange (dispatch) " + plan.where);
  const ScopedTimer timer(seconds_);
  const int n = comm_.size(), me = comm_.rank();
  const int E = static_cast<int>(src_offsets.size()) - 1;
  int e0 = 0, e1 = 0;
  local_experts(E, &e0, &e1);  // same E on every rank, so a throw here is a throw everywhere
  const int El = e1 - e0;
  UOE_ASSERT(src_offsets[0] == 0);
  const int R_src = src_offsets[E];

  // 1. Headers: for each owner, [status, rows for each of its El experts]. A bad segment id is
  // found locally, but throwing before this collective would leave the other ranks waiting in it;
  // the status travels with the counts so that every rank of the group throws together.
  int32_t status = 0, bad_seg = 0;
  for (int i = 0; i < R_src && status == 0; ++i)
    if (seg_src[i] < 0 || seg_src[i] >= kSegmentsPerRank) {
      status = 1;
      bad_seg = seg_src[i];
    }
  const int H = El + 1;
  header_send_.resize(static_cast<size_t>(n) * H);
  header_recv_.resize(static_cast<size_t>(n) * H);
  for (int q = 0; q < n; ++q) {
    header_send_[q * H] = status;
    for (int j = 0; j < El; ++j)
      header_send_[q * H + 1 + j] = src_offsets[q * El + j + 1] - src_offsets[q * El + j];
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
  auto rows_from = [&](int s, int j) { return header_recv_[s * H + 1 + j]; };

  // 2. The plan: rows per peer, owner offsets per local expert, and owner_row.
  plan.send_rows.assign(n, 0);
  plan.recv_rows.assign(n, 0);
  for (int q = 0; q < n; ++q) plan.send_rows[q] = src_offsets[(q + 1) * El] - src_offsets[q * El];
  dst.n_experts = El;
  dst.offsets.assign(El + 1, 0);
  for (int j = 0; j < El; ++j) {
    int rows = 0;
    for (int s = 0; s < n; ++s) rows += rows_from(s, j);
    dst.offsets[j + 1] = dst.offsets[j] + rows;
  }
  const int R_dst = dst.offsets[El];
  plan.owner_row.resize(R_dst);
  {
    std::vector<int> next(dst.offsets.begin(), dst.offsets.end() - 1);  // [El] next free owner row
    int i = 0;
    for (int s = 0; s < n; ++s)
      for (int j = 0; j < El; ++j) {
        const int c = rows_from(s, j);
        for (int k = 0; k < c; ++k) plan.owner_row[i++] = next[j] + k;
        next[j] += c;
        plan.recv_rows[s] += c;
      }
  }

  // 3. Metadata, (seg, pos) per row, landing in owner order; then seg made unique per source.
  meta_send_.resize(static_cast<size_t>(R_src) * 2);
  for (int i = 0; i < R_src; ++i) {
    meta_send_[2 * i] = seg_src[i];
    meta_send_[2 * i + 1] = pos_src[i];
  }
  meta_recv_.resize(static_cast<size_t>(R_dst) * 2);
  comm_.all_to_all_v<int32_t>(meta_send_, PeerBlocks::contiguous(scaled(plan.send_rows, 2)), meta_recv_,
                              owner_layout(plan, 2));
  dst.seg.resize(R_dst);
  dst.pos.resize(R_dst);
  for (int s = 0, i = 0; s < n; ++s)
    for (int k = 0; k < plan.recv_rows[s]; ++k, ++i) {
      const int r = plan.owner_row[i];
      dst.seg[r] = meta_recv_[2 * r] + s * kSegmentsPerRank;
      dst.pos[r] = meta_recv_[2 * r + 1];
    }

  // 4. Payload, straight from the caller's rows into owner order.
  dst.x.resize_uninit(static_cast<size_t>(R_dst) * d);  // every row is written by the exchange
  comm_.all_to_all_v<float>(std::span<const float>(x_src, static_cast<size_t>(R_src) * d),
                            PeerBlocks::contiguous(scaled(plan.send_rows, d)), dst.x, owner_layout(plan, d));

  const double row_bytes = sizeof(float) * d + 2 * sizeof(int32_t);  // payload + seg, pos
  plan.bytes_sent = static_cast<double>(remote_rows(plan.send_rows, me)) * row_bytes +
                    static_cast<double>(n - 1) * H * sizeof(int32_t);
  bytes_ += plan.bytes_sent;
}

// Each owner gathers a source's rows from their per-expert blocks; they land packed by owner on the
// source, which is the source's own order (rows grouped by global expert).
void MpiExchange::to_source(ExchangePlan& plan, const float* owner, float* src, int width) {
  WatchScope watch("expert exchange (return to sources) " + plan.where);
  const ScopedTimer timer(seconds_);
  const size_t R_dst = plan.owner_row.size(), R_src = total(plan.send_rows);
  comm_.all_to_all_v<float>(std::span<const float>(owner, R_dst * width), owner_layout(plan, width),
                            std::span<float>(src, R_src * width),
                            PeerBlocks::contiguous(scaled(plan.send_rows, width)));
  bytes_ += static_cast<double>(remote_rows(plan.recv_rows, comm_.rank())) * sizeof(float) * width;
}

// The reverse: packed by owner on the source, scattered into per-expert blocks on the owner.
void MpiExchange::to_owner(ExchangePlan& plan, const float* src, float* owner, int width) {
  WatchScope watch("expert exchange (to owners) " + plan.where);
  const ScopedTimer timer(seconds_);
  const size_t R_dst = plan.owner_row.size(), R_src = total(plan.send_rows);
  comm_.all_to_all_v<float>(std::span<const float>(src, R_src * width),
                            PeerBlocks::contiguous(scaled(plan.send_rows, width)),
                            std::span<float>(owner, R_dst * width), owner_layout(plan, width));
  bytes_ += static_cast<double>(remote_rows(plan.send_rows, comm_.rank())) * sizeof(float) * width;
}

}  // namespace uoe
