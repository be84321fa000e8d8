// Hostile inputs: configs, command lines, token and vocabulary files, text and checkpoint manifests
// that are malformed on purpose (truncated, wrong magic or dtype, huge or negative sizes and
// counts, forged shapes, parser placeholders). Each must be refused with a uoe::Error whose message
// names the file or option and what is wrong, in bounded time and memory. The regressions for what
// the fuzz targets (tests/fuzz) found are marked "Fuzz finding".
#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "tests/common/errors.hpp"
#include "checkpoints/manifest.hpp"
#include "runtime/config.hpp"
#include "runtime/data.hpp"
#include "runtime/error.hpp"
#include "runtime/token_file.hpp"

namespace {

using uoe::testing_support::contains;
using uoe::testing_support::error_message;

using uoe::TokenizerKind;
namespace fs = std::filesystem;

// The message of the uoe::Error that f() throws; a test failure if it throws nothing or anything
// else. f() runs on its own thread and must finish within `seconds`: a parser that loops on a
// hostile input ends the test binary with a message rather than hanging CTest.
std::string error_of(const std::function<void()>& f, int seconds = 30) {
  auto done = std::make_shared<std::promise<std::string>>();
  std::future<std::string> result = done->get_future();
  std::thread([f, done] {
    try {
      f();
      done->set_value("<nothing thrown>");
    } catch (const uoe::Error& e) {
      done->set_value(e.what());
    } catch (const std::exception& e) {
      done->set_value(std::string("<not a uoe::Error: ") + e.what() + ">");
    }
  }).detach();
  if (result.wait_for(std::chrono::seconds(seconds)) != std::future_status::ready) {
    std::fprintf(stderr, "FATAL: %s: the parser did not finish within %d s (an endless loop on hostile input)\n",
                 ::testing::UnitTest::GetInstance()->current_test_info()->name(), seconds);
    std::fflush(stderr);
    std::_Exit(1);
  }
  std::string msg = result.get();
  EXPECT_FALSE(msg.starts_with("<")) << msg;
  if (std::getenv("UOE_TEST_SHOW_ERRORS")) std::fprintf(stderr, "  message: %s\n", msg.c_str());  // to review them
  return msg;
}

// A directory unique to this test and process, removed with everything in it.
class Hostile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("uoe_hostile_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string write(const std::string& name, const std::string& bytes) const {
    const std::string p = (dir_ / name).string();
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << bytes;
    EXPECT_TRUE(out.good()) << p;
    return p;
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

uoe::ConfigParse parse(std::initializer_list<std::string> args) {
  std::vector<std::string> storage{"uoe-train"};
  storage.insert(storage.end(), args);
  std::vector<const char*> argv;
  for (const std::string& s : storage) argv.push_back(s.c_str());
  return uoe::config_parse(static_cast<int>(argv.size()), argv.data(), nullptr);
}

// ---------------------------------------------------------------------------------------------
// Config files and command lines

// Fuzz finding (fuzz_config, a 50-byte INI file): Boost.Program_options formats its messages by
// replacing placeholders such as %value% until none is left, so a value or option name containing
// its own placeholder made config_parse loop forever (uoe-train --d-model %value% hung).
TEST_F(Hostile, ConfigPlaceholderInValueOrNameDoesNotHang) {
  std::string m = error_of([] { parse({"--d-model", "%value%"}); });
  EXPECT_TRUE(contains(m, "--d-model")) << m;
  EXPECT_TRUE(contains(m, "\\x25value\\x25")) << m;  // what was written, its '%' spelled \x25

  const std::string key = write("key.ini", "heads= four\nbooption '%canonical_option%'-key = 3\n");
  m = error_of([&] { parse({"--config", key}); });
  EXPECT_TRUE(contains(m, key)) << m;
  EXPECT_TRUE(contains(m, "\\x25canonical_option\\x25")) << m;

  const std::string value = write("value.ini", "layers = %value%%option%%canonical_option%%prefix%\n");
  m = error_of([&] { parse({"--config", value}); });
  EXPECT_TRUE(contains(m, value)) << m;
  EXPECT_TRUE(contains(m, "layers")) << m;

  m = error_of([] { parse({"--seq-len", "%original_token%", "--seq-len", "%option%"}); });
  EXPECT_TRUE(contains(m, "--seq-len")) << m;
  // A '%' in an accepted value is kept as it is.
  EXPECT_EQ(parse({"--metrics", "run%value%.jsonl"}).config.metrics, "run%value%.jsonl");
}

TEST_F(Hostile, ConfigFileWithHugeNegativeAndNonNumericValues) {
  const struct {
    const char* ini;
    std::vector<const char*> names;
  } cases[] = {
      {"layers = 99999999999\n", {"layers", "99999999999"}},     // overflows int
      {"d-model = -64\n", {"--d-model", "-64"}},                 // negative dimension
      {"d-ff = 0\n", {"--d-ff"}},                                // zero dimension
      {"batch-size = -2147483648\n", {"--batch-size"}},          // INT_MIN
      {"seq-len = 1e9\n", {"seq-len", "1e9"}},                   // not an integer
      {"lr = nan\n", {"--lr"}},                                  // NaN
      {"capacity-factor = inf\n", {"--capacity-factor"}},        // infinity
      {"val-fraction = 1e400\n", {"val-fraction"}},              // out of double's range
      {"seed = 18446744073709551616\n", {"--seed", "18446744073709551616"}},  // 2^64
      {"seed = -1\n", {"--seed", "-1"}},
      {"layers = 2\nlayers = 3\n", {"layers"}},                  // twice
      {"[model]\nlayers = 2\n", {"model.layers"}},               // sections are not options
      {"layers\n", {"layers"}},                                  // no '='
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.ini);
    const std::string ini = write("bad.ini", c.ini);
    const std::string m = error_of([&] { parse({"--config", ini}); });
    for (const char* name : c.names) EXPECT_TRUE(contains(m, name)) << m;
  }
}

TEST_F(Hostile, ConfigFileOfBinaryGarbage) {
  std::string garbage;
  for (int i = 0; i < 512; ++i) garbage += static_cast<char>((i * 37 + 11) & 0xff);
  const std::string ini = write("garbage.ini", garbage);
  const std::string m = error_of([&] { parse({"--config", ini}); });
  EXPECT_TRUE(contains(m, ini)) << m;
  // NUL bytes and a line that is one long key.
  const std::string nul = write("nul.ini", std::string("layers = 2\0\0\0\n", 14) + std::string(100000, 'k') + "\n");
  const std::string m_nul = error_of([&] { parse({"--config", nul}); });
  EXPECT_TRUE(contains(m_nul, nul)) << m_nul;
  EXPECT_TRUE(contains(m_nul, "invalid line 'kkkk")) << m_nul;
  EXPECT_LT(m_nul.size(), 1000u);  // the 100 KB line is shown cut short
}

// ---------------------------------------------------------------------------------------------
// Token files

// A token file: the 40-byte header as given, then `payload` bytes.
std::string token_file_bytes(uint16_t dtype, uint16_t tokenizer, uint32_t vocab, uint64_t tokens,
                             const std::string& payload) {
  std::string b(uoe::kTokenFileHeaderBytes, '\0');
  std::memcpy(b.data(), uoe::kTokenFileMagic, 8);
  auto put = [&b](size_t at, uint64_t v, size_t n) {
    for (size_t i = 0; i < n; ++i) b[at + i] = static_cast<char>((v >> (8 * i)) & 0xff);
  };
  put(8, uoe::kTokenFileVersion, 4);
  put(12, dtype, 2);
  put(14, tokenizer, 2);
  put(16, vocab, 4);
  put(24, tokens, 8);
  return b + payload;
}

std::string read_tokens(const std::string& path) {
  return error_of([&] {
    const uoe::TokenFile f(path, "--data");
    (void)f.tokens(0, f.size());
  });
}

TEST_F(Hostile, TokenCountsWhoseByteSizeWrapsAround) {
  // n * dtype overflows 64 bits to 0, which is what the (empty) payload holds: still refused.
  const std::vector<std::pair<uint16_t, uint64_t>> cases = {
      {4, uint64_t{1} << 62}, {2, uint64_t{1} << 63}, {4, std::numeric_limits<uint64_t>::max()}};
  for (const auto& [dtype, n] : cases) {
    SCOPED_TRACE(n);
    const std::string p = write("wrap.tok", token_file_bytes(dtype, 0, 256, n, ""));
    const std::string m = read_tokens(p);
    EXPECT_TRUE(contains(m, p)) << m;
    EXPECT_TRUE(contains(m, std::to_string(n) + " tokens")) << m;
    EXPECT_TRUE(contains(m, "truncated")) << m;
  }
}

TEST_F(Hostile, TokenFileHeaderFields) {
  const struct {
    std::string bytes;
    const char* what;
  } cases[] = {
      {token_file_bytes(2, 1, 0, 0, ""), "vocabulary size 0"},
      {token_file_bytes(4, 1, 0xffffffffu, 0, ""), "does not fit 32-bit signed"},   // -1 as int32
      {token_file_bytes(4, 1, 0x80000000u, 0, ""), "does not fit 32-bit signed"},   // INT32_MAX + 1
      {token_file_bytes(0, 0, 256, 0, ""), "dtype code 0"},
      {token_file_bytes(8, 0, 256, 0, ""), "dtype code 8"},
      {token_file_bytes(0xffff, 0, 256, 0, ""), "dtype code 65535"},
      {token_file_bytes(2, 0xffff, 256, 0, ""), "tokenizer code 65535"},
      {token_file_bytes(2, 0, 0, 0, ""), "vocabulary size 0"},
      {std::string(uoe::kTokenFileMagic, 8), "truncated header (8 bytes"},
      {std::string(uoe::kTokenFileMagic, 7), "not a uoe token file"},
      {std::string("UOETOK02") + std::string(32, '\0'), "not a uoe token file"},  // another magic
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string p = write("h.tok", c.bytes);
    const std::string m = read_tokens(p);
    EXPECT_TRUE(contains(m, p)) << m;
    EXPECT_TRUE(contains(m, c.what)) << m;
  }
}

TEST_F(Hostile, Uint32TokenIdAtOrAboveTheVocabulary) {
  // Word level, V = 1000, uint32 ids: id 1000 and id 0xffffffff (-1 as int32) at tokens 2 and 3.
  std::string payload;
  for (uint32_t id : {5u, 999u, 1000u, 0xffffffffu}) payload.append(reinterpret_cast<const char*>(&id), 4);
  const std::string p = write("ids.tok", token_file_bytes(4, 1, 1000, 4, payload));
  const std::string m = read_tokens(p);
  EXPECT_TRUE(contains(m, p)) << m;
  EXPECT_TRUE(contains(m, "token 2 has id 1000")) << m;
  EXPECT_TRUE(contains(m, "vocabulary size 1000")) << m;
}

TEST_F(Hostile, FifoAndDeviceAreRefusedWithoutBlocking) {
  const std::string fifo = path("pipe.tok");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
  std::string m = read_tokens(fifo);  // opening a FIFO for reading would wait for a writer
  EXPECT_TRUE(contains(m, fifo)) << m;
  EXPECT_TRUE(contains(m, "not a regular file")) << m;
  m = error_of([&] { uoe::vocab_file_read(fifo); });
  EXPECT_TRUE(contains(m, "not a regular file")) << m;
  m = read_tokens("/dev/null");
  EXPECT_TRUE(contains(m, "/dev/null")) << m;
  EXPECT_TRUE(contains(m, "not a regular file")) << m;
}

// ---------------------------------------------------------------------------------------------
// Vocabulary files

TEST_F(Hostile, VocabularyMustStartWithUnk) {
  std::string m = error_of([&] { uoe::vocab_file_read(write("a.vocab", "the\n<unk>\ncat\n")); });
  EXPECT_TRUE(contains(m, path("a.vocab"))) << m;
  EXPECT_TRUE(contains(m, "line 1")) << m;
  EXPECT_TRUE(contains(m, "<unk>")) << m;
  // A huge first line is shown cut short.
  m = error_of([&] { uoe::vocab_file_read(write("b.vocab", std::string(1 << 20, 'x') + "\n")); });
  EXPECT_TRUE(contains(m, "line 1")) << m;
  EXPECT_LT(m.size(), 400u) << m;
}

TEST_F(Hostile, VocabularyOfBinaryBytesAndDirectory) {
  // Any bytes but '\r' and bad escapes make words; NUL bytes included. A lone "\" line is refused.
  const std::string bytes = std::string("<unk>\n") + std::string(1, 'a') + std::string(1, '\0') + "b\n" + "\xff\xfe\n";
  const uoe::Vocab v = uoe::vocab_file_read(write("nul.vocab", bytes));
  EXPECT_EQ(v.words.size(), 3u);
  EXPECT_EQ(v.words[1], std::string("a\0b", 3));
  std::string m = error_of([&] { uoe::vocab_file_read(write("bs.vocab", "<unk>\n\\\n")); });
  EXPECT_TRUE(contains(m, "line 2")) << m;
  EXPECT_TRUE(contains(m, "backslash")) << m;
  fs::create_directories(dir_ / "d.vocab");
  m = error_of([&] { uoe::vocab_file_read(path("d.vocab")); });
  EXPECT_TRUE(contains(m, path("d.vocab"))) << m;
  EXPECT_TRUE(contains(m, "directory")) << m;
}

TEST_F(Hostile, WordLevelTokenFileWithForgedVocabularySize) {
  // Header: V = 70000 (so uint32 ids); the vocabulary file next to it has 3 words.
  const std::string tok = write("x.train.tok", token_file_bytes(4, 1, 70000, 8, std::string(32, '\0')));
  write("x.vocab", "<unk>\na\nb\n");
  uoe::Config cfg;
  cfg.data = tok;
  cfg.tokenizer = "word";
  cfg.seq_len = 2;
  const std::string m = error_of([&] { uoe::data_load(cfg); });
  EXPECT_TRUE(contains(m, path("x.vocab"))) << m;
  EXPECT_TRUE(contains(m, "3 words")) << m;
  EXPECT_TRUE(contains(m, "70000")) << m;
}

// ---------------------------------------------------------------------------------------------
// Text

TEST_F(Hostile, TextWithNoWordTokens) {
  // Only whitespace and control bytes: no word-level token at all.
  std::string text;
  for (int i = 0; i < 300; ++i) text += static_cast<char>(i % 3 == 0 ? ' ' : i % 3 == 1 ? '\t' : '\x01');
  const std::string m = error_of([&] { uoe::data_from_text(text, nullptr, 0.1, TokenizerKind::word, 4, "blank.txt"); });
  EXPECT_TRUE(contains(m, "blank.txt")) << m;
  EXPECT_TRUE(contains(m, "0 tokens")) << m;
}

TEST_F(Hostile, TextWithExtremeSeqLenAndValFraction) {
  const std::string text(1000, 'a');
  std::string m = error_of([&] { uoe::data_from_text(text, nullptr, 0.1, TokenizerKind::byte, INT_MAX, "t"); });
  EXPECT_TRUE(contains(m, "--seq-len 2147483647")) << m;
  EXPECT_TRUE(contains(m, "2147483648")) << m;  // seq_len + 1, without overflow
  m = error_of([&] { uoe::data_from_text(text, nullptr, 0.1, TokenizerKind::word, INT_MIN, "t"); });
  EXPECT_TRUE(contains(m, "--seq-len")) << m;
  for (double f : {std::numeric_limits<double>::quiet_NaN(), -0.5, std::numeric_limits<double>::infinity()}) {
    m = error_of([&] { uoe::data_from_text(text, nullptr, f, TokenizerKind::byte, 8, "t"); });
    EXPECT_TRUE(contains(m, "--val-fraction")) << m;
  }
  // So small a fraction that the validation split is empty: named as such.
  m = error_of([&] { uoe::data_from_text(text, nullptr, 1e-300, TokenizerKind::byte, 8, "t"); });
  EXPECT_TRUE(contains(m, "validation split")) << m;
  EXPECT_TRUE(contains(m, "0 tokens")) << m;
}

// ---------------------------------------------------------------------------------------------
// Checkpoint manifests (the values manifest_read takes from a file, before they are used)

TEST(HostileManifest, IndexEntryShapes) {
  const struct {
    std::vector<int64_t> dims, shape;
    size_t shards;
    const char* what;
  } cases[] = {
      {{3}, {4}, 2, "expected [slabs, 3]"},
      {{1, 3, 1}, {4}, 2, "expected [slabs, 3]"},
      {{1, 4}, {4}, 2, "expected [slabs, 3]"},
      {{0, 3}, {4}, 2, "expected [slabs, 3]"},
      {{-5, 3}, {4}, 2, "expected [slabs, 3]"},
      {{3, 3}, {4}, 2, "3 slabs but the manifest has 2 shard files"},
      {{int64_t{1} << 62, 3}, {4}, 2, "4611686018427387904 slabs"},  // rows * 3 would overflow
      {{1, 3}, {}, 1, "empty global_shape"},
      {{1, 3}, {4, 0}, 1, "dimension <= 0"},
      {{1, 3}, {4, -1}, 1, "dimension <= 0"},
      {{1, 3}, {int64_t{1} << 31, int64_t{1} << 31, int64_t{1} << 31}, 1, "more than 2^48 elements"},  // wraps int64
      {{1, 3}, {int64_t{1} << 24, (int64_t{1} << 24) + 1}, 1, "more than 2^48 elements"},
      {{1, 3}, {INT64_MAX, INT64_MAX}, 1, "more than 2^48 elements"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string m =
        error_of([&] { uoe::manifest_check_index_entry("ck/manifest.h5", "/index/w", c.dims, c.shape, c.shards); });
    EXPECT_TRUE(contains(m, "ck/manifest.h5")) << m;
    EXPECT_TRUE(contains(m, "/index/w")) << m;
    EXPECT_TRUE(contains(m, c.what)) << m;
  }
  EXPECT_NO_THROW(uoe::manifest_check_index_entry("m", "/index/w", {2, 3}, {int64_t{1} << 24, int64_t{1} << 24}, 2));
}

// Before the slab count was checked, an /index entry declaring 2^40 slabs (a chunked dataset that
// stores nothing, a few hundred bytes on disk) made manifest_read allocate 24 TiB: std::bad_alloc
// with no file named, or an overflow of rows * 3 for larger counts.
TEST_F(Hostile, ForgedManifestIndexDoesNotAllocateWhatItDeclares) {
  uoe::Manifest good;
  good.shard_files = {"shard_00000_of_00001.h5"};
  good.tensors.push_back({"w", {4, 2}, {{0, 0, 4}}});
  const std::string path_h5 = path("manifest.h5");
  uoe::manifest_write(path_h5, good);
  ASSERT_EQ(uoe::manifest_read(path_h5).tensors.size(), 1u);

  // Add /index/forged: int64 [2^40, 3], chunked, never written; global_shape [4].
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const hid_t f = H5Fopen(path_h5.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  const hsize_t dims[2] = {hsize_t{1} << 40, 3}, chunk[2] = {1, 3};
  const hid_t space = H5Screate_simple(2, dims, nullptr);
  const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  ASSERT_GE(H5Pset_chunk(dcpl, 2, chunk), 0);
  const hid_t d = H5Dcreate2(f, "/index/forged", H5T_STD_I64LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  ASSERT_GE(d, 0);
  const hsize_t one = 1;
  const hid_t aspace = H5Screate_simple(1, &one, nullptr);
  const hid_t a = H5Acreate2(d, "global_shape", H5T_STD_I64LE, aspace, H5P_DEFAULT, H5P_DEFAULT);
  const int64_t shape = 4;
  ASSERT_GE(H5Awrite(a, H5T_NATIVE_INT64, &shape), 0);
  H5Aclose(a);
  H5Sclose(aspace);
  H5Dclose(d);
  H5Pclose(dcpl);
  H5Sclose(space);
  ASSERT_GE(H5Fclose(f), 0);
  ASSERT_LT(fs::file_size(path_h5), 64u * 1024);  // the forgery is small

  const std::string m = error_of([&] { uoe::manifest_read(path_h5); });
  EXPECT_TRUE(contains(m, path_h5)) << m;
  EXPECT_TRUE(contains(m, "/index/forged")) << m;
  EXPECT_TRUE(contains(m, "1099511627776 slabs")) << m;
}

TEST(HostileManifest, StepNames) {
  EXPECT_EQ(uoe::parse_step_name("step_00001200"), 1200);
  EXPECT_EQ(uoe::parse_step_name("step_" + std::string(18, '9')), int64_t{999999999999999999});
  const std::vector<std::string> bad_names = {"step_",   "step_" + std::string(19, '9'), "step_-1",     "step_+1",
                                              "step_1x", "step_ 1", "step_1\n", "step_12.tmp", "latest", "",
                                              std::string("step_1\0", 7), "STEP_1"};
  for (const std::string& bad : bad_names)
    EXPECT_FALSE(uoe::parse_step_name(bad).has_value()) << bad;
}

TEST(HostileManifest, CoverageWithExtremeSlabs) {
  uoe::Manifest m;
  m.shard_files = {"a.h5", "b.h5"};
  m.tensors.push_back({"w", {8, 2}, {{0, 0, 4}, {1, 4, INT64_MAX}}});
  std::string e = error_of([&] { uoe::manifest_check_coverage(m, "ck/manifest.h5"); });
  EXPECT_TRUE(contains(e, "ck/manifest.h5")) << e;
  EXPECT_TRUE(contains(e, "outside rows [0, 8)")) << e;
  m.tensors[0].slabs = {{0, INT64_MIN, 4}, {1, 4, 8}};
  e = error_of([&] { uoe::manifest_check_coverage(m, "ck/manifest.h5"); });
  EXPECT_TRUE(contains(e, "outside rows")) << e;
  m.tensors[0].slabs = {{INT64_MAX, 0, 4}, {-1, 4, 8}};
  e = error_of([&] { uoe::manifest_check_coverage(m, "ck/manifest.h5"); });
  EXPECT_TRUE(contains(e, "names shard")) << e;
  EXPECT_TRUE(contains(e, "2 shard files")) << e;
}

}  // namespace
