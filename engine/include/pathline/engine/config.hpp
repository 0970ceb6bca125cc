// Pipeline configs: a TOML file with one table per slot plus engine tables, validated in one pass
// against the registered components' parameter specs.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "pathline/engine/registry.hpp"
#include "pathline/engine/settings.hpp"
#include "pathline/engine/slots.hpp"

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

// A slot is a table of the pipeline that a component fills. pipeline_slots() is made from the one
// table of slots (PATHLINE_SLOTS in slots.hpp); the validator, the resolved output, the builder,
// checkpoints and `pathline inspect` all read it.
struct SlotSpec {
  std::string table;         // "dataset", "source", "path", ..., "metric"
  Kind kind;                 // which registry it draws from
  std::string default_type;  // used when the table is absent; "" if the slot is required or optional
  bool required = false;
  bool many = false;  // a table [metric] or a list [[metric]] of zero or more entries
  std::string doc;
  unsigned phases = 0;  // SlotPhase bits: the jobs that read it

  bool read_by(SlotPhase phase) const { return (phases & phase) != 0; }
};
PATHLINE_API const std::vector<SlotSpec>& pipeline_slots();
PATHLINE_API const SlotSpec* find_slot(const std::string& table);

// Keys every entry of a `many` slot has besides its component's parameters (metrics: `name`, the
// result's name; `samples`, how many generated samples it judges).
PATHLINE_API const std::vector<ParamSpec>& entry_specs(const std::string& table);

// One filled slot: the component's type and its resolved parameters.
struct ComponentConfig {
  Kind kind = Kind::dataset;
  std::string slot;  // the table it came from
  std::string type;
  Params params;
  std::vector<std::string> order;  // parameter names in declaration order, for writing back
  Params entry;                    // entry_specs(slot) values, for entries of a `many` slot
  std::string name;                // entries of a `many` slot: the unique name results are filed under
  std::string where;               // "file:line:column" of its `type` key, "--set ...", or the file
};

// Engine tables and their specs.
inline const std::vector<std::string> kEngineTables = {"run", "train", "sample", "eval"};
PATHLINE_API const std::vector<ParamSpec>& engine_table_specs(const std::string& table);

struct PipelineConfig {
  std::filesystem::path source;                               // the file it came from
  std::map<std::string, ComponentConfig> components;          // every single slot, by table name
  std::map<std::string, std::vector<ComponentConfig>> lists;  // every `many` slot, by table name
  std::map<std::string, Params> engine;                       // "run", "train", "sample", "eval"
  // The same four tables, typed (settings.hpp): what the engine reads.
  RunSettings run;
  TrainSettings train;
  SampleSettings sample;
  EvalSettings eval;
  // What validation did that the user may not expect (keys dropped by a --set X.type=...), one line
  // each; `pathline validate` prints them.
  std::vector<std::string> notes;
  // Where each value given in the file or by --set came from, by "table.key" (entries of a list
  // slot: "metric[1].key"): "file:line:column" or "--set text". Keys left at their default have none.
  std::map<std::string, std::string> positions;

  const ComponentConfig& component(const std::string& slot) const { return components.at(slot); }
  // A pipeline without [model] trains its [autoencoder] (which then names no trained run).
  bool trains_autoencoder() const { return components.count("model") == 0; }
  // The trained autoencoder run a flow pipeline's [autoencoder] names ("" for none).
  std::string autoencoder_run() const {
    auto it = components.find("autoencoder");
    return it == components.end() || !it->second.entry.contains("run") ? std::string()
                                                                       : it->second.entry.string("run");
  }
  // positions.at(key), else the file's name: for messages about a value checked after validation.
  std::string position_of(const std::string& key) const {
    auto it = positions.find(key);
    return it != positions.end() ? it->second : source.string();
  }
  const std::vector<ComponentConfig>& metrics() const;
  const Params& table(const std::string& name) const { return engine.at(name); }
  // Reads the typed settings from the engine tables (validation does; after changing `engine`, call
  // it again).
  void read_settings();
  // The resolved config as TOML, every default written out: a run is reproducible from it alone.
  std::string to_toml() const;
};

struct ConfigOptions {
  // "table.key=value", applied in order; "metric[1].key=value" reaches an entry of a list slot.
  // Setting `X.type` to another type drops the file's keys of [X] that the new type does not declare
  // (each drop is a note), so that any resolved config can be re-run with another type.
  std::vector<std::string> overrides;
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
