// The optimizer's rules (layers/optimizer.hpp) and how the trainer applies them (train_step): the
// learning-rate schedule (linear warm-up, cosine to a floor, a function of the step alone so a
// resumed run continues the same curve), global-norm gradient clipping (the norm, the scale it
// applies), the skipped update of a non-finite step (parameters and moments untouched), and which
// tensors get weight decay (weight matrices and the embedding; never norms or biases).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "layers/train_step.hpp"
#include "layers/model.hpp"
#include "layers/optimizer.hpp"
#include "layers/params.hpp"
#include "parallel/exchange.hpp"
#include "runtime/config.hpp"
#include "runtime/data.hpp"

namespace {

using uoe::lr_at_step;

// ---- learning-rate schedule --------------------------------------------------------------------

TEST(LrSchedule, WarmupRisesLinearlyToThePeak) {
  const double lr = 1e-3, min_lr = 1e-4;
  for (int s = 1; s <= 10; ++s) EXPECT_DOUBLE_EQ(lr_at_step(s, 100, 10, lr, min_lr), lr * s / 10.0) << s;
  EXPECT_EQ(lr_at_step(10, 100, 10, lr, min_lr), lr);  // the peak, exactly, at the end of warm-up
}

TEST(LrSchedule, CosineFallsFromThePeakToTheFloorAtTheLastStep) {
  const double lr = 1e-3, min_lr = 1e-4;
  const int steps = 110, warmup = 10;
  // Half-way through the decay: the mean of peak and floor.
  EXPECT_NEAR(lr_at_step(60, steps, warmup, lr, min_lr), 0.5 * (lr + min_lr), 1e-15);
  EXPECT_NEAR(lr_at_step(steps, steps, warmup, lr, min_lr), min_lr, 1e-18);
  double prev = lr;
  for (int s = warmup + 1; s <= steps; ++s) {
    const double now = lr_at_step(s, steps, warmup, lr, min_lr);
    EXPECT_LT(now, prev) << "step " << s;  // strictly falling after the peak
    EXPECT_GE(now, min_lr - 1e-18) << "step " << s;
    // The formula: min + (lr − min)·(1 + cos(π·t))/2, t = (s − warmup)/(steps − warmup).
    const double t = static_cast<double>(s - warmup) / (steps - warmup);
    EXPECT_NEAR(now, min_lr + 0.5 * (lr - min_lr) * (1 + std::cos(M_PI * t)), 1e-15) << "step " << s;
    prev = now;
  }
}

TEST(LrSchedule, NoWarmupAndWarmupAsLongAsTheRun) {
  // --warmup 0: step 1 is already on the cosine, just below the peak.
  EXPECT_LT(lr_at_step(1, 100, 0, 1e-3, 1e-4), 1e-3);
  EXPECT_GT(lr_at_step(1, 100, 0, 1e-3, 1e-4), 0.99e-3);
  // Warm-up covering every step: a linear ramp, no decay; past it (more steps than configured) the peak.
  EXPECT_DOUBLE_EQ(lr_at_step(50, 50, 50, 1e-3, 1e-4), 1e-3);
  EXPECT_DOUBLE_EQ(lr_at_step(60, 50, 50, 1e-3, 1e-4), 1e-3);
}

// The schedule depends on (step, steps, warmup, lr, min_lr) alone — no state carried from step to
// step — so a run resumed at step k computes for k+1, … what the uninterrupted run did. (The
// trainer's end-to-end check of this, through the metrics of a preempted and resumed run, is
// tests/cli/metrics_schema.py.)
TEST(LrSchedule, ResumedMidScheduleContinuesTheSameCurve) {
  const int steps = 40, warmup = 8;
  std::vector<double> straight;
  for (int s = 1; s <= steps; ++s) straight.push_back(lr_at_step(s, steps, warmup, 3e-4, 3e-5));
  for (int k : {3, 8, 9, 25}) {  // resumed in warm-up, at its end, just after, in the decay
    for (int s = k + 1; s <= steps; ++s)
      EXPECT_EQ(lr_at_step(s, steps, warmup, 3e-4, 3e-5), straight[s - 1]) << "resumed at " << k << ", step " << s;
  }
}

// ---- gradient clipping -------------------------------------------------------------------------

TEST(GradientClipping, ScaleIsClipOverNormOnlyAboveTheClip) {
  EXPECT_EQ(uoe::clip_scale(1.0, 4.0), 0.25f);
  EXPECT_EQ(uoe::clip_scale(1.0, 0.5), 1.0f);
  EXPECT_EQ(uoe::clip_scale(1.0, 1.0), 1.0f);  // at the clip: untouched
  EXPECT_EQ(uoe::clip_scale(0.0, 1e9), 1.0f);  // --clip 0: off
  EXPECT_FLOAT_EQ(uoe::clip_scale(2.5, 10.0), 0.25f);
}

TEST(GradientClipping, SumOfSquaresIsTheGlobalNormSquared) {
  std::vector<float> g(1003);
  double want = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    g[i] = static_cast<float>(std::sin(0.37 * static_cast<double>(i)) * (1 + i % 7));
    want += static_cast<double>(g[i]) * g[i];
  }
  EXPECT_NEAR(uoe::grad_sum_squares(g.data(), g.size()), want, want * 1e-14);
}

