// Durable, atomic replacement of finished files (atomic_file.hpp).
#include "runtime/atomic_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include "runtime/error.hpp"

namespace uoe {

namespace {

// "No space left on device (errno 28)".
std::string os_reason(int err) { return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")"; }

void fsync_open(const std::string& path, int flags, const char* what) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | flags);
  if (fd < 0) fail("cannot open ", what, " ", path, " to fsync it: ", os_reason(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) fail("fsync of ", what, " ", path, " failed: ", os_reason(err));
}

}  // namespace

std::string parent_directory(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? "." : parent.string();
}

void fsync_file(const std::string& path) { fsync_open(path, 0, "file"); }

void fsync_directory(const std::string& dir) { fsync_open(dir, O_DIRECTORY, "directory"); }

void rename_durably(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) fail("cannot rename ", from, " to ", to, ": ", os_reason(errno));
  const std::string dir_to = parent_directory(to), dir_from = parent_directory(from);
  fsync_directory(dir_to);
  if (std::filesystem::path(dir_from).lexically_normal() != std::filesystem::path(dir_to).lexically_normal())
    fsync_directory(dir_from);
}

AtomicFile::AtomicFile(std::string path, mode_t mode)
    : path_(std::move(path)), tmp_(path_ + ".tmp." + std::to_string(::getpid())) {
  // O_TRUNC: a temporary of this name can only be a leftover of a crashed process that had our pid.
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd_ < 0) fail("cannot create ", tmp_, " (to replace ", path_, "): ", os_reason(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void AtomicFile::write(const void* data, size_t bytes) {
  if (fd_ < 0) fail("cannot write ", tmp_, ": already committed or failed");
  const auto* p = static_cast<const char*>(data);
  size_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::write(fd_, p + done, bytes - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("cannot write ", tmp_, " (to replace ", path_, "): ", os_reason(errno));
    done += static_cast<size_t>(n);
  }
}

void AtomicFile::write_at(uint64_t offset, const void* data, size_t bytes) {
  if (fd_ < 0) fail("cannot write ", tmp_, ": already committed or failed");
  const auto* p = static_cast<const char*>(data);
  size_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::pwrite(fd_, p + done, bytes - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("cannot write ", tmp_, " (to replace ", path_, "): ", os_reason(errno));
    done += static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  if (fd_ < 0) fail("cannot commit ", tmp_, ": already committed or failed");
  const int fd = fd_;
  fd_ = -1;
  const int rc = ::fsync(fd);
  const int err = errno;
  // close() reports deferred write errors (NFS); after a failed fsync its result adds nothing.
  const int closed = ::close(fd);
  if (rc != 0) fail("cannot write ", tmp_, " (to replace ", path_, ") durably: fsync failed: ", os_reason(err));
  if (closed != 0) fail("cannot write ", tmp_, " (to replace ", path_, "): close failed: ", os_reason(errno));
  rename_durably(tmp_, path_);
  committed_ = true;
}

void atomic_write_file(const std::string& path, std::string_view text) {
  AtomicFile f(path);
  f.write(text);
  f.commit();
}

void atomic_write_file(const std::string& path, const std::function<void(AtomicFile&)>& writer) {
  AtomicFile f(path);
  writer(f);
  f.commit();
}

}  // namespace uoe
