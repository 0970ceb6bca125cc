#include "pathline/engine/config.hpp"

#include <algorithm>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <toml++/toml.h>

namespace pathline {

ConfigError::ConfigError(std::vector<std::string> problems)
    : InputError([&] {
        std::string joined;
        for (std::size_t i = 0; i < problems.size(); ++i) joined += (i ? "\n" : "") + problems[i];
        return joined;
      }()),
      problems_(std::move(problems)) {}

const std::vector<ParamSpec>& engine_table_specs(const std::string& table) {
  static const std::map<std::string, std::vector<ParamSpec>> specs = {
      {"run",
       {ParamSpec::string("name", "", "run name; the run directory is <dir>/<name> (default: the config file's stem)"),
        ParamSpec::string("dir", "runs", "parent folder of run directories"),
        ParamSpec::integer("seed", 0, "seed of every random draw (data, noise, times, initialisation)").at_least(0),
        ParamSpec::choice("device", {"cpu", "cuda"}, "cpu", "where tensors live"),
        ParamSpec::integer("threads", 0, "intra-op threads; 0 uses every core of the machine").at_least(0)}},
      {"train",
       {ParamSpec::integer("steps", 2000, "optimizer steps").at_least(0),
        ParamSpec::integer("batch_size", 1024, "samples per step").at_least(1),
        ParamSpec::real("lr", 1e-3, "AdamW learning rate").greater_than(0),
        ParamSpec::real_list("betas", {0.9, 0.999}, "AdamW betas").size(2).range(0, 1).less_than(1),
        ParamSpec::real("weight_decay", 0.0, "AdamW decoupled weight decay").at_least(0),
        ParamSpec::choice("lr_schedule", {"constant", "cosine"}, "constant",
                          "learning-rate schedule after warm-up (cosine decays to 0 at the last step)"),
        ParamSpec::integer("warmup_steps", 0, "linear learning-rate warm-up steps").at_least(0),
        ParamSpec::real("grad_clip", 0.0, "clip the gradient's global norm to this; 0 disables").at_least(0),
        ParamSpec::real("ema_decay", 0.0, "exponential moving average of the weights used for sampling; 0 disables")
            .range(0, 1).less_than(1),
        ParamSpec::choice("loss_weighting", {"none", "sigma_sqrt", "cosmap"}, "none",
                          "per-sample loss weight w(t) (Esser et al. 2024, SD3): none = 1, sigma_sqrt = 1 / sigma_t^2, "
                          "cosmap = 2 / (pi (1 - 2 s + 2 s^2)) with s = 1 - t"),
        ParamSpec::integer("log_every", 100, "write a metrics.csv row every this many steps").at_least(1)}},
      {"sample",
       {ParamSpec::integer("n", 10000, "samples to generate").at_least(1),
        ParamSpec::integer("batch_size", 10000, "samples integrated at once").at_least(1),
        ParamSpec::integer("trajectories", 48, "pathlines drawn in trajectories.png; 0 disables").at_least(0),
        ParamSpec::real("t_start", 0.0, "integrate from this time (a small value avoids the t = 0 end where "
                                         "noise and score predictions divide by alpha_t)").range(0, 1).less_than(1),
        ParamSpec::real("t_end", 1.0, "integrate up to this time").range(0, 1).greater_than(0)}},
      {"eval",
       {ParamSpec::integer("reference_n", 0, "fresh data samples the metrics compare against; 0 means sample.n")
            .at_least(0)}},
  };
  auto it = specs.find(table);
  if (it == specs.end()) throw Error("no engine table [" + table + "]");
  return it->second;
}

std::string default_component(Kind kind) {
  switch (kind) {
    case Kind::path: return "linear";
    case Kind::coupling: return "independent";
    case Kind::time_sampler: return "uniform";
    case Kind::parameterization: return "velocity";
    case Kind::solver: return "euler";
    default: return "";  // dataset and model are required; metrics are optional
  }
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

namespace {

std::string join(const std::vector<std::string>& items, const std::string& sep = ", ") {
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

std::string plural(Kind kind) {
  std::string name = to_string(kind);
  return name + "s";
}

// What a TOML node is, for "expected X, found Y" messages.
std::string describe(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string: return fmt::format("a string (\"{}\")", node.as_string()->get());
    case toml::node_type::integer: return fmt::format("an integer ({})", node.as_integer()->get());
    case toml::node_type::floating_point: return fmt::format("a float ({})", node.as_floating_point()->get());
    case toml::node_type::boolean: return fmt::format("a boolean ({})", node.as_boolean()->get());
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    default: return "nothing";
  }
}

struct Problem {
  int order;  // 0: file positions, sorted by line and column; 1: overrides, in command-line order
  std::uint32_t line, column;
  std::string text;
};

class Validator {
 public:
  Validator(std::string name, const Registry& registry, const ConfigOptions& options)
      : name_(std::move(name)), registry_(registry), options_(options) {}

  PipelineConfig run(toml::table& root) {
    apply_overrides(root);
    PipelineConfig config;
    config.source = name_;

    // Tables the file has.
    std::vector<std::string> known;
    for (Kind k : kAllKinds) known.push_back(to_string(k));
    for (const auto& t : kEngineTables) known.push_back(t);
    for (auto&& [key, node] : root) {
      std::string table(key.str());
      if (std::find(known.begin(), known.end(), table) != known.end()) continue;
      if (!node.is_table() && !node.is_array_of_tables()) {
        report(table, "", &key.source(), fmt::format("expected a table such as [run], found a top-level key '{}' ({})",
                                                     table, describe(node)));
        continue;
      }
      std::string suggestion = closest_match(table, known);
      report(table, "", &key.source(),
             fmt::format("unknown table [{}]; {}known tables: {}", table,
                         suggestion.empty() ? "" : "did you mean [" + suggestion + "]? ", join(known)));
    }

    for (Kind kind : kAllKinds) {
      const std::string slot = to_string(kind);
      toml::node* node = root.get(slot);
      if (kind == Kind::metric) {
        if (!node) continue;
        if (auto* array = node->as_array(); array && array->is_array_of_tables()) {
          for (auto& element : *array)
            if (auto c = component(kind, *element.as_table())) config.metrics.push_back(*c);
        } else if (auto* table = node->as_table()) {
          if (auto c = component(kind, *table)) config.metrics.push_back(*c);
        } else {
          report(slot, "", &node->source(), fmt::format("expected a table [metric] or a list [[metric]], found {}", describe(*node)));
        }
        continue;
      }
      if (!node) {
        std::string fallback = default_component(kind);
        if (fallback.empty()) {
          report(slot, "", nullptr, fmt::format("missing table [{}]; registered {}: {}", slot, plural(kind),
                                                join_or_none(registry_.names(kind))));
          continue;
        }
        toml::table implicit;
        implicit.insert("type", fallback);
        if (auto c = component(kind, implicit, true)) config.components[kind] = *c;
        continue;
      }
      if (auto* table = node->as_table()) {
        if (auto c = component(kind, *table)) config.components[kind] = *c;
      } else {
        report(slot, "", &node->source(), fmt::format("expected a table [{}], found {}", slot, describe(*node)));
      }
    }

    for (const auto& t : kEngineTables) {
      toml::table empty;
      toml::node* node = root.get(t);
      toml::table* table = node ? node->as_table() : &empty;
      if (!table) {
        report(t, "", &node->source(), fmt::format("expected a table [{}], found {}", t, describe(*node)));
        continue;
      }
      Params params;
      std::vector<std::string> order;
      validate_params(t, "", engine_table_specs(t), *table, params, order);
      config.engine[t] = params;
    }

    if (options_.check_device && config.engine.count("run") &&
        config.engine["run"].string("device") == "cuda" && !torch::cuda::is_available()) {
      const toml::node* device = root.at_path("run.device").node();
      report("run", "device", device ? &device->source() : nullptr,
             "run.device = \"cuda\", but CUDA is not available to this LibTorch build "
             "(torch::cuda::is_available() is false); use \"cpu\"");
    }

    if (!problems_.empty()) {
      std::stable_sort(problems_.begin(), problems_.end(), [](const Problem& a, const Problem& b) {
        return std::tie(a.order, a.line, a.column) < std::tie(b.order, b.line, b.column);
      });
      std::vector<std::string> lines;
      for (const auto& p : problems_) lines.push_back(p.text);
      throw ConfigError(std::move(lines));
    }
    return config;
  }

 private:
  static std::string join_or_none(const std::vector<std::string>& names) {
    return names.empty() ? "(none)" : join(names);
  }

  // Files report "file:line:column: msg"; values set on the command line report "--set k=v: msg".
  void report(const std::string& table, const std::string& key, const toml::source_region* where,
              const std::string& message) {
    // A problem with a value that came from --set points at that --set.
    const std::pair<int, std::string>* origin = nullptr;
    if (auto it = overrides_.find(key.empty() ? table : table + "." + key); it != overrides_.end())
      origin = &it->second;
    else if (auto t = table_overrides_.find(table);
             t != table_overrides_.end() && (!where || where->begin.line == 0))
      origin = &t->second;
    if (origin) {
      problems_.push_back({1, 0, static_cast<std::uint32_t>(origin->first),
                           "--set " + origin->second + ": " + message});
      return;
    }
    std::uint32_t line = where && where->begin.line ? where->begin.line : 1;
    std::uint32_t column = where && where->begin.line ? where->begin.column : 1;
    problems_.push_back({0, line, column, fmt::format("{}:{}:{}: {}", name_, line, column, message)});
  }

  void apply_overrides(toml::table& root) {
    int index = 0;
    for (const auto& text : options_.overrides) {
      ++index;
      auto eq = text.find('=');
      std::string path = text.substr(0, eq);
      auto dot = path.find('.');
      if (eq == std::string::npos || dot == std::string::npos || dot == 0 || dot + 1 == path.size() ||
          path.find('.', dot + 1) != std::string::npos) {
        problems_.push_back({1, 0, static_cast<std::uint32_t>(index),
                             "--set " + text + ": expected table.key=value, e.g. --set train.steps=500"});
        continue;
      }
      std::string table = path.substr(0, dot), key = path.substr(dot + 1), value = text.substr(eq + 1);
      overrides_[path] = {index, text};
      toml::node* existing = root.get(table);
      if (!existing) {
        root.insert(table, toml::table{});
        table_overrides_[table] = {index, text};
        existing = root.get(table);
      }
      toml::table* target = existing->as_table();
      if (!target) {
        problems_.push_back({1, 0, static_cast<std::uint32_t>(index),
                             "--set " + text + ": [" + table + "] is " + describe(*existing) +
                                 " in the file, not a single table; edit the file instead"});
        continue;
      }
      // The value is read as TOML (numbers, booleans, quoted strings, arrays); anything that does
      // not parse as TOML is taken as a bare string, so --set path.type=cosine works.
      try {
        toml::table parsed = toml::parse("value = " + value);
        target->insert_or_assign(key, *parsed.get("value"));
      } catch (const toml::parse_error&) {
        target->insert_or_assign(key, value);
      }
    }
  }

  std::optional<ComponentConfig> component(Kind kind, const toml::table& table, bool implicit = false) {
    const std::string slot = to_string(kind);
    const toml::node* type_node = table.get("type");
    std::vector<std::string> registered = registry_.names(kind);
    if (!type_node) {
      report(slot, "", &table.source(), fmt::format("[{}]: missing key 'type'; registered {}: {}", slot,
                                                    plural(kind), join_or_none(registered)));
      return std::nullopt;
    }
    if (!type_node->is_string()) {
      report(slot, "type", &type_node->source(),
             fmt::format("{}.type: expected a string naming a {}, found {}", slot, slot, describe(*type_node)));
      return std::nullopt;
    }
    std::string type = type_node->as_string()->get();
    const ComponentEntry* entry = registry_.find(kind, type);
    if (!entry) {
      std::string suggestion = closest_match(type, registered);
      report(slot, "type", &type_node->source(),
             fmt::format("unknown {} type '{}'; {}registered {}: {}{}", slot, type,
                         suggestion.empty() ? "" : "did you mean '" + suggestion + "'? ", plural(kind),
                         join_or_none(registered),
                         implicit ? fmt::format(" (no [{}] table was given, so the default '{}' was used)", slot, type)
                                  : ""));
      return std::nullopt;
    }
    ComponentConfig config{kind, type, {}, {}};
    std::size_t before = problems_.size();
    validate_params(slot, type, entry->decl.params, table, config.params, config.order);
    if (problems_.size() != before) return std::nullopt;
    return config;
  }

  void validate_params(const std::string& table_name, const std::string& type,
                       const std::vector<ParamSpec>& specs, const toml::table& table, Params& out,
                       std::vector<std::string>& order) {
    std::vector<std::string> names;
    for (const auto& s : specs) names.push_back(s.name);
    const std::string owner = type.empty() ? "[" + table_name + "]" : "[" + table_name + "] (type '" + type + "')";

    for (auto&& [key, node] : table) {
      std::string k(key.str());
      if (!type.empty() && k == "type") continue;
      if (std::find(names.begin(), names.end(), k) != names.end()) continue;
      std::string suggestion = closest_match(k, names);
      report(table_name, k, &key.source(),
             fmt::format("unknown key '{}' in {}{}", k, owner,
                         suggestion.empty() ? "; valid keys: " + join_or_none(names)
                                            : "; did you mean '" + suggestion + "'?"));
    }

    for (const auto& spec : specs) {
      order.push_back(spec.name);
      const toml::node* node = table.get(spec.name);
      if (!node) {
        if (spec.is_required()) {
          report(table_name, "", &table.source(),
                 fmt::format("{}: missing required key '{}' ({}: {})", owner, spec.name, to_string(spec.type), spec.doc));
        } else {
          out.set(spec.name, *spec.default_value);
        }
        continue;
      }
      std::string error;
      auto value = convert(*node, spec, table_name + "." + spec.name, error);
      if (!value) {
        report(table_name, spec.name, &node->source(), error);
        continue;
      }
      out.set(spec.name, *value);
    }
  }

  static std::optional<ParamValue> convert(const toml::node& node, const ParamSpec& spec,
                                           const std::string& label, std::string& error) {
    auto expected = [&](const std::string& what) {
      error = fmt::format("{}: expected {}, found {}", label, what, describe(node));
      return std::nullopt;
    };
    auto bounded = [&](double v, const std::string& shown) -> bool {
      std::string violation = spec.check_bounds(v);
      if (violation.empty()) return true;
      error = fmt::format("{} = {} is out of range: {}", label, shown, violation);
      return false;
    };
    switch (spec.type) {
      case ParamType::boolean:
        if (!node.is_boolean()) return expected("a boolean (true or false)");
        return ParamValue{node.as_boolean()->get()};
      case ParamType::integer: {
        if (!node.is_integer()) return expected("an integer");
        std::int64_t v = node.as_integer()->get();
        if (!bounded(static_cast<double>(v), std::to_string(v))) return std::nullopt;
        if (spec.multiple && *spec.multiple != 0 && v % *spec.multiple != 0) {
          error = fmt::format("{} = {} is out of range: must be a multiple of {}", label, v, *spec.multiple);
          return std::nullopt;
        }
        return ParamValue{v};
      }
      case ParamType::real: {
        if (!node.is_number()) return expected("a number");
        double v = node.is_integer() ? static_cast<double>(node.as_integer()->get()) : node.as_floating_point()->get();
        if (!bounded(v, fmt::format("{}", v))) return std::nullopt;
        return ParamValue{v};
      }
      case ParamType::string:
        if (!node.is_string()) return expected("a string");
        return ParamValue{std::string(node.as_string()->get())};
      case ParamType::choice: {
        if (!node.is_string()) return expected("a string, one of " + join(spec.choices));
        std::string v = node.as_string()->get();
        if (std::find(spec.choices.begin(), spec.choices.end(), v) == spec.choices.end()) {
          std::string suggestion = closest_match(v, spec.choices);
          error = fmt::format("{}: expected one of {}, found '{}'{}", label, join(spec.choices), v,
                              suggestion.empty() ? "" : "; did you mean '" + suggestion + "'?");
          return std::nullopt;
        }
        return ParamValue{v};
      }
      case ParamType::real_list: {
        const toml::array* array = node.as_array();
        if (!array) return expected("a list of numbers");
        if (spec.list_size && array->size() != *spec.list_size) {
          error = fmt::format("{}: expected a list of {} numbers, found {}", label, *spec.list_size, array->size());
          return std::nullopt;
        }
        std::vector<double> values;
        for (std::size_t i = 0; i < array->size(); ++i) {
          const toml::node& element = *array->get(i);
          if (!element.is_number()) {
            error = fmt::format("{}[{}]: expected a number, found {}", label, i, describe(element));
            return std::nullopt;
          }
          double v = element.is_integer() ? static_cast<double>(element.as_integer()->get())
                                          : element.as_floating_point()->get();
          if (!bounded(v, fmt::format("{}", v))) {
            error = fmt::format("{}[{}] = {} is out of range: {}", label, i, v, spec.check_bounds(v));
            return std::nullopt;
          }
          values.push_back(v);
        }
        return ParamValue{values};
      }
    }
    return std::nullopt;
  }

  std::string name_;
  const Registry& registry_;
  const ConfigOptions& options_;
  std::vector<Problem> problems_;
  std::map<std::string, std::pair<int, std::string>> overrides_;        // "table.key" -> (index, text)
  std::map<std::string, std::pair<int, std::string>> table_overrides_;  // tables created by --set
};

}  // namespace

PipelineConfig parse_config(const std::string& text, const std::string& name, const Registry& registry,
                            const ConfigOptions& options) {
  toml::table root;
  try {
    root = toml::parse(text, name);
  } catch (const toml::parse_error& e) {
    const auto& begin = e.source().begin;
    std::string description(e.description());
    std::replace(description.begin(), description.end(), '\n', ' ');
    throw ConfigError({fmt::format("{}:{}:{}: TOML syntax error: {}", name, begin.line, begin.column, description)});
  }
  Validator validator(name, registry, options);
  return validator.run(root);
}

PipelineConfig load_config(const std::filesystem::path& file, const Registry& registry,
                           const ConfigOptions& options) {
  std::ifstream in(file, std::ios::binary);
  std::error_code ec;
  if (!in || std::filesystem::is_directory(file, ec))
    throw ConfigError({file.string() + ": cannot read the config file: " +
                       (std::filesystem::exists(file, ec) ? "not a readable file" : "no such file")});
  std::stringstream buffer;
  buffer << in.rdbuf();
  PipelineConfig config = parse_config(buffer.str(), file.string(), registry, options);
  config.source = file;
  return config;
}

std::string PipelineConfig::to_toml() const {
  std::string out = "# Resolved pipeline: every default written out. `pathline run` on this file\n"
                    "# reproduces the run.\n";
  auto write_table = [&](const std::string& header, const std::string& type, const Params& params,
                         const std::vector<std::string>& order) {
    out += "\n" + header + "\n";
    if (!type.empty()) out += "type = " + format_value(ParamValue{type}) + "\n";
    for (const auto& key : order) out += key + " = " + format_value(params.at(key)) + "\n";
  };
  for (Kind kind : kAllKinds) {
    if (kind == Kind::metric) {
      for (const auto& m : metrics) write_table("[[metric]]", m.type, m.params, m.order);
      continue;
    }
    auto it = components.find(kind);
    if (it != components.end())
      write_table(std::string("[") + to_string(kind) + "]", it->second.type, it->second.params, it->second.order);
  }
  for (const auto& t : kEngineTables) {
    auto it = engine.find(t);
    if (it == engine.end()) continue;
    std::vector<std::string> order;
    for (const auto& spec : engine_table_specs(t)) order.push_back(spec.name);
    write_table("[" + t + "]", "", it->second, order);
  }
  return out;
}

}  // namespace pathline
