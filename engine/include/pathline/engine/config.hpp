// Pipeline configs: a TOML file with one table per slot plus engine tables, validated in one pass
// against the registered components' parameter specs.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "pathline/engine/registry.hpp"

namespace pathline {

// An invalid config: one line per problem, each "file:line:column: message" (or
// "--set key=value: message" for an override).
class PATHLINE_API ConfigError : public InputError {
 public:
  explicit ConfigError(std::vector<std::string> problems);
  const std::vector<std::string>& problems() const { return problems_; }

 private:
  std::vector<std::string> problems_;
};

// One filled slot: the component's type and its resolved parameters.
struct ComponentConfig {
  Kind kind = Kind::dataset;
  std::string type;
  Params params;
  std::vector<std::string> order;  // parameter names in declaration order, for writing back
};

// Engine tables and their specs.
inline const std::vector<std::string> kEngineTables = {"run", "train", "sample", "eval"};
PATHLINE_API const std::vector<ParamSpec>& engine_table_specs(const std::string& table);

// The type used when a slot's table is absent ("" if the slot is required).
PATHLINE_API std::string default_component(Kind kind);

struct PipelineConfig {
  std::filesystem::path source;              // the file it came from
  std::map<Kind, ComponentConfig> components;  // every slot but metric
  std::vector<ComponentConfig> metrics;      // zero or more
  std::map<std::string, Params> engine;      // "run", "train", "sample", "eval"

  const ComponentConfig& component(Kind kind) const { return components.at(kind); }
  const Params& table(const std::string& name) const { return engine.at(name); }
  // The resolved config as TOML, every default written out: a run is reproducible from it alone.
  std::string to_toml() const;
};

struct ConfigOptions {
  std::vector<std::string> overrides;  // "table.key=value", applied in order
  // Checks that need the machine (CUDA present) can be skipped, e.g. when only inspecting.
  bool check_device = true;
};

// Parses, applies overrides and validates; throws ConfigError listing every problem.
PATHLINE_API PipelineConfig load_config(const std::filesystem::path& file, const Registry& registry,
                                        const ConfigOptions& options = {});
// The same, from text (`name` is used in messages).
PATHLINE_API PipelineConfig parse_config(const std::string& text, const std::string& name,
                                         const Registry& registry, const ConfigOptions& options = {});

// The closest candidate by edit distance, or "" if none is close enough to suggest.
PATHLINE_API std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace pathline
