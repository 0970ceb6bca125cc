#include "pathline/engine/ablate.hpp"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "pathline/engine/checkpoint.hpp"
#include "pathline/engine/io.hpp"
#include "pathline/plot/plot.hpp"

namespace pathline {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<std::string> AblationVariant::overrides() const {
  std::vector<std::string> out;
  for (const auto& [key, value] : settings) out.push_back(key + "=" + value);
  return out;
}

std::size_t AblationPlan::trainings() const {
  std::set<std::string> distinct;
  for (const auto& v : variants) distinct.insert(v.training);
  return distinct.size();
}

namespace {

// ------------------------------------------------------------------------------------------------
// Reading [ablation]

std::string where(const fs::path& file, const toml::source_region& source) {
  return fmt::format("{}:{}:{}", file.string(), source.begin.line, source.begin.column);
}

// One axis of the sweep: keys that move together and their rows of values (as --set text).
struct Axis {
  std::vector<std::string> keys;
  std::vector<std::vector<std::string>> rows;
};

std::string value_text(const toml::node& node) {
  if (const auto* text = node.as_string()) {
    // A basic (double-quoted) string, as --set reads it back.
    std::string out = "\"";
    for (char ch : text->get()) {
      if (ch == '"' || ch == '\\') out += '\\';
      out += ch;
    }
    return out + "\"";
  }
  std::ostringstream out;
  node.visit([&](const auto& v) { out << v; });
  return out.str();
}

// A table's entries in the order they were written (toml++ keeps them sorted by key).
std::vector<std::pair<std::string, const toml::node*>> in_file_order(const toml::table& table) {
  std::vector<std::pair<std::string, const toml::node*>> out;
  for (auto&& [k, node] : table) out.emplace_back(std::string(k.str()), &node);
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    const auto &x = a.second->source().begin, &y = b.second->source().begin;
    return x.line != y.line ? x.line < y.line : x.column < y.column;
  });
  return out;
}

// "cosine" for a string, the TOML text otherwise: what a table cell shows.
std::string display(const std::string& text) {
  if (text.size() >= 2 && text.front() == '"' && text.back() == '"') return text.substr(1, text.size() - 2);
  return text;
}

class AblationReader {
 public:
  AblationReader(const fs::path& file, const Registry& registry) : file_(file), registry_(registry) {}

  std::vector<std::string> problems;
  std::map<std::string, std::string> positions;  // key -> file:line:column

  // The combined sweep: rows of (key, value) settings.
  std::vector<std::vector<std::pair<std::string, std::string>>> read(const toml::table& ablation) {
    std::string mode = "grid";
    std::vector<Axis> axes;
    for (const auto& [key, entry] : in_file_order(ablation)) {
      const toml::node& node = *entry;
      if (key == "mode") {
        mode = mode_of(node, "[ablation] mode");
        continue;
      }
      if (const toml::table* group = node.as_table()) {
        // A sub-table: its keys move in step (mode = "zip", the default) or form their own grid.
        std::string group_mode = "zip";
        std::vector<Axis> inner;
        for (const auto& [gkey, gentry] : in_file_order(*group)) {
          const toml::node& gnode = *gentry;
          if (gkey == "mode") {
            group_mode = mode_of(gnode, "[ablation." + key + "] mode");
            continue;
          }
          if (gkey.find_first_of(".[") == std::string::npos) {
            // `solver.type = [...]` unquoted: TOML makes [ablation.solver] a table with a key `type`.
            problems.push_back(where(file_, gnode.source()) + ": [ablation] " + key + "." + gkey +
                               ": TOML reads an unquoted dotted key as a table; write the key in quotes: \"" +
                               key + "." + gkey + "\" = [...]");
            continue;
          }
          inner.push_back(axis(gkey, gnode));
        }
        if (!inner.empty())
          axes.push_back(combine(inner, group_mode, "[ablation." + key + "]", group->source()));
        continue;
      }
      axes.push_back(axis(key, node));
    }
    if (axes.empty()) {
      problems.push_back(where(file_, ablation.source()) +
                         ": [ablation] sweeps nothing; add keys with lists of values, e.g. \"path.type\" = "
                         "[\"linear\", \"cosine\"]");
      return {};
    }
    Axis all = combine(axes, mode, "[ablation]", ablation.source());
    std::vector<std::vector<std::pair<std::string, std::string>>> out;
    for (const auto& row : all.rows) {
      std::vector<std::pair<std::string, std::string>> settings;
      for (std::size_t i = 0; i < all.keys.size(); ++i) settings.emplace_back(all.keys[i], row[i]);
      out.push_back(settings);
    }
    return out;
  }

 private:
  std::string mode_of(const toml::node& node, const std::string& what) {
    const auto* text = node.as_string();
    if (!text || (text->get() != "grid" && text->get() != "zip")) {
      problems.push_back(where(file_, node.source()) + ": " + what + " must be \"grid\" or \"zip\"");
      return "grid";
    }
    return text->get();
  }

  // The registered names of the kind a "<slot>.type" key selects (for "*").
  std::vector<std::string> every(const std::string& key, const toml::node& node) {
    const auto dot = key.find_first_of(".[");
    const SlotSpec* slot = dot == std::string::npos ? nullptr : find_slot(key.substr(0, dot));
    if (!slot || key.size() < 5 || key.substr(key.size() - 5) != ".type") {
      problems.push_back(where(file_, node.source()) + ": [ablation] \"" + key +
                         "\": \"*\" (every registered component) only works for a component's type key, e.g. "
                         "\"path.type\"");
      return {};
    }
    std::vector<std::string> out;
    for (const auto& name : registry_.names(slot->kind)) out.push_back("\"" + name + "\"");
    return out;
  }

