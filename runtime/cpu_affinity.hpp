// How many threads a process should run: from the CPUs it may run on (its affinity mask,
// sched_getaffinity), never from the machine's core count. Under a launcher that binds ranks to
// cores (mpirun --bind-to, srun --cpu-bind, taskset, a container's cpuset) the mask is what the rank
// owns; std::thread::hardware_concurrency counts every core of the machine and oversubscribes it.
//
// Ranks of one node that were not bound share their CPUs: each then gets its share of them. The
// decision (default_threads) is a pure function of this rank's CPUs and of how many of the node's
// ranks may run on each CPU, which the caller sums over the node's ranks (launcher/trainer.cpp); it
// is tested by table (tests/unit/test_cpu_affinity.cpp) and with taskset (CTest multihost.threads_*).
#pragma once
#include <vector>

namespace uoe {

// The CPUs this process may run on (sched_getaffinity), in increasing order; never empty (a
// failing call counts as every online CPU).
std::vector<int> affinity_cpus();

// Threads for a process with these CPUs: one per CPU, at least 1 (the single-process tools).
int default_threads();

// Threads for a rank whose CPUs are `mine` when ranks_on_cpu[c] ranks of its node may run on CPU c
// (this one included; CPUs beyond the vector count as 1): the rank's share of its CPUs,
// Σ_{c ∈ mine} 1 / ranks_on_cpu[c], rounded down, at least 1. Unbound ranks sharing every CPU get
// cpus / ranks; ranks bound to their own cores get those cores.
int default_threads(const std::vector<int>& mine, const std::vector<int>& ranks_on_cpu);

// CPUs used by at least one rank (ranks_on_cpu[c] > 0): the node's cores for this job, at least 1.
int node_cpus(const std::vector<int>& ranks_on_cpu);

}  // namespace uoe
