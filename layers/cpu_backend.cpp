#include "layers/cpu_backend.hpp"

#include "parallel/grad_sync.hpp"
#include "runtime/gemm.hpp"
#include "runtime/sum_squares.hpp"
#include "runtime/kernels.hpp"
#include "runtime/threads.hpp"

namespace uoe {
namespace {
constexpr int64_t kGrainTokens = 64;  // tokens (rows of d floats) per thread at least
}  // namespace

template class Step<CpuBackend>;

void CpuBackend::take_exchange_seconds(double* busy, double* exposed) {
  // The CPU exchanges share the trainer's communication thread with the gradient all-reduce: the
  // trainer reads that scheduler's figures itself (launcher/train.cpp). In line, nothing overlaps.
  *busy = *exposed = 0;
}

void CpuBackend::layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* w,
                                   const float* b, int N, int C) {
  uoe::layernorm_forward(out, mean, rstd, x, w, b, N, C);
}
void CpuBackend::layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* x,
                                    const float* w, const float* mean, const float* rstd, int N, int C) {
  uoe::layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, N, C);
}
void CpuBackend::gather_rows(float* out, const float* table, const int32_t* ids, int N, int C) {
  uoe::gather_rows(out, table, ids, N, C);
}
void CpuBackend::residual_bias_rows(float* out, const float* x, const float* bias, int N, int C) {
  parallel_ranges(N, kGrainTokens, [=](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) residual_bias_row(out + t * C, x + t * C, bias, C);
  });
}
void CpuBackend::bias_grad(float* db, const float* dh, int N, int C) { sum_rows_into(db, dh, N, C); }
void CpuBackend::gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
                      int ldb, float beta, float* C, int ldc) {
  gemm_mixed(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
double CpuBackend::cross_entropy(bool backward, float* logits, const int32_t* targets_host, int N, int V,
                                 float grad_scale) {
  return backward ? crossentropy_forward_backward(logits, targets_host, N, V, grad_scale)
                  : crossentropy_forward(logits, targets_host, N, V);
}
void CpuBackend::embedding_backward(float* dtable, const float* dh, const Buffer<int32_t>& tokens, int N, int /*V*/,
                                    int d) {
  scatter_add_rows(dtable, dh, tokens.data(), N, d, 1.0f);
}

void CpuBackend::route(Routing& r, RouteCache&, const RouterSpec& spec, const float* xn, const float* w,
                       const float* b, int N, int d, bool dropless) {
  router_forward(r, spec, xn, w, b, N, d, dropless);
}
void CpuBackend::route_backward(const Routing& r, RouteCache&, const RouterSpec& spec, const float* dgate_host,
                                const float* xn, const float* w, float* dxn, float* dw, float* db, float loss_scale) {
  router_backward(r, spec, dgate_host, xn, w, dxn, dw, db, loss_scale);
}

void CpuBackend::gather_source_rows(float* out, const float* xn, const CombineTables& t, int r0, int n, int d) {
  uoe::gather_rows(out, xn, t.src->token.data() + r0, n, d);
}

void CpuBackend::set_rows(Rows& rows, const std::vector<int>& offsets, const int32_t* seg, const int32_t* pos, int n,
                          int d) {
  rows.n_experts = static_cast<int>(offsets.size()) - 1;
  rows.offsets = offsets;
  rows.x.resize_uninit(static_cast<size_t>(n) * d);
  rows.seg.assign(seg, seg + n);
  if (pos) rows.pos.assign(pos, pos + n);
  else rows.pos.clear();
}

void CpuBackend::combine_prepare(CombineTables& t, int N, int B, int T, int C) {
  source_rows_by_token(*t.src, N, t.first, t.rows);
  t.B = B;
  t.T = T;
  t.C = C;
}

void CpuBackend::combine_chunk(float* out, const float* hin, const float* bias, const float* y, const CombineTables& t,
                               int ch, int d) {
  const SourceRows& src = *t.src;
  const std::vector<float>& gate = t.routing->gate;
  const int t0 = chunk_first_token(ch, t.B, t.T, t.C), t1 = chunk_first_token(ch + 1, t.B, t.T, t.C);
  // Each token is its own output row: tokens split over threads freely.
  parallel_ranges(t1 - t0, kGrainTokens, [&](int64_t a, int64_t b) {
    for (int tok = t0 + static_cast<int>(a); tok < t0 + b; ++tok) {
      float* o = out + static_cast<size_t>(tok) * d;
      if (hin) residual_bias_row(o, hin + static_cast<size_t>(tok) * d, bias, d);
      for (int q = t.first[tok]; q < t.first[tok + 1]; ++q) {
        const int i = t.rows[q];
        scatter_add_row(o, y + static_cast<size_t>(i) * d, d, gate[src.gate[i]]);
      }
    }
  });
}

void CpuBackend::combine_backward(float* dy, float* dgate_host, const float* dh, const CombineTables& t,
                                  const float* y, int i0, int i1, bool output, bool gate, int d) {
  const SourceRows& src = *t.src;
  const std::vector<float>& w = t.routing->gate;
  // Each row's gate product (a dot of d) in the same pass over the rows as its output gradient, over
  // the threads; then a gate (patch, slot) collects its patch's rows' products in row order on one
  // thread: the additions of the one-thread loop, which spent most of its time in the dots.
  static thread_local std::vector<float> dots;  // the calling thread's (the lambda uses its pointer)
  if (gate) dots.resize(static_cast<size_t>(std::max(i1 - i0, 0)));
  float* const dot = dots.data();
  if (output || gate)
    parallel_ranges(i1 - i0, kGrainTokens, [&](int64_t a, int64_t b) {
      for (int i = i0 + static_cast<int>(a); i < i0 + b; ++i) {
        const float* dhi = dh + static_cast<size_t>(src.token[i]) * d;
        if (output) scale_row(dy + static_cast<size_t>(i) * d, dhi, d, w[src.gate[i]]);
        if (gate) dot[i - i0] = dot_lanes(dhi, y + static_cast<size_t>(i) * d, d);
      }
    });
  if (gate)
    for (int i = i0; i < i1; ++i) dgate_host[src.gate[i]] += dot[i - i0];
}

void CpuBackend::combine_backward_inputs(float* dxn, const float* dx, const CombineTables& t, int d) {
  // By token through the combine's CSR (each token's rows ascending): the additions of a scatter-add
  // in row order, each token on one thread.
  const int N = static_cast<int>(t.first.size()) - 1;
  parallel_ranges(N, kGrainTokens, [&](int64_t a, int64_t b) {
    for (int64_t tok = a; tok < b; ++tok)
      for (int q = t.first[tok]; q < t.first[tok + 1]; ++q)
        scatter_add_row(dxn + tok * d, dx + static_cast<size_t>(t.rows[q]) * d, d, 1.0f);
  });
}

namespace {
template <class V>
double vector_bytes(const V& v) {
  return static_cast<double>(sizeof(typename V::value_type) * v.capacity());
}
template <class T>
double vector_bytes(const Buffer<T>& b) {  // at its largest size (runtime/tensor.hpp: headroom is never touched)
  return static_cast<double>(sizeof(T) * b.high_water());
}
}  // namespace

double CpuBackend::bytes_of(const Rows& r) {
  return vector_bytes(r.x) + vector_bytes(r.seg) + vector_bytes(r.pos) + vector_bytes(r.offsets);
}
double CpuBackend::bytes_of(const MlpCache& c) { return vector_bytes(c.g) + vector_bytes(c.a) + vector_bytes(c.dh); }
double CpuBackend::bytes_of(const AttnCache& c) {
  return vector_bytes(c.qkv) + vector_bytes(c.o) + vector_bytes(c.att) + vector_bytes(c.seg_begin) +
         vector_bytes(c.att_offset) + vector_bytes(c.d_o) + vector_bytes(c.d_qkv) +
         vector_bytes(c.rope_cos) + vector_bytes(c.rope_sin);
}
double CpuBackend::bytes_of(const CombineTables& t) { return vector_bytes(t.first) + vector_bytes(t.rows); }

void CpuBackend::reduce_gradients(GradientSync& sync, ParamStore&, int bucket) {
  if (bucket < 0) sync.all_reduce();
  else sync.reduce_bucket(static_cast<size_t>(bucket));
}

double CpuBackend::gradient_sum_squares(GradientSync* sync, ParamStore& ps) {
  return sync ? sync->global_sum_squares() : grad_sum_squares(ps.grads().data(), ps.total());
}

}  // namespace uoe
