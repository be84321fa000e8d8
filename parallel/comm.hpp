// Communicators: the collectives the trainer needs, over typed spans. Counts are ELEMENTS, never
// bytes, and the span's element type says which datatype travels (docs/architecture.md, Conventions). The interface
// (Communicator, in parallel/communicator.hpp without <mpi.h>) is what parallel/ codes against;
// MpiCommunicator implements it over an MPI_Comm it owns. ProcessGroups cuts the world into the ep × dp grid of docs/model.md, Expert parallelism.
#pragma once
#include <mpi.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "parallel/communicator.hpp"
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

// ---- MPI --------------------------------------------------------------------------------------
// The MPI datatype that carries an element type.
MPI_Datatype mpi_datatype(DType t);

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
  // Every node rank's CUDA_VISIBLE_DEVICES (std::nullopt where unset), in node-rank order: with
  // node_rank and node_size what gpu_choose (runtime/gpu_binding.hpp) decides a rank's GPU from.
  std::vector<std::optional<std::string>> node_visible_devices;
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
  std::vector<std::optional<std::string>> visible_devices;  // as ProcessGroups::node_visible_devices
};
NodeRanks node_ranks(MPI_Comm comm);
// Every rank's CUDA_VISIBLE_DEVICES over `node` (collective), in its rank order; std::nullopt where unset.
std::vector<std::optional<std::string>> gather_visible_devices(Communicator& node);
// Every rank's text, in rank order (collective; short texts: host names, device lists).
std::vector<std::string> all_gather_text(Communicator& comm, const std::string& text);

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
