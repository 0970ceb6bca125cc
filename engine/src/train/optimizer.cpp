// The optimizer side of training: the learning-rate schedule, the loss weightings, LibTorch's
// optimizers; the fused update is in optimizer.hpp.
#include "optimizer.hpp"

#include <cmath>

#include "pathline/engine/train.hpp"

namespace pathline {

namespace {

constexpr double kPi = 3.14159265358979323846;

}  // namespace

LearningRateSchedule::LearningRateSchedule(const Params& train)
    : LearningRateSchedule(TrainSettings::read(train)) {}

LearningRateSchedule::LearningRateSchedule(const TrainSettings& train)
    : base(train.lr), warmup(train.warmup_steps), steps(train.steps) {
  const std::string& name = train.lr_schedule;
  shape = name == "cosine" ? Shape::cosine : name == "linear" ? Shape::linear : Shape::constant;
}

double LearningRateSchedule::at(std::int64_t step) const {
  if (warmup > 0 && step < warmup) return base * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (shape != Shape::constant && steps > warmup) {
    double progress = static_cast<double>(step - warmup) / static_cast<double>(steps - warmup);
    if (shape == Shape::cosine) return base * 0.5 * (1.0 + std::cos(kPi * progress));
    return base * (1.0 - progress);
  }
  return base;
}

const std::map<std::string, LossWeighting>& loss_weightings() {
  // Per-sample weights w(t) of SD3 (Esser et al. 2024); in our convention s = 1 - t is the noise level.
  static const std::map<std::string, LossWeighting> weightings = {
      {"none", [](const PathCoefficients&, const torch::Tensor&) { return torch::Tensor(); }},
      // 1 / sigma_t^2, capped at 1e4 where sigma_t -> 0.
      {"sigma_sqrt", [](const PathCoefficients& c,
                        const torch::Tensor&) { return c.sigma.square().clamp_min(1e-4).reciprocal(); }},
      // sigma_t^2: the score target -x0 / sigma_t, weighted so, is the noise target's size.
      {"sigma_squared", [](const PathCoefficients& c, const torch::Tensor&) { return c.sigma.square(); }},
      // The density of cosmap time sampling, 2 / (pi (1 - 2 s + 2 s^2)).
      {"cosmap",
       [](const PathCoefficients& c, const torch::Tensor& t) {
         torch::Tensor s = (1.0 - t).view(c.alpha.sizes());
         return (2.0 / kPi) / (1.0 - 2.0 * s + 2.0 * s.square());
       }},
  };
  return weightings;
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainSettings& tp,
                                                        const std::vector<torch::Tensor>& params) {
  const auto& betas = tp.betas;
  const double lr = tp.lr, eps = tp.eps, decay = tp.weight_decay;
  if (tp.optimizer == "adam")
    return std::make_unique<torch::optim::Adam>(
        params, torch::optim::AdamOptions(lr).betas({betas[0], betas[1]}).eps(eps).weight_decay(decay));
  return std::make_unique<torch::optim::AdamW>(
      params, torch::optim::AdamWOptions(lr).betas({betas[0], betas[1]}).eps(eps).weight_decay(decay));
}

}  // namespace pathline
