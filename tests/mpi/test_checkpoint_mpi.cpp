// Multi-rank tests of the checkpoint writer and of resharding: a checkpoint written by P ranks
// (expert-parallel, with and without data-parallel replicas) loads on other layouts (ep 2 over the
// whole world, 2 ranks, 1 rank, ep = P) with every parameter and both AdamW moments bitwise equal
// to the global tensors; a shard damaged where only some ranks read makes every rank fail.
// Run under mpirun on 2 and 4 ranks (CTest label `mpi`); works on any world size dividing 4.
//
// Every rank runs every test in the same order and makes the same collective calls, so checks are
// non-fatal (EXPECT_*) and come after a test's collectives.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <mpi.h>
#include <stdlib.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "checkpoints/checkpoint.hpp"
#include "layers/model.hpp"
#include "layers/optimizer.hpp"
#include "parallel/comm.hpp"
#include "parallel/exchange.hpp"
#include "runtime/config.hpp"
#include "runtime/error.hpp"
#include "runtime/rng.hpp"
#include "tests/common/checkpoint_fixture.hpp"
#include "tests/common/mpi_gtest.hpp"

namespace {

namespace fs = std::filesystem;
using uoe::Config;

std::string g_root;  // a directory shared by the ranks (same machine), made by rank 0

constexpr uint64_t kInitSeed = 11, kMomentSeed = 23;

Config mpi_config() {
  Config c;
  c.layers = 2;
  c.d_model = 32;
  c.heads = 4;
  c.attn_experts = 4;  // divisible by every ep used here (1, 2, 4)
  c.attn_topk = 2;
  c.experts = 4;
  c.topk = 2;
  c.d_ff = 64;
  c.seq_len = 16;
  c.seed = kInitSeed;
  uoe::config_validate(c);
  return c;
}

// Places this "rank" at position pos of an expert-parallel group of n: it owns experts
// [pos·E/n, (pos+1)·E/n), as MpiExchange does. Models built on it are never run.
class RangeExchange final : public uoe::ExpertExchange {
 public:
  RangeExchange(int pos, int n) : pos_(pos), n_(n) {}
  void dispatch(uoe::ExchangePlan&, const std::vector<int>&, const float*, const int32_t*, const int32_t*, int,
                uoe::ExpertRows&) override {
    unused();
  }
  void to_source(uoe::ExchangePlan&, const float*, float*, int) override { unused(); }
  void to_owner(uoe::ExchangePlan&, const float*, float*, int) override { unused(); }
  void local_experts(int experts, int* begin, int* end) const override {
    *begin = pos_ * experts / n_;
    *end = (pos_ + 1) * experts / n_;
  }

 private:
  [[noreturn]] static void unused() { throw std::logic_error("RangeExchange moves no rows"); }
  int pos_, n_;
};

// A model holding experts of position pos of n, with weights from `init_seed` and, when
// moment_seed != 0, moments that are a function of (tensor, GLOBAL index) like the weights, so any
// layout of the same seeds holds slabs of the same global tensors.
struct Replica {
  RangeExchange exchange;
  std::unique_ptr<uoe::Model> model;
  std::unique_ptr<uoe::AdamW> opt;

