// What every kind of component shares: the kinds, the build context, the declaration.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "pathline/params.hpp"

namespace pathline {

enum class Kind { dataset, path, coupling, time_sampler, parameterization, model, solver, metric };

inline constexpr std::array<Kind, 8> kAllKinds = {
    Kind::dataset, Kind::path,  Kind::coupling, Kind::time_sampler, Kind::parameterization,
    Kind::model,   Kind::solver, Kind::metric};

// The kind's name as written in a config table and on the command line.
inline const char* to_string(Kind kind) {
  switch (kind) {
    case Kind::dataset: return "dataset";
    case Kind::path: return "path";
    case Kind::coupling: return "coupling";
    case Kind::time_sampler: return "time_sampler";
    case Kind::parameterization: return "parameterization";
    case Kind::model: return "model";
    case Kind::solver: return "solver";
    case Kind::metric: return "metric";
  }
  return "?";
}

inline std::optional<Kind> kind_from_string(const std::string& name) {
  for (Kind k : kAllKinds)
    if (name == to_string(k)) return k;
  return std::nullopt;
}

class Dataset;
class Path;

// What the engine knows when it builds a component. Components built later see the earlier ones
// (the model sees the data set and the path), so that, say, an exact marginal-velocity model can be
// built from them.
struct BuildContext {
  std::vector<std::int64_t> data_shape;  // shape of one sample, e.g. {2} or {1, 28, 28}
  torch::Device device = torch::kCPU;
  std::uint64_t seed = 0;
  std::shared_ptr<Dataset> dataset;    // set once the data set is built
  std::shared_ptr<const Path> path;    // set once the path is built
};

// Builds a component from its validated parameters.
template <class Interface>
using Factory = std::function<std::shared_ptr<Interface>(const Params&, const BuildContext&)>;

// How a component presents itself: its name in `type = "..."`, a one-line doc, its parameters.
struct ComponentDecl {
  std::string name;
  std::string doc;
  std::vector<ParamSpec> params;
};

}  // namespace pathline
