// An analytic estimate of one rank's memory in training, from the model's spec (layers/model.hpp)
// and the run's batch, ep and world size alone, itemised
// (parameters, gradients, AdamW state, activations kept for backward, backward buffers, exchange
// buffers, logits, workspaces, data), so a run can print what it expects before it starts and a
// test can hold the implementation to it (tests/slow/test_memory.cpp).
//
// What is counted is what layers/step.hpp, layers/experts.cpp, layers/router.cpp, the exchanges
// and the training step (layers/train_step.cpp) allocate and touch. Every buffer there keeps its largest size across
// blocks and steps (FloatBuffer reuses its allocation), so the figure is the steady state after the
// first steps, which is also the peak. Rows per block are taken at their bound: a routed block
// sends min(P·k, E·C) patch-expert assignments (C = expert_capacity, layers/router.hpp, of
// P = B·T/patch patches), i.e. all P·k unless capacity binds below that. Two figures depend on
// routing and use a balanced assumption:
//   - attention probabilities, per (attention expert, sequence) segment of L kept tokens, g·L²
//     floats: L = min(T, C·patch/B), every expert at capacity, spread evenly over sequences
//     (dropless: L = T·k_a/E_a, the mean);
//   - with ep > 1, rows received by a rank's experts = rows it sends (balanced experts).
// Not counted: the process itself (binary, libraries, MPI and BLAS thread buffers), about 30 MiB
// (230 MiB in a UOE_CUDA build, which loads cuBLAS at start-up), reported separately as
// runtime_overhead_bytes (a measured constant, not a model); transient allocations while loading data.
//
// Measured (tests/slow/test_memory.cpp and a sweep over d 128–512, B 8–32, uoe/dense/moe): after
// the first step the peak RSS growth of training is 95–100% of total(); it then creeps up over
// ~50 steps to 100–110% (reference config: 178 → 204 MiB against 187 MiB) and stays there. The
// creep is the allocator, not a missing buffer: routed blocks' row counts vary from step to step,
// a workspace that must grow is freed and allocated again, and glibc's dynamic mmap threshold puts
// the new one in the heap, where the old one leaves a resident hole. With MALLOC_MMAP_THRESHOLD_=65536
// the same run levels off at 185 MiB (99%). Dense blocks (fixed shapes) match at 99.7% from step 1.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "layers/model.hpp"
#include "runtime/bf16.hpp"
#include "runtime/config.hpp"

namespace uoe {

// Activation recomputation (--recompute; docs/architecture.md, One step): what a block keeps from
// its forward pass for its backward pass. none: everything; experts: all but the experts' internal
// activations (their caches), which the block's backward forms again from the rows the experts
// read; blocks: the block's input, its routing and, when rows travel, what crossed the network
// (the rows its experts received and the outputs returned to it) — the norm, the rows, the
// experts are formed again. What is dropped lives in one scratch block all blocks share.
enum class Recompute { none, experts, blocks };
// "none" | "experts" | "blocks"; anything else: a clear error naming `what`.
Recompute recompute_parse(const std::string& s, const std::string& what = "--recompute");
const char* recompute_name(Recompute r);

struct MemoryItem {
  std::string name;   // e.g. "parameters"
  double bytes = 0;
  std::string detail; // how it was counted, e.g. "829k floats"
};

struct MemoryEstimate {
  std::vector<MemoryItem> items;
  int64_t params = 0;                // parameters held by this rank
  int64_t rows_per_block = 0;        // largest source-side rows of a block (tokens × experts)
  double runtime_overhead_bytes = 0; // the process without the model (not in total())
  Recompute recompute = Recompute::none;
  double block_bytes[2] = {0, 0};    // what one attention block, one MLP block keeps (with its exchange buffers)
  double scratch_bytes = 0;          // the recomputation scratch all blocks share
  double recompute_saving = 0;       // bytes less than with --recompute none

  double activations() const;        // kept by the blocks (both kinds) and the scratch

  double total() const;              // Σ items (bytes)
  double bytes_of(const std::string& name) const;  // one item (0 when absent)
  // One line: "123.4 MiB (parameters 3.2, gradients 3.2, ...)" in MiB.
  std::string summary() const;
  // A table, one item per line with its detail, and the total.
  std::string table() const;
};

// What the estimate needs of a run besides the model's shapes.
struct MemoryRun {
  int batch_size = 16;       // B sequences per micro-batch
  int ep = 1;                // ranks per expert group (experts are sharded over them)
  int world_size = 1;        // > 1: the gradient all-reduce's buffer
  bool checkpoints = false;  // checkpoints are written: the snapshot's buffers
  Recompute recompute = Recompute::none;
  Precision precision = Precision::fp32;  // bf16: the GEMM input copies and the rows' bf16 staging
};
// The run figures of a config: --batch-size, --ep, --recompute, --precision, whether --checkpoint-dir is set.
MemoryRun memory_run_from_config(const Config& cfg, int world_size = 1);

// Estimate for one rank of `run` training a model of `spec` (resolved, as model_spec_from_config
// returns it); data_tokens: training + validation token ids held in memory (0 = leave out).
MemoryEstimate memory_estimate(const ModelSpec& spec, const MemoryRun& run, int64_t data_tokens = 0);
// The same for a config and vocabulary size: model_spec_from_config and memory_run_from_config.
MemoryEstimate memory_estimate(const Config& cfg, int vocab, int world_size = 1, int64_t data_tokens = 0);

// The memory one rank may use (docs/architecture.md, Memory): --memory-limit BYTES, or with
// "auto" the memory of this process's control group (cgroup v2 memory.max, v1
// memory.limit_in_bytes, the tightest of its ancestors') if one is set, else MemAvailable
// (/proc/meminfo), divided among the `node_ranks` ranks on this host. bytes 0: nothing to go by.
struct MemoryLimit {
  double bytes = 0;
  std::string source;  // for messages: "--memory-limit", "cgroup memory.max 8.0 GiB / 2 ranks", ...
};
MemoryLimit memory_limit(const std::string& option, int node_ranks);

// Empty when `est` (its total and the runtime) fits `limit`; otherwise the refusal: the estimate's
// items, the limit and where it comes from, and what would fit — the largest batch, recomputation,
// more ranks of expert parallelism — each checked against the same estimate.
std::string memory_refusal(const MemoryEstimate& est, const MemoryLimit& limit, const ModelSpec& spec,
                           const MemoryRun& run, int64_t data_tokens);

}  // namespace uoe