  Replica(int pos, int n, uint64_t init_seed, uint64_t moment_seed) : exchange(pos, n) {
    model = std::make_unique<uoe::Model>(uoe::model_spec_from_config(mpi_config(), 256), init_seed, &exchange);
    opt = std::make_unique<uoe::AdamW>(model->params(), uoe::AdamWSpec{});
    if (!moment_seed) return;
    uoe::ParamStore& ps = model->params();
    for (size_t i = 0; i < ps.count(); ++i) {
      const uoe::ParamInfo& p = ps.info(static_cast<int>(i));
      const uint64_t sm = uoe::rng_stream(p.name + "/m"), sv = uoe::rng_stream(p.name + "/v");
      const uint64_t g0 = static_cast<uint64_t>(p.global_offset());
      for (size_t j = 0; j < p.size; ++j) {
        opt->m()[p.offset + j] = uoe::rng_normal(moment_seed, sm, g0 + j);
        opt->v()[p.offset + j] = uoe::rng_uniform(moment_seed, sv, g0 + j);
      }
    }
  }
  uoe::ParamStore& params() { return model->params(); }
};

// The global tensors: one model holding every expert.
const Replica& reference() {
  static const Replica ref(0, 1, kInitSeed, kMomentSeed);
  return ref;
}

// Number of tensors of `r` whose local values, m or v differ from the reference's slab.
int count_mismatches(Replica& r, std::string* first) {
  const Replica& ref = reference();
  const uoe::ParamStore& ps = r.params();
  const uoe::ParamStore& rs = ref.model->params();
  int bad = 0;
  for (size_t i = 0; i < ps.count(); ++i) {
    const uoe::ParamInfo& p = ps.info(static_cast<int>(i));
    const int k = rs.find(p.name);
    if (k < 0) {
      ++bad;
      continue;
    }
    const size_t at = rs.info(k).offset + static_cast<size_t>(p.global_offset());
    const size_t bytes = p.size * sizeof(float);
    const bool same = std::memcmp(ps.value(static_cast<int>(i)), rs.value(k) + static_cast<size_t>(p.global_offset()),
                                  bytes) == 0 &&
                      std::memcmp(r.opt->m().data() + p.offset, ref.opt->m().data() + at, bytes) == 0 &&
                      std::memcmp(r.opt->v().data() + p.offset, ref.opt->v().data() + at, bytes) == 0;
    if (!same && bad++ == 0 && first) *first = p.name;
  }
  return bad;
}

// Loads `path` on the ranks of `comm` arranged as ep groups of `ep`, into a model that starts with
// other weights and zero moments, and checks it against the global tensors.
void load_and_check(const std::string& path, MPI_Comm comm, int ep, const char* what) {
  uoe::ProcessGroups g = uoe::make_process_groups(comm, ep);
  Replica r(g.ep_rank, ep, kInitSeed + 100, 0);
  std::string err;
  try {
    const uoe::TrainState st = uoe::checkpoint_load(path, mpi_config(), r.params(), *r.opt, *g.world);
    EXPECT_EQ(st.step, 7) << what;
    EXPECT_EQ(st.seed, kInitSeed) << what;
  } catch (const uoe::Error& e) {
    err = e.what();
  }
  EXPECT_EQ(err, "") << what;
  std::string first;
  EXPECT_EQ(count_mismatches(r, &first), 0) << what << ": first mismatch in " << first << " on world rank "
                                            << g.world->rank();
  g.close();
}

uoe::TrainState state_at(int64_t step) {
  uoe::TrainState s;
  s.step = step;
  s.seed = kInitSeed;
  s.lr = 1e-3;
  s.config_ini = uoe::config_to_ini(mpi_config());
  return s;
}

// Writes step 7 from the world arranged as ep groups of `ep`. Replicas (dp_rank > 0) hold other
// values: a checkpoint equal to the reference proves that only dp_rank 0 wrote.
std::string write_checkpoint(const std::string& dir, int ep) {
  uoe::ProcessGroups g = uoe::make_process_groups(MPI_COMM_WORLD, ep);
  const bool replica = g.dp_rank > 0;
  Replica r(g.ep_rank, ep, replica ? kInitSeed + 1 : kInitSeed, replica ? kMomentSeed + 1 : kMomentSeed);
  std::string err;
  try {
    uoe::CheckpointWriter w(dir, 0, *g.world, uoe::shard_role(g));
    w.save(r.params(), *r.opt, state_at(7));
    w.wait();
  } catch (const uoe::Error& e) {
    err = e.what();
  }
  EXPECT_EQ(err, "");
  g.close();
  return (fs::path(dir) / uoe::checkpoint_step_name(7)).string();
}

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// Flips one bit in the middle of the first chunk of `dataset` (see test_checkpoint.cpp).
void corrupt_dataset(const std::string& file, const std::string& dataset) {
  haddr_t addr = HADDR_UNDEF;
  hsize_t size = 0;
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0) << file;
  const hid_t d = H5Dopen2(f, dataset.c_str(), H5P_DEFAULT);
  const hid_t s = H5Dget_space(d);
  hsize_t offset[8];
  unsigned mask = 0;
  EXPECT_GE(H5Dget_chunk_info(d, s, 0, offset, &mask, &addr, &size), 0);
  H5Sclose(s);
  H5Dclose(d);
  H5Fclose(f);
  std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
  const auto at = static_cast<std::streamoff>(addr + size / 2);
  io.seekg(at);
  char byte = 0;
  io.read(&byte, 1);
  byte = static_cast<char>(byte ^ 0x01);
  io.seekp(at);
  io.write(&byte, 1);
  EXPECT_TRUE(io.good());
}

// ---- tests -------------------------------------------------------------------------------------

