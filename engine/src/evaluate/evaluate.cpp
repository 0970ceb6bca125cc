#include "pathline/engine/evaluate.hpp"

#include <optional>

#include "pathline/engine/random.hpp"

namespace pathline {

std::vector<MetricRecord> evaluate(const PipelineConfig& config, Components& c, const torch::Tensor& samples,
                                   const torch::Tensor& labels) {
  std::vector<MetricRecord> records;
  if (c.metrics.empty()) return records;
  const std::int64_t n = samples.size(0);
  std::int64_t reference_n = config.eval.reference_n;
  if (reference_n == 0) reference_n = n;
  // One reference draw for every metric, from its own stream: changing the metrics never changes
  // what each one is compared with.
  at::Generator gen = make_generator(config.run.seed, Stream::eval);
  Batch reference = plugin_call(c.origin("dataset"), "drawing the reference",
                                [&] { return c.dataset->sample(reference_n, gen); });

  // The model as a field, for likelihood metrics: only where the flow runs on the data (an
  // autoencoder's pipeline has no model; a latent flow's field lives in another space than the
  // samples, and the decoder's change of volume is unknown).
  c10::InferenceMode inference;
  const bool with_field = c.model && !c.latent;
  const SamplingInterval interval = c.model ? sampling_interval(config, c) : SamplingInterval{};
  std::optional<ModelField> field;
  if (with_field) {
    const std::int64_t rank = static_cast<std::int64_t>(c.flow().shape.size()) + 1;
    field.emplace(*c.model, *c.path, *c.parameterization, rank, config.sample.guidance_scale);
    field->name_components(c);
  }
  for (auto& m : c.metrics) {
    const std::int64_t used = m.samples > 0 ? std::min(m.samples, n) : n;
    MetricInput input;
    input.generated = samples.narrow(0, 0, used);
    if (labels.defined()) input.generated_labels = labels.narrow(0, 0, used);
    input.reference = reference.x;
    input.reference_labels = reference.labels;
    input.field = field ? &*field : nullptr;
    input.t_start = interval.t_start;
    input.t_end = interval.t_end;
    input.generator = &gen;
    input.source = c.source.get();
    MetricRecord record;
    record.name = m.name;
    record.type = m.type;
    record.direction = m.metric->direction();
    record.generated_n = used;
    record.reference_n = reference_n;
    record.result = plugin_call(m.origin, "compute", [&] { return m.metric->compute(input); });
    records.push_back(std::move(record));
  }
  return records;
}

}  // namespace pathline