  Axis axis(const std::string& key, const toml::node& node) {
    positions[key] = where(file_, node.source());
    check_key(key, node);
    Axis a;
    a.keys = {key};
    std::vector<std::string> values;
    auto add = [&](const toml::node& item) {
      if (item.is_string() && item.as_string()->get() == "*") {
        for (const auto& name : every(key, item))
          if (std::find(values.begin(), values.end(), name) == values.end()) values.push_back(name);
      } else {
        values.push_back(value_text(item));
      }
    };
    if (const toml::array* list = node.as_array()) {
      for (const auto& item : *list) add(item);
      if (list->empty())
        problems.push_back(where(file_, node.source()) + ": [ablation] \"" + key + "\" has no values");
    } else {
      add(node);  // a single value: every variant gets it
    }
    for (const auto& v : values) a.rows.push_back({v});
    return a;
  }

  Axis combine(const std::vector<Axis>& axes, const std::string& mode, const std::string& what,
               const toml::source_region& source) {
    Axis out;
    for (const auto& a : axes) out.keys.insert(out.keys.end(), a.keys.begin(), a.keys.end());
    if (mode == "zip") {
      const std::size_t n = axes.front().rows.size();
      for (const auto& a : axes)
        if (a.rows.size() != n) {
          problems.push_back(where(file_, source) +
                             fmt::format(": {} zips lists of different lengths ({} for {} and {} for {})",
                                         what, n, axes.front().keys.front(), a.rows.size(), a.keys.front()));
          return out;
        }
      for (std::size_t i = 0; i < n; ++i) {
        std::vector<std::string> row;
        for (const auto& a : axes) row.insert(row.end(), a.rows[i].begin(), a.rows[i].end());
        out.rows.push_back(row);
      }
      return out;
    }
    out.rows = {{}};
    for (const auto& a : axes) {
      std::vector<std::vector<std::string>> next;
      for (const auto& row : out.rows)
        for (const auto& add : a.rows) {
          std::vector<std::string> r = row;
          r.insert(r.end(), add.begin(), add.end());
          next.push_back(r);
        }
      out.rows = std::move(next);
    }
    return out;
  }

  // A sweep key names "table.key" (or "metric[i].key") of a table a pipeline has: a slot or an
  // engine table. Anything else is a typo, said with a did-you-mean as in pipeline tables.
  void check_key(const std::string& key, const toml::node& node) {
    const auto dot = key.find_first_of(".[");
    const std::string table = key.substr(0, dot);
    if (dot == std::string::npos || dot + 1 >= key.size()) {
      problems.push_back(where(file_, node.source()) + ": [ablation] \"" + key +
                         "\": a sweep key names a table and its key, e.g. \"path.type\" or \"train.lr\"");
      return;
    }
    std::vector<std::string> tables = kEngineTables;
    for (const auto& slot : pipeline_slots()) tables.push_back(slot.table);
    if (std::find(tables.begin(), tables.end(), table) == tables.end()) {
      const std::string suggestion = closest_match(table, tables);
      problems.push_back(where(file_, node.source()) + ": [ablation] \"" + key + "\": unknown table [" +
                         table + "]" + (suggestion.empty() ? "" : "; did you mean [" + suggestion + "]?") +
                         " (the tables: " + join(tables) + ")");
    }
  }

  static std::string join(const std::vector<std::string>& words) {
    std::string out;
    for (const auto& w : words) out += (out.empty() ? "" : ", ") + w;
    return out;
  }

  fs::path file_;
  const Registry& registry_;
};

// A folder name from a variant's settings: readable when short, a hash when not.
std::string slug(const std::vector<std::pair<std::string, std::string>>& settings) {
  std::string text;
  for (const auto& [key, value] : settings) {
    if (!text.empty()) text += "_";
    text += key + "=" + display(value);
  }
  std::string out;
  for (char ch : text)
    out += (std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '=' || ch == '-' || ch == '_')
               ? ch
               : '-';
  if (out.empty()) out = "base";
  if (out.size() > 80) {
    std::map<std::string, std::string> keys(settings.begin(), settings.end());
    out = out.substr(0, 60) + "-" + config_hash(keys).substr(0, 12);
  }
  return out;
}

std::string label_of(const std::vector<std::pair<std::string, std::string>>& settings) {
  std::string text;
  for (const auto& [key, value] : settings) text += (text.empty() ? "" : ", ") + key + "=" + display(value);
  return text.empty() ? "(base)" : text;
}

// The parameters a single component slot's type declares (nullptr: not a component key we can check).
const std::vector<ParamSpec>* declared(const Registry& registry, const std::string& slot,
                                       const std::string& type) {
  const SlotSpec* spec = find_slot(slot);
  if (!spec || spec->many) return nullptr;
  const ComponentEntry* entry = registry.find(spec->kind, type);
  return entry ? &entry->decl.params : nullptr;
}

}  // namespace

