// Logging: rank-aware, to stderr for warnings/errors and stdout for progress.
#pragma once
#include <cstdio>
#include <string>

namespace uoe {

// Set once at start-up (after MPI init); rank 0 prints progress, every rank prints errors.
void log_set_rank(int rank, int world);
int log_rank();
bool log_is_root();
// The MPI world rank that error messages name (the CUDA, cuBLAS and NCCL status checks), −1 before
// MPI_Init and after MPI_Finalize. parallel/'s MpiSession sets it, since runtime/ knows no MPI.
void set_process_rank(int rank);
int process_rank();
// printf-style; info goes to stdout on rank 0 only, warn/error to stderr on every rank with a
// "[rank r]" prefix when world > 1.
void log_info(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// Sends info lines to stderr instead, for tools whose stdout is their product (uoe-sample's text).
void log_info_to_stderr();
void log_warn(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void log_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// A live status line (rank 0, only when stdout is a terminal): rewritten in place with '\r', cleared
// before the next logged line, so a terminal shows progress between the plain log lines while a
// pipe or file (a batch job's log) gets only the plain lines. UOE_PROGRESS=plain turns it off,
// UOE_PROGRESS=live on; under mpirun/srun it is off unless set (launcher/uoe-launch sets it from
// whether its own output is a terminal).
bool log_status_enabled();
void log_status(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

}  // namespace uoe
