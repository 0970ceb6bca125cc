// Kind `metric`: a number judging generated samples, against fresh samples of the data.
#pragma once

#include "pathline/dataset.hpp"
#include "pathline/solver.hpp"

namespace pathline {

enum class Direction { lower_is_better, higher_is_better };

inline const char* to_string(Direction d) {
  return d == Direction::lower_is_better ? "lower is better" : "higher is better";
}

struct MetricInput {
  torch::Tensor generated;         // [N, *shape] on the CPU
  torch::Tensor generated_labels;  // [N] int64: the class each sample was asked for; undefined if none
  torch::Tensor reference;         // [M, *shape] fresh data on the CPU
  torch::Tensor reference_labels;  // [M] int64, or undefined
  VectorField* field = nullptr;    // the trained model as a vector field (likelihood metrics)
  // The sampling interval the engine resolved ([sample] t_start and t_end; "auto" ends come from
  // the parameterization's safe interval): where `field` may be evaluated.
  double t_start = 0.0, t_end = 1.0;
  at::Generator* generator = nullptr;  // for metrics that draw (projections, probes)
  // The [source] the flow starts from: sampling starts at sigma_{t_start} x0 with x0 drawn from it.
  // Its log_prob (when defined) is the density at the start of a likelihood's backward integration.
  const Dataset* source = nullptr;
};

struct MetricResult {
  double value = 0.0;
  // Numbers worth reporting beside the value (a floor, a standard error), by name.
  std::map<std::string, double> details;
  // What the value is, where the metric's type does not say it (charts, tables, summary.json):
  // "W2 squared" for a wasserstein with squared = true. Empty: the type says it. (Its default
  // initialiser keeps `return {value, {details}};` free of -Wmissing-field-initializers.)
  std::string quantity = {};
};

class PATHLINE_API Metric {
 public:
  virtual ~Metric() = default;
  virtual Direction direction() const { return Direction::lower_is_better; }
  virtual MetricResult compute(const MetricInput& input) = 0;
};

}  // namespace pathline
