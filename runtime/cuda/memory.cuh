// RAII owners for GPU resources: device buffers, pinned host buffers, streams and events. Host-only
// code (no kernels), so g++ and nvcc can both include it. Every handle is released by its owner's
// destructor; release errors there are ignored (a destructor cannot report them, and after a sticky
// device error every release fails anyway); the error that mattered was thrown where it happened.
#pragma once
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <span>
#include <utility>
#include <vector>

#include "runtime/cuda/check.cuh"
#include "runtime/staged_copy.hpp"

namespace uoe::cuda {

// cudaMalloc'd array of T on the current device. Like Buffer<T>: grows, never shrinks, so a buffer
// resized every step to at most its largest size allocates once (cudaFree/cudaMalloc synchronise the
// device, so steady-state steps must not reallocate). Contents after a growing resize are undefined.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) { resize(n); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)), cap_(std::exchange(o.cap_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
      cap_ = std::exchange(o.cap_, 0);
    }
    return *this;
  }
  ~DeviceBuffer() { release(); }

  void resize(size_t n) {
    if (n > cap_) {
      release();
      void* p = nullptr;
      UOE_CHECK_CUDA(cudaMalloc(&p, (n ? n : 1) * sizeof(T)));
      p_ = static_cast<T*>(p);
      cap_ = n;
    }
    n_ = n;
  }
  // Zero-fills the current size, in stream order.
  void zero(cudaStream_t s) {
    if (n_) UOE_CHECK_CUDA(cudaMemsetAsync(p_, 0, n_ * sizeof(T), s));
  }
  // Resizes to host.size() and copies host → device in stream order. The host memory must stay
  // valid until the copy has run (pinned memory makes the copy truly asynchronous).
  void upload(std::span<const T> host, cudaStream_t s) {
    resize(host.size());
    if (n_) UOE_CHECK_CUDA(cudaMemcpyAsync(p_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice, s));
  }
  // Copies the first host.size() elements device → host in stream order.
  void download(std::span<T> host, cudaStream_t s) const {
    UOE_ASSERT(host.size() <= n_, "download of ", host.size(), " elements from a device buffer of ", n_);
    if (!host.empty())
      UOE_CHECK_CUDA(cudaMemcpyAsync(host.data(), p_, host.size() * sizeof(T), cudaMemcpyDeviceToHost, s));
  }

  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  void release() {
    if (p_) (void)cudaFree(p_);
    p_ = nullptr;
    n_ = cap_ = 0;
  }
  T* p_ = nullptr;
  size_t n_ = 0, cap_ = 0;
};

// Page-locked host memory (cudaMallocHost): the staging side of asynchronous copies, e.g. the
// device → host snapshot a checkpoint writer takes while training goes on.
template <class T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t n) { resize(n); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  PinnedBuffer(PinnedBuffer&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)), cap_(std::exchange(o.cap_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
      cap_ = std::exchange(o.cap_, 0);
    }
    return *this;
  }
  ~PinnedBuffer() { release(); }

  void resize(size_t n) {
    if (n > cap_) {
      release();
      void* p = nullptr;
      UOE_CHECK_CUDA(cudaMallocHost(&p, (n ? n : 1) * sizeof(T)));
      p_ = static_cast<T*>(p);
      cap_ = n;
    }
    n_ = n;
  }
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  T& operator[](size_t i) { return p_[i]; }
  const T& operator[](size_t i) const { return p_[i]; }

 private:
  void release() {
    if (p_) (void)cudaFreeHost(p_);
    p_ = nullptr;
    n_ = cap_ = 0;
  }
  T* p_ = nullptr;
  size_t n_ = 0, cap_ = 0;
};

