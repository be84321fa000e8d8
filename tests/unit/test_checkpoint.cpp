// Single-process tests of the checkpoint module: bitwise round trip and resume, commit and
// pruning, `latest` and --resume auto, and one test per kind of damage a checkpoint can suffer
// (each must end in a uoe::Error whose message names the file or tensor and what is wrong).
//
// Collectives go through uoe::SelfCommunicator, a one-rank Communicator, so no MPI is needed here; the
// multi-rank writer and resharding are tested in tests/mpi/test_checkpoint_mpi.cpp.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/common/checkpoint_fixture.hpp"
#include "tests/common/errors.hpp"
#include "checkpoints/checkpoint.hpp"
#include "checkpoints/manifest.hpp"
#include "layers/train_step.hpp"
#include "layers/model.hpp"
#include "layers/optimizer.hpp"
#include "parallel/exchange.hpp"
#include "parallel/mpi_version.hpp"
#include "runtime/config.hpp"
#include "runtime/data.hpp"
#include "runtime/error.hpp"
#include "runtime/rng.hpp"
#include "runtime/version.hpp"

namespace {

using uoe::testing_support::contains;
using uoe::testing_support::error_message;

namespace fs = std::filesystem;
using uoe::Communicator;
using uoe::Config;


Config small_config() {
  Config c;
  c.layers = 2;
  c.d_model = 32;
  c.heads = 4;
  c.attn_experts = 2;
  c.attn_topk = 1;
  c.experts = 4;
  c.topk = 2;
  c.d_ff = 64;
  c.seq_len = 16;
  c.batch_size = 4;
  c.steps = 10;
  c.warmup = 2;
  c.seed = 7;
  uoe::config_validate(c);
  return c;
}

// A model and its optimizer, on one rank (every expert local).
struct Trainee {
  uoe::LocalExchange exchange;
  std::unique_ptr<uoe::Model> model;
  std::unique_ptr<uoe::AdamW> opt;

