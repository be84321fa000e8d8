#include "layers/memory.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "layers/expert_kinds.hpp"
#include "layers/router.hpp"
#include "runtime/error.hpp"

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

Recompute recompute_parse(const std::string& s, const std::string& what) {
  if (s == "none") return Recompute::none;
  if (s == "experts") return Recompute::experts;
  if (s == "blocks") return Recompute::blocks;
  fail(what, " '", s, "': expected none, experts or blocks");
}

const char* recompute_name(Recompute r) {
  switch (r) {
    case Recompute::none: return "none";
    case Recompute::experts: return "experts";
    case Recompute::blocks: break;
  }
  return "blocks";
}

double MemoryEstimate::total() const {
  double t = 0;
  for (const MemoryItem& i : items) t += i.bytes;
  return t;
}

double MemoryEstimate::activations() const {
  return bytes_of("activations kept, attention blocks") + bytes_of("activations kept, MLP blocks") +
         bytes_of("recomputation scratch");
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
  run.recompute = recompute_parse(cfg.recompute);
  run.precision = precision_parse(cfg.precision);
  return run;
}

MemoryEstimate memory_estimate(const Config& cfg, int vocab, int world_size, int64_t data_tokens) {
  return memory_estimate(model_spec_from_config(cfg, vocab), memory_run_from_config(cfg, world_size), data_tokens);
}

