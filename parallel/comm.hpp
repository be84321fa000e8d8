// Communicators: the collectives the trainer needs, over typed spans. Counts are ELEMENTS, never
// bytes, and the span's element type says which datatype travels (docs/architecture.md, Conventions). The interface
// (Communicator) is what parallel/ codes against; MpiCommunicator implements it over an MPI_Comm
// it owns. ProcessGroups cuts the world into the ep × dp grid of docs/model.md, Expert parallelism.
#pragma once
#include <mpi.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "runtime/error.hpp"

namespace uoe {

// Throws uoe::Error naming the MPI call, MPI's own message, file:line and the world rank.
[[noreturn]] void mpi_fail(int code, const char* call, const char* file, int line);

// Every MPI call goes through this; MPI_ERRORS_RETURN on every communicator makes failures come
// back as codes instead of aborting inside MPI, so they reach the check.
#define UOE_CHECK_MPI(call)                                                                    \
  do {                                                                                         \
    const int uoe_mpi_rc_ = (call);                                                            \
    if (uoe_mpi_rc_ != MPI_SUCCESS) ::uoe::mpi_fail(uoe_mpi_rc_, #call, __FILE__, __LINE__); \
  } while (0)

// True between MPI_Init and MPI_Finalize: destructors may release MPI handles only then.
bool mpi_active();

// ---- element types ----------------------------------------------------------------------------
// The element types a collective can carry. The traits template maps a C++ type to one; a type
// without a specialisation does not compile, so no collective can be called on raw bytes.
enum class DType : uint8_t { f32, f64, i32, i64, u64, u8 };
template <class T>
struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::f32; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::f64; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::i32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::i64; };
template <> struct DTypeOf<uint64_t> { static constexpr DType value = DType::u64; };
template <> struct DTypeOf<uint8_t> { static constexpr DType value = DType::u8; };
MPI_Datatype mpi_datatype(DType t);
// Bytes per element of a DType.
size_t dtype_size(DType t);  // what MPI calls that element type

// ---- layouts ----------------------------------------------------------------------------------
// Where each peer's part of an all-to-all buffer lies: peer p's data is the concatenation, in
// order, of blocks first[p] .. first[p+1]-1, block b being elements [offset[b], offset[b]+count[b]).
// Lets a receiver scatter straight into its final order (or a sender gather from it) without a
// staging copy: the expert exchange uses it to land rows expert-major (see mpi_exchange.hpp).
struct PeerBlocks {
  std::vector<int> first;   // [peers + 1] index of each peer's first block
  std::vector<int> offset;  // [blocks] element offset of each block in the buffer
  std::vector<int> count;   // [blocks] elements in each block
  // One block per peer, packed back to back in peer order (the layout plain all_to_all_v assumes).
  static PeerBlocks contiguous(std::span<const int> counts);
  int peers() const { return static_cast<int>(first.size()) - 1; }
};

// ---- requests ---------------------------------------------------------------------------------
// A non-blocking collective in flight. wait() completes it; the destructor waits too, because the
// collective may still read or write the caller's buffers and MPI forbids freeing a collective's
// request. Move-only.
class Request {
 public:
  // Backend-specific state of one operation (its handle and the count arrays it must keep alive).
  class Pending {
   public:
    virtual ~Pending() = default;
    virtual void wait() = 0;
  };
  Request() = default;
  explicit Request(std::unique_ptr<Pending> p) : p_(std::move(p)) {}
  void wait() {
    if (p_) {
      p_->wait();
      p_.reset();
    }
  }
  bool pending() const { return p_ != nullptr; }

 private:
  std::unique_ptr<Pending> p_;
};

// ---- the interface ----------------------------------------------------------------------------
// Collective calls: every rank of the communicator must make the same calls in the same order,
// with matching counts, even when it has nothing to send (empty spans and zero counts).
class Communicator {
 public:
  // The simulated-link decorator (sim_link.hpp) forwards to another communicator's backend calls.
  friend class SimulatedLinkCommunicator;
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual void barrier() = 0;

