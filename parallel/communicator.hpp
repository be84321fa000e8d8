// The communicator interface without MPI: the element types a collective carries, peer layouts,
// requests, Communicator and the one-rank SelfCommunicator. Code that only calls collectives
// (gradient sync, the training step in layers/) includes this; parallel/comm.hpp adds the MPI
// backend (MpiCommunicator, ProcessGroups, MpiSession) and includes <mpi.h>.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "runtime/error.hpp"

namespace uoe {

// ---- element types ----------------------------------------------------------------------------
// The element types a collective can carry. The traits template maps a C++ type to one; a type
// without a specialisation does not compile, so no collective can be called on raw bytes.
enum class DType : uint8_t { f32, f64, i32, i64, u64, u8, u16 };  // u16: bf16 rows (runtime/bf16.hpp)
template <class T>
struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::f32; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::f64; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::i32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::i64; };
template <> struct DTypeOf<uint64_t> { static constexpr DType value = DType::u64; };
template <> struct DTypeOf<uint8_t> { static constexpr DType value = DType::u8; };
template <> struct DTypeOf<uint16_t> { static constexpr DType value = DType::u16; };
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

}  // namespace uoe