AblationPlan plan_ablation(const fs::path& file, const Registry& registry,
                           const std::vector<std::string>& overrides) {
  AblationPlan plan;
  plan.file = file;
  plan.base_overrides = overrides;
  ConfigOptions base_options;
  base_options.overrides = overrides;
  const PipelineConfig base = load_config(file, registry, base_options);
  const std::string text = read_file(file);
  toml::table root = toml::parse(text, file.string());  // valid: load_config parsed it
  const toml::table* table = root["ablation"].as_table();
  if (!table)
    throw ConfigError({file.string() + ": no [ablation] table; add one with the keys to sweep, e.g.\n"
                                       "  [ablation]\n  \"path.type\" = [\"linear\", \"cosine\"]"});
  AblationReader reader(file, registry);
  auto rows = reader.read(*table);
  if (!reader.problems.empty()) throw ConfigError(reader.problems);
  if (!rows.empty())
    for (const auto& [key, value] : rows.front()) plan.keys.push_back(key);

  std::vector<std::string> problems;
  // A component key that no variant's component declares is a typo, not a key to drop: "solver.typ"
  // would otherwise leave a note and one "(base)" variant. (A key only some variants' components
  // declare, such as solver.steps beside an adaptive solver, is dropped where it does not apply.)
  for (const auto& key : plan.keys) {
    const auto dot = key.find('.');
    if (dot == std::string::npos || key.find('[') != std::string::npos || key.substr(dot + 1) == "type")
      continue;
    const std::string slot = key.substr(0, dot), param = key.substr(dot + 1);
    std::set<std::string> types;
    for (const auto& settings : rows) {
      std::string type;
      for (const auto& [k, val] : settings)
        if (k == slot + ".type") type = display(val);
      if (type.empty() && base.components.count(slot)) type = base.component(slot).type;
      if (!type.empty()) types.insert(type);
    }
    std::vector<std::string> candidates = {"type"};
    bool known = false, checked = !types.empty();
    for (const auto& type : types) {
      const auto* params = declared(registry, slot, type);
      if (!params) {
        checked = false;
        break;
      }
      for (const auto& p : *params) {
        candidates.push_back(p.name);
        known = known || p.name == param;
      }
    }
    if (!checked || known) continue;
    std::string type_list;
    for (const auto& t : types) type_list += (type_list.empty() ? "'" : ", '") + t + "'";
    const std::string suggestion = closest_match(param, candidates);
    problems.push_back(
        fmt::format("{}: [ablation] \"{}\": no {} of this sweep ({}) has a parameter '{}'{}",
                    reader.positions[key], key, slot, type_list, param,
                    suggestion.empty() ? "" : "; did you mean \"" + slot + "." + suggestion + "\"?"));
  }
  if (!problems.empty()) throw ConfigError(problems);
  std::set<std::string> seen, seen_problems;
  // One note per dropped key and reason, naming the variants (a sweep of 100 would repeat it 50 times).
  std::map<std::string, std::vector<std::size_t>> dropped_in;
  std::vector<std::string> dropped_order;
  std::size_t number = 0;
  for (auto& settings : rows) {
    ++number;
    // Keys that the variant's component does not declare (steps for an adaptive solver) are dropped.
    AblationVariant v;
    for (const auto& [key, value] : settings) {
      const auto dot = key.find('.');
      if (dot != std::string::npos && key.substr(dot + 1) != "type" && key.find('[') == std::string::npos) {
        const std::string slot = key.substr(0, dot), param = key.substr(dot + 1);
        std::string type;
        for (const auto& [k, val] : settings)
          if (k == slot + ".type") type = display(val);
        if (type.empty() && base.components.count(slot)) type = base.component(slot).type;
        if (const auto* params = declared(registry, slot, type)) {
          bool known = std::any_of(params->begin(), params->end(),
                                   [&](const ParamSpec& p) { return p.name == param; });
          if (!known) {
            v.dropped.push_back(fmt::format("{} (not a parameter of {} '{}')", key, slot, type));
            continue;
          }
        }
      }
      v.settings.emplace_back(key, value);
    }
    v.label = label_of(v.settings);
    if (!seen.insert(v.label).second) {
      plan.notes.push_back(fmt::format("variant {} ({}) repeats an earlier one once {} is dropped; run once",
                                       number, label_of(settings),
                                       v.dropped.empty() ? "nothing" : v.dropped.front()));
      continue;
    }
    for (const auto& d : v.dropped) {
      if (!dropped_in.count(d)) dropped_order.push_back(d);
      dropped_in[d].push_back(number);
    }
    ConfigOptions options;
    options.overrides = overrides;
    for (const auto& o : v.overrides()) options.overrides.push_back(o);
    try {
      PipelineConfig config = parse_config(text, file.string(), registry, options);
      v.training = config_hash(training_keys(config));
    } catch (const ConfigError& e) {
      for (std::string line : e.problems()) {
        // A problem of one of the variant's settings points at that key in [ablation].
        for (const auto& [key, value] : v.settings) {
          const std::string prefix = "--set " + key + "=" + value + ": ";
          if (line.rfind(prefix, 0) == 0)
            line = reader.positions[key] + ": variant " + std::to_string(number) + " (" + v.label +
                   "): [ablation] " + key + " = " + display(value) + ": " + line.substr(prefix.size());
        }
        if (line.find(": variant ") == std::string::npos && line.rfind("--set ", 0) != 0)
          line += fmt::format(" (variant {}: {})", number, v.label);
        if (seen_problems.insert(line).second) problems.push_back(line);
      }
      continue;
    }
    v.dir = slug(v.settings);
    plan.variants.push_back(std::move(v));
  }
  if (!problems.empty()) throw ConfigError(problems);
  std::vector<std::string> dropped_notes;
  for (const auto& d : dropped_order) {
    const auto& numbers = dropped_in[d];
    std::string list;
    for (std::size_t i = 0; i < numbers.size() && i < 12; ++i)
      list += (list.empty() ? "" : ", ") + std::to_string(numbers[i]);
    if (numbers.size() > 12) list += fmt::format(" and {} more", numbers.size() - 12);
    dropped_notes.push_back(numbers.size() == 1
                                ? fmt::format("dropped {} in variant {}", d, list)
                                : fmt::format("dropped {} in {} variants: {}", d, numbers.size(), list));
  }
  plan.notes.insert(plan.notes.begin(), dropped_notes.begin(), dropped_notes.end());
  return plan;
}

