#include "parallel/comm.hpp"

#include <algorithm>
#include <climits>
#include <cstring>
#include <string>
#include <utility>

#include "runtime/gpu_binding.hpp"
#include "runtime/log.hpp"

namespace uoe {

bool mpi_active() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

void mpi_fail(int code, const char* call, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) len = 0;
  int rank = -1;
  if (mpi_active()) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  fail(call, " failed on rank ", rank, " at ", file, ":", line, ": ",
       len ? std::string(text, len) : "MPI error code " + std::to_string(code));
}

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::u64: return 8;
    case DType::u8: return 1;
    case DType::u16: return 2;
  }
  return 1;
}

MPI_Datatype mpi_datatype(DType t) {
  switch (t) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
    case DType::u64: return MPI_UINT64_T;
    case DType::u8: return MPI_UINT8_T;
    case DType::u16: return MPI_UINT16_T;
  }
  UOE_ASSERT(false, "unknown DType ", static_cast<int>(t));
}

PeerBlocks PeerBlocks::contiguous(std::span<const int> counts) {
  PeerBlocks b;
  b.first.resize(counts.size() + 1);
  b.offset.resize(counts.size());
  b.count.assign(counts.begin(), counts.end());
  int64_t at = 0;
  for (size_t p = 0; p < counts.size(); ++p) {
    b.first[p] = static_cast<int>(p);
    UOE_ASSERT(at <= INT_MAX, "all-to-all buffer exceeds MPI's int offsets");
    b.offset[p] = static_cast<int>(at);
    at += counts[p];
  }
  b.first[counts.size()] = static_cast<int>(counts.size());
  return b;
}

// ---- Communicator: checks shared by every backend ---------------------------------------------

Communicator::Displaced Communicator::displace(std::span<const int> counts, size_t capacity,
                                              const char* side) const {
  UOE_ASSERT(static_cast<int>(counts.size()) == size(), side, " counts has ", counts.size(),
             " entries for ", size(), " ranks");
  Displaced d;
  d.counts.assign(counts.begin(), counts.end());
  d.displs.resize(counts.size());
  int64_t at = 0;
  for (size_t p = 0; p < counts.size(); ++p) {
    UOE_ASSERT(counts[p] >= 0, side, " count for rank ", p, " is ", counts[p]);
    d.displs[p] = static_cast<int>(at);
    at += counts[p];
    UOE_ASSERT(at <= INT_MAX, side, " counts sum past MPI's int displacements");
  }
  UOE_ASSERT(static_cast<size_t>(at) <= capacity, side, " counts sum to ", at, " elements, buffer holds ",
             capacity);
  return d;
}

void Communicator::check_layout(const PeerBlocks& l, size_t capacity, const char* side) const {
  UOE_ASSERT(l.peers() == size(), side, " layout has ", l.peers(), " peers for ", size(), " ranks");
  UOE_ASSERT(l.first.front() == 0 && l.first.back() == static_cast<int>(l.offset.size()) &&
                 l.offset.size() == l.count.size(),
             side, " layout block index is inconsistent");
  for (int p = 0; p < l.peers(); ++p) UOE_ASSERT(l.first[p] <= l.first[p + 1], side, " layout peer ", p);
  for (size_t b = 0; b < l.offset.size(); ++b)
    UOE_ASSERT(l.offset[b] >= 0 && l.count[b] >= 0 &&
                   static_cast<size_t>(l.offset[b]) + static_cast<size_t>(l.count[b]) <= capacity,
               side, " layout block ", b, " [", l.offset[b], ", +", l.count[b], ") outside a buffer of ",
               capacity);
}

int Communicator::fixed_count(size_t send_size, size_t recv_size) const {
  const size_t n = static_cast<size_t>(size());
  UOE_ASSERT(send_size % n == 0 && send_size == recv_size, "all_to_all of ", send_size, " → ", recv_size,
             " elements over ", n, " ranks");
  return to_count(send_size / n);
}

int Communicator::to_count(size_t n) {
  UOE_ASSERT(n <= static_cast<size_t>(INT_MAX), "collective of ", n, " elements exceeds MPI's int count");
  return static_cast<int>(n);
}

