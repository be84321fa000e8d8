// The compute threads of one process (docs/architecture.md, Threads). `--threads N` sizes this
// pool; the BLAS always runs single-threaded on whichever pool thread calls it, and work is split
// here: a large GEMM by rows (or columns) of C, the attention core by segments, the row kernels by
// rows, the experts' chains of products by contiguous runs of their rows and their weight gradients
// by whole products (layers/experts.cpp). One pool and no nested one, so N threads never become N ×
// BLAS threads, and a split never changes any result: every caller gives each item its own
// arithmetic (a row of C, a segment, a token), never a sum across parts, so a run computes the same
// bits on 1 thread as on N.
//
// OpenMP (GCC's libgomp) underneath, confined to threads.cpp: its threads spin briefly between
// regions and then sleep, so the many short regions of a step start in a few microseconds.
#pragma once
#include <cstdint>
#include <functional>

namespace uoe {

// Sets the pool's size (n >= 1) for the calling process; 1 runs everything in line.
void threads_set(int n);
int threads_count();
// True on a pool thread while it runs a part of parallel_ranges: nested calls run in line.
bool threads_inside();

// Splits [0, n) into at most threads_count() contiguous ranges of at least `grain` items each and
// calls fn(begin, end) for each, in parallel, returning when all are done. In line (one call with
// [0, n)) when one range would do, with one thread, or inside another parallel_ranges. fn must give
// each item results that do not depend on which range it falls in. An exception thrown by fn is
// rethrown here (the first one) after every range has finished.
void parallel_ranges(int64_t n, int64_t grain, const std::function<void(int64_t begin, int64_t end)>& fn);

}  // namespace uoe
