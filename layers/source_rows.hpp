// The source rows of a routed block (layers/model.hpp, SourceRows) built from its routing's row
// tables by per-thread bodies (UOE_HD) that the CPU's source_rows_build runs in loops and the device
// runs as kernels (layers/step_cuda.hpp, cuda::source_rows_*), so the device lays out the rows it
// routed without the host: the host needs only the counts of kept patches per (sequence, expert),
// the `cells` [S, E], from which it forms the chunks' row counts that size the exchange buffers and
// the rows' sequences (docs/gpu.md, Routing).
//
// Layout (SourceRows): chunk-major (chunk c holds sequences [c·S/C, (c+1)·S/C)), then by expert,
// then in token order; a kept patch expands to its `ps` tokens. Expert e's routing rows
// [row_offsets[e], row_offsets[e + 1]) are in ascending patch order (layers/router.hpp), so one
// sequence's rows of an expert are contiguous: a cell. Everything here is integer arithmetic: the
// device and the CPU give the same tables, and tests/unit/test_step_backends.cpp (the device-like
// backend against the CPU backend) and tests/cuda/test_step_cuda.cpp (the kernels) hold them to it.
#pragma once
#include <cstdint>

#include "runtime/rng.hpp"  // UOE_HD

namespace uoe {

// The first index in [lo, hi) of ascending a whose value is ≥ v (hi: none).
UOE_HD inline int lower_bound_index(const int* a, int lo, int hi, int v) {
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (a[mid] < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
// The first index in [lo, hi) of ascending a whose value is > v (hi: none).
UOE_HD inline int upper_bound_index(const int* a, int lo, int hi, int v) {
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (a[mid] <= v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Cell (s, e): the routing rows (kept patches) of expert e in sequence s of T tokens, patches of ps
// tokens (ps divides T: runtime/config.cpp).
UOE_HD inline int source_rows_cell(const int* row_offsets, const int* row_patch, int ps, int T, int s, int e) {
  const int per_seq = T / ps;
  const int lo = lower_bound_index(row_patch, row_offsets[e], row_offsets[e + 1], s * per_seq);
  return lower_bound_index(row_patch, lo, row_offsets[e + 1], (s + 1) * per_seq) - lo;
}

// From the cells [S, E]: each cell's first source row (first_src [S, E]) and first routing row
// (first_route [S, E]), the chunks' source-row ranges (chunk_begin [C + 1]) and their rows per
// expert, chunk-relative (chunk_offsets [C, E + 1]). O(S·E), one thread.
UOE_HD inline void source_rows_layout(int* first_src, int* first_route, int* chunk_begin, int* chunk_offsets,
                                      const int* cells, const int* row_offsets, int S, int E, int C, int ps) {
  for (int e = 0; e < E; ++e) {
    int at = row_offsets[e];
    for (int s = 0; s < S; ++s) {
      first_route[s * E + e] = at;
      at += cells[s * E + e];
    }
  }
  int at = 0;
  for (int ch = 0; ch < C; ++ch) {
    const int s0 = static_cast<int>(static_cast<int64_t>(ch) * S / C);
    const int s1 = static_cast<int>(static_cast<int64_t>(ch + 1) * S / C);
    chunk_begin[ch] = at;
    int* off = chunk_offsets + static_cast<int64_t>(ch) * (E + 1);
    off[0] = 0;
    for (int e = 0; e < E; ++e) {
      for (int s = s0; s < s1; ++s) {
        first_src[s * E + e] = at;
        at += cells[s * E + e] * ps;
      }
      off[e + 1] = at - chunk_begin[ch];
    }
  }
  chunk_begin[C] = at;
}

// Routing row i (expert e's, row_offsets[e] ≤ i < row_offsets[e + 1]) as its ps source rows: each
// row's token, gate slot (patch·k + slot), sequence and position in it.
UOE_HD inline void source_row_place(int32_t* token, int32_t* gate, int32_t* seg, int32_t* pos, const int* first_src,
                                    const int* first_route, const int* row_offsets, const int* row_patch,
                                    const int* row_slot, int E, int k, int ps, int T, int i) {
  const int e = upper_bound_index(row_offsets, 0, E + 1, i) - 1;
  const int p = row_patch[i], s = p * ps / T;
  const int at = first_src[s * E + e] + (i - first_route[s * E + e]) * ps;
  for (int t = 0; t < ps; ++t) {
    const int tok = p * ps + t;
    token[at + t] = tok;
    gate[at + t] = p * k + row_slot[i];
    seg[at + t] = tok / T;
    pos[at + t] = tok % T;
  }
}

// Cell (s, e)'s source rows belong to sequence s: seg over them (what the host rebuilds from the
// cells when the tables stay on the device).
UOE_HD inline void source_rows_cell_segments(int32_t* seg, const int* first_src, const int* cells, int E, int ps,
                                             int s, int e) {
  const int at = first_src[s * E + e], n = cells[s * E + e] * ps;
  for (int i = 0; i < n; ++i) seg[at + i] = s;
}

}  // namespace uoe