// ---- MPI backend ------------------------------------------------------------------------------

namespace {

// A derived datatype, freed when it goes out of scope.
class MpiType {
 public:
  MpiType() = default;
  MpiType(MpiType&& o) noexcept : t_(std::exchange(o.t_, MPI_DATATYPE_NULL)) {}
  MpiType& operator=(MpiType&&) = delete;
  MpiType(const MpiType&) = delete;
  ~MpiType() {
    if (t_ != MPI_DATATYPE_NULL && mpi_active()) MPI_Type_free(&t_);
  }
  // Blocks of `base` elements at the given element offsets, committed.
  static MpiType indexed(int blocks, const int* counts, const int* offsets, MPI_Datatype base) {
    MpiType m;
    UOE_CHECK_MPI(MPI_Type_indexed(blocks, counts, offsets, base, &m.t_));
    UOE_CHECK_MPI(MPI_Type_commit(&m.t_));
    return m;
  }
  MPI_Datatype get() const { return t_; }

 private:
  MPI_Datatype t_ = MPI_DATATYPE_NULL;
};

// One side of an MPI_Alltoallw: per peer a count, a BYTE displacement and a datatype. A peer with a
// single block sends it as `count` base elements in place; a peer with several gets an indexed
// datatype (displacement 0) so MPI reads or writes the blocks directly. This rank's own part is
// left out (count 0): copy_own_part moves it.
struct AlltoallwSide {
  std::vector<int> counts, byte_displs;
  std::vector<MPI_Datatype> types;
  std::vector<MpiType> owned;

  AlltoallwSide(const PeerBlocks& l, int me, MPI_Datatype base, int elem_bytes) {
    const int n = l.peers();
    counts.assign(n, 0);
    byte_displs.assign(n, 0);
    types.assign(n, base);
    owned.reserve(n);
    for (int p = 0; p < n; ++p) {
      if (p == me) continue;
      const int b0 = l.first[p], nb = l.first[p + 1] - b0;
      if (nb == 1) {
        counts[p] = l.count[b0];
        const int64_t bytes = int64_t{l.offset[b0]} * elem_bytes;
        UOE_ASSERT(bytes <= INT_MAX, "all-to-all byte displacement ", bytes, " exceeds MPI's int");
        byte_displs[p] = static_cast<int>(bytes);
      } else if (nb > 1) {
        owned.push_back(MpiType::indexed(nb, &l.count[b0], &l.offset[b0], base));
        types[p] = owned.back().get();
        counts[p] = 1;
      }
    }
  }
};

// This rank's part of a block exchange: the same elements in the same order on both sides, cut
// into blocks differently. Copied here, and given to MPI with a count of 0: through Open MPI
// 4.1's self path with a derived datatype the whole exchange ran 8–10% slower at 1–4 MB
// (bench/README-alltoall.md). Plain all_to_all_v leaves its self part to MPI, where the same
// trick measured no better.
void copy_own_part(const char* send, const PeerBlocks& s, char* recv, const PeerBlocks& r, int me,
                   size_t elem_bytes) {
  int sb = s.first[me], rb = r.first[me];
  const int s_end = s.first[me + 1], r_end = r.first[me + 1];
  int64_t s_total = 0, r_total = 0;
  for (int b = sb; b < s_end; ++b) s_total += s.count[b];
  for (int b = rb; b < r_end; ++b) r_total += r.count[b];
  UOE_ASSERT(s_total == r_total, "rank ", me, " sends itself ", s_total, " elements but expects ", r_total);
  int s_used = 0, r_used = 0;  // elements already copied from the current block of each side
  while (sb < s_end && rb < r_end) {
    const int take = std::min(s.count[sb] - s_used, r.count[rb] - r_used);
    if (take > 0)
      std::memcpy(recv + (static_cast<size_t>(r.offset[rb]) + r_used) * elem_bytes,
                  send + (static_cast<size_t>(s.offset[sb]) + s_used) * elem_bytes, take * elem_bytes);
    s_used += take;
    r_used += take;
    if (s_used == s.count[sb]) {
      ++sb;
      s_used = 0;
    }
    if (r_used == r.count[rb]) {
      ++rb;
      r_used = 0;
    }
  }
}

int type_size(MPI_Datatype t) {
  int s = 0;
  UOE_CHECK_MPI(MPI_Type_size(t, &s));
  return s;
}

// The in-flight state of a non-blocking collective: its request plus whatever arrays MPI may read
// until it completes (MPI requires count and displacement arrays to stay valid until then).
template <class Keep>
class MpiPending final : public Request::Pending {
 public:
  explicit MpiPending(Keep keep) : keep_(std::move(keep)) {}
  ~MpiPending() override {
    if (req_ != MPI_REQUEST_NULL && mpi_active()) MPI_Wait(&req_, MPI_STATUS_IGNORE);
  }
  void wait() override {
    const int rc = MPI_Wait(&req_, MPI_STATUS_IGNORE);
    req_ = MPI_REQUEST_NULL;  // never wait twice on a request MPI already completed or failed
    if (rc != MPI_SUCCESS) mpi_fail(rc, "MPI_Wait(&req_, MPI_STATUS_IGNORE)", __FILE__, __LINE__);
  }
  MPI_Request* handle() { return &req_; }
  Keep& keep() { return keep_; }