// A non-blocking stream (no implicit synchronisation with the legacy default stream).
class Stream {
 public:
  Stream() { UOE_CHECK_CUDA(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() {
    if (s_) (void)cudaStreamDestroy(s_);
  }
  cudaStream_t get() const { return s_; }
  void synchronize() const { UOE_CHECK_CUDA(cudaStreamSynchronize(s_)); }

 private:
  cudaStream_t s_ = nullptr;
};

// An event; `timing` events can measure elapsed time between two records (the overlap accounting),
// the others are cheaper and only order streams.
class Event {
 public:
  explicit Event(bool timing = false) {
    UOE_CHECK_CUDA(cudaEventCreateWithFlags(&e_, timing ? cudaEventDefault : cudaEventDisableTiming));
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  Event(Event&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
  Event& operator=(Event&&) = delete;
  ~Event() {
    if (e_) (void)cudaEventDestroy(e_);
  }
  cudaEvent_t get() const { return e_; }
  void record(cudaStream_t s) { UOE_CHECK_CUDA(cudaEventRecord(e_, s)); }
  // Makes `s` wait (on the device, not the host) until this event has happened.
  void wait_in(cudaStream_t s) const { UOE_CHECK_CUDA(cudaStreamWaitEvent(s, e_, 0)); }
  bool done() const {
    const cudaError_t rc = cudaEventQuery(e_);
    if (rc == cudaErrorNotReady) return false;
    UOE_CHECK_CUDA(rc);
    return true;
  }
  void synchronize() const { UOE_CHECK_CUDA(cudaEventSynchronize(e_)); }
  // Milliseconds from `start` to this event (both recorded, both timing events).
  float ms_since(const Event& start) const {
    float ms = 0;
    UOE_CHECK_CUDA(cudaEventElapsedTime(&ms, start.e_, e_));
    return ms;
  }

 private:
  cudaEvent_t e_ = nullptr;
};

// Host → device copies of small host arrays (expert offsets, GEMM pointer arrays, segment tables)
// without a host synchronisation: cudaMemcpyAsync from pageable memory synchronises the stream
// first, so the bytes are first copied into a pinned slot, and the slot is reused only after the
// copy that read it has run (its event). With `slots` slots in a ring, waiting on that event is
// normally a no-op.
class Uploader {
 public:
  explicit Uploader(int slots = 8) : slots_(static_cast<size_t>(slots)) {}
  Uploader(const Uploader&) = delete;
  Uploader& operator=(const Uploader&) = delete;

  template <class T>
  void copy(T* dst_device, std::span<const T> src, cudaStream_t s) {
    copy_bytes(dst_device, src.data(), src.size_bytes(), s);
  }
  void copy_bytes(void* dst_device, const void* src, size_t bytes, cudaStream_t s) {
    if (bytes == 0) return;
    Slot& slot = slots_[next_];
    next_ = (next_ + 1) % slots_.size();
    if (slot.used) slot.done.synchronize();
    slot.host.resize(bytes);
    std::memcpy(slot.host.data(), src, bytes);
    UOE_CHECK_CUDA(cudaMemcpyAsync(dst_device, slot.host.data(), bytes, cudaMemcpyHostToDevice, s));
    slot.done.record(s);
    slot.used = true;
  }

 private:
  struct Slot {
    PinnedBuffer<unsigned char> host;
    Event done;
    bool used = false;
  };
  std::vector<Slot> slots_;
  size_t next_ = 0;
};

// Device → host copies of large arrays (a checkpoint's snapshot of the arenas and moments,
// docs/gpu.md, Checkpoints) through two pinned staging buffers of `slice` bytes: a DMA into pinned
// memory runs at the link's rate and asynchronously, while a copy into pageable memory is staged by
// the driver and serialises; here each slice's DMA overlaps the host's memcpy of the slice before it
// (runtime/staged_copy.hpp, whose CPU twin the tests run). Returns when `host` holds every byte;
// queued on `s` after the work before it.
class StagedDownload {
 public:
  explicit StagedDownload(size_t slice_bytes = size_t{16} << 20) : slice_(slice_bytes) {}
  StagedDownload(const StagedDownload&) = delete;
  StagedDownload& operator=(const StagedDownload&) = delete;

  template <class T>
  void copy(T* host, const T* dev, size_t n, cudaStream_t s) {
    copy_bytes(host, dev, n * sizeof(T), s);
  }
  void copy_bytes(void* host, const void* dev, size_t bytes, cudaStream_t s) {
    if (bytes == 0) return;
    for (auto& b : stage_) b.resize(std::min(slice_, bytes));
    auto* out = static_cast<unsigned char*>(host);
    const auto* in = static_cast<const unsigned char*>(dev);
    staged_copy(
        bytes, slice_,
        [&](int b, size_t at, size_t n) {
          UOE_CHECK_CUDA(cudaMemcpyAsync(stage_[b].data(), in + at, n, cudaMemcpyDeviceToHost, s));
          done_[b].record(s);
        },
        [&](int b, size_t at, size_t n) {
          done_[b].synchronize();
          std::memcpy(out + at, stage_[b].data(), n);
        });
  }

 private:
  size_t slice_;
  PinnedBuffer<unsigned char> stage_[2];
  Event done_[2];
};

}  // namespace uoe::cuda