  // `seed` initialises the weights; `moment_seed` != 0 fills the AdamW moments with distinct
  // values (a fresh optimizer has all-zero moments, which would make their round trip vacuous).
  Trainee(const Config& c, uint64_t seed, uint64_t moment_seed, int vocab = 256) {
    model = std::make_unique<uoe::Model>(uoe::model_spec_from_config(c, vocab), seed, &exchange);
    opt = std::make_unique<uoe::AdamW>(model->params(), uoe::AdamWSpec{});
    if (moment_seed)
      for (size_t j = 0; j < opt->m().size(); ++j) {
        opt->m()[j] = uoe::rng_normal(moment_seed, 1, j);
        opt->v()[j] = uoe::rng_uniform(moment_seed, 2, j);
      }
  }
  uoe::ParamStore& params() { return model->params(); }
};

bool bitwise_equal(const uoe::FloatBuffer& a, const uoe::FloatBuffer& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

uoe::TrainState state_at(const Config& c, int64_t step) {
  uoe::TrainState s;
  s.step = step;
  s.seed = c.seed;
  s.lr = 1e-3 * static_cast<double>(step);
  s.config_ini = uoe::config_to_ini(c);
  return s;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  std::getline(in, s);
  return s;
}

// Flips one bit in the middle of the first chunk of `dataset`'s stored data (found with
// H5Dget_chunk_info; H5Dget_offset only works for contiguous datasets). One flipped bit changes a
// 16-bit word by ±2^k, never by a multiple of 65535, so Fletcher32 always sees it.
void corrupt_dataset(const std::string& file, const std::string& dataset) {
  haddr_t addr = HADDR_UNDEF;
  hsize_t size = 0;
  {
    const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    ASSERT_GE(f, 0) << file;
    const hid_t d = H5Dopen2(f, dataset.c_str(), H5P_DEFAULT);
    ASSERT_GE(d, 0) << dataset;
    const hid_t s = H5Dget_space(d);
    hsize_t offset[8];
    unsigned mask = 0;
    EXPECT_GE(H5Dget_chunk_info(d, s, 0, offset, &mask, &addr, &size), 0);
    H5Sclose(s);
    H5Dclose(d);
    H5Fclose(f);
  }
  ASSERT_NE(addr, HADDR_UNDEF);
  ASSERT_GT(size, 8u);
  std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
  const auto at = static_cast<std::streamoff>(addr + size / 2);
  io.seekg(at);
  char byte = 0;
  io.read(&byte, 1);
  byte = static_cast<char>(byte ^ 0x01);
  io.seekp(at);
  io.write(&byte, 1);
  ASSERT_TRUE(io.good());
}

// ---- forging malformed files (HDF5 C API) ------------------------------------------------------
// Each helper throws std::runtime_error when HDF5 refuses, which fails the test that called it.

void h5_ok(int64_t rc, const std::string& what) {
  if (rc < 0) throw std::runtime_error("test forging helper: HDF5 refused to " + what);
}

// Opens `file` read-write for the duration of f(file id).
template <class F>
void h5_edit(const std::string& file, F&& f) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const hid_t fid = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  h5_ok(fid, "open " + file);
  try {
    f(fid);
  } catch (...) {
    H5Fclose(fid);
    throw;
  }
  h5_ok(H5Fclose(fid), "close " + file);
}

// Writes attribute `name` of object `obj` (replacing it): int64 values, a scalar when `scalar`.
void forge_attr_i64(hid_t fid, const std::string& obj, const char* name, const std::vector<int64_t>& v,
                    bool scalar) {
  const hid_t o = H5Oopen(fid, obj.c_str(), H5P_DEFAULT);
  h5_ok(o, "open " + obj);
  if (H5Aexists(o, name) > 0) h5_ok(H5Adelete(o, name), std::string("delete attribute ") + name);
  const hsize_t n = v.size();
  const hid_t space = scalar ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &n, nullptr);
  const hid_t a = H5Acreate2(o, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
  h5_ok(a, std::string("create attribute ") + name);
  h5_ok(H5Awrite(a, H5T_NATIVE_INT64, v.data()), std::string("write attribute ") + name);
  H5Aclose(a);
  H5Sclose(space);
  H5Oclose(o);
}

// What the writer records on a slab dataset.
struct SlabAttrs {
  std::vector<int64_t> global_shape;
  int64_t begin = 0, end = 0, offset = 0;
};

std::vector<hsize_t> forge_dims(hid_t fid, const std::string& path) {
  const hid_t d = H5Dopen2(fid, path.c_str(), H5P_DEFAULT);
  h5_ok(d, "open " + path);
  const hid_t s = H5Dget_space(d);
  std::vector<hsize_t> dims(static_cast<size_t>(H5Sget_simple_extent_ndims(s)));
  H5Sget_simple_extent_dims(s, dims.data(), nullptr);
  H5Sclose(s);
  H5Dclose(d);
  return dims;
}

SlabAttrs forge_read_slab_attrs(hid_t fid, const std::string& path) {
  const hid_t d = H5Dopen2(fid, path.c_str(), H5P_DEFAULT);
  h5_ok(d, "open " + path);
  SlabAttrs out;
  const auto scalar = [&](const char* name) {
    int64_t v = 0;
    const hid_t a = H5Aopen(d, name, H5P_DEFAULT);
    h5_ok(a, std::string("open attribute ") + name);
    h5_ok(H5Aread(a, H5T_NATIVE_INT64, &v), std::string("read attribute ") + name);
    H5Aclose(a);
    return v;
  };
  out.begin = scalar("slab_begin");
  out.end = scalar("slab_end");
  out.offset = scalar("global_offset");
  const hid_t a = H5Aopen(d, "global_shape", H5P_DEFAULT);
  h5_ok(a, "open attribute global_shape");
  const hid_t s = H5Aget_space(a);
  out.global_shape.resize(static_cast<size_t>(H5Sget_simple_extent_npoints(s)));
  h5_ok(H5Aread(a, H5T_NATIVE_INT64, out.global_shape.data()), "read attribute global_shape");
  H5Sclose(s);
  H5Aclose(a);
  H5Dclose(d);
  return out;
}

// Replaces dataset `path` by a chunked one of stored type `type` and shape `dims`, with the slab
// attributes `attrs`. `write_data`: zeros are written; otherwise no chunk is ever written (so the
// shape may be anything, even far larger than the file).
void forge_dataset(hid_t fid, const std::string& path, hid_t type, const std::vector<hsize_t>& dims,
                   const SlabAttrs& attrs, bool write_data) {
  h5_ok(H5Ldelete(fid, path.c_str(), H5P_DEFAULT), "delete " + path);
  std::vector<hsize_t> chunk(dims);
  for (hsize_t& c : chunk) c = std::min<hsize_t>(std::max<hsize_t>(c, 1), 64);
  const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  h5_ok(H5Pset_chunk(dcpl, static_cast<int>(chunk.size()), chunk.data()), "set chunk");
  const hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  const hid_t d = H5Dcreate2(fid, path.c_str(), type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  h5_ok(d, "create " + path);
  if (write_data) {
    hsize_t n = 1;
    for (hsize_t x : dims) n *= x;
    std::vector<char> zeros(static_cast<size_t>(n) * H5Tget_size(type), 0);
    h5_ok(H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros.data()), "write " + path);
  }
  H5Dclose(d);
  H5Sclose(space);
  H5Pclose(dcpl);
  forge_attr_i64(fid, path, "global_shape", attrs.global_shape, false);
  forge_attr_i64(fid, path, "slab_begin", {attrs.begin}, true);
  forge_attr_i64(fid, path, "slab_end", {attrs.end}, true);
  forge_attr_i64(fid, path, "global_offset", {attrs.offset}, true);
}

// Every substring of `want` is in `message` (each failure reported with the whole message).
void expect_mentions(const std::string& message, const std::vector<std::string>& want) {
  for (const std::string& w : want) EXPECT_NE(message.find(w), std::string::npos) << "'" << w << "' not in: " << message;
}

class Checkpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "uoe-ckpt-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    root_ = pattern;
    dir_ = (fs::path(root_) / "checkpoints").string();
  }
  void TearDown() override { fs::remove_all(root_); }

  // Saves `t` at `step` and commits it.
  void save(Trainee& t, int64_t step, int keep_last = 0) {
    uoe::CheckpointWriter w(dir_, keep_last, comm_, uoe::shard_role_single());
    w.save(t.params(), *t.opt, state_at(cfg_, step));
    w.wait();
  }
  std::string step_dir(int64_t step) const { return (fs::path(dir_) / uoe::checkpoint_step_name(step)).string(); }
  std::string shard_path(int64_t step) const {
    return (fs::path(step_dir(step)) / uoe::checkpoint_shard_name(0, 1)).string();
  }
  std::string manifest_path(int64_t step) const { return (fs::path(step_dir(step)) / "manifest.h5").string(); }
  uoe::TrainState load(const std::string& path, Trainee& t) { return load(path, t, cfg_); }
  uoe::TrainState load(const std::string& path, Trainee& t, const Config& c) {
    return uoe::checkpoint_load(path, c, t.params(), *t.opt, comm_);
  }
  // Rewrites the manifest of `step` after `edit` changed it.
  template <class F>
  void edit_manifest(int64_t step, F&& edit) {
    uoe::Manifest m = uoe::manifest_read(manifest_path(step));
    edit(m);
    fs::remove(manifest_path(step));
    uoe::manifest_write(manifest_path(step), m);
  }

  // Makes the one-shard checkpoint of `step` look like one of ep 2 (manifest: world 2, ep 2, two
  // shard files; the shard file under both names), so that a manifest edit may spread a tensor over
  // two slabs. The shards' own /state still says 0 of 1: only checks made before a shard is opened
  // (coverage) can pass.
  void as_two_shards(int64_t step) {
    edit_manifest(step, [](uoe::Manifest& m) {
      m.world = m.ep = 2;
      m.shard_files = {uoe::checkpoint_shard_name(0, 2), uoe::checkpoint_shard_name(1, 2)};
    });
    for (int s = 0; s < 2; ++s)
      fs::copy_file(shard_path(step), step_dir(step) + "/" + uoe::checkpoint_shard_name(s, 2));
    fs::remove(shard_path(step));
  }

  Config cfg_ = small_config();
  uoe::SelfCommunicator comm_;
  std::string root_, dir_;
};

// ---- round trip, commit, pruning ---------------------------------------------------------------

TEST_F(Checkpoint, RoundTripIsBitwise) {
  Trainee a(cfg_, 7, 99);
  save(a, 5);
  EXPECT_TRUE(fs::exists(manifest_path(5)));
  EXPECT_TRUE(fs::exists(shard_path(5)));
  EXPECT_FALSE(fs::exists(step_dir(5) + ".tmp"));

  Trainee b(cfg_, 8, 0);  // other weights, zero moments
  ASSERT_FALSE(bitwise_equal(a.params().values(), b.params().values()));
  const uoe::TrainState st = load(step_dir(5), b);
  EXPECT_TRUE(bitwise_equal(a.params().values(), b.params().values()));
  EXPECT_TRUE(bitwise_equal(a.opt->m(), b.opt->m()));
  EXPECT_TRUE(bitwise_equal(a.opt->v(), b.opt->v()));
  EXPECT_EQ(st.step, 5);
  EXPECT_EQ(st.seed, cfg_.seed);
  EXPECT_EQ(st.lr, 5e-3);
  EXPECT_EQ(st.config_ini, uoe::config_to_ini(cfg_));
  EXPECT_EQ(st.world, 1);
  EXPECT_EQ(st.ep, 1);
}

