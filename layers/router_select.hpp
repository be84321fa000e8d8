// Expert-choice capacity selection and the dispatch row tables (docs/model.md, Routing, step 2),
// written as per-assignment bodies that a GPU thread and a CPU loop both run (UOE_HD), so the device
// can decide which patches each expert keeps and lay out its rows without the host: the host needs
// only the row counts per expert (row_offsets), which size the exchange buffers.
//
// The rule is router_decide's (layers/router.cpp): expert e keeps at most `capacity` of the
// (patch, slot) assignments that chose it, highest probability first, ties to the lower patch
// index (a patch chooses an expert at most once, so this is a strict total order); capacity 0:
// every assignment is kept (dropless). Its rows are the kept assignments in ascending patch order,
// expert after expert. router_decide keeps its own partition (nth_element, O(P log P)); these bodies
// are O(P) per assignment, made for one thread each, and must give the same bits: the twin tests
// (tests/unit/test_router_select.cpp against router_decide; tests/cuda/test_step_cuda.cpp, the
// CUDA kernels against the CPU twin) hold them to it.
//
// Shapes: choice [P, k] (chosen experts of each patch), probs [P, E] (the softmaxed scores),
// kept [P, k] (1: kept).
#pragma once
#include <cstdint>

#include "layers/router.hpp"
#include "runtime/rng.hpp"  // UOE_HD

namespace uoe {

// router_decide's capacity selection and row tables alone, from r.choice and the softmaxed r.probs,
// by the bodies below (layers/router.cpp; the CPU twin of cuda::router_select, layers/step_cuda.hpp):
// r.capacity, kept, capacity_kept, row_offsets, row_patch, row_slot and dropped, the same bits as
// router_decide's.
void router_select(Routing& r, const RouterSpec& spec, bool dropless);

// Whether expert choice[p·k + j] keeps assignment (p, j): fewer than `capacity` assignments of that
// expert rank before it (capacity 0: always).
UOE_HD inline uint8_t router_keeps(const int* choice, const float* probs, int P, int E, int k, int capacity, int p,
                                   int j) {
  if (capacity <= 0) return 1;
  const int e = choice[p * k + j];
  const float pe = probs[static_cast<int64_t>(p) * E + e];
  int before = 0;
  for (int q = 0; q < P; ++q) {
    if (q == p) continue;
    const float pq = probs[static_cast<int64_t>(q) * E + e];
    if (!(pq > pe || (pq == pe && q < p))) continue;
    for (int i = 0; i < k; ++i)
      if (choice[q * k + i] == e) {
        if (++before >= capacity) return 0;
        break;
      }
  }
  return 1;
}

// Kept assignments of expert e among patches [0, p_end): with p_end = P, expert e's row count; with
// p_end = p, the index of patch p's row among expert e's rows.
UOE_HD inline int router_kept_before(const int* choice, const uint8_t* kept, int k, int e, int p_end) {
  int n = 0;
  for (int q = 0; q < p_end; ++q)
    for (int i = 0; i < k; ++i) n += (choice[q * k + i] == e && kept[q * k + i]) ? 1 : 0;
  return n;
}

// Writes assignment (p, j)'s row (when kept) into row_patch / row_slot, expert-major, patches
// ascending: row_offsets [E + 1] must hold the prefix sums of the row counts.
UOE_HD inline void router_place_row(int* row_patch, int* row_slot, const int* row_offsets, const int* choice,
                                    const uint8_t* kept, int k, int p, int j) {
  if (!kept[p * k + j]) return;
  const int e = choice[p * k + j];
  const int at = row_offsets[e] + router_kept_before(choice, kept, k, e, p);
  row_patch[at] = p;
  row_slot[at] = j;
}

}  // namespace uoe
