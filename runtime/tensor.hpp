// Owning, aligned host buffers (RAII, move-only). Everything the model stores lives in one of
// these; shapes are documented where each buffer is declared ("// [N, d]").
#pragma once
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace uoe {

template <class T>
class Buffer {
 public:
  using value_type = T;
  Buffer() = default;
  explicit Buffer(size_t n) { resize(n); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)), cap_(std::exchange(o.cap_, 0)),
        peak_(std::exchange(o.peak_, 0)) {}
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      std::free(p_);
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
      cap_ = std::exchange(o.cap_, 0);
      peak_ = std::exchange(o.peak_, 0);
    }
    return *this;
  }
  ~Buffer() { std::free(p_); }

  // Sets the size to n elements, zero-filled. Reuses the allocation when it is big enough, so a
  // buffer resized every step to at most its largest size allocates once (workspace reuse).
  void resize(size_t n) {
    resize_uninit(n);
    if (n) std::memset(static_cast<void*>(p_), 0, n * sizeof(T));
  }
  // Same, without zero-filling: for buffers the caller overwrites entirely (GEMM outputs with
  // beta = 0, copies). Contents are unspecified afterwards.
  void resize_uninit(size_t n) {
    if (n > cap_) {
      std::free(p_);
      // A buffer that outgrows its allocation takes an eighth more than asked: routed sizes (rows
      // per expert) reach new maxima by a few rows at a time over a run's first steps, and each
      // new allocation is fresh pages the kernel faults in and zeroes (d 512: ~0.6 GB over steps
      // 5-24 with exact sizes). The first allocation is exact; pages never touched cost nothing.
      const size_t want = cap_ ? n + n / 8 : n;
      // 64-byte alignment: one cache line / one AVX-512 vector.
      const size_t bytes = ((want * sizeof(T) + 63) / 64) * 64;
      p_ = static_cast<T*>(std::aligned_alloc(64, bytes ? bytes : 64));
      if (!p_) throw std::bad_alloc();
      cap_ = want;
    }
    n_ = n;
    if (n > peak_) peak_ = n;
  }
  void zero() {
    if (n_) std::memset(static_cast<void*>(p_), 0, n_ * sizeof(T));
  }

  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  size_t capacity() const { return cap_; }  // elements allocated (the largest size so far, and headroom)
  // The largest size so far: the elements ever written at most, what memory accounting counts (the
  // headroom above it is never touched, so never resident).
  size_t high_water() const { return peak_; }
  T& operator[](size_t i) { return p_[i]; }
  const T& operator[](size_t i) const { return p_[i]; }
  T* begin() { return p_; }
  T* end() { return p_ + n_; }
  const T* begin() const { return p_; }
  const T* end() const { return p_ + n_; }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
  size_t cap_ = 0;
  size_t peak_ = 0;
};

using FloatBuffer = Buffer<float>;

}  // namespace uoe
