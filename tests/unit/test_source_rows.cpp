// The source rows (layers/model.hpp, source_rows_build; the bodies of layers/source_rows.hpp that
// the device runs too) against a direct reading of their definition — kept patches expanded to
// tokens, chunk-major, then by expert, then token order — on capacity-limited routings with
// patches, top-k and chunk counts up to more chunks than sequences; and the host's part rebuilt
// from the cells alone (source_rows_from_cells: what the device path keeps on the host) against it.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "layers/model.hpp"
#include "layers/router.hpp"
#include "runtime/rng.hpp"

namespace uoe {
namespace {

Routing routed(int E, int k, int ps, int N, int d, double capacity) {
  RouterSpec rs;
  rs.experts = E;
  rs.topk = k;
  rs.patch_size = ps;
  rs.capacity_factor = capacity;
  std::vector<float> xn(static_cast<size_t>(N) * d), w(static_cast<size_t>(d) * E), b(E, 0.0f);
  for (size_t i = 0; i < xn.size(); ++i) xn[i] = rng_normal(31, 0, i);
  for (size_t i = 0; i < w.size(); ++i) w[i] = rng_normal(32, 0, i);
  Routing r;
  router_forward(r, rs, xn.data(), w.data(), b.data(), N, d, false);
  return r;
}

// The definition, read directly: for each chunk, expert, routing row of that expert whose patch lies
// in the chunk's sequences, its ps tokens.
SourceRows by_definition(const Routing& r, int B, int T, int C) {
  SourceRows s;
  s.chunk_begin.push_back(0);
  for (int ch = 0; ch < C; ++ch) {
    const int t0 = chunk_first_token(ch, B, T, C), t1 = chunk_first_token(ch + 1, B, T, C);
    std::vector<int> off{0};
    for (int e = 0; e < r.E; ++e) {
      for (int i = r.row_offsets[e]; i < r.row_offsets[e + 1]; ++i)
        for (int t = 0; t < r.patch; ++t) {
          const int tok = r.row_patch[i] * r.patch + t;
          if (tok < t0 || tok >= t1) continue;
          s.token.push_back(tok);
          s.gate.push_back(r.row_patch[i] * r.k + r.row_slot[i]);
          s.seg.push_back(tok / T);
          s.pos.push_back(tok % T);
        }
      off.push_back(static_cast<int>(s.token.size()) - s.chunk_begin.back());
    }
    s.chunk_offsets.push_back(off);
    s.chunk_begin.push_back(static_cast<int>(s.token.size()));
  }
  return s;
}

TEST(SourceRows, BuildEqualsTheDefinitionAndCellsRebuildTheHostsPart) {
  const int T = 8, d = 6;
  int dropped = 0;
  for (int ps : {1, 2, 4})
    for (int k : {1, 2})
      for (int B : {1, 3, 4})
        for (int C : {1, 2, 5}) {
          SCOPED_TRACE("patch " + std::to_string(ps) + ", k " + std::to_string(k) + ", B " + std::to_string(B) +
                       ", chunks " + std::to_string(C));
          const Routing r = routed(5, k, ps, B * T, d, 0.5);
          dropped += r.dropped;
          const SourceRows want = by_definition(r, B, T, C);
          SourceRows got;
          got.token.assign(3, -7);  // stale contents must not survive
          source_rows_build(got, r, B, T, C);
          EXPECT_EQ(got.chunk_begin, want.chunk_begin);
          EXPECT_EQ(got.chunk_offsets, want.chunk_offsets);
          EXPECT_EQ(got.token, want.token);
          EXPECT_EQ(got.gate, want.gate);
          EXPECT_EQ(got.seg, want.seg);
          EXPECT_EQ(got.pos, want.pos);
          EXPECT_EQ(got.rows(), static_cast<int>(want.token.size()));
          // The cells count kept patches per (sequence, expert).
          ASSERT_EQ(got.cells.size(), static_cast<size_t>(B) * r.E);
          int sum = 0;
          for (int c : got.cells) sum += c;
          EXPECT_EQ(sum, r.row_offsets[r.E]);
          // The host's part from the cells alone.
          SourceRows host;
          host.cells = got.cells;
          host.pos.assign(2, 1);
          source_rows_from_cells(host, r.row_offsets, B, C, ps);
          EXPECT_EQ(host.chunk_begin, want.chunk_begin);
          EXPECT_EQ(host.chunk_offsets, want.chunk_offsets);
          EXPECT_EQ(host.seg, want.seg);
          EXPECT_TRUE(host.token.empty() && host.gate.empty() && host.pos.empty());
        }
  EXPECT_GT(dropped, 0);  // capacity decided something: rows were missing
}

}  // namespace
}  // namespace uoe