// The manifest records the build that wrote it (attribute "build", runtime/version.hpp), read here
// straight from the file; a checkpoint written before the attribute existed (removed here) still
// loads, with an empty build.
TEST_F(Checkpoint, ManifestStoresTheBuildAndLoadsWithoutIt) {
  Trainee a(cfg_, 7, 99);
  save(a, 5);
  std::string stored;
  h5_edit(manifest_path(5), [&](hid_t fid) {
    ASSERT_GT(H5Aexists(fid, "build"), 0);
    const hid_t attr = H5Aopen(fid, "build", H5P_DEFAULT);
    const hid_t type = H5Aget_type(attr);
    ASSERT_EQ(H5Tget_class(type), H5T_STRING);
    std::string text(H5Tget_size(type), '\0');
    const hid_t mem = H5Tcopy(H5T_C_S1);
    H5Tset_size(mem, text.size());
    h5_ok(H5Aread(attr, mem, text.data()), "read build");
    H5Tclose(mem);
    H5Tclose(type);
    H5Aclose(attr);
    stored = text.c_str();
  });
  const uoe::CommLibraries comm = uoe::comm_library_versions();
  EXPECT_EQ(stored, uoe::build_info(comm));
  EXPECT_TRUE(contains(stored, "uoe " + uoe::build_info_fields(comm).version)) << stored;
  EXPECT_TRUE(contains(stored, "commit ")) << stored;
  Trainee b(cfg_, 8, 0);
  EXPECT_EQ(load(step_dir(5), b).build, uoe::build_info(comm));

  h5_edit(manifest_path(5), [](hid_t fid) { h5_ok(H5Adelete(fid, "build"), "delete build"); });
  Trainee c(cfg_, 8, 0);
  const uoe::TrainState st = load(step_dir(5), c);
  EXPECT_EQ(st.build, "");
  EXPECT_EQ(st.step, 5);
  EXPECT_TRUE(bitwise_equal(a.params().values(), c.params().values()));
}

// The parameters alone (uoe-sample): the same values; the moments are not read.
TEST_F(Checkpoint, ParametersOnlyLoadLeavesTheMomentsAlone) {
  Trainee a(cfg_, 7, 99);
  save(a, 5);
  Trainee b(cfg_, 8, 0);  // other weights, zero moments
  const auto moments = [](Trainee& t) {
    return std::vector<float>(t.opt->m().data(), t.opt->m().data() + t.opt->m().size());
  };
  const std::vector<float> m0 = moments(b);
  ASSERT_NE(moments(a), m0);
  const uoe::TrainState st = uoe::checkpoint_load_params(step_dir(5), cfg_, b.params(), comm_);
  EXPECT_TRUE(bitwise_equal(a.params().values(), b.params().values()));
  EXPECT_EQ(moments(b), m0);
  EXPECT_EQ(st.step, 5);
}

TEST_F(Checkpoint, ResumeContinuesBitwiseIdentically) {
  // Train 4 steps straight; train 2, save, load into a fresh model and optimizer, train 2 more:
  // the final weights and moments must be bitwise equal (docs/architecture.md, Contracts).
  const std::string corpus = uoe::data_builtin_corpus().substr(0, 20000);
  const uoe::Dataset data =
      uoe::data_from_text(corpus, nullptr, 0.1, uoe::TokenizerKind::byte, cfg_.seq_len, "built-in");
  Trainee straight(cfg_, cfg_.seed, 0);
  for (int s = 1; s <= 4; ++s) uoe::train_step(*straight.model, *straight.opt, cfg_, data.train, s);

  Trainee first(cfg_, cfg_.seed, 0);
  for (int s = 1; s <= 2; ++s) uoe::train_step(*first.model, *first.opt, cfg_, data.train, s);
  save(first, 2);
  Trainee resumed(cfg_, cfg_.seed + 1, 0);
  const uoe::TrainState st = load(step_dir(2), resumed);
  for (int s = static_cast<int>(st.step) + 1; s <= 4; ++s)
    uoe::train_step(*resumed.model, *resumed.opt, cfg_, data.train, s);

  EXPECT_TRUE(bitwise_equal(straight.params().values(), resumed.params().values()));
  EXPECT_TRUE(bitwise_equal(straight.opt->m(), resumed.opt->m()));
  EXPECT_TRUE(bitwise_equal(straight.opt->v(), resumed.opt->v()));
  // Not vacuous: training moved the weights.
  EXPECT_FALSE(bitwise_equal(straight.params().values(), first.params().values()));
}

TEST_F(Checkpoint, LatestNamesNewestAndKeepLastPrunesOnlyAfterCommit) {
  Trainee t(cfg_, 7, 99);
  uoe::CheckpointWriter w(dir_, /*keep_last=*/2, comm_, uoe::shard_role_single());
  w.save(t.params(), *t.opt, state_at(cfg_, 1));
  w.save(t.params(), *t.opt, state_at(cfg_, 2));  // commits step 1 first
  EXPECT_EQ(read_text(dir_ + "/latest"), "step_00000001");
  w.save(t.params(), *t.opt, state_at(cfg_, 3));  // commits step 2; step 3 in flight
  EXPECT_EQ(read_text(dir_ + "/latest"), "step_00000002");
  EXPECT_TRUE(fs::exists(step_dir(1))) << "pruned before step 3 was committed";
  EXPECT_TRUE(fs::exists(step_dir(2)));
  EXPECT_FALSE(fs::exists(step_dir(3)));
  EXPECT_TRUE(w.in_flight());
  w.wait();
  EXPECT_FALSE(w.in_flight());
  EXPECT_EQ(read_text(dir_ + "/latest"), "step_00000003");
  EXPECT_EQ(w.last_committed(), step_dir(3));
  EXPECT_FALSE(fs::exists(step_dir(1)));
  EXPECT_TRUE(fs::exists(step_dir(2)));
  EXPECT_TRUE(fs::exists(step_dir(3)));
  EXPECT_FALSE(fs::exists(step_dir(3) + ".tmp"));
  w.wait();  // nothing in flight: a no-op
}

// A paced writer (a share so small that, unhurried, it would write for hours) still commits a
// checkpoint that loads bitwise: wait() lifts the pacing (a hang here is a test timeout), and the
// snapshot it wrote from (whose bytes the in-place writer borrows) is what was saved.
TEST_F(Checkpoint, PacedWriterIsHurriedByWaitAndWritesTheSnapshot) {
  Trainee t(cfg_, 7, 99);
  uoe::CheckpointWriter w(dir_, 0, comm_, uoe::shard_role_single());
  EXPECT_THROW(w.set_background_share(0), uoe::Error);
  EXPECT_THROW(w.set_background_share(-1), uoe::Error);
  w.set_background_share(1e-6);
  w.save(t.params(), *t.opt, state_at(cfg_, 4));
  w.wait();
  EXPECT_EQ(read_text(dir_ + "/latest"), "step_00000004");
  Trainee back(cfg_, 9, 0);
  load(step_dir(4), back);
  EXPECT_TRUE(bitwise_equal(t.params().values(), back.params().values()));
  EXPECT_TRUE(bitwise_equal(t.opt->m(), back.opt->m()));
  EXPECT_TRUE(bitwise_equal(t.opt->v(), back.opt->v()));
  uoe::checkpoint_verify(step_dir(4));
}

