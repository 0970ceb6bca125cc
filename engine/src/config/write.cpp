// The resolved config written back as TOML: every default filled in, so that a run is reproducible
// from its config.toml alone.
#include <fmt/format.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

#include "pathline/engine/build.hpp"
#include "pathline/engine/config.hpp"
#include "text.hpp"

namespace pathline {

using namespace config_detail;

std::string PipelineConfig::to_toml() const {
  std::string out =
      "# Resolved pipeline: every default written out. `pathline run` on this file\n"
      "# reproduces the run.\n";
  auto write_values = [&](const Params& params, const std::vector<std::string>& order) {
    for (const auto& key : order) out += key + " = " + toml_value(params.at(key)) + "\n";
  };
  for (const SlotSpec& slot : pipeline_slots()) {
    if (slot.many) {
      auto list = lists.find(slot.table);
      if (list == lists.end()) continue;
      for (const ComponentConfig& c : list->second) {
        out += "\n[[" + slot.table + "]]\ntype = " + toml_string(c.type) + "\n";
        for (const auto& spec : entry_specs(slot.table)) {
          const ParamValue& value = c.entry.contains(spec.name) ? c.entry.at(spec.name) : *spec.default_value;
          out += spec.name + " = " + toml_value(value);
          // A derived name is left derived (so that another type gets its own), but said.
          if (spec.name == "name" && std::get_if<std::string>(&value) &&
              std::get<std::string>(value).empty() && !c.name.empty())
            out += "  # results filed as " + toml_string(c.name);
          out += "\n";
        }
        write_values(c.params, c.order);
      }
      continue;
    }
    auto it = components.find(slot.table);
    if (it == components.end()) continue;
    // No autoencoder is what a pipeline without the table has: left out, as before the slot existed.
    if (slot.table == "autoencoder" && it->second.type == "identity" && autoencoder_run().empty()) continue;
    out += "\n[" + slot.table + "]\ntype = " + toml_string(it->second.type) + "\n";
    for (const auto& spec : entry_specs(slot.table))
      out += spec.name + " = " +
             toml_value(it->second.entry.contains(spec.name) ? it->second.entry.at(spec.name)
                                                             : *spec.default_value) +
             "\n";
    write_values(it->second.params, it->second.order);
  }
  for (const auto& t : kEngineTables) {
    auto it = engine.find(t);
    if (it == engine.end()) continue;
    out += "\n[" + t + "]\n";
    for (const auto& spec : engine_table_specs(t))
      if (it->second.contains(spec.name))
        out += spec.name + " = " + toml_value(it->second.at(spec.name)) + "\n";
  }
  return out;
}

}  // namespace pathline
