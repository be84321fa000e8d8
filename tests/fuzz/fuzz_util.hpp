// Shared helpers of the fuzz targets (tests/fuzz): a scratch directory for the files a parser must
// read from disk, and the one rule every target enforces — a parser of untrusted input may refuse it
// only with uoe::Error (with a message); any other exception escaping is a bug, reported as a crash.
#pragma once
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <typeinfo>

#include "runtime/error.hpp"

namespace uoe_fuzz {

// A directory private to this process, removed at exit: under /dev/shm when it exists (no disk
// traffic per input), else under TMPDIR or /tmp.
class ScratchDir {
 public:
  ScratchDir() {
    namespace fs = std::filesystem;
    std::string base = "/tmp";
    if (const char* t = std::getenv("TMPDIR"); t && *t) base = t;
    std::error_code ec;
    if (fs::is_directory("/dev/shm", ec)) base = "/dev/shm";
    path_ = base + "/uoe_fuzz_" + std::to_string(::getpid());
    fs::create_directories(path_, ec);
    if (ec) {
      std::fprintf(stderr, "uoe fuzz: cannot create scratch directory %s: %s\n", path_.c_str(), ec.message().c_str());
      std::abort();
    }
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  std::string file(const std::string& name) const { return path_ + "/" + name; }

  // Writes `bytes` to the file `name` (truncating it) and returns its path.
  std::string write(const std::string& name, std::string_view bytes) const {
    const std::string p = file(name);
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) {
      std::fprintf(stderr, "uoe fuzz: cannot write %s\n", p.c_str());
      std::abort();
    }
    return p;
  }

 private:
  std::string path_;
};

inline const ScratchDir& scratch() {
  static const ScratchDir dir;  // destroyed at exit, after the last input
  return dir;
}

// Runs `f`: returns true when it completed, false when it refused the input with a uoe::Error (whose
// message must say something); aborts (a crash libFuzzer reports and saves) on any other exception.
template <class F>
bool accepts(const char* what, F&& f) {
  try {
    f();
    return true;
  } catch (const uoe::Error& e) {
    if (std::string_view(e.what()).empty()) {
      std::fprintf(stderr, "uoe fuzz: %s threw uoe::Error with an empty message\n", what);
      std::abort();
    }
    return false;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "uoe fuzz: %s let a %s escape instead of uoe::Error: %s\n", what, typeid(e).name(), e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "uoe fuzz: %s let a non-std exception escape\n", what);
    std::abort();
  }
}

// An invariant the code under test promises after accepting an input.
#define UOE_FUZZ_CHECK(cond)                                                                \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      std::fprintf(stderr, "uoe fuzz: check failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                         \
    }                                                                                       \
  } while (0)

}  // namespace uoe_fuzz