// ------------------------------------------------------------------------------------------------
// Running

namespace {

using Clock = std::chrono::steady_clock;

struct Task {
  enum class Kind { train, sample } kind = Kind::train;
  std::size_t variant = 0;  // sample: the variant; train: the first variant of its group
  std::string group;        // the training hash
  fs::path dir, log;
  std::vector<std::string> args;
  bool failed = false;
  std::string error;
  double seconds = 0.0;
};

// The last line of a child's log that says what went wrong.
std::string last_error(const fs::path& log) {
  std::string text;
  try {
    text = read_file(log);
  } catch (const InputError&) {
    return "no log";
  }
  std::istringstream lines(text);
  std::string line, last;
  while (std::getline(lines, line))
    if (!line.empty()) last = line;
  return last.empty() ? "no output" : last;
}

json read_json(const fs::path& file) {
  try {
    return json::parse(read_file(file));
  } catch (const std::exception&) {
    return json();
  }
}

std::string duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const auto t = static_cast<std::int64_t>(s + 0.5);
  return t >= 3600 ? fmt::format("{}:{:02d}:{:02d}", t / 3600, (t / 60) % 60, t % 60)
                   : fmt::format("{}:{:02d}", t / 60, t % 60);
}

std::string csv_cell(const std::string& text) {
  if (text.find_first_of(",\"\n") == std::string::npos) return text;
  std::string out = "\"";
  for (char ch : text) out += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return out + "\"";
}

struct Row {
  const AblationVariant* variant = nullptr;
  bool ok = false;
  std::string error;
  std::map<std::string, double> metrics;
  double nfe = NAN, train_s = NAN, sample_s = NAN;
  // Training's own cost, where the objective reports it: steps taken, seconds per step, and model
  // evaluations per step (cnf_mle's "nfe").
  double train_steps = NAN, step_s = NAN, train_nfe = NAN;
};