 private:
  Keep keep_;
  MPI_Request req_ = MPI_REQUEST_NULL;
};

struct NothingToKeep {};

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm parent) {
  UOE_CHECK_MPI(MPI_Comm_dup(parent, &comm_));
  configure();
}

MpiCommunicator::MpiCommunicator(Adopt, MPI_Comm owned) : comm_(owned) { configure(); }

void MpiCommunicator::configure() {
  // A throwing constructor runs no destructor: free the new communicator here or it leaks.
  try {
    UOE_CHECK_MPI(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    UOE_CHECK_MPI(MPI_Comm_rank(comm_, &rank_));
    UOE_CHECK_MPI(MPI_Comm_size(comm_, &size_));
  } catch (...) {
    MPI_Comm_free(&comm_);
    throw;
  }
}

MpiCommunicator::~MpiCommunicator() {
  if (comm_ != MPI_COMM_NULL && mpi_active()) MPI_Comm_free(&comm_);
}

void MpiCommunicator::close() {
  if (comm_ != MPI_COMM_NULL) UOE_CHECK_MPI(MPI_Comm_free(&comm_));
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::split(int color, int key) const {
  MPI_Comm c = MPI_COMM_NULL;
  UOE_CHECK_MPI(MPI_Comm_split(comm_, color, key, &c));
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(Adopt{}, c));
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::split_node() const {
  MPI_Comm c = MPI_COMM_NULL;
  // key = rank here, so the node's ranks keep this communicator's order whatever MPI does with ties.
  UOE_CHECK_MPI(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &c));
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(Adopt{}, c));
}

void MpiCommunicator::barrier() { UOE_CHECK_MPI(MPI_Barrier(comm_)); }

void MpiCommunicator::do_all_to_all_v(const void* send, const Displaced& s, void* recv, const Displaced& r,
                                      DType t) {
  const MPI_Datatype dt = mpi_datatype(t);
  UOE_CHECK_MPI(MPI_Alltoallv(send, s.counts.data(), s.displs.data(), dt, recv, r.counts.data(),
                              r.displs.data(), dt, comm_));
}

Request MpiCommunicator::do_ialltoallv(const void* send, Displaced s, void* recv, Displaced r, DType t) {
  const MPI_Datatype dt = mpi_datatype(t);
  auto p = std::make_unique<MpiPending<std::pair<Displaced, Displaced>>>(std::pair{std::move(s), std::move(r)});
  const Displaced& ks = p->keep().first;
  const Displaced& kr = p->keep().second;
  UOE_CHECK_MPI(MPI_Ialltoallv(send, ks.counts.data(), ks.displs.data(), dt, recv, kr.counts.data(),
                               kr.displs.data(), dt, comm_, p->handle()));
  return Request(std::move(p));
}