TEST(CheckpointMpi, WrittenExpertParallelLoadsOnEveryLayout) {
  const int P = world_size(), me = world_rank();
  const std::string dir = g_root + "/ep_full";
  const std::string path = write_checkpoint(dir, P);
  // One shard per ep position, each named as such.
  if (me == 0) {
    for (int s = 0; s < P; ++s) EXPECT_TRUE(fs::exists(fs::path(path) / uoe::checkpoint_shard_name(s, P))) << s;
  }

  if (P % 2 == 0) load_and_check(path, MPI_COMM_WORLD, 2, "whole world, ep 2");
  load_and_check(path, MPI_COMM_WORLD, P, "whole world, ep = world");

  // Two ranks with ep 2 (ranks 0-1; on 4 ranks, 2-3 do the same beside them).
  if (P % 2 == 0) {
    MPI_Comm pair = MPI_COMM_NULL;
    MPI_Comm_split(MPI_COMM_WORLD, me / 2, me, &pair);
    load_and_check(path, pair, 2, "2 ranks, ep 2");
    MPI_Comm_free(&pair);
  }
  // One rank holding every expert.
  load_and_check(path, MPI_COMM_SELF, 1, "1 rank");
}

TEST(CheckpointMpi, OnlyTheFirstReplicaWrites) {
  const int P = world_size(), me = world_rank();
  if (P % 2 != 0) GTEST_SKIP() << "needs an even number of ranks";
  const std::string dir = g_root + "/ep2_dp";
  const std::string path = write_checkpoint(dir, 2);  // dp = P / 2 replicas of each ep position
  if (me == 0) {
    int files = 0;
    for (const auto& e : fs::directory_iterator(path)) files += e.path().extension() == ".h5";
    EXPECT_EQ(files, 3);  // manifest + 2 shards, whatever P is
  }
  load_and_check(path, MPI_COMM_WORLD, P, "whole world, ep = world");
  load_and_check(path, MPI_COMM_SELF, 1, "1 rank");
}

TEST(CheckpointMpi, CorruptShardMakesEveryRankFail) {
  const int P = world_size(), me = world_rank();
  if (P % 2 != 0) GTEST_SKIP() << "needs an even number of ranks";
  const std::string dir = g_root + "/corrupt";
  const std::string path = write_checkpoint(dir, 2);
  // Shard 1 holds experts [2, 4) only: ranks with ep_rank 0 never read it, yet must fail too.
  if (me == 0) corrupt_dataset((fs::path(path) / uoe::checkpoint_shard_name(1, 2)).string(), "/model/layers.0.mlp.w1");
  MPI_Barrier(MPI_COMM_WORLD);

  uoe::ProcessGroups g = uoe::make_process_groups(MPI_COMM_WORLD, 2);
  Replica r(g.ep_rank, 2, kInitSeed + 100, 0);
  std::string err;
  try {
    uoe::checkpoint_load(path, mpi_config(), r.params(), *r.opt, *g.world);
  } catch (const uoe::Error& e) {
    err = e.what();
  }
  if (g.ep_rank == 1) {
    EXPECT_NE(err.find("checksum mismatch"), std::string::npos) << err;
    EXPECT_NE(err.find("/model/layers.0.mlp.w1"), std::string::npos) << err;
  } else {
    EXPECT_NE(err.find("loading checkpoint " + path + " failed on rank"), std::string::npos) << err;
  }
  // resolve("auto") must not pick it: it is the only checkpoint there, so it refuses.
  std::string resolve_err;
  try {
    uoe::checkpoint_resolve("auto", dir, *g.world);
  } catch (const uoe::Error& e) {
    resolve_err = e.what();
  }
  EXPECT_NE(resolve_err.find("none of the 1 checkpoints"), std::string::npos) << resolve_err;
  g.close();
}

TEST(CheckpointMpi, ResolveGivesEveryRankTheSamePath) {
  // Its own checkpoint (tests run in any order, shuffled in CI).
  const std::string dir = g_root + "/resolve";
  write_checkpoint(dir, world_size());
  uoe::MpiCommunicator world(MPI_COMM_WORLD);
  const std::string path = uoe::checkpoint_resolve("auto", dir, world);
  EXPECT_EQ(path, (fs::path(dir) / uoe::checkpoint_step_name(7)).string());
  world.close();
}

