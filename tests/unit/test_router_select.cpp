// The device-callable capacity selection and row tables (layers/router_select.hpp, router_select)
// against the CPU router's own (router_decide in router_forward) on the same scores: the same
// kept assignments, row counts, rows and drops, bit for bit, with ties — patches that are copies of
// one another, and a router whose every patch scores the same — at several capacity factors, top-k
// and patch sizes, and dropless.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "layers/router.hpp"
#include "layers/router_select.hpp"
#include "runtime/rng.hpp"

namespace uoe {
namespace {

// `distinct` different token rows repeated (whole patches repeat, so their scores tie); distinct 0:
// every row zero (every patch scores the bias: one tie over the whole batch).
Routing cpu_routing(const RouterSpec& rs, int N, int d, int distinct, bool dropless) {
  const int E = rs.experts;
  std::vector<float> xn(static_cast<size_t>(N) * d, 0.0f), w(static_cast<size_t>(d) * E), b(E);
  const int ps = rs.patch_size;
  if (distinct > 0)
    for (int t = 0; t < N; ++t)
      for (int c = 0; c < d; ++c)
        xn[static_cast<size_t>(t) * d + c] =
            rng_normal(21, (t / ps) % distinct, static_cast<uint64_t>((t % ps) * d + c));
  for (size_t i = 0; i < w.size(); ++i) w[i] = 0.5f * rng_normal(22, 0, i);
  for (int e = 0; e < E; ++e) b[e] = 0.05f * static_cast<float>(e % 3);
  Routing r;
  router_forward(r, rs, xn.data(), w.data(), b.data(), N, d, dropless);
  return r;
}

void expect_select_equals_decide(const RouterSpec& rs, int N, int distinct, bool dropless) {
  const Routing want = cpu_routing(rs, N, 8, distinct, dropless);
  Routing got = want;
  // What router_select must write: poisoned first, so nothing is inherited from router_decide.
  got.kept.assign(got.kept.size(), 7);
  got.capacity_kept.assign(got.capacity_kept.size(), -5);
  got.row_offsets.assign(got.row_offsets.size(), -3);
  got.row_patch.assign(got.row_patch.size() + 3, -1);
  got.row_slot.clear();
  got.capacity = -1;
  got.dropped = -1;
  router_select(got, rs, dropless);
  EXPECT_EQ(got.capacity, want.capacity);
  EXPECT_EQ(got.kept, want.kept);
  EXPECT_EQ(got.capacity_kept, want.capacity_kept);
  EXPECT_EQ(got.row_offsets, want.row_offsets);
  EXPECT_EQ(got.row_patch, want.row_patch);
  EXPECT_EQ(got.row_slot, want.row_slot);
  EXPECT_EQ(got.dropped, want.dropped);
}

RouterSpec spec_of(int E, int k, int patch, double cf) {
  RouterSpec rs;
  rs.experts = E;
  rs.topk = k;
  rs.patch_size = patch;
  rs.capacity_factor = cf;
  return rs;
}

TEST(RouterSelect, EqualsTheCpuRouterWithTiesAndDrops) {
  int drops = 0, cases = 0;
  for (int patch : {1, 2})
    for (int k : {1, 2})
      for (double cf : {0.5, 1.0, 1.25, 0.0})
        for (int distinct : {3, 7, 0}) {
          SCOPED_TRACE("patch " + std::to_string(patch) + ", top-" + std::to_string(k) + ", cf " +
                       std::to_string(cf) + ", " + std::to_string(distinct) + " distinct rows");
          const RouterSpec rs = spec_of(4, k, patch, cf);
          expect_select_equals_decide(rs, 48, distinct, false);
          expect_select_equals_decide(rs, 48, distinct, true);  // evaluation: dropless at any cf
          drops += cpu_routing(rs, 48, 8, distinct, false).dropped > 0;
          ++cases;
        }
  // The capacity rule decided something in most limited cases (cf 0 never drops).
  EXPECT_GT(drops, cases / 2);
}

// Every patch scores the same: the capacity keeps exactly the lowest patches of each expert.
TEST(RouterSelect, AFullTieKeepsTheLowestPatches) {
  const RouterSpec rs = spec_of(4, 2, 1, 1.0);
  Routing r = cpu_routing(rs, 40, 8, 0, false);
  router_select(r, rs, false);
  ASSERT_GT(r.dropped, 0);
  for (int e = 0; e < r.E; ++e) {
    int seen = 0;
    for (int p = 0; p < r.P; ++p)
      for (int j = 0; j < r.k; ++j)
        if (r.choice[p * r.k + j] == e) {
          EXPECT_EQ(r.kept[p * r.k + j], seen < r.capacity ? 1 : 0) << "expert " << e << ", patch " << p;
          ++seen;
        }
  }
}

TEST(RouterSelect, EmptyBatchHasNoRows) {
  const RouterSpec rs = spec_of(4, 2, 1, 1.0);
  Routing r;
  router_begin(r, rs, 0, 8);
  router_select(r, rs, false);
  EXPECT_EQ(r.row_offsets, std::vector<int>(5, 0));
  EXPECT_TRUE(r.row_patch.empty());
  EXPECT_EQ(r.dropped, 0);
}

}  // namespace
}  // namespace uoe
