// Pipeline configs: the slot specs (from slots.hpp), the engine tables (from settings.hpp), the
// entry keys of list slots, and ConfigError. Validation is in validate.cpp, the resolved config
// written back in write.cpp, text helpers and --set parsing in text.hpp.
#include "pathline/engine/config.hpp"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

#include "pathline/engine/build.hpp"
#include "text.hpp"

namespace pathline {

ConfigError::ConfigError(std::vector<std::string> problems)
    : InputError([&] {
        std::string joined;
        for (std::size_t i = 0; i < problems.size(); ++i) joined += (i ? "\n" : "") + problems[i];
        return joined;
      }()),
      problems_(std::move(problems)) {}

// ------------------------------------------------------------------------------------------------
// The slots and the engine tables

const std::vector<SlotSpec>& pipeline_slots() {
  // Pipeline order (slots.hpp): the order components are built in (each sees the ones before it),
  // the order of the resolved config, and the order `pathline inspect` lists them in.
  static const std::vector<SlotSpec> slots = [] {
    std::vector<SlotSpec> all;
#define PATHLINE_SLOT_SPEC(table, Interface, default_type, required, phases, doc) \
  all.push_back({#table, KindOf<Interface>::value, default_type, required, false, doc, phases});
    PATHLINE_SLOTS(PATHLINE_SLOT_SPEC)
#undef PATHLINE_SLOT_SPEC
#define PATHLINE_MANY_SLOT_SPEC(table, Interface, phases, doc) \
  all.push_back({#table, KindOf<Interface>::value, "", false, true, doc, phases});
    PATHLINE_METRIC_SLOT(PATHLINE_MANY_SLOT_SPEC)
#undef PATHLINE_MANY_SLOT_SPEC
    return all;
  }();
  return slots;
}

const SlotSpec* find_slot(const std::string& table) {
  for (const auto& slot : pipeline_slots())
    if (slot.table == table) return &slot;
  return nullptr;
}

const std::vector<ParamSpec>& entry_specs(const std::string& table) {
  static const std::vector<ParamSpec> none;
  static const std::vector<ParamSpec> metric = {
      ParamSpec::string(
          "name", "",
          "the name its result is filed under; \"\" uses the type, numbered type#1, type#2, ... "
          "when a type appears more than once"),
      ParamSpec::integer("samples", 0, "how many of the generated samples it judges; 0 judges all of them")
          .at_least(0),
  };
  static const std::vector<ParamSpec> autoencoder = {ParamSpec::string(
      "run", "",
      "the run directory of a trained autoencoder (a pipeline without [model] trains one): its "
      "weights, settings and latent scale are read from there; \"\" with a [model] is an error for "
      "an autoencoder that must be trained (identity needs none)")};
  if (table == "autoencoder") return autoencoder;
  return table == "metric" ? metric : none;
}

const std::vector<ParamSpec>& engine_table_specs(const std::string& table) {
  // Each table's keys are declared beside the code that reads them (settings.hpp).
  if (table == "run") return RunSettings::specs();
  if (table == "train") return TrainSettings::specs();
  if (table == "sample") return SampleSettings::specs();
  if (table == "eval") return EvalSettings::specs();
  throw Error("no engine table [" + table + "]");
}

const std::vector<ComponentConfig>& PipelineConfig::metrics() const {
  static const std::vector<ComponentConfig> none;
  auto it = lists.find("metric");
  return it == lists.end() ? none : it->second;
}

std::string closest_match(const std::string& word, const std::vector<std::string>& candidates) {
  // Optimal string alignment distance: edits plus adjacent transpositions.
  auto distance = [](const std::string& a, const std::string& b) {
    std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
    for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
    for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i)
      for (std::size_t j = 1; j <= b.size(); ++j) {
        std::size_t cost = std::tolower(a[i - 1]) == std::tolower(b[j - 1]) ? 0 : 1;
        d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
        if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
          d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    return d[a.size()][b.size()];
  };
  std::string best;
  std::size_t best_distance = std::max<std::size_t>(2, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    std::size_t dist = distance(word, c);
    if (dist < best_distance) best_distance = dist, best = c;
  }
  return best;
}

}  // namespace pathline