void write_results(const fs::path& dir, const AblationPlan& plan, const std::vector<Row>& rows,
                   const std::vector<std::string>& metric_names,
                   const std::map<std::string, bool>& lower_better,
                   const std::map<std::string, std::string>& quantity, const Logger& log) {
  // A metric under its name and, where it differs, what it computes: "wasserstein (W2 squared)".
  auto shown = [&](const std::string& m) {
    auto it = quantity.find(m);
    return it == quantity.end() || it->second.empty() || it->second == m ? m : m + " (" + it->second + ")";
  };
  // results.csv
  std::string csv = "variant";
  for (const auto& k : plan.keys) csv += "," + csv_cell(k);
  for (const auto& m : metric_names) csv += "," + csv_cell(m);
  // Training's cost per step, when some variant's objective reports its evaluations (an ablation of
  // objectives): steps taken (a time budget may end training early), seconds and NFE per step.
  const bool step_costs =
      std::any_of(rows.begin(), rows.end(), [](const Row& r) { return std::isfinite(r.train_nfe); });
  csv += ",nfe,train_seconds,sample_seconds";
  if (step_costs) csv += ",train_steps,seconds_per_step,train_nfe_per_step";
  csv += ",status,error,dir\n";
  auto num = [](double v) { return std::isfinite(v) ? fmt::format("{:.6g}", v) : std::string(); };
  for (const auto& r : rows) {
    std::map<std::string, std::string> values(r.variant->settings.begin(), r.variant->settings.end());
    csv += csv_cell(r.variant->label);
    for (const auto& k : plan.keys) csv += "," + csv_cell(values.count(k) ? display(values[k]) : "(dropped)");
    for (const auto& m : metric_names) csv += "," + (r.metrics.count(m) ? num(r.metrics.at(m)) : "");
    csv += fmt::format(",{},{},{}", num(r.nfe), num(r.train_s), num(r.sample_s));
    if (step_costs) csv += fmt::format(",{},{},{}", num(r.train_steps), num(r.step_s), num(r.train_nfe));
    csv += fmt::format(",{},{},{}\n", r.ok ? "ok" : "failed", csv_cell(r.error), csv_cell(r.variant->dir));
  }
  write_file_atomic(dir / "results.csv", csv);

  // results.md: the best value of each metric in bold, in its own direction.
  std::map<std::string, double> best;
  for (const auto& m : metric_names)
    for (const auto& r : rows)
      if (r.ok && r.metrics.count(m) && std::isfinite(r.metrics.at(m))) {
        const double v = r.metrics.at(m);
        if (!best.count(m) || (lower_better.at(m) ? v < best[m] : v > best[m])) best[m] = v;
      }
  std::string md =
      fmt::format("# Ablation: {}\n\n{} variants, {} trainings. Best value of each metric in bold ",
                  plan.file.filename().string(), rows.size(), plan.trainings());
  md += "(lower is better unless marked ↑).\n\n|";
  for (const auto& k : plan.keys) md += " " + k + " |";
  for (const auto& m : metric_names) md += " " + shown(m) + (lower_better.at(m) ? "" : " ↑") + " |";
  md += " NFE | train s | sample s |";
  if (step_costs) md += " train steps | s/step | train NFE/step |";
  md += "\n|";
  for (std::size_t i = 0; i < plan.keys.size() + metric_names.size() + 3 + (step_costs ? 3 : 0); ++i)
    md += "---|";
  md += "\n";
  for (const auto& r : rows) {
    std::map<std::string, std::string> values(r.variant->settings.begin(), r.variant->settings.end());
    md += "|";
    for (const auto& k : plan.keys)
      md += " " + (values.count(k) ? display(values[k]) : std::string("—")) + " |";
    for (const auto& m : metric_names) {
      if (!r.ok) {
        md += " failed |";
        continue;
      }
      const double v = r.metrics.count(m) ? r.metrics.at(m) : NAN;
      const std::string cell = num(v).empty() ? "—" : num(v);
      md += (best.count(m) && v == best[m]) ? " **" + cell + "** |" : " " + cell + " |";
    }
    md += fmt::format(" {} | {} | {} |", num(r.nfe), num(r.train_s), num(r.sample_s));
    if (step_costs) {
      auto cell = [&](double v) { return num(v).empty() ? std::string("—") : num(v); };
      md += fmt::format(" {} | {} | {} |", cell(r.train_steps), cell(r.step_s), cell(r.train_nfe));
    }
    md += "\n";
  }
  // Repeats over seeds: mean and sample standard deviation of each metric over the seeds of every
  // setting of the other keys.
  if (std::find(plan.keys.begin(), plan.keys.end(), "run.seed") != plan.keys.end()) {
    std::vector<std::string> order;
    std::map<std::string, std::vector<const Row*>> groups;
    std::map<std::string, std::vector<std::pair<std::string, std::string>>> group_settings;
    for (const auto& r : rows) {
      std::vector<std::pair<std::string, std::string>> rest;
      for (const auto& kv : r.variant->settings)
        if (kv.first != "run.seed") rest.push_back(kv);
      const std::string name = label_of(rest);
      if (!groups.count(name)) order.push_back(name), group_settings[name] = rest;
      groups[name].push_back(&r);
    }
    std::string mean_csv = "setting";
    for (const auto& m : metric_names) mean_csv += "," + csv_cell(m + "_mean") + "," + csv_cell(m + "_std");
    mean_csv += ",seeds,failed\n";
    md += "\nMean ± standard deviation over seeds:\n\n| setting |";
    for (const auto& m : metric_names) md += " " + shown(m) + (lower_better.at(m) ? "" : " ↑") + " |";
    md += " seeds |\n|---|";
    for (std::size_t i = 0; i < metric_names.size() + 1; ++i) md += "---|";
    md += "\n";
    for (const auto& name : order) {
      md += "| " + name + " |";
      mean_csv += csv_cell(name);
      std::size_t ok = 0, bad = 0;
      for (const Row* r : groups[name]) (r->ok ? ok : bad) += 1;
      for (const auto& m : metric_names) {
        std::vector<double> v;
        for (const Row* r : groups[name])
          if (r->ok && r->metrics.count(m) && std::isfinite(r->metrics.at(m))) v.push_back(r->metrics.at(m));
        double mean = NAN, sd = NAN;
        if (!v.empty()) {
          mean = 0;
          for (double x : v) mean += x;
          mean /= static_cast<double>(v.size());
          sd = 0;
          for (double x : v) sd += (x - mean) * (x - mean);
          sd = v.size() > 1 ? std::sqrt(sd / static_cast<double>(v.size() - 1)) : 0.0;
        }
        md += v.empty() ? std::string(" — |") : fmt::format(" {:.4g} ± {:.2g} |", mean, sd);
        mean_csv += "," + num(mean) + "," + num(sd);
      }
      md += fmt::format(" {} |\n", ok);
      mean_csv += fmt::format(",{},{}\n", ok, bad);
    }
    write_file_atomic(dir / "results-mean.csv", mean_csv);
  }
  std::string failures, dropped;
  std::vector<std::string> dropped_order;
  std::map<std::string, std::vector<std::string>> dropped_in;  // reason -> labels of the variants
  for (const auto& r : rows) {
    if (!r.ok) failures += fmt::format("- {}: {}\n", r.variant->label, r.error);
    for (const auto& d : r.variant->dropped) {
      if (!dropped_in.count(d)) dropped_order.push_back(d);
      dropped_in[d].push_back(r.variant->label);
    }
  }
  for (const auto& d : dropped_order) {
    const auto& labels = dropped_in[d];
    if (labels.size() == 1) {
      dropped += fmt::format("- {}: dropped {}\n", labels.front(), d);
    } else {
      dropped += fmt::format("- {}, dropped in {} variants: {}", d, labels.size(), labels.front());
      for (std::size_t i = 1; i < labels.size() && i < 3; ++i) dropped += "; " + labels[i];
      dropped += labels.size() > 3 ? fmt::format("; and {} more\n", labels.size() - 3) : std::string("\n");
    }
  }
  if (!dropped.empty())
    md += "\nKeys that do not apply to a variant (dropped, the variant runs once):\n\n" + dropped;
  if (!failures.empty()) md += "\nFailed variants:\n\n" + failures;
  for (const auto& note : plan.notes)
    if (note.find("repeats") != std::string::npos) md += "\n- " + note;
  write_file_atomic(dir / "results.md", md + "\n");

  // Charts of the first metric: against NFE, one line per setting of the other keys, when the sweep
  // varies the number of evaluations; otherwise one bar per variant.
  if (metric_names.empty()) return;
  const std::string& metric = metric_names.front();
  std::set<double> nfes;
  for (const auto& r : rows)
    if (r.ok && std::isfinite(r.nfe)) nfes.insert(r.nfe);
  plot::Axes axes;
  axes.title = fmt::format("{} ({} is better)", shown(metric), lower_better.at(metric) ? "lower" : "higher");
  axes.y_label = shown(metric);
  std::vector<double> values;
  for (const auto& r : rows)
    if (r.ok && r.metrics.count(metric) && std::isfinite(r.metrics.at(metric)))
      values.push_back(r.metrics.at(metric));
  if (values.empty()) return;
  const double lo = *std::min_element(values.begin(), values.end()),
               hi = *std::max_element(values.begin(), values.end());
  axes.log_y = lo > 0 && hi / lo > 20;
  // A series per setting of the keys other than the step count; a point per setting apart from
  // the seed, its NFE and value averaged over the seeds (an adaptive solver's NFE varies).
  // Legend labels are the values alone ("linear / velocity / euler"). With more series than
  // colours, one key (the last swept with at most that many values) picks the colour and each
  // setting of the others gets a panel of its own (small multiples, as seaborn's relplot).
  struct Point {
    double x = 0, y = 0, y2 = 0;  // sums over the seeds (y2: of squares)
    int n = 0;
    double mean() const { return y / n; }
    // The sample standard deviation (n - 1) over the seeds; 0 for one.
    double sd() const { return n < 2 ? 0.0 : std::sqrt(std::max(0.0, (y2 - y * y / n) / (n - 1))); }
  };
  const bool by_nfe = nfes.size() > 1;
  auto values_of = [](const std::vector<std::pair<std::string, std::string>>& settings) {
    std::string text;
    for (const auto& kv : settings) text += (text.empty() ? "" : " / ") + display(kv.second);
    return text.empty() ? std::string("(base)") : text;
  };
  // The x axis is the cost: the step count and the time grid when they are swept; otherwise the
  // solver itself (one Euler step against dopri5: a line per setting of the rest from one to the other).
  const bool steps_swept = std::any_of(plan.keys.begin(), plan.keys.end(), [](const std::string& k) {
    return k == "solver.steps" || k.rfind("time_grid.", 0) == 0;
  });
  auto on_axis = [&](const std::string& key) {
    if (key == "run.seed") return true;
    if (!by_nfe) return false;
    if (key == "solver.steps" || key.rfind("time_grid.", 0) == 0) return true;
    return !steps_swept && key.rfind("solver.", 0) == 0;
  };
  std::vector<const Row*> charted;
  std::map<std::string, std::set<std::string>> distinct;  // key -> its values among charted rows
  std::set<std::string> settings_seen;
  for (const auto& r : rows) {
    if (!r.ok || !r.metrics.count(metric) || !std::isfinite(r.metrics.at(metric))) continue;
    if (by_nfe && !std::isfinite(r.nfe)) continue;
    charted.push_back(&r);
    std::vector<std::pair<std::string, std::string>> rest;
    for (const auto& kv : r.variant->settings)
      if (!on_axis(kv.first)) rest.push_back(kv), distinct[kv.first].insert(kv.second);
    settings_seen.insert(values_of(rest));
  }
  std::string hue_key;  // "" : one chart, a series per setting
  if (by_nfe && settings_seen.size() > static_cast<std::size_t>(plot::kDistinctColours) &&
      distinct.size() >= 2)
    for (const auto& k : plan.keys)
      if (!on_axis(k) && distinct.count(k) && distinct[k].size() > 1 &&
          distinct[k].size() <= static_cast<std::size_t>(plot::kDistinctColours))
        hue_key = k;  // the last such key
  std::vector<std::string> order, panel_order;
  std::map<std::string, std::map<std::string, std::map<std::string, Point>>> points;  // panel, series, point
  int seeds = 1;  // the most seeds behind one point
  for (const Row* r : charted) {
    std::vector<std::pair<std::string, std::string>> rest, panel, point;
    std::string hue;
    for (const auto& kv : r->variant->settings) {
      if (kv.first == "run.seed") continue;
      point.push_back(kv);
      if (on_axis(kv.first)) continue;
      rest.push_back(kv);
      if (kv.first == hue_key)
        hue = display(kv.second);
      else
        panel.push_back(kv);
    }
    const std::string panel_name = hue_key.empty() ? "" : values_of(panel);
    const std::string name = hue_key.empty() ? values_of(rest) : hue;
    if (!points.count(panel_name)) panel_order.push_back(panel_name);
    if (std::find(order.begin(), order.end(), name) == order.end()) order.push_back(name);
    Point& p = points[panel_name][name][label_of(point)];
    p.x += by_nfe ? r->nfe : 0.0;
    p.y += r->metrics.at(metric);
    p.y2 += r->metrics.at(metric) * r->metrics.at(metric);
    ++p.n;
    seeds = std::max(seeds, p.n);
  }
  if (seeds > 1) axes.title += fmt::format("; mean of {} seeds, bars +- 1 sd", seeds);
  std::string legend;
  for (const auto& k : plan.keys)
    if (!on_axis(k)) legend += (legend.empty() ? "" : " / ") + k;
  if (hue_key.empty()) {
    if (!legend.empty()) axes.title += "; " + legend;
  } else {
    std::string panel_keys;
    for (const auto& k : plan.keys)
      if (!on_axis(k) && k != hue_key) panel_keys += (panel_keys.empty() ? "" : " / ") + k;
    axes.title += fmt::format("; panels: {}; colours: {}", panel_keys, hue_key);
  }
  auto series_of = [&](const std::map<std::string, std::map<std::string, Point>>& panel) {
    std::vector<plot::Series> list;
    for (const auto& name : order) {
      if (!panel.count(name)) continue;
      std::vector<std::tuple<double, double, double>> xy;
      for (const auto& [label, p] : panel.at(name)) xy.emplace_back(p.x / p.n, p.mean(), p.sd());
      std::sort(xy.begin(), xy.end());
      plot::Series s;
      s.label = name;
      for (const auto& [x, y, sd] : xy) s.x.push_back(x), s.y.push_back(y), s.error.push_back(sd);
      if (seeds < 2) s.error.clear();
      list.push_back(s);
    }
    return list;
  };
  // What to draw is settled once; each format draws it.
  std::vector<plot::Panel> panels;  // one without a title: a single line chart
  int columns = 1;
  std::vector<std::string> bar_labels;
  std::vector<double> bars, bar_errors;
  if (by_nfe) {
    axes.x_label = "function evaluations (NFE)";
    axes.log_x = *nfes.rbegin() / std::max(1.0, *nfes.begin()) > 8;
    for (const auto& name : panel_order) panels.push_back({name, series_of(points[name])});
    if (!hue_key.empty()) {
      // Columns: the values of the last panel key when they fill whole rows, else a near square.
      const auto count = static_cast<int>(panel_order.size());
      columns = static_cast<int>(std::ceil(std::sqrt(static_cast<double>(count))));
      std::string last_panel_key;
      for (const auto& k : plan.keys)
        if (!on_axis(k) && k != hue_key) last_panel_key = k;
      if (!last_panel_key.empty() && distinct.count(last_panel_key)) {
        const auto values = static_cast<int>(distinct[last_panel_key].size());
        if (values > 1 && values <= 6 && count % values == 0) columns = values;
      }
    }
  } else {
    axes.x_label = "setting";
    for (const auto& name : order) {
      const Point& p = points[""][name].begin()->second;
      bar_labels.push_back(name);
      bars.push_back(p.mean());
      if (seeds > 1) bar_errors.push_back(p.sd());
    }
  }
  for (const char* ext : {"png", "svg"}) {
    if (!plot::available()) break;
    const fs::path file = dir / (std::string("results.") + ext);
    if (!by_nfe)
      write_file_atomic(file, plot::bar_chart(file, axes, bar_labels, bars, bar_errors));
    else if (hue_key.empty())
      write_file_atomic(
          file,
          plot::line_chart(file, axes, panels.empty() ? std::vector<plot::Series>{} : panels.front().series));
    else
      write_file_atomic(file, plot::panel_chart(file, axes, panels, columns));
  }
  if (log)
    log("ablate: results in " + (dir / "results.md").string() + ", results.csv" +
        (plot::available() ? ", results.png, results.svg" : ""));
}

}  // namespace