// A model on one process and text to train on.
struct Trainee {
  uoe::Config cfg;
  uoe::LocalExchange exchange;
  std::unique_ptr<uoe::Model> model;
  std::unique_ptr<uoe::AdamW> opt;
  uoe::Dataset data;

  explicit Trainee(double clip) {
    cfg.layers = 1;
    cfg.d_model = 32;
    cfg.heads = 4;
    cfg.attn_experts = 2;
    cfg.attn_topk = 1;
    cfg.experts = 4;
    cfg.topk = 2;
    cfg.d_ff = 64;
    cfg.seq_len = 16;
    cfg.batch_size = 2;
    cfg.steps = 10;
    cfg.warmup = 2;
    cfg.clip = clip;
    uoe::config_validate(cfg);
    data = uoe::data_from_text(uoe::data_builtin_corpus().substr(0, 8000), nullptr, 0.1, uoe::TokenizerKind::byte,
                               cfg.seq_len, "built-in");
    model = std::make_unique<uoe::Model>(uoe::model_spec_from_config(cfg, data.vocab.size()), cfg.seed, &exchange);
    uoe::AdamWSpec spec;
    spec.weight_decay = cfg.weight_decay;
    opt = std::make_unique<uoe::AdamW>(model->params(), spec);
  }
};

// After a first step the first moment is (1 − β1)·scale·g (it starts at zero), so the scale the
// trainer applied can be read back from it; the gradients stay in the arena after the update.
void expect_first_moment_is_scaled_gradient(Trainee& t, float scale) {
  const uoe::ParamStore& ps = t.model->params();
  const float one_minus_b1 = 1.0f - static_cast<float>(uoe::AdamWSpec{}.beta1);
  size_t nonzero = 0;
  for (size_t i = 0; i < ps.total(); ++i) {
    const float g = ps.grads()[i];
    nonzero += g != 0;
    ASSERT_FLOAT_EQ(t.opt->m()[i], one_minus_b1 * (g * scale)) << "element " << i;
  }
  EXPECT_GT(nonzero, ps.total() / 2);  // not vacuous
}

TEST(GradientClipping, TrainStepScalesByClipOverTheGlobalNorm) {
  Trainee t(/*clip=*/1e-3);  // far below any real gradient norm: always clipped
  const uoe::StepFigures fig = uoe::train_step(*t.model, *t.opt, t.cfg, t.data.train, 1);
  const uoe::ParamStore& ps = t.model->params();
  // grad_norm is the norm of the whole (one-rank: global) gradient, before clipping.
  EXPECT_NEAR(fig.grad_norm, std::sqrt(uoe::grad_sum_squares(ps.grads().data(), ps.total())), 1e-12 * fig.grad_norm);
  ASSERT_GT(fig.grad_norm, 1e-3);
  expect_first_moment_is_scaled_gradient(t, static_cast<float>(1e-3 / fig.grad_norm));
}

TEST(GradientClipping, TrainStepLeavesGradientsAloneWhenOff) {
  Trainee t(/*clip=*/0);
  uoe::train_step(*t.model, *t.opt, t.cfg, t.data.train, 1);
  expect_first_moment_is_scaled_gradient(t, 1.0f);
}