MemoryEstimate memory_estimate(const ModelSpec& spec, const MemoryRun& run, int64_t data_tokens) {
  MemoryEstimate est;
  est.runtime_overhead_bytes = kRuntimeOverheadBytes;
  est.recompute = run.recompute;
  const int64_t d = spec.d, T = spec.seq_len, B = run.batch_size, N = B * T, V = spec.vocab, L = spec.layers;
  const int ep = std::max(1, run.ep);
  const int world_size = run.world_size;
  const Recompute mode = run.recompute;

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
  add("AdamW state", 3 * kFloat * P, "moments m, v and the decay mask: 3 × " + count(P) + " floats");

  // Per block, what the step's Block and its Chunks hold after a step (layers/step.hpp), by what
  // --recompute keeps (layers/memory.hpp, Recompute); what a mode drops lives once, in the scratch
  // block all blocks share, at the largest size any block gives it.
  const double Nd = static_cast<double>(N) * d, Nf = static_cast<double>(N);
  struct Parts {
    double act = 0, exch = 0;  // kept by the block: activations; buffers of the exchange
  };
  struct Scratch {
    double norm = 0, x_src = 0, y = 0, rows = 0, owner = 0, mlp_cache = 0, attn_cache = 0;
    double total() const { return norm + x_src + y + rows + owner + mlp_cache + attn_cache; }
  };
  auto block_parts = [&](const BlockShape& s, Recompute m, Scratch* sc) {
    const double R = static_cast<double>(s.rows), A = static_cast<double>(s.assignments);
    const double Pp = static_cast<double>(s.P), E = static_cast<double>(s.E), k = static_cast<double>(s.k);
    const bool travel = s.routed && ep > 1;
    // The buffers a block may hold (an unrouted block's routing is every token to its one expert:
    // the same tables with P = N, E = k = 1).
    const double hin = kFloat * Nd;
    const double norm = kFloat * (Nd + 2 * Nf);                    // xn [N, d]; mean, rstd [N]
    double routing = kFloat * Pp * E + kFloat * Pp;                // probs [P, E], lse [P]
    routing += (kInt + kFloat + kByte) * Pp * k + 2 * kInt * A;    // choice, gate, kept [P, k]; row_patch, row_slot
    if (s.patch > 1) routing += kFloat * Pp * d;                   // patch means [P, d]
    const double tables = 4 * kInt * R + kInt * (Nf + 1 + R);      // source rows' token, gate, seg, pos; CSR
    const double rows_d = kFloat * R * d;                           // x_src, y, rows.x, the owner's y, dy, dx
    const double rows = rows_d + 2 * kInt * R;                      // the experts' input rows, seg, pos
    // The experts' caches (layers/expert_kinds.hpp) and, for attention, its segments at the owner:
    // each local expert gets each sequence of each ep source; every expert at capacity (C patches
    // of `patch` tokens) spread evenly over the B sequences; dropless, the mean share T·k/E.
    ExpertMemoryShape ms;
    ms.rows = R;
    ms.segments = static_cast<double>(s.E_local) * B * (s.routed ? ep : 1);
    const double at_capacity =
        spec.capacity_factor > 0 ? static_cast<double>(s.capacity) * s.patch / B : T * k / E;
    ms.segment_len = s.routed ? std::min<double>(T, at_capacity) : static_cast<double>(T);
    ms.seq_len = static_cast<double>(T);
    double cache = 0;
    visit_expert_kind(s.kind, [&](auto kind) { kind.cache_bytes(spec, ms, &cache, &cache); });

    Parts p;
    p.act = hin + routing + tables;
    if (m != Recompute::blocks) p.act += norm + rows + rows_d;     // + y, source order
    else if (travel) p.act += rows + rows_d;                       // what crossed the network: rows in, y back
    if (m == Recompute::none) p.act += cache;
    if (travel) {
      if (m != Recompute::blocks) p.exch += rows_d;                // x_src
      if (m == Recompute::none) p.exch += 3 * rows_d;              // y, dy, dx at the owner
    }
    if (sc && m != Recompute::none) {
      if (m == Recompute::blocks) sc->norm = std::max(sc->norm, norm);
      if (m == Recompute::blocks && travel) sc->x_src = std::max(sc->x_src, rows_d);
      if (!travel) sc->y = std::max(sc->y, rows_d);                // experts: the recomputed y; blocks: y itself
      if (m == Recompute::blocks && !travel) sc->rows = std::max(sc->rows, rows);
      if (travel) sc->owner = std::max(sc->owner, 3 * rows_d);
      double& c = s.kind == ExpertKind::attention ? sc->attn_cache : sc->mlp_cache;
      c = std::max(c, cache);
    }
    return p;
  };
  Scratch scratch;
  const Parts pa = block_parts(attn, mode, &scratch), pm = block_parts(mlp, mode, &scratch);
  const Parts na = block_parts(attn, Recompute::none, nullptr), nm = block_parts(mlp, Recompute::none, nullptr);
  est.block_bytes[0] = pa.act + pa.exch;
  est.block_bytes[1] = pm.act + pm.exch;
  est.scratch_bytes = scratch.total();
  est.recompute_saving = L * (na.act + na.exch + nm.act + nm.exch) - L * (est.block_bytes[0] + est.block_bytes[1]) -
                         est.scratch_bytes;
  const char* how = mode == Recompute::none      ? "everything"
                    : mode == Recompute::experts ? "all but the experts' caches"
                                                 : (ep > 1 ? "input, routing, rows received and returned"
                                                           : "input and routing");
  char buf[200];
  std::snprintf(buf, sizeof buf, "%lld × %s MiB (--recompute %s: %s); %lld rows", static_cast<long long>(L),
                mib(pa.act).c_str(), recompute_name(mode), how, static_cast<long long>(attn.rows));
  add("activations kept, attention blocks", L * pa.act, buf);
  std::snprintf(buf, sizeof buf, "%lld × %s MiB; %lld rows", static_cast<long long>(L), mib(pm.act).c_str(),
                static_cast<long long>(mlp.rows));
  add("activations kept, MLP blocks", L * pm.act, buf);
  if (mode != Recompute::none) {
    std::snprintf(buf, sizeof buf, "one block's dropped buffers, shared; recomputation saves %s MiB",
                  mib(est.recompute_saving).c_str());
    add("recomputation scratch", est.scratch_bytes, buf);
  }
  double exch = L * (pa.exch + pm.exch);
  if (ep > 1) exch += 2 * kInt * 2 * static_cast<double>(est.rows_per_block);  // MpiExchange seg/pos staging
  if (exch > 0) add("exchange buffers", exch, "rows to send; outputs and gradients at the owner; metadata staging");
  if (run.precision == Precision::bf16) {
    // --precision bf16 on the CPU path: activations and the exchange's row buffers stay fp32 (the
    // values in them are rounded in place, runtime/bf16.hpp), so nothing above halves; bf16 adds
    // the GEMMs' rounded input copies (runtime/gemm.hpp, gemm_mixed: the largest A and the largest
    // B operand; the tied head's logits [N, V] and embedding [V, d], or an expert GEMM's rows ×
    // width) and, with rows travelling, their bf16 staging (2 bytes an element, sent and received:
    // parallel/mpi_exchange.hpp).
    const double width = std::max({static_cast<double>(d), static_cast<double>(spec.expert_ff()),
                                   3.0 * spec.heads_per_expert() * spec.head_dim()});
    const double rows_w = static_cast<double>(est.rows_per_block) * width;
    const double a = std::max(static_cast<double>(N) * V, rows_w);
    const double b = std::max({static_cast<double>(V) * d, static_cast<double>(N) * d, rows_w});
    add("bf16 GEMM input copies", kFloat * (a + b), "the largest A and B operand, rounded to bf16: fp32 copies (emulated), or bf16 copies "
        "padded to the row and depth quanta (oneDNN)");
    if (ep > 1)
      add("bf16 exchange staging", 2 * 2.0 * static_cast<double>(est.rows_per_block) * d,
          "rows as bf16, a send and a receive buffer");
  }

  // Step level (layers/step.hpp): residual stream, final norm, logits, shared workspaces.
  add("residual stream and batch", kFloat * (2.0 * N * d + 2.0 * N) + 3 * kInt * N,
      "h, hf [N, d]; final norm's mean, rstd; tokens, inputs, targets");
  add("logits", kFloat * static_cast<double>(N) * V, "[N, V] = " + count(static_cast<double>(N) * V) + " floats");
  const double Rmax = static_cast<double>(est.rows_per_block);
  const double Pk = std::max(static_cast<double>(attn.P * attn.k), static_cast<double>(mlp.P * mlp.k));
  const double PE = std::max(static_cast<double>(attn.P * attn.E), static_cast<double>(mlp.P * mlp.E));
  double ws = kFloat * (3.0 * N * d + Pk + 2 * Rmax * d + PE);
  if (spec.patch_size > 1) ws += kFloat * static_cast<double>(attn.P) * d;
  add("backward workspaces", ws, "dhf, dh, dxn [N, d]; dy, dx at the source; the router's");

  if (world_size > 1) {
    const double bucket = std::max<double>(static_cast<double>(V * d + 2 * d),
                                           static_cast<double>(std::max(attn.params, mlp.params)));
    add("gradient all-reduce buffer", kFloat * bucket, "largest bucket");
  }
  if (run.checkpoints) add("checkpoint snapshot", 3 * kFloat * P, "parameters, m, v");
  if (data_tokens > 0)
    add("the data", kInt * static_cast<double>(data_tokens), count(static_cast<double>(data_tokens)) + " token ids");
  return est;
}