AblateResult ablate_job(const fs::path& file, const Registry& registry, const AblateOptions& options,
                        const Logger& log) {
  AblationPlan plan = plan_ablation(file, registry, options.overrides);
  ConfigOptions base_options;
  base_options.overrides = options.overrides;
  const PipelineConfig base = load_config(file, registry, base_options);
  const fs::path dir =
      options.out ? *options.out : fs::path(base.run.dir) / (file.stem().string() + "-ablation");
  const int jobs = std::max(1, options.jobs);
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int threads = std::max(1, cores / jobs);
  for (const auto& note : plan.notes)
    if (log) log("note: " + note);
  if (log)
    log(fmt::format("ablate: {} variants, {} trainings; {} at a time with {} thread{} each; into {}",
                    plan.variants.size(), plan.trainings(), jobs, threads, threads == 1 ? "" : "s",
                    dir.string()));
  if (options.dry_run) {
    for (std::size_t i = 0; i < plan.variants.size(); ++i)
      if (log)
        log(fmt::format("  {:>3}. {}  [training {}]", i + 1, plan.variants[i].label,
                        plan.variants[i].training.substr(0, 8)));
    return {dir, 0, 0};
  }
  if (!options.runner) throw Error("ablate: no runner to start the trainings and samplings with");
  std::error_code ec;
  fs::create_directories(dir / "logs", ec);
  if (ec) throw InputError(dir.string() + ": cannot create the ablation directory: " + ec.message());

  std::vector<std::string> common;
  for (const auto& d : options.plugin_dirs) common.insert(common.end(), {"--plugin-dir", d});
  auto with_sets = [&](std::vector<std::string> args, const AblationVariant& v) {
    args.insert(args.end(), common.begin(), common.end());
    for (const auto& o : options.overrides) args.insert(args.end(), {"--set", o});
    for (const auto& o : v.overrides()) args.insert(args.end(), {"--set", o});
    args.insert(args.end(), {"--set", "run.threads=" + std::to_string(threads)});
    return args;
  };

  // Tasks: one training per distinct training config, then a sampling per variant.
  std::vector<Task> tasks;
  std::map<std::string, std::size_t> train_task;  // training hash -> task index
  std::map<std::string, fs::path> train_dir;
  std::size_t skipped = 0;
  for (std::size_t i = 0; i < plan.variants.size(); ++i) {
    const AblationVariant& v = plan.variants[i];
    if (train_dir.count(v.training)) continue;
    const fs::path run = dir / ("train-" + v.training.substr(0, 12));
    train_dir[v.training] = run;
    if (fs::exists(run / "summary.json", ec)) continue;  // trained already
    Task t;
    t.kind = Task::Kind::train;
    t.variant = i;
    t.group = v.training;
    t.dir = run;
    t.log = dir / "logs" / ("train-" + v.training.substr(0, 12) + ".log");
    if (fs::exists(run / "config.toml", ec)) {
      t.args = {"resume", run.string()};  // unfinished: continue from its checkpoint
      t.args.insert(t.args.end(), common.begin(), common.end());
      t.args.insert(t.args.end(), {"--set", "run.threads=" + std::to_string(threads)});
    } else {
      t.args = with_sets({"train", file.string(), "--run-dir", run.string(), "--overwrite"}, v);
    }
    train_task[v.training] = tasks.size();
    tasks.push_back(t);
  }
  std::vector<std::size_t> sample_tasks;
  for (std::size_t i = 0; i < plan.variants.size(); ++i) {
    const AblationVariant& v = plan.variants[i];
    const fs::path out = dir / v.dir;
    if (fs::exists(out / "summary.json", ec)) {
      ++skipped;
      continue;
    }
    Task t;
    t.kind = Task::Kind::sample;
    t.variant = i;
    t.group = v.training;
    t.dir = out;
    t.log = dir / "logs" / (v.dir + ".log");
    t.args = with_sets({"sample", train_dir[v.training].string(), "--out", out.string()}, v);
    sample_tasks.push_back(tasks.size());
    tasks.push_back(t);
  }
  if (log && skipped > 0) log(fmt::format("ablate: {} variants already done (skipped)", skipped));

  // The scheduler: up to `jobs` children; a sampling waits for its training.
  std::vector<int> state(tasks.size(), 0);  // 0 waiting, 1 running, 2 done
  std::map<long, std::size_t> running;
  std::map<std::size_t, Clock::time_point> started;
  const auto start = Clock::now();
  std::size_t finished = 0;
  double busy_seconds = 0.0;
  auto ready = [&](std::size_t k) {
    const Task& t = tasks[k];
    if (t.kind == Task::Kind::train) return true;
    auto it = train_task.find(t.group);
    return it == train_task.end() || state[it->second] == 2;
  };
  while (finished < tasks.size()) {
    for (std::size_t k = 0; k < tasks.size() && static_cast<int>(running.size()) < jobs; ++k) {
      if (state[k] != 0 || !ready(k)) continue;
      Task& t = tasks[k];
      if (t.kind == Task::Kind::sample) {
        auto it = train_task.find(t.group);
        if (it != train_task.end() && tasks[it->second].failed) {
          t.failed = true;
          t.error = "its training failed: " + tasks[it->second].error;
          state[k] = 2;
          ++finished;
          continue;
        }
        fs::remove_all(t.dir, ec);  // a sampling cut short starts again
      }
      state[k] = 1;
      started[k] = Clock::now();
      running[options.runner->start(t.args, t.log)] = k;
    }
    if (running.empty()) continue;
    const ChildRunner::Finished child = options.runner->finished();
    if (child.id < 0) break;
    auto it = running.find(child.id);
    if (it == running.end()) continue;
    const std::size_t k = it->second;
    running.erase(it);
    Task& t = tasks[k];
    t.seconds = std::chrono::duration<double>(Clock::now() - started[k]).count();
    busy_seconds += t.seconds;
    state[k] = 2;
    ++finished;
    const bool ok = child.ok;
    if (!ok) {
      t.failed = true;
      t.error = !child.failure.empty() ? child.failure : last_error(t.log);
    }
    const double eta = busy_seconds / static_cast<double>(finished) *
                       static_cast<double>(tasks.size() - finished) / static_cast<double>(jobs);
    if (log)
      log(fmt::format("ablate: [{}/{}] {} {}: {} in {:.1f}s; elapsed {}, ETA {}", finished, tasks.size(),
                      t.kind == Task::Kind::train ? "train" : "sample", plan.variants[t.variant].label,
                      ok ? "done" : "FAILED (" + t.error + ")", t.seconds,
                      duration(std::chrono::duration<double>(Clock::now() - start).count()), duration(eta)));
  }

  // Results, from every variant's summary.json (those done in earlier runs too).
  std::vector<Row> rows;
  std::vector<std::string> metric_names;
  std::map<std::string, bool> lower_better;
  std::map<std::string, std::string> quantity;  // what each metric computes, as it says
  std::map<std::size_t, const Task*> sample_of;
  for (std::size_t k : sample_tasks) sample_of[tasks[k].variant] = &tasks[k];
  for (std::size_t i = 0; i < plan.variants.size(); ++i) {
    const AblationVariant& v = plan.variants[i];
    Row r;
    r.variant = &v;
    json summary = read_json(dir / v.dir / "summary.json");
    if (summary.is_object() && summary.contains("metrics")) {
      r.ok = true;
      for (auto& [name, value] : summary["metrics"].items()) {
        r.metrics[name] = value.is_number() ? value.get<double>() : NAN;
        if (!lower_better.count(name)) {
          metric_names.push_back(name);
          lower_better[name] = summary["metric_details"][name].value("direction", "lower") == "lower";
          quantity[name] = summary["metric_details"][name].value("quantity", "");
        }
      }
      if (summary.contains("sampling")) {
        r.nfe = summary["sampling"].value("nfe", NAN);
        r.sample_s = summary["sampling"].value("seconds", NAN);
      }
      json trained = read_json(train_dir[v.training] / "summary.json");
      if (trained.is_object() && trained.contains("train")) {
        const json& t = trained["train"];
        r.train_s = t.value("seconds", NAN);
        r.train_steps = t.value("steps", NAN);
        r.step_s = t.value("seconds_per_step", NAN);
        if (t.contains("objective") && t["objective"].contains("nfe"))
          r.train_nfe = t["objective"].value("nfe", NAN);
      }
    } else {
      auto it = sample_of.find(i);
      r.error = it != sample_of.end() && it->second->failed ? it->second->error : "no results";
    }
    rows.push_back(r);
  }
  write_results(dir, plan, rows, metric_names, lower_better, quantity, log);
  std::size_t failed = 0;
  for (const auto& r : rows) failed += r.ok ? 0 : 1;
  if (failed > 0 && log)
    log(fmt::format("ablate: {} of {} variants failed (see results.md and logs/)", failed, rows.size()));
  return {dir, rows.size(), failed};
}

}  // namespace pathline