TEST_F(Checkpoint, SavingAnExistingStepReplacesIt) {
  Trainee a(cfg_, 7, 99);
  save(a, 3);
  Trainee b(cfg_, 8, 98);
  save(b, 3);
  Trainee c(cfg_, 9, 0);
  load(step_dir(3), c);
  EXPECT_TRUE(bitwise_equal(b.params().values(), c.params().values()));
  EXPECT_TRUE(bitwise_equal(b.opt->v(), c.opt->v()));
  EXPECT_FALSE(fs::exists(step_dir(3) + ".old"));
}

TEST_F(Checkpoint, UnwritableDirectoryIsAnError) {
  const std::string file = root_ + "/a-file";
  std::ofstream(file) << "x";
  Trainee t(cfg_, 7, 0);
  uoe::CheckpointWriter w(file + "/checkpoints", 0, comm_, uoe::shard_role_single());
  const std::string m = error_message([&] { w.save(t.params(), *t.opt, state_at(cfg_, 1)); });
  EXPECT_NE(m.find(file + "/checkpoints"), std::string::npos) << m;
  EXPECT_FALSE(w.in_flight());
}

TEST_F(Checkpoint, FilesAreReadableByH5dump) {
  if (std::system("command -v h5dump >/dev/null 2>&1") != 0) GTEST_SKIP() << "h5dump is not installed";
  Trainee t(cfg_, 7, 99);
  save(t, 1);
  for (const std::string& f : {manifest_path(1), shard_path(1)})
    EXPECT_EQ(std::system(("h5dump -H '" + f + "' >/dev/null 2>&1").c_str()), 0) << f;
  EXPECT_EQ(std::system(("h5dump -d /model/embed '" + shard_path(1) + "' >/dev/null 2>&1").c_str()), 0);
}

// ---- damage: each a clear error ---------------------------------------------------------------

TEST_F(Checkpoint, CorruptedShardIsAChecksumErrorNamingTheDataset) {
  Trainee a(cfg_, 7, 99);
  save(a, 1);
  corrupt_dataset(shard_path(1), "/model/layers.0.mlp.w1");
  Trainee b(cfg_, 8, 0);
  const std::string m = error_message([&] { load(step_dir(1), b); });
  EXPECT_NE(m.find("checksum mismatch"), std::string::npos) << m;
  EXPECT_NE(m.find(shard_path(1)), std::string::npos) << m;
  EXPECT_NE(m.find("/model/layers.0.mlp.w1"), std::string::npos) << m;
  const std::string v = error_message([&] { uoe::checkpoint_verify(step_dir(1)); });
  EXPECT_NE(v.find("checksum mismatch"), std::string::npos) << v;
  EXPECT_NE(v.find("/model/layers.0.mlp.w1"), std::string::npos) << v;
}

TEST_F(Checkpoint, CorruptedMomentIsAChecksumError) {
  Trainee a(cfg_, 7, 99);
  save(a, 1);
  corrupt_dataset(shard_path(1), "/optim/v/embed");
  Trainee b(cfg_, 8, 0);
  const std::string m = error_message([&] { load(step_dir(1), b); });
  EXPECT_NE(m.find("checksum mismatch"), std::string::npos) << m;
  EXPECT_NE(m.find("/optim/v/embed"), std::string::npos) << m;
}

TEST_F(Checkpoint, TruncatedShardIsAnError) {
  Trainee a(cfg_, 7, 99);
  save(a, 1);
  fs::resize_file(shard_path(1), fs::file_size(shard_path(1)) / 2);
  Trainee b(cfg_, 8, 0);
  const std::string m = error_message([&] { load(step_dir(1), b); });
  EXPECT_NE(m.find("truncated"), std::string::npos) << m;
  EXPECT_NE(m.find(shard_path(1)), std::string::npos) << m;
}

TEST_F(Checkpoint, MissingShardIsAnError) {
  Trainee a(cfg_, 7, 99);
  save(a, 1);
  fs::remove(shard_path(1));
  Trainee b(cfg_, 8, 0);
  const std::string m = error_message([&] { load(step_dir(1), b); });
  EXPECT_NE(m.find("shard_00000_of_00001.h5"), std::string::npos) << m;
  EXPECT_NE(m.find("missing"), std::string::npos) << m;
}

TEST_F(Checkpoint, MissingManifestIsAnError) {
  Trainee a(cfg_, 7, 99);
  save(a, 1);
  fs::remove(manifest_path(1));
  Trainee b(cfg_, 8, 0);
  const std::string m = error_message([&] { load(step_dir(1), b); });
  EXPECT_NE(m.find("manifest.h5"), std::string::npos) << m;
  EXPECT_NE(m.find(step_dir(1)), std::string::npos) << m;
}

TEST_F(Checkpoint, WrongFormatVersionIsAnError) {
  Trainee a(cfg_, 7, 99);
  save(a, 1);
  edit_manifest(1, [](uoe::Manifest& m) { m.format_version = 999; });
  Trainee b(cfg_, 8, 0);
  const std::string m = error_message([&] { load(step_dir(1), b); });
  EXPECT_NE(m.find("format version 999"), std::string::npos) << m;
  EXPECT_NE(m.find("reads version " + std::to_string(uoe::kCheckpointFormatVersion)), std::string::npos) << m;
}

TEST_F(Checkpoint, OverlappingSlabsAreAnError) {
  Trainee a(cfg_, 7, 99);
  save(a, 1);
  as_two_shards(1);  // a shard file holds at most one slab of a tensor: two slabs need two files
  edit_manifest(1, [](uoe::Manifest& m) {
    for (uoe::ManifestTensor& t : m.tensors)
      if (t.name == "layers.1.mlp.w2") t.slabs = {{0, 0, 3}, {1, 2, 4}};
  });
  Trainee b(cfg_, 8, 0);
  const std::string m = error_message([&] { load(step_dir(1), b); });
  EXPECT_NE(m.find("layers.1.mlp.w2"), std::string::npos) << m;
  EXPECT_NE(m.find("overlap in rows [2, 3)"), std::string::npos) << m;
}

