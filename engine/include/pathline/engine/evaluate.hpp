// Evaluation: every configured metric on generated samples against fresh data.
#pragma once

#include "pathline/engine/sample.hpp"

namespace pathline {

struct MetricRecord {
  std::string name, type;
  MetricResult result;
  Direction direction = Direction::lower_is_better;
  std::int64_t generated_n = 0, reference_n = 0;  // the sample sizes it was computed on
};

PATHLINE_API std::vector<MetricRecord> evaluate(const PipelineConfig& config, Components& components,
                                                const torch::Tensor& samples, const torch::Tensor& labels);

}  // namespace pathline
