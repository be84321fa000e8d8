// Helpers shared by the checkpoint sources (not part of the API, which is checkpoint.hpp): paths,
// shapes and timing, and the agreement of every rank on an error (one all-reduce of flags, then the
// first failing rank's reason broadcast), so that ranks fail together with the same reason.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "parallel/comm.hpp"

namespace uoe::ckpt {

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// shape_text ("[4, 3]") is in manifest.hpp, with the manifest's checks that use it.
std::string join_path(const std::string& dir, const std::string& name);

// parse_step_name (step directory names) is in manifest.cpp, where the fuzz target reaches it.

// What `<dir>/latest` holds: its first line, trailing spaces and CR removed; at most 63 bytes are
// read, whatever the file is. Not checked to be a step name (parse_step_name).
std::string read_latest(const std::string& latest_path);

// Committed checkpoint directories in `dir`, oldest first.
std::vector<std::pair<int64_t, std::string>> list_committed(const std::string& dir);

// Collective: `s` of rank `root` on every rank.
void broadcast_string(Communicator& world, std::string& s, int root = 0);

// Which ranks failed, from every rank's flag (one all-reduce; collective).
struct Failures {
  int count = 0;
  int first = -1;     // lowest failing rank
  std::string ranks;  // "rank 1" or "ranks 0, 1"
};
// Fills a Failures from every rank's flag (1 = failed), as gathered by one all-reduce.
Failures failures_from_flags(const std::vector<double>& failed);

// After every rank has learnt which ranks failed: the lowest failing rank's reason, sent to every
// rank (collective), so that each rank's message carries it. Under mpirun the first rank to exit
// may end the job before the others print anything, so no message may say only "see rank r".
std::string first_reason(Communicator& world, const Failures& f, const std::string& local_error);

// Every rank passes its own error ("" = none). Collective; if any rank failed, throws
// CollectiveError on every rank: the failing ranks with their own message, the others with `what`,
// the failing ranks and the first one's reason.
void agree_on_errors(Communicator& world, const std::string& local_error, const std::string& what);

}  // namespace uoe::ckpt
