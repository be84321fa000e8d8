// Durable, atomic replacement of finished files: the one place that writes a file under a
// temporary name, fsyncs it, renames it over the target and fsyncs the directory. Every writer of a
// finished file uses it (token and vocabulary files, the checkpoint directory's `latest`), and the
// checkpoint commit uses its rename and fsync helpers for the step directory. A crash or an error
// at any point leaves either the old file, untouched, or the new one, complete; never a part.
// Every error is a uoe::Error naming the path and the OS's reason (strerror and errno).
#pragma once
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace uoe {

// A file written as `<path>.tmp.<pid>` in the target's own directory (so the rename cannot cross
// file systems) and put in place by commit(): fsync the data, close, rename over the target
// (atomic: a reader sees the old file or the new one), fsync the directory (so the rename survives
// a crash). Destroyed without a successful commit() (an error, an exception in the writer), it
// removes the temporary and the target stays as it was.
class AtomicFile {
 public:
  // Creates the temporary; throws if it cannot (a directory that is missing or not writable).
  explicit AtomicFile(std::string path, mode_t mode = 0644);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Appends `bytes` bytes (short writes and EINTR are retried).
  void write(const void* data, size_t bytes);
  void write(std::string_view text) { write(text.data(), text.size()); }
  // Overwrites `bytes` bytes at `offset` of what was written (a header known only at the end).
  void write_at(uint64_t offset, const void* data, size_t bytes);
  // fsync, close, rename over the target, fsync the directory. At most once.
  void commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return tmp_; }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

// Replaces `path` with `text`, atomically and durably (AtomicFile).
void atomic_write_file(const std::string& path, std::string_view text);
// Replaces `path` with what `writer` writes into the AtomicFile it is given; if `writer` throws, the
// target is untouched, the temporary removed, and the exception propagates.
void atomic_write_file(const std::string& path, const std::function<void(AtomicFile&)>& writer);

// fsync(2) of a file, or of a directory (which makes the names created, renamed or removed in it
// durable).
void fsync_file(const std::string& path);
void fsync_directory(const std::string& dir);

// rename(2), then fsync of the directory (both directories when they differ), so the new name
// survives a crash once this returns. Also for directories (rename(2) does not replace a non-empty
// one).
void rename_durably(const std::string& from, const std::string& to);

// The directory holding `path`: "." for a bare name.
std::string parent_directory(const std::string& path);

}  // namespace uoe