  // send_counts[p] elements go to peer p, recv_counts[p] come from p; each side packed in peer
  // order (displacements are the prefix sums of the counts).
  template <class T>
  void all_to_all_v(std::span<const T> send, std::span<const int> send_counts, std::span<T> recv,
                    std::span<const int> recv_counts) {
    do_all_to_all_v(send.data(), displace(send_counts, send.size(), "send"), recv.data(),
                    displace(recv_counts, recv.size(), "recv"), DTypeOf<T>::value);
  }
  template <class T>
  [[nodiscard]] Request ialltoallv(std::span<const T> send, std::span<const int> send_counts,
                                   std::span<T> recv, std::span<const int> recv_counts) {
    return do_ialltoallv(send.data(), displace(send_counts, send.size(), "send"), recv.data(),
                         displace(recv_counts, recv.size(), "recv"), DTypeOf<T>::value);
  }
  // The same exchange with either side (or both) laid out as blocks rather than packed.
  template <class T>
  void all_to_all_v(std::span<const T> send, const PeerBlocks& send_layout, std::span<T> recv,
                    const PeerBlocks& recv_layout) {
    check_layout(send_layout, send.size(), "send");
    check_layout(recv_layout, recv.size(), "recv");
    do_all_to_all_blocks(send.data(), send_layout, recv.data(), recv_layout, DTypeOf<T>::value);
  }
  // The block form where both sides cut each peer's data the same way: the k-th block this rank
  // sends to p has as many elements as the k-th block p receives from this rank (zero-element
  // blocks included, on both sides). Then every block can travel as its own contiguous message,
  // which reaches shared-memory single-copy paths that derived datatypes miss (Open MPI's CMA:
  // bench/README-alltoall.md). A mismatch the backend can see throws; backends without a faster
  // path run it as the general block form.
  template <class T>
  void all_to_all_matched(std::span<const T> send, const PeerBlocks& send_layout, std::span<T> recv,
                          const PeerBlocks& recv_layout) {
    check_layout(send_layout, send.size(), "send");
    check_layout(recv_layout, recv.size(), "recv");
    do_all_to_all_matched(send.data(), send_layout, recv.data(), recv_layout, DTypeOf<T>::value);
  }
  // Fixed count per peer: send.size() / size() elements to each (used to exchange counts).
  template <class T>
  void all_to_all(std::span<const T> send, std::span<T> recv) {
    const int n = fixed_count(send.size(), recv.size());
    do_all_to_all(send.data(), recv.data(), n, DTypeOf<T>::value);
  }
  // Element-wise sum over the ranks, in place.
  template <class T>
  void all_reduce_sum(std::span<T> data) {
    do_all_reduce_sum(data.data(), to_count(data.size()), DTypeOf<T>::value);
  }
  template <class T>
  [[nodiscard]] Request iallreduce_sum(std::span<T> data) {
    return do_iallreduce_sum(data.data(), to_count(data.size()), DTypeOf<T>::value);
  }
  template <class T>
  void broadcast(std::span<T> data, int root) {
    do_broadcast(data.data(), to_count(data.size()), DTypeOf<T>::value, root);
  }

 protected:
  // Counts and their prefix sums, in elements; kept together so a request can own both.
  struct Displaced {
    std::vector<int> counts, displs;
  };
  virtual void do_all_to_all_v(const void* send, const Displaced& s, void* recv, const Displaced& r,
                               DType t) = 0;
  virtual Request do_ialltoallv(const void* send, Displaced s, void* recv, Displaced r, DType t) = 0;
  virtual void do_all_to_all_blocks(const void* send, const PeerBlocks& s, void* recv, const PeerBlocks& r,
                                    DType t) = 0;
  virtual void do_all_to_all_matched(const void* send, const PeerBlocks& s, void* recv, const PeerBlocks& r,
                                     DType t) {
    do_all_to_all_blocks(send, s, recv, r, t);
  }
  virtual void do_all_to_all(const void* send, void* recv, int count, DType t) = 0;
  virtual void do_all_reduce_sum(void* data, int count, DType t) = 0;
  virtual Request do_iallreduce_sum(void* data, int count, DType t) = 0;
  virtual void do_broadcast(void* data, int count, DType t, int root) = 0;

 private:
  // Validation shared by every backend: a count array per peer, non-negative, fitting the span,
  // and offsets that fit MPI's int.
  Displaced displace(std::span<const int> counts, size_t capacity, const char* side) const;
  void check_layout(const PeerBlocks& layout, size_t capacity, const char* side) const;
  int fixed_count(size_t send_size, size_t recv_size) const;
  static int to_count(size_t n);
};

// ---- one rank -----------------------------------------------------------------------------------

// A world of one rank without MPI: every exchange is a copy to itself, reductions and broadcasts
// leave the data as it is. For single-process tools and tests of code that takes a Communicator
// (checkpoints, gradient sync).
class SelfCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void barrier() override {}

 protected:
  void do_all_to_all_v(const void* send, const Displaced& s, void* recv, const Displaced& r, DType t) override;
  Request do_ialltoallv(const void* send, Displaced s, void* recv, Displaced r, DType t) override;
  void do_all_to_all_blocks(const void* send, const PeerBlocks& s, void* recv, const PeerBlocks& r,
                            DType t) override;
  void do_all_to_all(const void* send, void* recv, int count, DType t) override;
  void do_all_reduce_sum(void*, int, DType) override {}
  Request do_iallreduce_sum(void*, int, DType) override { return {}; }
  void do_broadcast(void*, int, DType, int root) override;
};