namespace {

// A cgroup file's number of bytes; 0 for "max", an absurd v1 "unlimited" (≥ 2^60) or no file.
double cgroup_bytes(const std::string& path) {
  std::ifstream f(path);
  std::string v;
  if (!(f >> v) || v == "max") return 0;
  char* end = nullptr;
  const double b = std::strtod(v.c_str(), &end);
  return end && *end == '\0' && b > 0 && b < 1.15e18 ? b : 0;
}

// The tightest memory limit of this process's cgroup and its ancestors, v2 then v1; 0: none.
double cgroup_limit(std::string* which) {
  std::ifstream f("/proc/self/cgroup");
  std::string line;
  double best = 0;
  auto consider = [&](const std::string& root, std::string path, const char* file) {
    for (;;) {
      const double b = cgroup_bytes(root + path + "/" + file);
      if (b > 0 && (best == 0 || b < best)) {
        best = b;
        *which = std::string("cgroup ") + file;
      }
      if (path.empty() || path == "/") break;
      path = path.substr(0, path.rfind('/'));
    }
  };
  while (std::getline(f, line)) {
    // "0::/path" (v2) or "N:controller,...:/path" (v1).
    const size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    if (controllers.empty()) consider("/sys/fs/cgroup", path, "memory.max");
    else if ((',' + controllers + ',').find(",memory,") != std::string::npos)
      consider("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes");
  }
  return best;
}

double mem_available() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  double kib = 0;
  std::string unit;
  while (f >> key >> kib >> unit)
    if (key == "MemAvailable:") return 1024 * kib;
  return 0;
}