TEST_F(Checkpoint, SlabsWithAGapAreAnError) {
  Trainee a(cfg_, 7, 99);
  save(a, 1);
  edit_manifest(1, [](uoe::Manifest& m) {
    for (uoe::ManifestTensor& t : m.tensors)
      if (t.name == "layers.0.attn.wqkv") t.slabs = {{0, 0, 1}};  // 2 attention experts, only expert 0 held
  });
  Trainee b(cfg_, 8, 0);
  std::string m = error_message([&] { load(step_dir(1), b); });
  EXPECT_NE(m.find("layers.0.attn.wqkv"), std::string::npos) << m;
  EXPECT_NE(m.find("no shard holds rows [1, 2)"), std::string::npos) << m;

  as_two_shards(1);
  edit_manifest(1, [](uoe::Manifest& m) {
    for (uoe::ManifestTensor& t : m.tensors) {
      if (t.name == "layers.0.attn.wqkv") t.slabs = {{0, 0, 2}};
      if (t.name == "layers.0.mlp.b1") t.slabs = {{0, 0, 1}, {1, 2, 4}};
    }
  });
  m = error_message([&] { load(step_dir(1), b); });
  EXPECT_NE(m.find("layers.0.mlp.b1"), std::string::npos) << m;
  EXPECT_NE(m.find("no shard holds rows [1, 2)"), std::string::npos) << m;
}

TEST_F(Checkpoint, DifferentModelWidthIsAnError) {
  Trainee a(cfg_, 7, 99);
  save(a, 1);
  Config other = cfg_;
  other.d_model = 64;
  other.lr = 5e-4;  // training options may differ: not reported
  Trainee b(other, 8, 0);
  const std::string m = error_message([&] { load(step_dir(1), b, other); });
  EXPECT_NE(m.find("--d-model 32 in the checkpoint, 64 in this run"), std::string::npos) << m;
  EXPECT_EQ(m.find("--lr 0"), std::string::npos) << m;
}

TEST_F(Checkpoint, TrainingOptionsMayDiffer) {
  Trainee a(cfg_, 7, 99);
  save(a, 1);
  Config other = cfg_;
  other.lr = 5e-4;
  other.steps = 100;
  other.batch_size = 8;
  other.topk = 1;  // a behaviour option: allowed, with a warning
  Trainee b(other, 8, 0);
  load(step_dir(1), b, other);
  EXPECT_TRUE(bitwise_equal(a.params().values(), b.params().values()));
}

TEST_F(Checkpoint, DifferentVocabularyIsAnErrorNamingTheTensor) {
  Trainee a(cfg_, 7, 99);
  save(a, 1);
  Trainee b(cfg_, 8, 0, /*vocab=*/300);
  const std::string m = error_message([&] { load(step_dir(1), b); });
  EXPECT_NE(m.find("tensor embed: global shape [256, 32] in the checkpoint, [300, 32] in this model"),
            std::string::npos)
      << m;
}

TEST_F(Checkpoint, ShardOfAnotherStepIsAnError) {
  Trainee a(cfg_, 7, 99);
  save(a, 1);
  save(a, 2);
  fs::copy_file(shard_path(1), shard_path(2), fs::copy_options::overwrite_existing);
  Trainee b(cfg_, 8, 0);
  const std::string m = error_message([&] { load(step_dir(2), b); });
  EXPECT_NE(m.find("shard is from step 1 but the manifest is for step 2"), std::string::npos) << m;
}

// ---- malformed files: every size, shape, offset and count is checked before it is used ----------
// (The file is untrusted: each must end in a uoe::Error naming the file, the object and what was
// expected, never a bad_alloc, a crash or a read of garbage. error_message() fails the test on any
// other exception.)

TEST_F(Checkpoint, DatasetOfWrongDtypeIsAnError) {
  Trainee a(cfg_, 7, 99);
  save(a, 1);
  h5_edit(shard_path(1), [](hid_t f) {
    forge_dataset(f, "/model/layers.0.mlp.w1", H5T_IEEE_F64LE, forge_dims(f, "/model/layers.0.mlp.w1"),
                  forge_read_slab_attrs(f, "/model/layers.0.mlp.w1"), true);
  });
  Trainee b(cfg_, 8, 0);
  std::string m = error_message([&] { load(step_dir(1), b); });
  expect_mentions(m, {shard_path(1), "/model/layers.0.mlp.w1", "is float64, expected float32"});
  m = error_message([&] { uoe::checkpoint_verify(step_dir(1)); });
  expect_mentions(m, {shard_path(1), "/model/layers.0.mlp.w1", "is float64, expected float32"});

  save(a, 2);
  h5_edit(shard_path(2), [](hid_t f) {
    forge_dataset(f, "/optim/m/embed", H5T_STD_I32LE, forge_dims(f, "/optim/m/embed"),
                  forge_read_slab_attrs(f, "/optim/m/embed"), true);
  });
  m = error_message([&] { load(step_dir(2), b); });
  expect_mentions(m, {shard_path(2), "/optim/m/embed", "is int32, expected float32"});

  // The random and data state are integers: a float there is refused too.
  save(a, 3);
  h5_edit(shard_path(3), [](hid_t f) {
    h5_ok(H5Ldelete(f, "/data_cursor", H5P_DEFAULT), "delete /data_cursor");
    const hsize_t one = 1;
    const double v = 3;
    const hid_t s = H5Screate_simple(1, &one, nullptr);
    const hid_t d = H5Dcreate2(f, "/data_cursor", H5T_IEEE_F64LE, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    h5_ok(H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v), "write /data_cursor");
    H5Dclose(d);
    H5Sclose(s);
  });
  m = error_message([&] { uoe::checkpoint_verify(step_dir(3)); });
  expect_mentions(m, {shard_path(3), "/data_cursor", "is float64, expected int64"});
}

TEST_F(Checkpoint, HugeOrNegativeSlabAttributesAreAnError) {
  Trainee a(cfg_, 7, 99);
  Trainee b(cfg_, 8, 0);
  const std::string w1 = "/model/layers.0.mlp.w1";
  int64_t step = 0;
  // Each forged attribute value, and what the message must then say.
  const auto check = [&](const char* attr, const std::vector<int64_t>& value, bool scalar,
                         const std::vector<std::string>& want) {
    save(a, ++step);
    h5_edit(shard_path(step), [&](hid_t f) { forge_attr_i64(f, w1, attr, value, scalar); });
    std::vector<std::string> all = {shard_path(step), w1};
    all.insert(all.end(), want.begin(), want.end());
    expect_mentions(error_message([&] { load(step_dir(step), b); }), all);
    expect_mentions(error_message([&] { uoe::checkpoint_verify(step_dir(step)); }), all);
  };
  constexpr int64_t kHuge = std::numeric_limits<int64_t>::max();
  check("slab_end", {kHuge}, true, {"says it holds rows [0, 9223372036854775807)", "the manifest says rows [0, 4)"});
  check("slab_begin", {-3}, true, {"says it holds rows [-3, 4)", "the manifest says rows [0, 4)"});
  check("global_shape", {kHuge, kHuge}, false, {"of global shape [9223372036854775807, 9223372036854775807]"});
  check("global_shape", {-4, 32, 16}, false, {"of global shape [-4, 32, 16]"});
  check("global_offset", {-1}, true, {"global_offset -1, expected 0"});
  check("global_offset", {kHuge}, true, {"global_offset 9223372036854775807, expected 0"});
  // An attribute claiming more values than any checkpoint writes: refused before it is read.
  check("global_shape", std::vector<int64_t>(100000, 1), false, {"'global_shape'", "holds 100000 values, more than"});
  // The wrong kind of value.
  save(a, ++step);
  h5_edit(shard_path(step), [&](hid_t f) {
    const hid_t o = H5Oopen(f, w1.c_str(), H5P_DEFAULT);
    h5_ok(H5Adelete(o, "slab_begin"), "delete slab_begin");
    const hid_t s = H5Screate(H5S_SCALAR);
    const double v = 0.5;
    const hid_t at = H5Acreate2(o, "slab_begin", H5T_IEEE_F64LE, s, H5P_DEFAULT, H5P_DEFAULT);
    h5_ok(H5Awrite(at, H5T_NATIVE_DOUBLE, &v), "write slab_begin");
    H5Aclose(at);
    H5Sclose(s);
    H5Oclose(o);
  });
  expect_mentions(error_message([&] { load(step_dir(step), b); }),
                  {shard_path(step), w1, "'slab_begin'", "is float64, expected an integer"});
}