// ---- MPI --------------------------------------------------------------------------------------
class MpiCommunicator final : public Communicator {
 public:
  // Duplicates `parent` (the caller keeps the parent), so traffic here never matches the
  // parent's or another library's, and sets MPI_ERRORS_RETURN on the copy.
  explicit MpiCommunicator(MPI_Comm parent);
  // Frees the communicator if close() was not called and MPI is still running; after
  // MPI_Finalize there is nothing left to free (and calling MPI then is erroneous).
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  // Frees the communicator (collective). Call it before MPI_Finalize; later calls are no-ops.
  void close();
  // Ranks with the same colour form a new communicator, ordered by key (collective).
  std::unique_ptr<MpiCommunicator> split(int color, int key) const;
  // The ranks that share memory with this one (MPI_COMM_TYPE_SHARED: its node), ordered by rank
  // here (collective). The one place the project asks MPI for a node.
  std::unique_ptr<MpiCommunicator> split_node() const;
  MPI_Comm handle() const { return comm_; }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void barrier() override;

 protected:
  void do_all_to_all_v(const void* send, const Displaced& s, void* recv, const Displaced& r, DType t) override;
  Request do_ialltoallv(const void* send, Displaced s, void* recv, Displaced r, DType t) override;
  void do_all_to_all_blocks(const void* send, const PeerBlocks& s, void* recv, const PeerBlocks& r,
                            DType t) override;
  // One MPI_Isend/MPI_Irecv per non-empty block; received sizes are checked against the layout.
  void do_all_to_all_matched(const void* send, const PeerBlocks& s, void* recv, const PeerBlocks& r,
                             DType t) override;
  void do_all_to_all(const void* send, void* recv, int count, DType t) override;
  void do_all_reduce_sum(void* data, int count, DType t) override;
  Request do_iallreduce_sum(void* data, int count, DType t) override;
  void do_broadcast(void* data, int count, DType t, int root) override;

 private:
  struct Adopt {};
  MpiCommunicator(Adopt, MPI_Comm owned);  // takes ownership of a communicator MPI just created
  void configure();                        // error handler, rank and size of comm_
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 0;
  std::vector<MPI_Request> requests_;  // do_all_to_all_matched's, reused
  std::vector<int> request_block_;     // its receive block per request (-1: a send)
  std::vector<MPI_Status> statuses_;
};

// ---- the ep × dp grid (docs/model.md, Expert parallelism) --------------------------------------
// World ranks [g·ep, (g+1)·ep) form expert-parallel group g; ranks with the same position in their
// ep group (ep_rank) form a data-parallel group (the replicas of the same experts). Within each
// group ranks are ordered by world rank.
struct ProcessGroups {
  std::unique_ptr<MpiCommunicator> world, ep_group, dp_group;
  std::unique_ptr<MpiCommunicator> node_group;  // the world's ranks on this rank's node
  int ep = 1;       // ranks per expert-parallel group
  int dp = 1;       // number of expert-parallel groups (world size / ep)
  int ep_rank = 0;  // rank within the ep group
  int dp_rank = 0;  // rank within the dp group (= index of this rank's ep group)
  // This rank's place on its node (node_group: the world's ranks that share its memory, its host):
  // its rank there, ordered by world rank, and how many ranks run there. What picks a GPU
  // (node_rank modulo the GPUs visible) and splits a node's cores between its ranks.
  int node_rank = 0;
  int node_size = 1;
  // Frees the four communicators (collective), before MPI_Finalize.
  void close();
};
// Throws uoe::Error on every rank, before any collective, if ep does not divide the world size.
ProcessGroups make_process_groups(MPI_Comm world, int ep);

// The ranks of `comm` on this rank's node (MpiCommunicator::split_node): this rank's position among
// them, ordered by rank in comm, and their number. Collective over comm. make_process_groups
// computes it once for the world (ProcessGroups::node_rank, node_size); this is for callers without
// the groups.
struct NodeRanks {
  int rank = 0;
  int size = 1;
};
NodeRanks node_ranks(MPI_Comm comm);

// ---- process lifetime -------------------------------------------------------------------------
// MPI_Init_thread on construction, MPI_Finalize on destruction. Works when the program was not
// started by mpirun (Open MPI then runs it as a singleton world of one rank). Asks for
// MPI_THREAD_SERIALIZED because the overlap scheduler issues collectives from a communication
// thread (docs/architecture.md, The two paths); what MPI granted is in thread_level().
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  int thread_level() const { return provided_; }
  int world_rank() const { return rank_; }
  int world_size() const { return size_; }

 private:
  int provided_ = MPI_THREAD_SINGLE;
  int rank_ = 0, size_ = 1;
};

}  // namespace uoe
