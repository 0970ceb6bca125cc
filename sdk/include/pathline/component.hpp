// What every kind of component shares: the table of kinds, what the engine knows about the data,
// batches and conditions, the build context and the declaration.
#pragma once

#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "pathline/params.hpp"

// The one table of kinds: X(name as written in configs, interface class). Adding a kind is one line
// here plus its interface header; the enum, the names, the registrar and the registry follow.
#define PATHLINE_KINDS(X)               \
  X(dataset, Dataset)                   \
  X(path, Path)                         \
  X(coupling, Coupling)                 \
  X(time_sampler, TimeSampler)          \
  X(parameterization, Parameterization) \
  X(model, Model)                       \
  X(solver, Solver)                     \
  X(time_grid, TimeGrid)                \
  X(metric, Metric)                     \
  X(autoencoder, Autoencoder)           \
  X(objective, Objective)

namespace pathline {

#define PATHLINE_KIND_ENUM(name, Interface) name,
enum class Kind { PATHLINE_KINDS(PATHLINE_KIND_ENUM) };
#undef PATHLINE_KIND_ENUM

#define PATHLINE_KIND_VALUE(name, Interface) Kind::name,
inline constexpr Kind kAllKindsList[] = {PATHLINE_KINDS(PATHLINE_KIND_VALUE)};
#undef PATHLINE_KIND_VALUE
inline constexpr std::size_t kKindCount = sizeof(kAllKindsList) / sizeof(Kind);
inline constexpr std::array<Kind, kKindCount> kAllKinds = [] {
  std::array<Kind, kKindCount> kinds{};
  for (std::size_t i = 0; i < kKindCount; ++i) kinds[i] = kAllKindsList[i];
  return kinds;
}();

// The kind's name as written in a config table and on the command line.
inline const char* to_string(Kind kind) {
#define PATHLINE_KIND_NAME(name, Interface) #name,
  static constexpr const char* names[] = {PATHLINE_KINDS(PATHLINE_KIND_NAME)};
#undef PATHLINE_KIND_NAME
  auto index = static_cast<std::size_t>(kind);
  return index < kKindCount ? names[index] : "?";
}

inline std::optional<Kind> kind_from_string(const std::string& name) {
  for (Kind k : kAllKinds)
    if (name == to_string(k)) return k;
  return std::nullopt;
}

#define PATHLINE_KIND_DECLARE(name, Interface) class Interface;
PATHLINE_KINDS(PATHLINE_KIND_DECLARE)
#undef PATHLINE_KIND_DECLARE

// ------------------------------------------------------------------------------------------------
// Data and conditions

// The label that means "no condition": classifier-free guidance's unconditional branch, and what the
// engine puts in place of a label it drops in training ([train] label_dropout). Every model that
// takes labels must accept it; a model with an embedding table usually gives it the extra row
// `num_classes` (see embedding_index).
inline constexpr std::int64_t kNullLabel = -1;

// What the engine knows about a data set, handed to every component when it is built.
struct DataInfo {
  std::vector<std::int64_t> shape;       // one sample, without the batch dimension: {2}, {1, 28, 28}
  std::int64_t num_classes = 0;          // 0: unlabelled; otherwise labels are 0 .. num_classes - 1
  std::vector<std::string> class_names;  // empty, or num_classes names
  // The range of the values (images: -1 and 1); infinite where unbounded.
  double min_value = -std::numeric_limits<double>::infinity();
  double max_value = std::numeric_limits<double>::infinity();

  bool labelled() const { return num_classes > 0; }
  // Images are [channels, height, width].
  bool is_image() const { return shape.size() == 3; }
  std::int64_t channels() const { return is_image() ? shape[0] : 0; }
  std::int64_t height() const { return is_image() ? shape[1] : 0; }
  std::int64_t width() const { return is_image() ? shape[2] : 0; }
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
};

// Named tensors beside a batch's samples and labels, each [n, ...] (a mask, an embedding, a second
// time): a new kind of condition is a new name, not a new SDK.
using Extras = std::map<std::string, torch::Tensor>;

// A batch of samples and their labels.
struct Batch {
  torch::Tensor x;       // [n, *shape], float32
  torch::Tensor labels;  // [n], int64; undefined for unlabelled data
  Extras extras = {};    // a data set's named extras, [n, ...] each; the trainer hands them to the model
};

// What a model is conditioned on besides (x, t).
struct Condition {
  // [B] int64 class labels, kNullLabel for "unconditional"; undefined when the data is unlabelled.
  torch::Tensor labels;
  // Named extra tensors, [B, ...] each: in training, the data set's Batch::extras (the rows of the
  // micro-batch, on the model's device); when sampling, none. A model that reads one must do
  // without it (or say so in an InputError) when it is absent.
  Extras extras = {};