TEST_F(Checkpoint, DatasetShapeThatDisagreesWithItsSlabIsAnError) {
  Trainee a(cfg_, 7, 99);
  save(a, 1);
  const std::string w2 = "/optim/v/layers.1.mlp.w2";
  std::vector<hsize_t> dims;
  h5_edit(shard_path(1), [&](hid_t f) {
    dims = forge_dims(f, w2);
    std::vector<hsize_t> wider = dims;
    wider.back() += 1;
    forge_dataset(f, w2, H5T_IEEE_F32LE, wider, forge_read_slab_attrs(f, w2), true);
  });
  ASSERT_EQ(dims.size(), 3u);
  const std::string want = "[" + std::to_string(dims[0]) + ", " + std::to_string(dims[1]) + ", " +
                           std::to_string(dims[2]) + "]";
  const std::string got = "[" + std::to_string(dims[0]) + ", " + std::to_string(dims[1]) + ", " +
                          std::to_string(dims[2] + 1) + "]";
  Trainee b(cfg_, 8, 0);
  expect_mentions(error_message([&] { load(step_dir(1), b); }),
                  {shard_path(1), w2, "has shape " + got + ", expected " + want});
  expect_mentions(error_message([&] { uoe::checkpoint_verify(step_dir(1)); }),
                  {shard_path(1), w2, "has shape " + got + ", expected " + want});
}

TEST_F(Checkpoint, ForgedHugeTensorIsRefusedBeforeAnyAllocation) {
  // A manifest and shard that agree on a tensor of 2^40 rows (4 TiB of float32), never written:
  // verification must refuse it from the file's size, not try to allocate or read it.
  Trainee a(cfg_, 7, 99);
  save(a, 1);
  constexpr int64_t kRows = int64_t{1} << 40;
  edit_manifest(1, [&](uoe::Manifest& m) {
    for (uoe::ManifestTensor& t : m.tensors)
      if (t.name == "embed") {
        t.global_shape[0] = kRows;
        t.slabs = {{0, 0, kRows}};
      }
  });
  h5_edit(shard_path(1), [&](hid_t f) {
    for (const char* g : {"/model/embed", "/optim/m/embed", "/optim/v/embed"}) {
      SlabAttrs at = forge_read_slab_attrs(f, g);
      at.global_shape[0] = kRows;
      at.end = kRows;
      forge_dataset(f, g, H5T_IEEE_F32LE, {static_cast<hsize_t>(kRows), static_cast<hsize_t>(at.global_shape[1])}, at,
                    false);
    }
  });
  const std::string v = error_message([&] { uoe::checkpoint_verify(step_dir(1)); });
  expect_mentions(v, {shard_path(1), "/model/embed", "more than the whole file"});
  // Loading compares with the model first.
  Trainee b(cfg_, 8, 0);
  expect_mentions(error_message([&] { load(step_dir(1), b); }),
                  {manifest_path(1), "tensor embed: global shape [1099511627776, 32] in the checkpoint, [256, 32]"});
  // --resume auto does not choose it (and, with nothing else there, refuses to start over it).
  expect_mentions(error_message([&] { uoe::checkpoint_resolve("auto", dir_); }), {"none of the 1 checkpoints"});
}

TEST_F(Checkpoint, DatasetWhoseChunksWereNeverWrittenIsAnError) {
  // The right type, shape and attributes, but no data: reading it would give fill values.
  Trainee a(cfg_, 7, 99);
  save(a, 1);
  h5_edit(shard_path(1), [](hid_t f) {
    forge_dataset(f, "/optim/m/layers.0.attn.wqkv", H5T_IEEE_F32LE, forge_dims(f, "/optim/m/layers.0.attn.wqkv"),
                  forge_read_slab_attrs(f, "/optim/m/layers.0.attn.wqkv"), false);
  });
  Trainee b(cfg_, 8, 0);
  expect_mentions(error_message([&] { load(step_dir(1), b); }),
                  {shard_path(1), "/optim/m/layers.0.attn.wqkv", "but stores only 0"});
}

TEST_F(Checkpoint, ManifestIndexWithBadSizesIsAnError) {
  Trainee a(cfg_, 7, 99);
  Trainee b(cfg_, 8, 0);
  int64_t step = 0;
  // Each an edit of the manifest's index, and what the message must say besides the file.
  const auto check = [&](auto&& edit, const std::vector<std::string>& want) {
    save(a, ++step);
    edit_manifest(step, edit);
    std::vector<std::string> all = {manifest_path(step)};
    all.insert(all.end(), want.begin(), want.end());
    expect_mentions(error_message([&] { load(step_dir(step), b); }), all);
    expect_mentions(error_message([&] { uoe::checkpoint_verify(step_dir(step)); }), all);
  };
  const auto for_tensor = [](const char* name, auto&& f) {
    return [name, f](uoe::Manifest& m) {
      for (uoe::ManifestTensor& t : m.tensors)
        if (t.name == name) f(t);
    };
  };
  check(for_tensor("embed", [](uoe::ManifestTensor& t) { t.global_shape = {-5, 32}; }),
        {"/index/embed", "global_shape [-5, 32]", "<= 0"});
  check(for_tensor("embed", [](uoe::ManifestTensor& t) { t.global_shape = {int64_t{1} << 40, int64_t{1} << 40}; }),
        {"/index/embed", "global_shape [1099511627776, 1099511627776]"});
  check(for_tensor("layers.0.mlp.b1", [](uoe::ManifestTensor& t) { t.slabs = {{0, -2, int64_t{1} << 62}}; }),
        {"layers.0.mlp.b1", "[-2, 4611686018427387904)", "outside rows [0, 4)"});
  check(for_tensor("layers.0.mlp.b1", [](uoe::ManifestTensor& t) { t.slabs = {{-1, 0, 4}}; }),
        {"layers.0.mlp.b1", "names shard -1"});

  // The index itself forged: the wrong width, the wrong type, a huge slab count never written.
  const auto check_index = [&](hid_t type, std::vector<hsize_t> dims, bool write, const std::vector<std::string>& want) {
    save(a, ++step);
    h5_edit(manifest_path(step), [&](hid_t f) {
      const SlabAttrs keep{{256, 32}, 0, 0, 0};
      forge_dataset(f, "/index/embed", type, dims, keep, write);
    });
    std::vector<std::string> all = {manifest_path(step), "/index/embed"};
    all.insert(all.end(), want.begin(), want.end());
    expect_mentions(error_message([&] { uoe::checkpoint_verify(step_dir(step)); }), all);
  };
  check_index(H5T_STD_I64LE, {1, 4}, true, {"has shape [1, 4], expected [slabs, 3]"});
  check_index(H5T_IEEE_F64LE, {1, 3}, true, {"is float64, expected int64"});
  check_index(H5T_STD_I64LE, {hsize_t{1} << 40, 3}, false, {"1099511627776"});
}