TEST(GradientClipping, NonFiniteStepLeavesParametersAndMomentsUntouched) {
  Trainee t(/*clip=*/1.0);
  uoe::train_step(*t.model, *t.opt, t.cfg, t.data.train, 1);  // moments no longer zero
  const std::vector<float> w(t.model->params().values().data(),
                             t.model->params().values().data() + t.model->params().total());
  const std::vector<float> m(t.opt->m().data(), t.opt->m().data() + t.opt->m().size());
  const std::vector<float> v(t.opt->v().data(), t.opt->v().data() + t.opt->v().size());
  uoe::StepRanks nan_loss;
  nan_loss.inject_nan = true;  // this rank's loss becomes NaN, as UOE_FAULT=nan does
  const uoe::StepFigures fig = uoe::train_step(*t.model, *t.opt, t.cfg, t.data.train, 2, nan_loss);
  EXPECT_TRUE(fig.skipped);
  auto same = [](const std::vector<float>& a, const float* b) {
    return std::memcmp(a.data(), b, a.size() * sizeof(float)) == 0;
  };
  EXPECT_TRUE(same(w, t.model->params().values().data()));
  EXPECT_TRUE(same(m, t.opt->m().data()));
  EXPECT_TRUE(same(v, t.opt->v().data()));
  // Not vacuous: the same step without the fault moves them.
  const uoe::StepFigures ok = uoe::train_step(*t.model, *t.opt, t.cfg, t.data.train, 2);
  EXPECT_FALSE(ok.skipped);
  EXPECT_FALSE(same(w, t.model->params().values().data()));
  EXPECT_FALSE(same(m, t.opt->m().data()));
}

// ---- weight decay --------------------------------------------------------------------------------

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// "Weight decay 0.1 on matrices": the embedding, routers' weights and every projection decay;
// norms' scales and biases and every bias do not. Each tensor must be one or the other by name, so
// a new kind of tensor fails here until it is classified.
TEST(WeightDecay, MatricesDecayNormsAndBiasesDoNot) {
  for (const char* block : {"uoe", "moe", "dense"}) {
    uoe::Config c;
    c.layers = 2;
    c.d_model = 32;
    c.heads = 4;
    c.attn_experts = 2;
    c.attn_topk = 1;
    c.experts = 4;
    c.topk = 2;
    c.d_ff = 64;
    c.block_type = block;
    if (std::string(block) == "moe") c.expert_d_ff = 32;
    if (std::string(block) == "moe") c.topk = 1;
    uoe::config_validate(c);
    uoe::LocalExchange ex;
    const uoe::Model model(uoe::model_spec_from_config(c, 256), 1, &ex);
    int decayed = 0, kept = 0;
    for (const uoe::ParamInfo& p : model.params().infos()) {
      const bool matrix = p.name == "embed" || ends_with(p.name, ".weight") || ends_with(p.name, ".wqkv") ||
                          ends_with(p.name, ".wo") || ends_with(p.name, ".w1") || ends_with(p.name, ".w2");
      const bool vector = ends_with(p.name, ".scale") || ends_with(p.name, ".bias") || ends_with(p.name, ".bo") ||
                          ends_with(p.name, ".b1") || ends_with(p.name, ".b2");
      ASSERT_NE(matrix, vector) << block << ": " << p.name << " is neither a known matrix nor a norm or bias";
      EXPECT_EQ(p.decay, matrix) << block << ": " << p.name;
      // A matrix has two dimensions per expert at least (expert tensors lead with the expert one).
      if (matrix) {
        EXPECT_GE(p.global_shape.size(), 2u) << p.name;
      }
      (matrix ? decayed : kept) += 1;
    }
    EXPECT_GT(decayed, 0) << block;
    EXPECT_GT(kept, 0) << block;
  }
}

// AdamW applies the decay through the mask: with zero gradients (and zero moments, so no Adam
// step) a decayed tensor shrinks by lr·wd·w, another stays bitwise as it was.
TEST(WeightDecay, AdamWShrinksOnlyDecayedTensors) {
  uoe::ParamStore ps;
  const int w = ps.add("w", {4, 4}, uoe::InitKind::normal, 1.0f, true);
  const int b = ps.add("b", {4}, uoe::InitKind::normal, 1.0f, false);
  ps.allocate_and_init(3);
  ps.zero_grads();
  uoe::AdamWSpec spec;
  spec.weight_decay = 0.1;
  uoe::AdamW opt(ps, spec);
  const std::vector<float> w0(ps.value(w), ps.value(w) + 16), b0(ps.value(b), ps.value(b) + 4);
  opt.update(ps, /*lr=*/0.5, /*step=*/1, /*grad_scale=*/1.0f);
  const float decay = static_cast<float>(0.5 * 0.1);
  for (int i = 0; i < 16; ++i) EXPECT_FLOAT_EQ(ps.value(w)[i], w0[i] - decay * w0[i]) << i;
  EXPECT_EQ(std::memcmp(ps.value(b), b0.data(), sizeof(float) * 4), 0);
}

}  // namespace