std::string gib(double bytes) {  // GiB, or MiB below 10 GiB
  char buf[32];
  if (bytes < 10240.0 * kMiB) std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / kMiB);
  else std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / (1024.0 * kMiB));
  return buf;
}

}  // namespace

MemoryLimit memory_limit(const std::string& option, int node_ranks) {
  MemoryLimit lim;
  if (option != "auto") {
    lim.bytes = std::strtod(option.c_str(), nullptr);
    lim.source = "--memory-limit " + option;
    return lim;
  }
  const int ranks = std::max(1, node_ranks);
  std::string which;
  double host = cgroup_limit(&which);
  if (host == 0) {
    host = mem_available();
    which = "MemAvailable";
  }
  if (host == 0) return lim;
  lim.bytes = host / ranks;
  lim.source = which + " " + gib(host) + (ranks > 1 ? " shared by " + std::to_string(ranks) + " ranks on this host" : "");
  return lim;
}

std::string memory_refusal(const MemoryEstimate& est, const MemoryLimit& limit, const ModelSpec& spec,
                           const MemoryRun& run, int64_t data_tokens) {
  auto need = [](const MemoryEstimate& e) { return e.total() + e.runtime_overhead_bytes; };
  if (limit.bytes <= 0 || need(est) <= limit.bytes) return "";
  auto fits = [&](const MemoryRun& r) { return need(memory_estimate(spec, r, data_tokens)) <= limit.bytes; };
  std::string s = "this run needs about " + gib(need(est)) + " per rank and may use " + gib(limit.bytes) + " (" +
                  limit.source + "); the estimate (layers/memory.hpp), --recompute " +
                  recompute_name(run.recompute) + ":\n" + est.table() + "What would fit:";
  bool any = false;
  // The largest batch that fits (the estimate grows with B): bisect.
  int lo = 0, hi = run.batch_size;
  while (lo < hi) {
    const int mid = lo + (hi - lo + 1) / 2;
    MemoryRun r = run;
    r.batch_size = mid;
    if (fits(r)) lo = mid;
    else hi = mid - 1;
  }
  if (lo > 0) {
    s += "\n  --batch-size " + std::to_string(lo) + " (the largest that fits; --micro-batches keeps the tokens per step)";
    any = true;
  }
  for (Recompute m : {Recompute::experts, Recompute::blocks}) {
    if (m <= run.recompute) continue;
    MemoryRun r = run;
    r.recompute = m;
    if (fits(r)) {
      s += std::string("\n  --recompute ") + recompute_name(m) + " (about " +
           gib(need(memory_estimate(spec, r, data_tokens))) + ")";
      any = true;
      break;
    }
  }
  // More ranks per expert group: each holds a share of the experts.
  for (int ep = 2 * std::max(1, run.ep); ep <= std::max(spec.experts, spec.attn_experts); ep *= 2) {
    if (spec.experts % ep != 0 || spec.attn_experts % ep != 0) break;
    MemoryRun r = run;
    r.ep = ep;
    r.world_size = std::max(run.world_size, ep);
    if (fits(r)) {
      s += "\n  --ep " + std::to_string(ep) + " (experts sharded over " + std::to_string(ep) +
           " ranks; on more hosts, or with more memory per rank)";
      any = true;
      break;
    }
  }
  if (!any) {
    MemoryRun r = run;
    r.batch_size = 1;
    r.recompute = Recompute::blocks;
    s += "\n  nothing of these: even --batch-size 1 --recompute blocks needs " +
         gib(need(memory_estimate(spec, r, data_tokens))) + " (parameters, gradients and AdamW state alone: " +
         gib(est.bytes_of("parameters") + est.bytes_of("gradients") + est.bytes_of("AdamW state")) +
         "): a smaller model, or more memory";
  }
  return s;
}

}  // namespace uoe