// tests/fixtures/checkpoint-af0762b (written by 2 ranks, ep 2, at commit af0762b) loads on the
// world as ep 2 (on 4 ranks with 2 replicas of each position): the slabs of every rank, gathered
// (their float bits summed into zeros: exact), are bitwise the recorded global tensors, and every
// replica holds the same slab as the rank that contributed it.
TEST(CheckpointMpi, FixtureOfAnOlderBuildLoadsBitwiseWithEp2) {
  namespace ts = uoe::testing_support;
  if (world_size() % 2 != 0) GTEST_SKIP() << "needs an even number of ranks";
  const Config cfg = ts::fixture_config();
  uoe::ProcessGroups g = uoe::make_process_groups(MPI_COMM_WORLD, 2);
  RangeExchange exchange(g.ep_rank, 2);
  uoe::Model model(uoe::model_spec_from_config(cfg, ts::kFixtureVocab), cfg.seed + 1, &exchange);
  uoe::AdamW opt(model.params(), uoe::AdamWSpec{});
  std::string err;
  try {
    const uoe::TrainState st = uoe::checkpoint_load(ts::kFixtureCheckpoint, cfg, model.params(), opt, *g.world);
    EXPECT_EQ(st.step, 3);
  } catch (const uoe::Error& e) {
    err = e.what();
  }
  EXPECT_EQ(err, "");
  ts::FixtureCheck check;
  int replica_mismatches = 0;
  const uoe::ParamStore& ps = model.params();
  for (size_t i = 0; i < ps.count(); ++i) {
    const uoe::ParamInfo& p = ps.info(static_cast<int>(i));
    const float* arenas[3] = {ps.value(static_cast<int>(i)), opt.m().data() + p.offset, opt.v().data() + p.offset};
    const bool contributes = p.expert_sharded ? g.dp_rank == 0 : g.world->rank() == 0;
    const size_t at = static_cast<size_t>(p.global_offset());
    for (int k = 0; k < 3; ++k) {
      std::vector<int64_t> bits(static_cast<size_t>(p.global_size()), 0);
      for (size_t j = 0; contributes && j < p.size; ++j) {
        uint32_t b = 0;
        std::memcpy(&b, arenas[k] + j, sizeof b);
        bits[at + j] = b;
      }
      g.world->all_reduce_sum(std::span<int64_t>(bits));
      std::vector<float> global(bits.size());
      for (size_t j = 0; j < bits.size(); ++j) {
        const auto b = static_cast<uint32_t>(bits[j]);
        std::memcpy(&global[j], &b, sizeof b);
      }
      const std::string key = std::string(ts::kFixtureGroups[k]) + "/" + p.name;
      check.add(key, p.global_shape, global.data(), global.size());
      if (std::memcmp(global.data() + at, arenas[k], p.size * sizeof(float)) != 0 && replica_mismatches++ == 0)
        ADD_FAILURE() << key << ": this rank's slab differs from the one its first replica loaded";
    }
  }
  for (const std::string& problem : check.finish()) ADD_FAILURE() << problem << " (world rank " << g.world->rank() << ")";
  g.close();
}

// Non-root ranks print only their failures, tagged with the rank (rank 0 keeps gtest's printer).
// The test's name is taken in OnTestStart: OnTestPartResult runs with gtest's UnitTest mutex held,
// so calling UnitTest::current_test_info() there deadlocks (gtest 1.12).

}  // namespace

int main(int argc, char** argv) {
  uoe::MpiSession mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  uoe_test::agree_on_shuffle_seed();
  if (mpi.world_rank() != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new uoe_test::RankFailurePrinter(mpi.world_rank()));
  }
  // A scratch directory every rank sees (the ranks of these tests share one machine).
  char root[4096] = {0};
  if (mpi.world_rank() == 0) {
    std::string pattern = (fs::temp_directory_path() / "uoe-ckpt-mpi-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) pattern.clear();
    std::snprintf(root, sizeof root, "%s", pattern.c_str());
  }
  MPI_Bcast(root, sizeof root, MPI_CHAR, 0, MPI_COMM_WORLD);
  g_root = root;
  int rc = g_root.empty() ? 1 : RUN_ALL_TESTS();
  MPI_Barrier(MPI_COMM_WORLD);
  if (mpi.world_rank() == 0 && !g_root.empty()) fs::remove_all(g_root);
  // A failure on any rank fails every rank, so mpirun's exit status cannot depend on which rank
  // it reports.
  MPI_Allreduce(MPI_IN_PLACE, &rc, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return rc;
}