void MpiCommunicator::do_all_to_all_blocks(const void* send, const PeerBlocks& s, void* recv,
                                           const PeerBlocks& r, DType t) {
  const MPI_Datatype dt = mpi_datatype(t);
  const int bytes = type_size(dt);
  copy_own_part(static_cast<const char*>(send), s, static_cast<char*>(recv), r, rank_, bytes);
  const AlltoallwSide ws(s, rank_, dt, bytes), wr(r, rank_, dt, bytes);
  UOE_CHECK_MPI(MPI_Alltoallw(send, ws.counts.data(), ws.byte_displs.data(), ws.types.data(), recv,
                              wr.counts.data(), wr.byte_displs.data(), wr.types.data(), comm_));
}

// Point-to-point messages of one matched exchange. Within one (sender, receiver, communicator, tag)
// MPI delivers in posting order, so one tag serves every block; collectives on the same
// communicator never match point-to-point traffic.
constexpr int kMatchedTag = 0x5545;

void MpiCommunicator::do_all_to_all_matched(const void* send, const PeerBlocks& s, void* recv,
                                            const PeerBlocks& r, DType t) {
  const MPI_Datatype dt = mpi_datatype(t);
  const size_t es = dtype_size(t);
  copy_own_part(static_cast<const char*>(send), s, static_cast<char*>(recv), r, rank_, es);
  requests_.clear();
  request_block_.clear();
  // Receives first (no unexpected-message copies), then sends; both sweep the peers starting after
  // this rank so that not every rank sends to rank 0 first.
  for (int k = 1; k < size_; ++k) {
    const int p = (rank_ + size_ - k) % size_;
    for (int b = r.first[p]; b < r.first[p + 1]; ++b) {
      if (r.count[b] == 0) continue;
      requests_.emplace_back();
      request_block_.push_back(b);
      UOE_CHECK_MPI(MPI_Irecv(static_cast<char*>(recv) + static_cast<size_t>(r.offset[b]) * es, r.count[b], dt, p,
                              kMatchedTag, comm_, &requests_.back()));
    }
  }
  for (int k = 1; k < size_; ++k) {
    const int p = (rank_ + k) % size_;
    for (int b = s.first[p]; b < s.first[p + 1]; ++b) {
      if (s.count[b] == 0) continue;
      requests_.emplace_back();
      request_block_.push_back(-1);
      UOE_CHECK_MPI(MPI_Isend(static_cast<const char*>(send) + static_cast<size_t>(s.offset[b]) * es, s.count[b], dt,
                              p, kMatchedTag, comm_, &requests_.back()));
    }
  }
  std::vector<MPI_Status>& st = statuses_;
  st.resize(requests_.size());
  const int rc = MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), st.data());
  if (rc != MPI_SUCCESS) {
    // MPI_ERR_IN_STATUS leaves the requests that had not completed pending: finish them, or this
    // rank's sends would never reach peers that are still waiting for them.
    for (size_t i = 0; i < st.size(); ++i)
      if (rc == MPI_ERR_IN_STATUS && st[i].MPI_ERROR == MPI_ERR_PENDING)
        MPI_Wait(&requests_[i], &st[i]);
    // A receive shorter than the block it landed in fails with MPI_ERR_TRUNCATE: say which.
    for (size_t i = 0; i < st.size(); ++i)
      if (request_block_[i] >= 0 && st[i].MPI_ERROR == MPI_ERR_TRUNCATE)
        fail("matched all-to-all: rank ", st[i].MPI_SOURCE, " sent rank ", rank_,
             " a block larger than the ", r.count[request_block_[i]], " elements expected (layouts do not match)");
    mpi_fail(rc, "MPI_Waitall (matched all-to-all)", __FILE__, __LINE__);
  }
  for (size_t i = 0; i < st.size(); ++i) {
    if (request_block_[i] < 0) continue;
    int got = 0;
    UOE_CHECK_MPI(MPI_Get_count(&st[i], dt, &got));
    if (got != r.count[request_block_[i]])
      fail("matched all-to-all: rank ", st[i].MPI_SOURCE, " sent rank ", rank_, " a block of ", got,
           " elements where ", r.count[request_block_[i]], " were expected (layouts do not match)");
  }
}

