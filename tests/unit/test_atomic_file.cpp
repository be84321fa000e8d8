// runtime/atomic_file.hpp: a finished file is replaced only by a complete, durable new one. On
// success the target holds the new bytes and no temporary is left; on any failure — the writer
// throws, a write fails (file-size limit: EFBIG), the rename fails (the target is a directory), the
// directory is missing — the old file is untouched, no temporary is left, and the error names the
// path and the OS's reason.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/atomic_file.hpp"
#include "runtime/error.hpp"
#include "tests/common/errors.hpp"

namespace {

namespace fs = std::filesystem;
using uoe::testing_support::contains;
using uoe::testing_support::error_message;

class AtomicFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir() + "uoe_test_atomic_file_" + std::to_string(::getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  static std::string read(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  // Names in the directory: only the files a test made, never a temporary.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
  std::string dir_;
};

TEST_F(AtomicFile, ReplacesTheTargetOnSuccess) {
  const std::string p = path("latest");
  uoe::atomic_write_file(p, "old\n");
  EXPECT_EQ(read(p), "old\n");
  uoe::atomic_write_file(p, [](uoe::AtomicFile& f) {
    f.write("new ");
    f.write(std::string(100000, 'x'));
  });
  EXPECT_EQ(read(p), "new " + std::string(100000, 'x'));
  EXPECT_EQ(names(), std::vector<std::string>{"latest"});
}

TEST_F(AtomicFile, WriterThatThrowsLeavesTheOldFile) {
  const std::string p = path("vocab");
  uoe::atomic_write_file(p, "old\n");
  EXPECT_THROW(uoe::atomic_write_file(p,
                                      [](uoe::AtomicFile& f) {
                                        f.write("half of the new ");
                                        throw std::runtime_error("the writer failed");
                                      }),
               std::runtime_error);
  EXPECT_EQ(read(p), "old\n");
  EXPECT_EQ(names(), std::vector<std::string>{"vocab"});
}

TEST_F(AtomicFile, UncommittedFileLeavesTheOldFile) {
  const std::string p = path("data.tok");
  uoe::atomic_write_file(p, "old\n");
  {
    uoe::AtomicFile f(p);
    f.write("new\n");
    EXPECT_TRUE(fs::exists(f.temp_path()));
    EXPECT_EQ(uoe::parent_directory(f.temp_path()), dir_) << "the temporary must be beside the target";
  }
  EXPECT_EQ(read(p), "old\n");
  EXPECT_EQ(names(), std::vector<std::string>{"data.tok"});
}

// A write that fails (a file-size limit: EFBIG, as a full disk gives ENOSPC) names the file and the
// reason, and the old file stays.
TEST_F(AtomicFile, FailedWriteLeavesTheOldFileAndNamesThePath) {
  const std::string p = path("big");
  uoe::atomic_write_file(p, "old\n");
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  const auto old_handler = ::signal(SIGXFSZ, SIG_IGN);  // EFBIG instead of being killed
  rlimit small = saved;
  small.rlim_cur = 1024;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  const std::string m = error_message([&] { uoe::atomic_write_file(p, std::string(4096, 'x')); });
  ::setrlimit(RLIMIT_FSIZE, &saved);
  ::signal(SIGXFSZ, old_handler);
  EXPECT_TRUE(contains(m, "cannot write " + p + ".tmp.")) << m;
  EXPECT_TRUE(contains(m, "File too large (errno 27)")) << m;
  EXPECT_EQ(read(p), "old\n");
  EXPECT_EQ(names(), std::vector<std::string>{"big"});
}

// rename(2) cannot put a file over a directory: the commit fails, the directory and its contents stay.
TEST_F(AtomicFile, FailedRenameLeavesTheTargetAndNamesBothPaths) {
  const std::string p = path("target");
  fs::create_directory(p);
  uoe::atomic_write_file(p + "/inside", "kept\n");
  const std::string m = error_message([&] { uoe::atomic_write_file(p, "new\n"); });
  EXPECT_TRUE(contains(m, "cannot rename " + p + ".tmp.")) << m;
  EXPECT_TRUE(contains(m, " to " + p + ": ")) << m;
  EXPECT_TRUE(contains(m, "(errno ")) << m;
  EXPECT_EQ(read(p + "/inside"), "kept\n");
  EXPECT_EQ(names(), std::vector<std::string>{"target"});
}

TEST_F(AtomicFile, MissingDirectoryIsAnErrorNamingThePath) {
  const std::string p = path("no/such/dir/latest");
  const std::string m = error_message([&] { uoe::atomic_write_file(p, "x"); });
  EXPECT_TRUE(contains(m, "cannot create " + p + ".tmp.")) << m;
  EXPECT_TRUE(contains(m, "No such file or directory (errno 2)")) << m;
  const std::string d = error_message([&] { uoe::fsync_directory(path("absent")); });
  EXPECT_TRUE(contains(d, path("absent"))) << d;
}

// Root ignores permissions, so this runs only for other users.
TEST_F(AtomicFile, UnwritableDirectoryLeavesTheOldFile) {
  if (::geteuid() == 0) GTEST_SKIP() << "root writes into a directory without write permission";
  const std::string p = path("latest");
  uoe::atomic_write_file(p, "old\n");
  fs::permissions(dir_, fs::perms::owner_write, fs::perm_options::remove);
  const std::string m = error_message([&] { uoe::atomic_write_file(p, "new\n"); });
  fs::permissions(dir_, fs::perms::owner_write, fs::perm_options::add);
  EXPECT_TRUE(contains(m, "Permission denied")) << m;
  EXPECT_EQ(read(p), "old\n");
}

// What the checkpoint commit does with a step directory.
TEST_F(AtomicFile, RenameDurablyMovesDirectories) {
  fs::create_directory(path("step_1.tmp"));
  uoe::atomic_write_file(path("step_1.tmp/manifest.h5"), "m");
  uoe::rename_durably(path("step_1.tmp"), path("step_1"));
  EXPECT_EQ(read(path("step_1/manifest.h5")), "m");
  EXPECT_EQ(names(), std::vector<std::string>{"step_1"});
  const std::string m = error_message([&] { uoe::rename_durably(path("step_2.tmp"), path("step_2")); });
  EXPECT_TRUE(contains(m, "cannot rename " + path("step_2.tmp") + " to " + path("step_2"))) << m;
  EXPECT_EQ(uoe::parent_directory("latest"), ".");
}

}  // namespace