  // The extra of that name, or nullptr.
  const torch::Tensor* extra(const std::string& name) const {
    auto found = extras.find(name);
    return found == extras.end() ? nullptr : &found->second;
  }
};

// Labels as rows of an embedding table with num_classes + 1 rows: kNullLabel (and an undefined
// label tensor) becomes row num_classes.
inline torch::Tensor embedding_index(const Condition& condition, std::int64_t batch, std::int64_t num_classes,
                                     const torch::Device& device) {
  if (!condition.labels.defined())
    return torch::full({batch}, num_classes, torch::TensorOptions().dtype(torch::kInt64).device(device));
  auto labels = condition.labels.to(device, torch::kInt64);
  return torch::where(labels < 0, torch::full_like(labels, num_classes), labels);
}

// ------------------------------------------------------------------------------------------------
// Building

class Dataset;
class Path;
class Parameterization;
class TimeSampler;

// A trained run's flow (BuildContext::open_run): source points carried to its samples by the
// run's own sampler ([solver], [time_grid], [sample] guidance_scale), in the space its flow runs in.
// Reflow's teacher.
class PATHLINE_API TrainedFlow {
 public:
  virtual ~TrainedFlow() = default;
  // The space the run's flow runs in (shape, classes).
  virtual DataInfo flow() const = 0;
  // x0: [n, *flow().shape] source points as the run's [source] draws them; labels: [n] int64 (the
  // class each sample is asked for, kNullLabel for none) or undefined. Returns the solver's end
  // points [n, *shape], float32, on x0's device, without gradients.
  virtual torch::Tensor transport(const torch::Tensor& x0, const torch::Tensor& labels) = 0;
  // Model evaluations per transported point (guided evaluations count once).
  virtual std::int64_t evaluations() const = 0;
  // The file of the weights it samples with (a .safetensors of the model's parameter names), for a
  // student that starts from them (Coupling::initial_weights).
  virtual std::string weights_file() const = 0;
};

// What the engine knows when it builds a component. Components are built in pipeline order (data
// set, autoencoder, source, path, coupling, time sampler, parameterization, objective, model, solver,
// time grid, metrics); later ones see the earlier ones, so that, say, an exact marginal-velocity model can be
// built from the data set and the path.
struct BuildContext {
  DataInfo data;  // the target data set's; empty only while the data set itself is being built
  // The space the flow runs in: the samples the source draws, the path joins and the model takes
  // and returns. The data's own (`data`) unless a component between the data set and the model
  // (an autoencoder) maps the data to another space; then metrics and pictures still see `data`.
  // Models, paths, couplings and solvers read it through flow_space().
  DataInfo flow;
  torch::Device device = torch::kCPU;
  std::uint64_t seed = 0;
  std::string slot;  // the config table being built: "dataset", "source", "model", "metric", ...
  std::shared_ptr<Dataset> dataset;                          // once built
  std::shared_ptr<Dataset> source;                           // once built: the [source] slot's
  std::shared_ptr<const Path> path;                          // once built
  std::shared_ptr<const Parameterization> parameterization;  // once built
  std::shared_ptr<TimeSampler> time_sampler;                 // once built (ABI 8)
  // Times the model must take beside t, as condition extras of these names: the [objective]'s
  // Objective::model_times ({kIntervalEnd} for MeanFlow), set before the model is built. A model
  // that cannot take one throws InputError; one that can lists it in Model::times().
  std::vector<std::string> model_times;
  // Opens a trained flow run's directory (config.toml and weights) as a TrainedFlow; InputError
  // with one line saying what is wrong (no such directory, not a flow run, no weights). Set by the
  // engine; empty in a context filled by hand.
  std::function<std::shared_ptr<TrainedFlow>(const std::string& run_dir)> open_run;

  // The space the flow runs in: `flow`, or `data` when `flow` was left empty (a context filled by
  // hand, as tests do).
  const DataInfo& flow_space() const { return flow.shape.empty() ? data : flow; }
};

// Builds a component from its validated parameters.
template <class Interface>
using Factory = std::function<std::shared_ptr<Interface>(const Params&, const BuildContext&)>;

// The same, with the interface erased; the registry restores it by kind.
using ErasedFactory = std::function<std::shared_ptr<void>(const Params&, const BuildContext&)>;

// How a component presents itself: its name in `type = "..."`, a one-line doc, its parameters, and
// the types it suggests for later slots that a pipeline leaves out (pipeline order: dataset,
// autoencoder, source, path, coupling, time_sampler, parameterization, objective, model, solver,
// time_grid). The
// variance-exploding path suggests {{"solver", "heun"}}, which follows its flow closer than the default
// euler. A pipeline that names the slot, or an earlier component's suggestion for it, wins.
struct ComponentDecl {
  std::string name;
  std::string doc;
  std::vector<ParamSpec> params;
  std::vector<std::pair<std::string, std::string>> suggests = {};  // {slot, type}
};

}  // namespace pathline
