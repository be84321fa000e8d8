// A copy from one memory to another through two staging buffers, in slices: the schedule of a
// checkpoint's snapshot of the device arenas (docs/gpu.md, Checkpoints), shared by the CUDA copy
// (runtime/cuda/memory.cuh, StagedDownload: pinned buffers, DMA on a stream, one event per buffer)
// and its CPU twin (plain memory: the device-like test backend, tests/unit/step_backend_device_like.hpp).
// Slice i is fetched into staging buffer i mod 2 while slice i − 1 is drained from the other, so a
// drain (a host memcpy into pageable memory) overlaps the next slice's transfer.
//   fetch(buffer, offset, bytes): starts slice [offset, offset + bytes) into that buffer;
//   drain(buffer, offset, bytes): waits for that buffer's fetch and copies it to the destination.
// Every slice is drained before staged_copy returns; a buffer is fetched into again only after its
// drain (the drains run on the calling thread, in order).
#pragma once
#include <algorithm>
#include <cstddef>

namespace uoe {

template <class Fetch, class Drain>
void staged_copy(size_t bytes, size_t slice, Fetch&& fetch, Drain&& drain) {
  if (bytes == 0) return;
  slice = std::max<size_t>(slice, 1);
  int prev = -1;
  size_t prev_at = 0, prev_n = 0;
  for (size_t at = 0, i = 0; at < bytes; at += slice, ++i) {
    const int b = static_cast<int>(i % 2);
    const size_t n = std::min(slice, bytes - at);
    fetch(b, at, n);
    if (prev >= 0) drain(prev, prev_at, prev_n);
    prev = b;
    prev_at = at;
    prev_n = n;
  }
  drain(prev, prev_at, prev_n);
}

}  // namespace uoe