void MpiCommunicator::do_all_to_all(const void* send, void* recv, int count, DType t) {
  const MPI_Datatype dt = mpi_datatype(t);
  UOE_CHECK_MPI(MPI_Alltoall(send, count, dt, recv, count, dt, comm_));
}

void MpiCommunicator::do_all_reduce_sum(void* data, int count, DType t) {
  UOE_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, data, count, mpi_datatype(t), MPI_SUM, comm_));
}

Request MpiCommunicator::do_iallreduce_sum(void* data, int count, DType t) {
  auto p = std::make_unique<MpiPending<NothingToKeep>>(NothingToKeep{});
  UOE_CHECK_MPI(MPI_Iallreduce(MPI_IN_PLACE, data, count, mpi_datatype(t), MPI_SUM, comm_, p->handle()));
  return Request(std::move(p));
}

void MpiCommunicator::do_broadcast(void* data, int count, DType t, int root) {
  UOE_CHECK_MPI(MPI_Bcast(data, count, mpi_datatype(t), root, comm_));
}

// ---- process groups ---------------------------------------------------------------------------

NodeRanks node_ranks(MPI_Comm comm) {
  MpiCommunicator parent(comm);
  std::unique_ptr<MpiCommunicator> node = parent.split_node();
  const NodeRanks n{node->rank(), node->size(), gather_visible_devices(*node)};
  node->close();
  parent.close();
  return n;
}

std::vector<std::string> all_gather_text(Communicator& comm, const std::string& text) {
  const int n = comm.size(), me = comm.rank();
  std::vector<int> lengths(n, 0);
  lengths[me] = static_cast<int>(text.size());
  comm.all_reduce_sum(std::span<int>(lengths));
  std::vector<int> offsets(n, 0);
  for (int i = 1; i < n; ++i) offsets[i] = offsets[i - 1] + lengths[i - 1];
  // Every rank's bytes at its offset, zeros elsewhere: the sum is the concatenation.
  std::vector<int> all(std::max(1, offsets[n - 1] + lengths[n - 1]), 0);
  for (std::size_t k = 0; k < text.size(); ++k) all[offsets[me] + k] = static_cast<unsigned char>(text[k]);
  comm.all_reduce_sum(std::span<int>(all));
  std::vector<std::string> out(n);
  for (int i = 0; i < n; ++i)
    for (int k = 0; k < lengths[i]; ++k) out[i] += static_cast<char>(all[offsets[i] + k]);
  return out;
}

std::vector<std::optional<std::string>> gather_visible_devices(Communicator& node) {
  // Each rank's value with a leading mark: 'S' set (then the value), 'U' unset.
  const std::optional<std::string> mine = visible_devices_from_env();
  const std::vector<std::string> all = all_gather_text(node, mine ? "S" + *mine : std::string("U"));
  std::vector<std::optional<std::string>> out(all.size());
  for (std::size_t i = 0; i < all.size(); ++i)
    if (!all[i].empty() && all[i][0] == 'S') out[i] = all[i].substr(1);
  return out;
}

void ProcessGroups::close() {
  // Reverse order of creation; each close is collective over its own group.
  if (node_group) node_group->close();
  if (dp_group) dp_group->close();
  if (ep_group) ep_group->close();
  if (world) world->close();
}

ProcessGroups make_process_groups(MPI_Comm world, int ep) {
  int world_rank = 0, world_size = 0;
  UOE_CHECK_MPI(MPI_Comm_rank(world, &world_rank));
  UOE_CHECK_MPI(MPI_Comm_size(world, &world_size));
  // Local checks only, before any collective: every rank sees the same numbers and throws the
  // same error, so no rank is left waiting in a collective the others never join.
  if (ep < 1 || world_size % ep != 0)
    fail("--ep ", ep, " must be at least 1 and divide the number of ranks (world size ", world_size,
         "): each expert-parallel group needs exactly ep ranks");
  ProcessGroups g;
  g.ep = ep;
  g.dp = world_size / ep;
  g.ep_rank = world_rank % ep;
  g.dp_rank = world_rank / ep;
  g.world = std::make_unique<MpiCommunicator>(world);
  // key = world rank, so each group is ordered by world rank whatever MPI's split does with ties.
  g.ep_group = g.world->split(g.dp_rank, world_rank);
  g.dp_group = g.world->split(g.ep_rank, world_rank);
  UOE_ASSERT(g.ep_group->rank() == g.ep_rank && g.ep_group->size() == ep);
  UOE_ASSERT(g.dp_group->rank() == g.dp_rank && g.dp_group->size() == g.dp);
  g.node_group = g.world->split_node();
  g.node_rank = g.node_group->rank();
  g.node_size = g.node_group->size();
  g.node_visible_devices = gather_visible_devices(*g.node_group);
  return g;
}

