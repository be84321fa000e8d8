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
