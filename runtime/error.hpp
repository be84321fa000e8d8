// Errors and checks. Every failure a user can cause (config, data, checkpoint, command line)
// throws uoe::Error with a message that names what is wrong; internal invariants use UOE_ASSERT,
// which is always on (never compiled out like assert()).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace uoe {

// A user-facing error: the message names the option, file, tensor or rank and what was expected.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// An error that every rank of the job throws at the same point, after agreeing on it through a
// collective (e.g. a checkpoint write that failed on one rank, reported to all with its reason).
// No rank is left waiting in a collective for another, so uoe-train ends such a job with
// MPI_Finalize and exit code 1 on every rank, each printing the message, instead of MPI_Abort
// (which may kill the other ranks before they print theirs).
class CollectiveError : public Error {
 public:
  explicit CollectiveError(const std::string& what) : Error(what) {}
};

// Builds a message from streamable pieces: uoe::fail("--topk ", k, " exceeds --experts ", e).
template <class... Args>
[[noreturn]] inline void fail(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  throw Error(os.str());
}

}  // namespace uoe

#define UOE_STRINGIFY_(x) #x
#define UOE_STRINGIFY(x) UOE_STRINGIFY_(x)

// Internal invariant: a bug in uoe if it fires, so it reports file:line and the condition.
#define UOE_ASSERT(cond, ...)                                                              \
  do {                                                                                     \
    if (!(cond))                                                                           \
      ::uoe::fail("internal error at " __FILE__ ":" UOE_STRINGIFY(__LINE__) ": " #cond " ", \
                  ##__VA_ARGS__);                                                          \
  } while (0)