// ---- session ----------------------------------------------------------------------------------

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) fail("MPI is already initialised: create one MpiSession per process");
  UOE_CHECK_MPI(MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided_));
  // The default handler aborts inside MPI; make errors come back to UOE_CHECK_MPI instead (the
  // communicators we create set it again on themselves, duplicates inherit it anyway).
  UOE_CHECK_MPI(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  UOE_CHECK_MPI(MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN));
  UOE_CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  UOE_CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size_));
  set_process_rank(rank_);  // for the error messages of runtime/'s CUDA checks
}

MpiSession::~MpiSession() {
  set_process_rank(-1);
  if (mpi_active()) MPI_Finalize();
}

// ---- one rank ---------------------------------------------------------------------------------

// The base class has checked that counts are per peer (one here) and fit the buffers.
void SelfCommunicator::do_all_to_all_v(const void* send, const Displaced& s, void* recv, const Displaced& r,
                                       DType t) {
  if (s.counts[0] != r.counts[0])
    fail("all_to_all_v on one rank: sends ", s.counts[0], " elements to itself but expects ", r.counts[0]);
  const size_t es = dtype_size(t);
  if (s.counts[0] > 0)
    std::memmove(static_cast<char*>(recv) + static_cast<size_t>(r.displs[0]) * es,
                 static_cast<const char*>(send) + static_cast<size_t>(s.displs[0]) * es,
                 static_cast<size_t>(s.counts[0]) * es);
}

Request SelfCommunicator::do_ialltoallv(const void* send, Displaced s, void* recv, Displaced r, DType t) {
  do_all_to_all_v(send, s, recv, r, t);
  return {};
}

void SelfCommunicator::do_all_to_all_blocks(const void* send, const PeerBlocks& s, void* recv, const PeerBlocks& r,
                                            DType t) {
  // The blocks of both sides, in order, as one stream of elements.
  size_t sent = 0, received = 0;
  for (int b = s.first[0]; b < s.first[1]; ++b) sent += static_cast<size_t>(s.count[b]);
  for (int b = r.first[0]; b < r.first[1]; ++b) received += static_cast<size_t>(r.count[b]);
  if (sent != received) fail("all_to_all_v on one rank: sends ", sent, " elements to itself but expects ", received);
  const size_t es = dtype_size(t);
  int rb = r.first[0];
  size_t r_done = 0;  // elements already filled in block rb
  for (int sb = s.first[0]; sb < s.first[1]; ++sb) {
    size_t s_done = 0;
    while (s_done < static_cast<size_t>(s.count[sb])) {
      while (r_done == static_cast<size_t>(r.count[rb])) {
        ++rb;
        r_done = 0;
      }
      const size_t n = std::min(static_cast<size_t>(s.count[sb]) - s_done, static_cast<size_t>(r.count[rb]) - r_done);
      std::memmove(static_cast<char*>(recv) + (static_cast<size_t>(r.offset[rb]) + r_done) * es,
                   static_cast<const char*>(send) + (static_cast<size_t>(s.offset[sb]) + s_done) * es, n * es);
      s_done += n;
      r_done += n;
    }
  }
}

void SelfCommunicator::do_all_to_all(const void* send, void* recv, int count, DType t) {
  if (count > 0) std::memmove(recv, send, static_cast<size_t>(count) * dtype_size(t));
}

void SelfCommunicator::do_broadcast(void*, int, DType, int root) {
  if (root != 0) fail("broadcast on one rank from root ", root);
}

}  // namespace uoe
