#include "layers/memory.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "layers/expert_kinds.hpp"
#include "layers/router.hpp"

namespace uoe {
namespace {

constexpr double kFloat = 4, kInt = 4, kByte = 1;
constexpr double kMiB = 1024.0 * 1024.0;

// The process before the model: binary and shared libraries (Open MPI, HDF5, OpenBLAS, Boost),
// OpenBLAS's per-thread GEMM buffers once touched, MPI's shared-memory segments for one rank.
// Measured on the project's Debian 12 image (uoe-train, 1 rank, 2 BLAS threads, a tiny model):
// 30–33 MiB without the GPU path; the GPU build (uoe-train-cuda) also loads cudart, cuBLAS,
// cuBLASLt and NCCL at start-up, which takes the same process to 231–237 MiB (uoe-train, the CPU
// build, loads none of them).
// A constant, reported beside the estimate rather than inside it.
#ifdef UOE_HAVE_CUDA
constexpr double kRuntimeOverheadBytes = 230.0 * kMiB;
#else
constexpr double kRuntimeOverheadBytes = 30.0 * kMiB;
#endif

std::string mib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", bytes / kMiB);
  return buf;
}

std::string count(double n) {
  char buf[32];
  if (n >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
  else if (n >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", n / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", n);
  return buf;
}

// One block's shapes as the model executes them (unrouted parts: one expert taking every token).
struct BlockShape {
  ExpertKind kind = ExpertKind::mlp;
  bool routed = false;
  int64_t E = 1, k = 1, E_local = 1;  // experts, top-k, experts on this rank
  int64_t P = 0, patch = 1;            // patches routed, tokens per patch
  int64_t capacity = 0;                // the most patches one expert keeps (expert_capacity)
  int64_t assignments = 0;             // (patch, expert) pairs kept: rows at the source = ·patch
  int64_t rows = 0;                    // source rows (tokens × kept experts) = owner rows (balanced)
  int64_t params = 0;                  // this rank's parameters of the block
};

// Block `b` of a resolved spec (its expert kind: layers/expert_kinds.hpp), for a micro-batch of N tokens.
BlockShape block_shape(const ModelSpec& spec, int b, int ep, int64_t N) {
  BlockShape s;
  s.kind = block_expert_kind(spec, b);
  const int64_t d = spec.d;
  s.routed = spec.block_routed(b);
  s.E = spec.block_experts(b);  // 1 for an unrouted block
  s.k = spec.block_topk(b);
  s.E_local = s.routed ? s.E / ep : s.E;
  s.patch = s.routed ? spec.patch_size : 1;
  s.P = N / s.patch;
  s.capacity = s.routed ? expert_capacity(s.P, static_cast<int>(s.k), static_cast<int>(s.E), spec.capacity_factor)
                        : s.P;
  s.assignments = std::min(s.P * s.k, s.E * s.capacity);
  s.rows = s.assignments * s.patch;
  // Parameters: norm (2d), router (d·E + E) when routed, expert matrices for the local experts,
  // output bias d.
  s.params = 2 * d + d + (s.routed ? d * s.E + s.E : 0);
  s.params += s.E_local * visit_expert_kind(s.kind, [&](auto kind) { return kind.params_per_expert(spec); });
  return s;
}

}  // namespace

double MemoryEstimate::total() const {
  double t = 0;
  for (const MemoryItem& i : items) t += i.bytes;
  return t;
}

double MemoryEstimate::bytes_of(const std::string& name) const {
  for (const MemoryItem& i : items)
    if (i.name == name) return i.bytes;
  return 0;
}

std::string MemoryEstimate::summary() const {
  std::string s = mib(total()) + " MiB (";
  for (size_t i = 0; i < items.size(); ++i) s += (i ? ", " : "") + items[i].name + " " + mib(items[i].bytes);
  return s + "; runtime about " + mib(runtime_overhead_bytes) + " MiB more)";
}

std::string MemoryEstimate::table() const {
  std::string s;
  char line[256];
  for (const MemoryItem& i : items) {
    std::snprintf(line, sizeof line, "  %-40s %9s MiB  %s\n", i.name.c_str(), mib(i.bytes).c_str(), i.detail.c_str());
    s += line;
  }
  std::snprintf(line, sizeof line, "  %-40s %9s MiB  (+ about %s MiB for the process itself)\n", "total",
                mib(total()).c_str(), mib(runtime_overhead_bytes).c_str());
  return s + line;
}

MemoryRun memory_run_from_config(const Config& cfg, int world_size) {
  MemoryRun run;
  run.batch_size = cfg.batch_size;
  run.ep = cfg.ep;
  run.world_size = world_size;
  run.checkpoints = !cfg.checkpoint_dir.empty();
  return run;
}

MemoryEstimate memory_estimate(const Config& cfg, int vocab, int world_size, int64_t data_tokens) {
  return memory_estimate(model_spec_from_config(cfg, vocab), memory_run_from_config(cfg, world_size), data_tokens);
}

MemoryEstimate memory_estimate(const ModelSpec& spec, const MemoryRun& run, int64_t data_tokens) {
  MemoryEstimate est;
  est.runtime_overhead_bytes = kRuntimeOverheadBytes;
  const int64_t d = spec.d, T = spec.seq_len, B = run.batch_size, N = B * T, V = spec.vocab, L = spec.layers;
  const int ep = std::max(1, run.ep);
  const int world_size = run.world_size;

  const BlockShape attn = block_shape(spec, 0, ep, N), mlp = block_shape(spec, 1, ep, N);
  int64_t params = V * d + 2 * d + L * (attn.params + mlp.params);
  est.params = params;
  est.rows_per_block = std::max(attn.rows, mlp.rows);
  const double P = static_cast<double>(params);

  auto add = [&est](const std::string& name, double bytes, const std::string& detail) {
    est.items.push_back({name, bytes, detail});
  };
  add("parameters", kFloat * P, count(P) + " floats");
  add("gradients", kFloat * P, count(P) + " floats");
  add("AdamW state", 3 * kFloat * P, "m, v, decay mask: 3 × " + count(P) + " floats");

  // Per block, what the step's Block and Chunk and the expert caches keep (layers/step.hpp,
  // layers/experts.cpp): activations for backward, the owner-side rows the exchange fills, and
  // the backward buffers each block keeps at their largest size.
  double act = 0, owner = 0, back = 0;
  for (const BlockShape* s : {&attn, &mlp}) {
    const double R = static_cast<double>(s->rows), A = static_cast<double>(s->assignments);
    const double Pp = static_cast<double>(s->P), E = static_cast<double>(s->E), k = static_cast<double>(s->k);
    double a = 0, o = 0, b = 0;
    a += kFloat * (2.0 * N * d + 2.0 * N);                     // hin, xn [N, d]; mean, rstd [N]
    a += kFloat * Pp * E + kFloat * Pp;                          // router probs [P, E], lse [P]
    a += (kInt + kFloat + kByte) * Pp * k;                       // choice, gate, kept [P, k]
    a += 2 * kInt * A;                                           // row_patch, row_slot
    if (s->patch > 1) a += kFloat * Pp * d;                      // patch means
    // An identity exchange (ep 1, or an unrouted block) has no x_src, y_owner, dy_owner, dx_owner:
    // the experts read and write the source-order buffers (Step::block_forward).
    const double moved = (s->routed && ep > 1) ? 1.0 : 0.0;
    a += 4 * kInt * R + (1 + moved) * kFloat * R * d;            // src token/gate/seg/pos; y_src, x_src
    o += kFloat * (1 + moved) * R * d + 2 * kInt * R;            // rows.x, y_owner [R, d]; seg, pos
    b += moved * 2 * kFloat * R * d;                             // dy_owner, dx_owner [R, d]
    // The experts' caches, by their kind (layers/expert_kinds.hpp). Attention's segments at the
    // owner: each local expert gets each sequence of each ep source; every expert at capacity (C
    // patches of `patch` tokens), spread evenly over the B sequences; dropless, the mean share T·k/E.
    ExpertMemoryShape m;
    m.rows = R;
    m.segments = static_cast<double>(s->E_local) * B * (s->routed ? ep : 1);
    const double at_capacity =
        spec.capacity_factor > 0 ? static_cast<double>(s->capacity) * s->patch / B : T * k / E;
    m.segment_len = s->routed ? std::min<double>(T, at_capacity) : static_cast<double>(T);
    m.seq_len = static_cast<double>(T);
    visit_expert_kind(s->kind, [&](auto kind) { kind.cache_bytes(spec, m, &a, &b); });
    act += L * a;
    owner += L * o;
    back += L * b;
  }
  char buf[160];
  std::snprintf(buf, sizeof buf, "%lld blocks; rows per block: attention %lld, MLP %lld", static_cast<long long>(2 * L),
                static_cast<long long>(attn.rows), static_cast<long long>(mlp.rows));
  add("activations for backward", act, buf);
  add("exchange buffers", owner, "rows at their experts: x, y [R, d]; seg, pos");
  add("backward buffers per block", back, "dy, dx at the owner; expert-internal gradients");

  // Step level (layers/step.hpp): residual stream, final norm, logits, shared workspaces.
  add("residual stream and batch", kFloat * (2.0 * N * d + 2.0 * N) + 3 * kInt * N,
      "h, hf [N, d]; tokens, inputs, targets");
  add("logits", kFloat * static_cast<double>(N) * V, "[N, V] = " + count(static_cast<double>(N) * V) + " floats");
  const double Rmax = static_cast<double>(est.rows_per_block);
  const double Pk = std::max(static_cast<double>(attn.P * attn.k), static_cast<double>(mlp.P * mlp.k));
  const double PE = std::max(static_cast<double>(attn.P * attn.E), static_cast<double>(mlp.P * mlp.E));
  double ws = kFloat * (3.0 * N * d + Pk + 2 * Rmax * d + PE);
  if (spec.patch_size > 1) ws += kFloat * static_cast<double>(attn.P) * d;
  if (ep > 1) ws += 2 * kInt * 2 * Rmax;  // MpiExchange seg/pos staging, send and receive
  ws += kInt * (N + 1 + Rmax);             // the forward combine's per-token rows (CSR)
  add("backward workspaces", ws, "dhf, dh, dxn [N, d]; dy, dx at the source; router; combine rows");

  if (world_size > 1) {
    const double bucket = std::max<double>(static_cast<double>(V * d + 2 * d),
                                           static_cast<double>(std::max(attn.params, mlp.params)));
    add("gradient all-reduce buffer", kFloat * bucket, "largest bucket");
  }
  if (run.checkpoints) add("checkpoint snapshot", 3 * kFloat * P, "parameters, m, v");
  if (data_tokens > 0)
    add("token ids", kInt * static_cast<double>(data_tokens), count(static_cast<double>(data_tokens)) + " tokens");
  return est;
}

}  // namespace uoe