TEST_F(Checkpoint, ManifestNamingAbsentOrForeignShardsIsAnError) {
  Trainee a(cfg_, 7, 99);
  Trainee b(cfg_, 8, 0);
  // A layout no run writes: ep 2 with one shard file.
  save(a, 1);
  edit_manifest(1, [](uoe::Manifest& m) { m.ep = 2, m.world = 2; });
  expect_mentions(error_message([&] { load(step_dir(1), b); }), {manifest_path(1), "1 shard files for ep 2"});
  // ep 2 with two shard files, the second absent.
  save(a, 2);
  edit_manifest(2, [](uoe::Manifest& m) {
    m.ep = 2, m.world = 2;
    m.shard_files = {uoe::checkpoint_shard_name(0, 2), uoe::checkpoint_shard_name(1, 2)};
  });
  fs::rename(shard_path(2), step_dir(2) + "/" + uoe::checkpoint_shard_name(0, 2));
  expect_mentions(error_message([&] { load(step_dir(2), b); }),
                  {step_dir(2), "shard_00001_of_00002.h5 listed in manifest.h5 is missing"});
  // Both present, but the shard was written by a run of one shard (ep 1): another world size.
  fs::copy_file(step_dir(2) + "/" + uoe::checkpoint_shard_name(0, 2),
                step_dir(2) + "/" + uoe::checkpoint_shard_name(1, 2));
  const std::string foreign = step_dir(2) + "/" + uoe::checkpoint_shard_name(0, 2);
  expect_mentions(error_message([&] { load(step_dir(2), b); }),
                  {foreign, "says this is shard 0 of 1, but the manifest lists it as shard 0 of 2"});
  // A shard file name that is not the one its position must have.
  save(a, 3);
  edit_manifest(3, [](uoe::Manifest& m) { m.shard_files = {"shard_00000_of_00007.h5"}; });
  expect_mentions(error_message([&] { uoe::checkpoint_verify(step_dir(3)); }),
                  {manifest_path(3), "is named shard_00000_of_00007.h5, expected shard_00000_of_00001.h5"});
}

TEST_F(Checkpoint, TruncatedEmptyOrForeignManifestIsAnError) {
  Trainee a(cfg_, 7, 99);
  Trainee b(cfg_, 8, 0);
  save(a, 1);
  fs::resize_file(manifest_path(1), fs::file_size(manifest_path(1)) / 2);
  std::string m = error_message([&] { load(step_dir(1), b); });
  expect_mentions(m, {manifest_path(1)});
  EXPECT_TRUE(m.find("truncated") != std::string::npos || m.find("damaged") != std::string::npos) << m;

  save(a, 2);
  fs::resize_file(manifest_path(2), 0);
  expect_mentions(error_message([&] { load(step_dir(2), b); }), {manifest_path(2), "is empty (0 bytes)"});

  save(a, 3);
  std::ofstream(manifest_path(3), std::ios::trunc) << "format_version = 1\nstep = 3\n";  // not HDF5 at all
  expect_mentions(error_message([&] { load(step_dir(3), b); }), {manifest_path(3), "is not an HDF5 file"});
  expect_mentions(error_message([&] { uoe::checkpoint_verify(step_dir(3)); }), {manifest_path(3)});

  // A shard that is not HDF5 either.
  save(a, 4);
  std::ofstream(shard_path(4), std::ios::trunc) << std::string(4096, 'x');
  expect_mentions(error_message([&] { load(step_dir(4), b); }), {shard_path(4), "is not an HDF5 file"});

  // None of them is chosen by --resume auto; with nothing valid left it refuses to start over them.
  expect_mentions(error_message([&] { uoe::checkpoint_resolve("auto", dir_); }), {"none of the 4 checkpoints"});
}

TEST_F(Checkpoint, LatestHoldingGarbageIsIgnored) {
  Trainee a(cfg_, 7, 99);
  save(a, 1);
  std::ofstream(dir_ + "/latest", std::ios::trunc) << std::string(1 << 20, 'x');  // no newline, 1 MiB
  EXPECT_EQ(uoe::checkpoint_resolve("auto", dir_), step_dir(1));
  std::ofstream(dir_ + "/latest", std::ios::trunc) << "step_99999999999999999999999\n";  // overflows int64
  EXPECT_EQ(uoe::checkpoint_resolve("auto", dir_), step_dir(1));
}

// ---- --resume ----------------------------------------------------------------------------------

TEST_F(Checkpoint, ResolveAutoUsesLatest) {
  Trainee t(cfg_, 7, 99);
  save(t, 1);
  save(t, 2);
  EXPECT_EQ(uoe::checkpoint_resolve("auto", dir_), step_dir(2));
  EXPECT_EQ(uoe::checkpoint_resolve("auto", dir_, comm_), step_dir(2));
  EXPECT_EQ(uoe::checkpoint_resolve("", dir_), "");
  EXPECT_EQ(uoe::checkpoint_resolve(step_dir(1), dir_), step_dir(1));
}

TEST_F(Checkpoint, ResolveAutoFallsBackPastACorruptedLatest) {
  Trainee t(cfg_, 7, 99);
  save(t, 1);
  save(t, 2);
  corrupt_dataset(shard_path(2), "/optim/m/layers.1.attn.wo");
  ASSERT_EQ(read_text(dir_ + "/latest"), "step_00000002");
  EXPECT_EQ(uoe::checkpoint_resolve("auto", dir_), step_dir(1));
  Trainee b(cfg_, 8, 0);
  EXPECT_EQ(load(uoe::checkpoint_resolve("auto", dir_), b).step, 1);
  EXPECT_TRUE(bitwise_equal(t.params().values(), b.params().values()));
}

TEST_F(Checkpoint, ResolveIgnoresALeftoverTmpDirectory) {
  Trainee t(cfg_, 7, 99);
  save(t, 1);
  // A crash after writing step 9's files but before its commit: a complete-looking step_9.tmp.
  save(t, 9);
  fs::rename(step_dir(9), step_dir(9) + ".tmp");
  fs::remove(dir_ + "/latest");
  EXPECT_EQ(uoe::checkpoint_resolve("auto", dir_), step_dir(1));
  // The next commit clears the leftover.
  save(t, 2);
  EXPECT_FALSE(fs::exists(step_dir(9) + ".tmp"));
  EXPECT_EQ(uoe::checkpoint_resolve("auto", dir_), step_dir(2));
}

TEST_F(Checkpoint, ResolveWithNothingToResume) {
  EXPECT_EQ(uoe::checkpoint_resolve("auto", dir_), "");  // directory does not exist
  fs::create_directories(dir_);
  EXPECT_EQ(uoe::checkpoint_resolve("auto", dir_), "");  // empty
  const std::string m = error_message([&] { uoe::checkpoint_resolve(root_ + "/nowhere", dir_); });
  EXPECT_NE(m.find("--resume '" + root_ + "/nowhere'"), std::string::npos) << m;
}

TEST_F(Checkpoint, ResolveRefusesWhenNoCheckpointVerifies) {
  Trainee t(cfg_, 7, 99);
  save(t, 1);
  corrupt_dataset(shard_path(1), "/model/embed");
  const std::string m = error_message([&] { uoe::checkpoint_resolve("auto", dir_); });
  EXPECT_NE(m.find("none of the 1 checkpoints"), std::string::npos) << m;
}

// ---- a checkpoint written by an older build ----------------------------------------------------

// tests/fixtures/checkpoint-af0762b: written by 2 ranks with --ep 2 at commit af0762b, so loading it
// on one rank reshards it. Every parameter and both AdamW moments must load bitwise as recorded
// (tests/common/checkpoint_fixture.hpp).
struct FixtureTrainee {
  Config cfg = uoe::testing_support::fixture_config();
  Trainee t{cfg, cfg.seed + 1, 0, uoe::testing_support::kFixtureVocab};  // other weights, zero moments
  uoe::SelfCommunicator comm;
  uoe::TrainState load() {
    return uoe::checkpoint_load(uoe::testing_support::kFixtureCheckpoint, cfg, t.params(), *t.opt, comm);
  }
};

TEST(CheckpointFixture, WrittenByAnOlderBuildLoadsBitwise) {
  FixtureTrainee f;
  const uoe::TrainState st = f.load();
  EXPECT_EQ(st.step, 3);
  EXPECT_EQ(st.seed, f.cfg.seed);
  EXPECT_EQ(st.world, 2);
  EXPECT_EQ(st.ep, 2);
  EXPECT_TRUE(contains(st.build, "commit af0762b")) << st.build;
  uoe::testing_support::FixtureCheck check;
  const uoe::ParamStore& ps = f.t.params();
  for (size_t i = 0; i < ps.count(); ++i) {
    const uoe::ParamInfo& p = ps.info(static_cast<int>(i));
    ASSERT_EQ(static_cast<int64_t>(p.size), p.global_size()) << p.name << ": one rank holds every expert";
    const float* arenas[3] = {ps.value(static_cast<int>(i)), f.t.opt->m().data() + p.offset,
                              f.t.opt->v().data() + p.offset};
    for (int g = 0; g < 3; ++g)
      check.add(std::string(uoe::testing_support::kFixtureGroups[g]) + "/" + p.name, p.global_shape, arenas[g], p.size);
  }
  const std::vector<std::string> problems = check.finish();
  for (const std::string& p : problems) ADD_FAILURE() << p;
}

TEST(CheckpointFixture, ResumesAndTrainsOneStep) {
  FixtureTrainee f;
  const uoe::TrainState st = f.load();
  const std::vector<float> before(f.t.params().values().data(),
                                  f.t.params().values().data() + f.t.params().values().size());
  const uoe::Dataset data = uoe::data_from_text(uoe::data_builtin_corpus().substr(0, 20000), nullptr, 0.1,
                                                uoe::TokenizerKind::byte, f.cfg.seq_len, "built-in");
  const uoe::StepFigures fig =
      uoe::train_step(*f.t.model, *f.t.opt, f.cfg, data.train, static_cast<int>(st.step) + 1);
  EXPECT_FALSE(fig.skipped) << fig.bad_tensor;
  EXPECT_TRUE(std::isfinite(fig.loss)) << fig.loss;
  EXPECT_GT(fig.loss, 0);
  EXPECT_NE(std::memcmp(before.data(), f.t.params().values().data(), before.size() * sizeof(float)), 0)
      << "the step did not change the weights";
}

// ---- pieces ------------------------------------------------------------------------------------

TEST(CheckpointManifest, CoverageAcceptsExactTilingInAnyOrder) {
  uoe::Manifest m;
  m.shard_files = {"a.h5", "b.h5"};
  m.tensors.push_back({"w", {4, 3}, {{1, 2, 4}, {0, 0, 2}}});
  EXPECT_NO_THROW(uoe::manifest_check_coverage(m, "test"));
  m.tensors[0].slabs.push_back({2, 0, 0});
  const std::string e = error_message([&] { uoe::manifest_check_coverage(m, "test"); });
  EXPECT_NE(e.find("names shard 2"), std::string::npos) << e;
  m.tensors[0].slabs = {{0, 0, 5}};
  const std::string o = error_message([&] { uoe::manifest_check_coverage(m, "test"); });
  EXPECT_NE(o.find("outside rows [0, 4)"), std::string::npos) << o;
}

TEST(CheckpointManifest, ConfigKeysAreComparedByValue) {
  Config a = small_config(), b = a;
  b.steps = 99;
  b.data = "/elsewhere.txt";
  EXPECT_TRUE(uoe::config_check_compatible(uoe::config_to_ini(a), uoe::config_to_ini(b), "x").empty());
  b.experts = 8;
  b.layers = 3;
  const std::string m = error_message(
      [&] { uoe::config_check_compatible(uoe::config_to_ini(a), uoe::config_to_ini(b), "x"); });
  EXPECT_NE(m.find("--layers 2 in the checkpoint, 3 in this run"), std::string::npos) << m;
  EXPECT_NE(m.find("--experts 4 in the checkpoint, 8 in this run"), std::string::npos) << m;
  const std::string missing = error_message([&] { uoe::config_check_compatible("", uoe::config_to_ini(a), "x"); });
  EXPECT_NE(missing.find("--d-model (absent) in the checkpoint"), std::string::npos) << missing;
}

TEST(CheckpointNames, StepAndShardNames) {
  EXPECT_EQ(uoe::checkpoint_step_name(1200), "step_00001200");
  EXPECT_EQ(uoe::checkpoint_shard_name(3, 4), "shard_00003_of_00004.h5");
}

}  // namespace
