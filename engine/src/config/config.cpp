// Pipeline configs: the table of slots, the engine tables, overrides (--set), validation of every
// table against the registered components' parameter specs, and the resolved config written back.
#include "pathline/engine/config.hpp"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

#include "pathline/engine/build.hpp"

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
  return table == "metric" ? metric : none;
}

const std::vector<ParamSpec>& engine_table_specs(const std::string& table) {
  static const std::map<std::string, std::vector<ParamSpec>> specs = {
      {"run",
       {ParamSpec::string("name", "",
                          "run name; the run directory is <dir>/<name> (default: the config file's stem)"),
        ParamSpec::string("dir", "runs", "parent folder of run directories"),
        ParamSpec::integer("seed", 0, "seed of every random draw (data, noise, times, initialisation)")
            .at_least(0),
        ParamSpec::choice("device", {"auto", "cpu", "cuda"}, "auto",
                          "where the model, its training and sampling run: auto = a CUDA GPU when one is "
                          "visible, else the CPU; cuda = the GPU (of index LOCAL_RANK in a data-parallel "
                          "run), an error without one"),
        ParamSpec::boolean("deterministic", false,
                           "only deterministic kernels (LibTorch's deterministic algorithms and cuDNN "
                           "convolutions), so that a GPU run repeats bit for bit and resumes exactly; an "
                           "operation without one stops the run naming it. CPU runs repeat at a fixed "
                           "thread count anyway"),
        ParamSpec::integer("threads", 0,
                           "intra-op threads; 0 uses every core of the machine (shared among the ranks a "
                           "data-parallel run starts on it)")
            .at_least(0),
        ParamSpec::real("timeout", 300.0,
                        "data parallel: seconds to wait for the other ranks (to meet, and in each "
                        "all-reduce) before stopping with an error")
            .greater_than(0)}},
      {"train",
       {ParamSpec::integer("steps", 2000, "optimizer steps").at_least(0),
        ParamSpec::integer("batch_size", 1024, "samples per step").at_least(1),
        ParamSpec::choice(
            "optimizer", {"adamw", "adam"}, "adamw",
            "adamw: Adam with decoupled weight decay (Loshchilov & Hutter 2019); adam: Adam with "
            "weight_decay as an L2 term added to the gradient (Kingma & Ba 2015)"),
        ParamSpec::boolean(
            "fused_optimizer", true,
            "update every parameter and the EMA in one fused pass (float32 weights on the CPU); "
            "false: LibTorch's optimizer, one tensor at a time (the same arithmetic)"),
        ParamSpec::real("lr", 1e-3, "peak learning rate (after warm-up)").greater_than(0),
        ParamSpec::real_list("betas", {0.9, 0.999}, "Adam's betas (first and second moment decay)")
            .size(2)
            .range(0, 1)
            .less_than(1),
        ParamSpec::real("eps", 1e-8, "Adam's epsilon, added to the root of the second moment")
            .greater_than(0),
        ParamSpec::real("weight_decay", 0.0, "weight decay (decoupled for adamw, L2 for adam)").at_least(0),
        ParamSpec::choice("lr_schedule", {"constant", "cosine", "linear"}, "constant",
                          "learning rate after warm-up: constant, cosine decay to 0 at the last step, or "
                          "linear decay to 0 at the last step"),
        ParamSpec::integer("warmup_steps", 0, "linear learning-rate warm-up steps").at_least(0),
        ParamSpec::real("grad_clip", 0.0, "clip the gradient's global norm to this; 0 disables").at_least(0),
        ParamSpec::integer("accumulate", 1,
                           "micro-batches per step: each step's batch_size samples go through the model in "
                           "this many parts whose gradients add up (the same update, less memory)")
            .at_least(1),
        ParamSpec::choice("on_nonfinite", {"stop", "skip"}, "stop",
                          "a NaN or infinite loss or gradient: stop (before the update; the last checkpoint "
                          "stays) or skip (drop that batch, count it in the log)"),
        ParamSpec::integer("checkpoint_every", 500,
                           "write a checkpoint (weights, EMA, optimizer, generators, data order) every this "
                           "many steps, and always at the end; 0: only at the end")
            .at_least(0),
        ParamSpec::integer("keep_checkpoints", 2, "how many of the newest checkpoints to keep").at_least(1),
        ParamSpec::real("ema_decay", 0.999,
                        "exponential moving average of the weights, kept beside the raw ones "
                        "(model.safetensors holds it, "
                        "model-raw.safetensors the raw weights) "
                        "and used for sampling by default; 0 disables")
            .range(0, 1)
            .less_than(1),
        ParamSpec::boolean("ema_warmup", true,
                           "average with decay min(ema_decay, (1 + step) / (10 + step)), so that early "
                           "steps do not weigh the initial weights in for thousands of steps"),
        ParamSpec::choice("precision", {"fp32", "bf16"}, "fp32",
                          "bf16: the forward pass under bfloat16 autocast (matrix products and "
                          "convolutions in bfloat16, norms and the loss in float32)"),
        ParamSpec::choice("loss_weighting", {"auto", "none", "sigma_sqrt", "sigma_squared", "cosmap"}, "auto",
                          "per-sample loss weight w(t): none = 1; sigma_sqrt = 1 / sigma_t^2 (SD3, Esser et "
                          "al. 2024); sigma_squared = sigma_t^2 (Song et al. 2021's lambda, which keeps a "
                          "score target -x0 / sigma_t of finite variance); cosmap = 2 / (pi (1 - 2 s + 2 "
                          "s^2)) with s = 1 - t; auto = sigma_squared for score prediction, else none"),
        // Classifier-free guidance (Ho & Salimans 2022) trains one network for both fields by
        // replacing labels with the null label at this rate.
        ParamSpec::real("label_dropout", 0.1,
                        "probability that a training label is replaced by the null label, so the model also "
                        "learns the unconditional field for guidance")
            .range(0, 1)
            .less_than(1),
        ParamSpec::integer("log_every", 100, "write a metrics.csv row every this many steps").at_least(1),
        ParamSpec::integer("progress_every", 0,
                           "when the output is not a terminal, a progress line every this many steps (0: "
                           "5 x log_every); a terminal gets one live line instead")
            .at_least(0)}},
      {"sample",
       {ParamSpec::integer("n", 10000, "samples to generate").at_least(1),
        ParamSpec::integer("batch_size", 10000, "samples integrated at once").at_least(1),
        ParamSpec::integer("trajectories", 48, "pathlines drawn in trajectories.png; 0 disables").at_least(0),
        ParamSpec::real_auto("t_start",
                             "integrate from this time; auto: 0, or past the start where the "
                             "parameterization cannot give a velocity (noise and score: alpha_t >= 0.02)")
            .range(0, 1)
            .less_than(1),
        ParamSpec::real_auto("t_end",
                             "integrate up to this time; auto: 1, or short of the end where the "
                             "parameterization cannot give a velocity (data: sigma_t >= 0.02)")
            .range(0, 1)
            .greater_than(0),
        ParamSpec::choice("final_step", {"auto", "denoise", "none"}, "auto",
                          "after the solver: denoise = one more evaluation that jumps from x(t_end) to the "
                          "predicted data; none = stop at t_end; auto = denoise when t_end < 1"),
        ParamSpec::boolean("use_ema", true,
                           "sample with the EMA weights when the run kept them ([train] ema_decay > 0), "
                           "else with the raw weights"),
        ParamSpec::choice(
            "precision", {"fp32", "bf16"}, "fp32",
            "bf16: model evaluations under bfloat16 autocast; the solver's state stays float32"),
        ParamSpec::real("guidance_scale", 1.0,
                        "classifier-free guidance: v = v_uncond + w (v_cond - v_uncond); 1 is the plain "
                        "conditional model, 0 the unconditional")
            .at_least(0),
        ParamSpec::int_list(
            "labels", {},
            "classes to generate, in turn; [] = every class in turn for labelled data; -1 asks "
            "for the unconditional model")
            .at_least(-1)}},
      {"eval",
       {ParamSpec::integer("reference_n", 0,
                           "fresh data samples the metrics compare against; 0 means sample.n")
            .at_least(0)}},
  };
  auto it = specs.find(table);
  if (it == specs.end()) throw Error("no engine table [" + table + "]");
  return it->second;
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

namespace {

// ------------------------------------------------------------------------------------------------
// Text helpers

std::string join(const std::vector<std::string>& items, const std::string& sep = ", ") {
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

std::string join_or_none(const std::vector<std::string>& names) {
  return names.empty() ? "(none)" : join(names);
}

std::string plural(Kind kind) { return std::string(to_string(kind)) + "s"; }

// "1 integer", "2 integers".
std::string count_of(std::size_t n, const std::string& noun) {
  return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
}

// A TOML basic string: quotes, backslashes and control characters escaped, so that any string
// reads back as itself.
std::string toml_string(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
          out += fmt::format("\\u{:04X}", static_cast<unsigned>(static_cast<unsigned char>(c)));
        else
          out += c;
    }
  }
  return out + "\"";
}

// A resolved value as TOML text that reads back as the same value (strings fully escaped).
struct TomlValueWriter {
  std::string operator()(bool v) const { return format_value(ParamValue{v}); }
  std::string operator()(std::int64_t v) const { return format_value(ParamValue{v}); }
  std::string operator()(double v) const { return format_value(ParamValue{v}); }
  std::string operator()(const std::string& v) const { return toml_string(v); }
  template <class T>
  std::string operator()(const std::vector<T>& v) const {
    std::string out = "[";
    for (std::size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + (*this)(v[i]);
    return out + "]";
  }
};

std::string toml_value(const ParamValue& value) { return std::visit(TomlValueWriter{}, value); }

// A TOML node as the user would have written it: 0.01, "cosine", [1, 2].
std::string render(const toml::node& node) {
  std::ostringstream text;
  switch (node.type()) {
    case toml::node_type::string:
      return toml_string(node.as_string()->get());
    case toml::node_type::integer:
      return std::to_string(node.as_integer()->get());
    case toml::node_type::floating_point:
      return format_value(ParamValue{node.as_floating_point()->get()});
    case toml::node_type::boolean:
      return node.as_boolean()->get() ? "true" : "false";
    case toml::node_type::array: {
      std::vector<std::string> items;
      for (const auto& element : *node.as_array()) items.push_back(render(element));
      return "[" + join(items) + "]";
    }
    case toml::node_type::table: {
      std::vector<std::string> items;
      for (auto&& [key, value] : *node.as_table())
        items.push_back(std::string(key.str()) + " = " + render(value));
      return "{ " + join(items) + " }";
    }
    case toml::node_type::date:
      text << *node.as_date();
      break;
    case toml::node_type::time:
      text << *node.as_time();
      break;
    case toml::node_type::date_time:
      text << *node.as_date_time();
      break;
    default:
      break;
  }
  return text.str();
}

// What a TOML node is, for "expected X, found Y" messages.
std::string describe(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string:
      return fmt::format("a string (\"{}\")", node.as_string()->get());
    case toml::node_type::integer:
      return fmt::format("an integer ({})", node.as_integer()->get());
    case toml::node_type::floating_point:
      return fmt::format("a float ({})", render(node));
    case toml::node_type::boolean:
      return fmt::format("a boolean ({})", node.as_boolean()->get());
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    default:
      return "nothing";
  }
}

std::vector<std::string> known_tables() {
  std::vector<std::string> known;
  for (const auto& slot : pipeline_slots()) known.push_back(slot.table);
  for (const auto& table : kEngineTables) known.push_back(table);
  return known;
}

std::string unknown_table_message(const std::string& table) {
  std::vector<std::string> known = known_tables();
  std::string suggestion = closest_match(table, known);
  return fmt::format("unknown table [{}]; {}known tables: {}", table,
                     suggestion.empty() ? "" : "did you mean [" + suggestion + "]? ", join(known));
}

// The address of an entry of a `many` slot, as written in messages and in --set: "metric[1]".
std::string entry_address(const std::string& table, std::size_t index) {
  return table + "[" + std::to_string(index) + "]";
}

// ------------------------------------------------------------------------------------------------
// Overrides

// One parsed --set: "table.key=value" or "table[index].key=value".
struct Override {
  std::string table;
  std::optional<std::size_t> index;
  std::string key;
  std::string value;
};

std::string trim(const std::string& text) {
  auto begin = text.find_first_not_of(" \t");
  if (begin == std::string::npos) return "";
  auto end = text.find_last_not_of(" \t");
  return text.substr(begin, end - begin + 1);
}

std::optional<Override> parse_override(const std::string& text) {
  auto eq = text.find('=');
  if (eq == std::string::npos) return std::nullopt;
  std::string path = trim(text.substr(0, eq));
  auto dot = path.find('.');
  if (dot == std::string::npos || path.find('.', dot + 1) != std::string::npos) return std::nullopt;
  Override result{trim(path.substr(0, dot)), std::nullopt, trim(path.substr(dot + 1)),
                  trim(text.substr(eq + 1))};
  if (auto open = result.table.find('['); open != std::string::npos) {
    if (result.table.back() != ']') return std::nullopt;
    std::string digits = result.table.substr(open + 1, result.table.size() - open - 2);
    if (digits.empty() || digits.size() > 9 || !std::all_of(digits.begin(), digits.end(), [](char c) {
          return std::isdigit(static_cast<unsigned char>(c));
        }))
      return std::nullopt;
    result.index = std::stoul(digits);
    result.table.resize(open);
  }
  if (result.table.empty() || result.key.empty()) return std::nullopt;
  return result;
}

// The value of a --set, read as TOML (numbers, booleans, quoted strings, arrays); anything that does
// not parse as one TOML value is taken as a bare string, so that --set path.type=cosine works.
toml::table parse_override_value(const std::string& value) {
  try {
    toml::table parsed = toml::parse("value = " + value);
    if (parsed.size() == 1 && parsed.contains("value")) return parsed;
  } catch (const toml::parse_error&) {
  }
  toml::table bare;
  bare.insert("value", value);
  return bare;
}

// ------------------------------------------------------------------------------------------------
// Validation

struct Problem {
  int order;  // 0: file positions, sorted by line and column; 1: overrides, in command-line order
  std::uint32_t line, column;
  std::string text;
};

// Where a --set came from: its position on the command line and its text.
struct SetOption {
  int index;
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

    std::vector<std::string> known = known_tables();
    for (auto&& [key, node] : root) {
      std::string table(key.str());
      if (std::find(known.begin(), known.end(), table) != known.end()) continue;
      // [ablation] is read by `pathline ablate` (ablate.cpp); a plain run uses the base pipeline.
      if (table == "ablation" && node.is_table()) {
        notes_.push_back("[ablation] is read by 'pathline ablate'; this command uses the base pipeline");
        continue;
      }
      if (!node.is_table() && !node.is_array_of_tables()) {
        report(table, "", &key.source(),
               fmt::format("expected a table such as [run], found a top-level key '{}' ({})", table,
                           describe(node)));
        continue;
      }
      report(table, "", &key.source(), unknown_table_message(table));
    }

    for (const SlotSpec& slot : pipeline_slots()) {
      if (slot.many)
        read_list(slot, root, config);
      else
        read_single(slot, root, config);
    }

    for (const auto& t : kEngineTables) {
      toml::table empty;
      toml::node* node = root.get(t);
      toml::table* table = node ? node->as_table() : &empty;
      if (!table) {
        report(t, "", &node->source(), fmt::format("expected a table [{}], found {}", t, describe(*node)));
        continue;
      }
      const auto& specs = engine_table_specs(t);
      std::string owner = "[" + t + "]";
      check_keys(t, owner, *table, names_of(specs), false);
      read_values(t, owner, specs, *table, config.engine[t], nullptr);
    }

    if (options_.check_device && config.engine.count("run") && config.engine["run"].contains("device") &&
        config.engine["run"].string("device") == "cuda" && !cuda_visible()) {
      const toml::node* device = root.at_path("run.device").node();
      report("run", "device", device ? &device->source() : nullptr,
             fmt::format("run.device = \"cuda\", but {}; use \"auto\" or \"cpu\"", cuda_absence()));
    }

    if (!problems_.empty()) {
      std::stable_sort(problems_.begin(), problems_.end(), [](const Problem& a, const Problem& b) {
        return std::tie(a.order, a.line, a.column) < std::tie(b.order, b.line, b.column);
      });
      std::vector<std::string> lines;
      for (const auto& p : problems_) lines.push_back(p.text);
      throw ConfigError(std::move(lines));
    }
    config.notes = std::move(notes_);
    config.positions = std::move(positions_);
    return config;
  }

 private:
  static std::vector<std::string> names_of(const std::vector<ParamSpec>& specs) {
    std::vector<std::string> names;
    for (const auto& s : specs) names.push_back(s.name);
    return names;
  }

  // Files report "file:line:column: msg"; values set on the command line report "--set k=v: msg".
  // `address` is a table ("path") or an entry of a list slot ("metric[1]").
  void report(const std::string& address, const std::string& key, const toml::source_region* where,
              const std::string& message) {
    if (const SetOption* origin = set_origin(address, key, where)) {
      problems_.push_back(
          {1, 0, static_cast<std::uint32_t>(origin->index), "--set " + origin->text + ": " + message});
      return;
    }
    std::uint32_t line = where && where->begin.line ? where->begin.line : 1;
    std::uint32_t column = where && where->begin.line ? where->begin.column : 1;
    problems_.push_back({0, line, column, fmt::format("{}:{}:{}: {}", name_, line, column, message)});
  }

  // The --set a problem comes from: the one that set the key, or the one that created the table
  // (for problems without a position in the file, such as a missing key).
  const SetOption* set_origin(const std::string& address, const std::string& key,
                              const toml::source_region* where) const {
    if (auto it = set_keys_.find(key.empty() ? address : address + "." + key); it != set_keys_.end())
      return &it->second;
    if (auto it = created_.find(address); it != created_.end() && (!where || where->begin.line == 0))
      return &it->second;
    return nullptr;
  }

  // "pipe.toml:9:8" or "--set metric[0].name=a", for messages that name a second position.
  std::string position(const std::string& address, const std::string& key,
                       const toml::source_region& where) const {
    if (const SetOption* origin = set_origin(address, key, &where)) return "--set " + origin->text;
    return fmt::format("{}:{}:{}", name_, where.begin.line, where.begin.column);
  }

  void override_problem(int index, const std::string& text, const std::string& message) {
    problems_.push_back({1, 0, static_cast<std::uint32_t>(index), "--set " + text + ": " + message});
  }

  void apply_overrides(toml::table& root) {
    int index = 0;
    for (const auto& text : options_.overrides) {
      ++index;
      std::optional<Override> parsed = parse_override(text);
      if (!parsed) {
        override_problem(
            index, text,
            "expected table.key=value, e.g. --set train.steps=500 (or --set metric[1].samples=2000 "
            "for an entry of a list)");
        continue;
      }
      const Override& set = *parsed;
      const SetOption origin{index, text};
      const SlotSpec* slot = find_slot(set.table);
      std::string address;
      toml::table* target =
          slot && slot->many ? list_entry(root, set, origin, address) : table(root, set, origin, address);
      if (!target) continue;

      if (set.key == "type" && !file_types_.count(address)) {
        const toml::node* type = target->get("type");
        file_types_[address] = type && type->is_string() ? type->as_string()->get() : "";
      }
      set_keys_[address + "." + set.key] = origin;
      toml::table value = parse_override_value(set.value);
      target->insert_or_assign(set.key, std::move(*value.get("value")));
    }
  }

  // The single table a --set reaches, created if absent.
  toml::table* table(toml::table& root, const Override& set, const SetOption& origin, std::string& address) {
    std::vector<std::string> known = known_tables();
    if (set.index) {
      bool is_known = std::find(known.begin(), known.end(), set.table) != known.end();
      override_problem(
          origin.index, origin.text,
          is_known ? fmt::format("[{0}] is a single table, not a list of entries; use --set {0}.{1}=...",
                                 set.table, set.key)
                   : unknown_table_message(set.table));
      return nullptr;
    }
    address = set.table;
    toml::node* existing = root.get(set.table);
    if (!existing) {
      // A slot absent from the file is filled by its default type: a --set of one of its keys
      // sets that key of the default component (solver.steps=4 without a [solver] table).
      toml::table created;
      const SlotSpec* slot = find_slot(set.table);
      if (slot && !slot->default_type.empty() && set.key != "type")
        created.insert("type", default_type(*slot, root));
      root.insert(set.table, std::move(created));
      created_[address] = origin;
      existing = root.get(set.table);
    }
    toml::table* target = existing->as_table();
    if (!target)
      override_problem(origin.index, origin.text,
                       fmt::format("[{}] is {} in the file, not a single table; edit the file instead",
                                   set.table, describe(*existing)));
    return target;
  }

  // The entry of a list slot a --set reaches. `metric.key` reaches the only entry (and creates it if
  // there is none); `metric[i].key` reaches entry i. `metric[n].type=...`, with n the number of
  // entries, appends one entry: the way to add a metric from the command line (an ablation adds one
  // at a time, so a gap, n + 1 or more, is an error rather than a run of empty entries).
  toml::table* list_entry(toml::table& root, const Override& set, const SetOption& origin,
                          std::string& address) {
    toml::node* node = root.get(set.table);
    std::size_t count = 0;
    if (node) {
      if (node->is_table()) {
        count = 1;
      } else if (auto* list = node->as_array(); list && (list->empty() || list->is_array_of_tables())) {
        count = list->size();
      } else {
        override_problem(
            origin.index, origin.text,
            fmt::format("[{0}] is {1} in the file, not a table [{0}] or a list [[{0}]]; edit the file "
                        "instead",
                        set.table, describe(*node)));
        return nullptr;
      }
    }
    std::size_t index = 0;
    if (!set.index) {
      if (count > 1) {
        override_problem(
            origin.index, origin.text,
            fmt::format("the pipeline has {} [[{}]] entries; say which one with --set {}[i].{}=... "
                        "(i from 0 to {})",
                        count, set.table, set.table, set.key, count - 1));
        return nullptr;
      }
    } else {
      index = *set.index;
      if (index > count || (index == count && set.key != "type")) {
        std::string have =
            count == 0 ? fmt::format("the pipeline has no {} entries", set.table)
            : count == 1
                ? fmt::format("the pipeline has 1 {} entry ({})", set.table, entry_address(set.table, 0))
                : fmt::format("the pipeline has {} {} entries ({} to {})", count, set.table,
                              entry_address(set.table, 0), entry_address(set.table, count - 1));
        override_problem(origin.index, origin.text,
                         fmt::format("there is no {}: {}; add one with --set {}.type=...",
                                     entry_address(set.table, index), have, entry_address(set.table, count)));
        return nullptr;
      }
    }
    address = entry_address(set.table, index);
    if (index == count) {
      if (count == 0) {
        root.insert_or_assign(set.table, toml::table{});
      } else if (count == 1 && node->is_table()) {
        // A single [metric] table becomes a list [[metric]] of two; moving keeps its positions.
        toml::array list;
        list.push_back(std::move(*node->as_table()));
        list.push_back(toml::table{});
        root.insert_or_assign(set.table, std::move(list));
      } else {
        node->as_array()->push_back(toml::table{});
      }
      created_[address] = origin;
      node = root.get(set.table);
    }
    return node->is_table() ? node->as_table() : node->as_array()->get(index)->as_table();
  }

  // The type of a slot the file leaves out: the first suggestion an earlier slot's component makes
  // for it (ComponentDecl::suggests: the variance-exploding path suggests heun), else the slot's
  // default.
  std::string default_type(const SlotSpec& slot, const toml::table& root) const {
    for (const SlotSpec& earlier : pipeline_slots()) {
      if (earlier.table == slot.table) break;
      if (earlier.many) continue;
      std::string type;
      const toml::node* node = root.get(earlier.table);
      if (!node) {
        type = earlier.default_type.empty() ? std::string() : default_type(earlier, root);
      } else if (const toml::table* table = node->as_table()) {
        if (auto value = table->get_as<std::string>("type")) type = value->get();
      }
      if (type.empty()) continue;
      if (const ComponentEntry* entry = registry_.find(earlier.kind, type))
        for (const auto& [target, suggested] : entry->decl.suggests)
          if (target == slot.table && registry_.find(slot.kind, suggested)) return suggested;
    }
    return slot.default_type;
  }

  void read_single(const SlotSpec& slot, toml::table& root, PipelineConfig& config) {
    toml::node* node = root.get(slot.table);
    if (!node) {
      if (slot.default_type.empty()) {
        if (slot.required)
          report(slot.table, "", nullptr,
                 fmt::format("missing table [{}]; registered {}: {}", slot.table, plural(slot.kind),
                             join_or_none(registry_.names(slot.kind))));
        return;
      }
      toml::table implicit;
      implicit.insert("type", default_type(slot, root));
      if (auto c = component(slot, slot.table, implicit, true)) config.components[slot.table] = std::move(*c);
      return;
    }
    if (auto* table = node->as_table()) {
      if (auto c = component(slot, slot.table, *table, false)) config.components[slot.table] = std::move(*c);
    } else {
      report(slot.table, "", &node->source(),
             fmt::format("expected a table [{}], found {}", slot.table, describe(*node)));
    }
  }

  void read_list(const SlotSpec& slot, toml::table& root, PipelineConfig& config) {
    std::vector<ComponentConfig>& entries = config.lists[slot.table];
    toml::node* node = root.get(slot.table);
    std::vector<toml::table*> tables;
    if (node) {
      if (auto* table = node->as_table()) {
        tables.push_back(table);
      } else if (auto* list = node->as_array(); list && (list->empty() || list->is_array_of_tables())) {
        for (auto& element : *list) tables.push_back(element.as_table());
      } else {
        report(
            slot.table, "", &node->source(),
            fmt::format("expected a table [{0}] or a list [[{0}]], found {1}", slot.table, describe(*node)));
        return;
      }
    }

    // Explicit names must be unique: results are filed under them.
    std::map<std::string, std::size_t> named;  // explicit name -> the entry that gave it
    for (std::size_t i = 0; i < tables.size(); ++i) {
      const toml::node* name = tables[i]->get("name");
      if (!name || !name->is_string() || name->as_string()->get().empty()) continue;
      auto [first, inserted] = named.emplace(name->as_string()->get(), i);
      if (inserted) continue;
      std::string address = entry_address(slot.table, i), earlier = entry_address(slot.table, first->second);
      report(address, "name", &name->source(),
             fmt::format(
                 "{}.name = {} is also the name of {} ({}); every {} needs its own name, since its results "
                 "are filed under it",
                 address, toml_string(first->first), earlier,
                 position(earlier, "name", tables[first->second]->get("name")->source()), slot.table));
    }

    bool complete = true;
    for (std::size_t i = 0; i < tables.size(); ++i) {
      if (auto c = component(slot, entry_address(slot.table, i), *tables[i], false))
        entries.push_back(std::move(*c));
      else
        complete = false;
    }
    if (complete) name_entries(slot, tables, named, entries);
  }

  // An entry without a name is filed under its type, or type#1, type#2, ... in order when the type
  // appears more than once without names, so that two energy distances keep both results.
  void name_entries(const SlotSpec& slot, const std::vector<toml::table*>& tables,
                    const std::map<std::string, std::size_t>& named, std::vector<ComponentConfig>& entries) {
    std::map<std::string, std::size_t> unnamed, numbered;
    for (const auto& e : entries)
      if (e.entry.string("name").empty()) ++unnamed[e.type];
    for (std::size_t i = 0; i < entries.size(); ++i) {
      ComponentConfig& e = entries[i];
      e.name = e.entry.string("name");
      if (!e.name.empty()) continue;
      e.name = unnamed[e.type] == 1 && !named.count(e.type)
                   ? e.type
                   : e.type + "#" + std::to_string(++numbered[e.type]);
      if (auto taken = named.find(e.name); taken != named.end()) {
        std::string address = entry_address(slot.table, i);
        const toml::node* type = tables[i]->get("type");
        report(
            address, "type", type ? &type->source() : &tables[i]->source(),
            fmt::format("{} has no name and would be filed as '{}', the name {} gives explicitly; give {} a "
                        "name of its own",
                        address, e.name, entry_address(slot.table, taken->second), address));
      }
    }
  }

  // Validates one filled slot (or one entry of a list slot); `address` is its table or entry.
  std::optional<ComponentConfig> component(const SlotSpec& slot, const std::string& address,
                                           toml::table& table, bool implicit) {
    const std::string heading = slot.many ? address : "[" + slot.table + "]";
    const std::vector<ParamSpec>& extra = entry_specs(slot.table);
    const toml::node* type_node = table.get("type");
    std::vector<std::string> registered = registry_.names(slot.kind);
    if (!type_node) {
      report(address, "", &table.source(),
             fmt::format("{}: missing key 'type'; registered {}: {}", heading, plural(slot.kind),
                         join_or_none(registered)));
      return std::nullopt;
    }
    if (!type_node->is_string()) {
      report(address, "type", &type_node->source(),
             fmt::format("{}.type: expected a string naming a {}, found {}", address, to_string(slot.kind),
                         describe(*type_node)));
      return std::nullopt;
    }
    std::string type = type_node->as_string()->get();
    const ComponentEntry* entry = registry_.find(slot.kind, type);
    if (!entry) {
      std::string suggestion = closest_match(type, registered);
      report(address, "type", &type_node->source(),
             fmt::format("unknown {} type '{}'; {}registered {}: {}{}", slot.table, type,
                         suggestion.empty() ? "" : "did you mean '" + suggestion + "'? ", plural(slot.kind),
                         join_or_none(registered),
                         implicit ? fmt::format(" (no [{}] table was given, so the default '{}' was used)",
                                                slot.table, type)
                                  : ""));
      return std::nullopt;
    }
    // The keys every entry has belong to the engine; a component cannot take them as parameters.
    for (const auto& spec : extra) {
      if (!entry->find_param(spec.name)) continue;
      report(
          address, "type", &type_node->source(),
          fmt::format("{} '{}'{} declares a parameter '{}', but every [{}] entry already has that key ({}); "
                      "the component must rename its parameter",
                      to_string(slot.kind), type,
                      entry->plugin ? " (plugin '" + entry->plugin->name + "')" : std::string(), spec.name,
                      slot.table, spec.doc));
      return std::nullopt;
    }

    std::vector<std::string> valid = names_of(entry->decl.params);
    for (const auto& spec : extra) valid.push_back(spec.name);
    drop_keys_of_old_type(slot, address, type, valid, table);

    ComponentConfig config;
    config.kind = slot.kind;
    config.slot = slot.table;
    config.type = type;
    // Where the component is named: its `type` key (a default slot: the file itself).
    config.where = implicit ? name_ : position(address, "type", type_node->source());
    const std::string owner = heading + " (type '" + type + "')";
    std::size_t before = problems_.size();
    check_keys(address, owner, table, valid, true);
    read_values(address, owner, entry->decl.params, table, config.params, &config.order);
    read_values(address, owner, extra, table, config.entry, nullptr);
    if (problems_.size() != before) return std::nullopt;
    return config;
  }

  // `--set X.type=Y` replaces the component, and the file's keys for the old type mean nothing to
  // the new one: drop the ones Y does not declare, each with a note, so that a resolved config (which
  // writes every key out) can be re-run with another type. Keys given by --set stay, and stay errors.
  void drop_keys_of_old_type(const SlotSpec& slot, const std::string& address, const std::string& type,
                             const std::vector<std::string>& valid, toml::table& table) {
    auto file_type = file_types_.find(address);
    if (file_type == file_types_.end() || file_type->second == type) return;
    const SetOption& origin = set_keys_.at(address + ".type");
    // In the order the file has them (a toml::table is sorted by key).
    std::vector<std::pair<toml::source_position, std::string>> dropped;
    for (auto&& [key, node] : table) {
      std::string k(key.str());
      if (k == "type" || std::find(valid.begin(), valid.end(), k) != valid.end()) continue;
      if (set_keys_.count(address + "." + k)) continue;
      dropped.emplace_back(key.source().begin, k);
    }
    std::sort(dropped.begin(), dropped.end(), [](const auto& a, const auto& b) {
      return std::tie(a.first.line, a.first.column) < std::tie(b.first.line, b.first.column);
    });
    for (const auto& [where, k] : dropped)
      notes_.push_back(fmt::format("--set {}: dropped {}.{} = {} (not a parameter of {} '{}')", origin.text,
                                   address, k, render(*table.get(k)), to_string(slot.kind), type));
    for (const auto& [where, k] : dropped) table.erase(k);
  }

  void check_keys(const std::string& address, const std::string& owner, const toml::table& table,
                  const std::vector<std::string>& valid, bool has_type) {
    for (auto&& [key, node] : table) {
      std::string k(key.str());
      if (has_type && k == "type") continue;
      if (std::find(valid.begin(), valid.end(), k) != valid.end()) continue;
      std::string suggestion = closest_match(k, valid);
      report(address, k, &key.source(),
             fmt::format("unknown key '{}' in {}{}", k, owner,
                         suggestion.empty() ? "; valid keys: " + join_or_none(valid)
                                            : "; did you mean '" + suggestion + "'?"));
    }
  }

  // Reads every declared key of `specs` from the table into `out`, defaults filled in.
  void read_values(const std::string& address, const std::string& owner, const std::vector<ParamSpec>& specs,
                   const toml::table& table, Params& out, std::vector<std::string>* order) {
    for (const auto& spec : specs) {
      if (order) order->push_back(spec.name);
      const toml::node* node = table.get(spec.name);
      if (!node) {
        if (spec.is_required())
          report(address, "", &table.source(),
                 fmt::format("{}: missing required key '{}' ({}: {})", owner, spec.name, to_string(spec.type),
                             spec.doc));
        else
          out.set(spec.name, *spec.default_value);
        continue;
      }
      positions_[address + "." + spec.name] = position(address, spec.name, node->source());
      std::string error;
      const toml::node* at = node;  // the value, or the element of a list that is wrong
      auto value = convert(*node, spec, address + "." + spec.name, error, at);
      if (!value) {
        report(address, spec.name, &at->source(), error);
        continue;
      }
      out.set(spec.name, std::move(*value));
    }
  }

  // One value against its spec; on failure, `error` is the message (without position).
  static std::optional<ParamValue> convert(const toml::node& node, const ParamSpec& spec,
                                           const std::string& label, std::string& error,
                                           const toml::node*& at) {
    auto expected = [&](const std::string& what) -> std::optional<ParamValue> {
      error = fmt::format("{}: expected {}, found {}", label, what, describe(node));
      return std::nullopt;
    };
    switch (spec.type) {
      case ParamType::boolean:
        if (!node.is_boolean()) return expected("a boolean (true or false)");
        return ParamValue{node.as_boolean()->get()};
      case ParamType::integer: {
        if (!node.is_integer()) return expected("an integer");
        std::int64_t v = node.as_integer()->get();
        if (!check_integer(spec, v, label, error)) return std::nullopt;
        return ParamValue{v};
      }
      case ParamType::real: {
        if (spec.allows_auto && node.is_string() && node.as_string()->get() == "auto")
          return ParamValue{ParamSpec::auto_value()};
        if (!node.is_number()) return expected(spec.allows_auto ? "a number or \"auto\"" : "a number");
        if (!check_real(spec, node, label, error)) return std::nullopt;
        return ParamValue{number(node)};
      }
      case ParamType::string:
        if (!node.is_string()) return expected("a string");
        return ParamValue{std::string(node.as_string()->get())};
      case ParamType::choice: {
        if (!node.is_string()) return expected("a string, one of " + join(spec.choices));
        std::string v = node.as_string()->get();
        if (!check_choice(spec, v, label, error)) return std::nullopt;
        return ParamValue{v};
      }
      case ParamType::real_list: {
        const toml::array* list = node.as_array();
        if (!list) return expected("a list of numbers");
        if (!check_size(spec, list->size(), "number", label, error)) return std::nullopt;
        std::vector<double> values;
        for (std::size_t i = 0; i < list->size(); ++i) {
          const toml::node& element = *list->get(i);
          at = &element;
          std::string at = fmt::format("{}[{}]", label, i);
          if (!element.is_number()) {
            error = fmt::format("{}: expected a number, found {}", at, describe(element));
            return std::nullopt;
          }
          if (!check_real(spec, element, at, error)) return std::nullopt;
          values.push_back(number(element));
        }
        return ParamValue{std::move(values)};
      }
      case ParamType::int_list: {
        const toml::array* list = node.as_array();
        if (!list) return expected("a list of integers");
        if (!check_size(spec, list->size(), "integer", label, error)) return std::nullopt;
        std::vector<std::int64_t> values;
        for (std::size_t i = 0; i < list->size(); ++i) {
          const toml::node& element = *list->get(i);
          at = &element;
          std::string at = fmt::format("{}[{}]", label, i);
          if (!element.is_integer()) {
            error = fmt::format("{}: expected an integer, found {}", at, describe(element));
            return std::nullopt;
          }
          std::int64_t v = element.as_integer()->get();
          if (!check_integer(spec, v, at, error)) return std::nullopt;
          values.push_back(v);
        }
        return ParamValue{std::move(values)};
      }
      case ParamType::string_list: {
        const toml::array* list = node.as_array();
        if (!list) return expected("a list of strings");
        if (!check_size(spec, list->size(), "string", label, error)) return std::nullopt;
        std::vector<std::string> values;
        for (std::size_t i = 0; i < list->size(); ++i) {
          const toml::node& element = *list->get(i);
          at = &element;
          std::string at = fmt::format("{}[{}]", label, i);
          if (!element.is_string()) {
            error =
                fmt::format("{}: expected a string{}, found {}", at,
                            spec.choices.empty() ? "" : ", one of " + join(spec.choices), describe(element));
            return std::nullopt;
          }
          std::string v = element.as_string()->get();
          if (!spec.choices.empty() && !check_choice(spec, v, at, error)) return std::nullopt;
          values.push_back(std::move(v));
        }
        return ParamValue{std::move(values)};
      }
    }
    error = label + ": unsupported parameter type";
    return std::nullopt;
  }

  static double number(const toml::node& node) {
    return node.is_integer() ? static_cast<double>(node.as_integer()->get())
                             : node.as_floating_point()->get();
  }

  static bool check_integer(const ParamSpec& spec, std::int64_t v, const std::string& label,
                            std::string& error) {
    if (std::string violation = spec.check_bounds(static_cast<double>(v)); !violation.empty()) {
      error = fmt::format("{} = {} is out of range: {}", label, v, violation);
      return false;
    }
    if (spec.multiple && *spec.multiple != 0 && v % *spec.multiple != 0) {
      error = fmt::format("{} = {} is out of range: must be a multiple of {}", label, v, *spec.multiple);
      return false;
    }
    return true;
  }

  static bool check_real(const ParamSpec& spec, const toml::node& node, const std::string& label,
                         std::string& error) {
    if (std::string violation = spec.check_bounds(number(node)); !violation.empty()) {
      error = fmt::format("{} = {} is out of range: {}", label, render(node), violation);
      return false;
    }
    return true;
  }

  static bool check_choice(const ParamSpec& spec, const std::string& v, const std::string& label,
                           std::string& error) {
    if (std::find(spec.choices.begin(), spec.choices.end(), v) != spec.choices.end()) return true;
    std::string suggestion = closest_match(v, spec.choices);
    error = fmt::format("{}: expected one of {}, found '{}'{}", label, join(spec.choices), v,
                        suggestion.empty() ? "" : "; did you mean '" + suggestion + "'?");
    return false;
  }

  static bool check_size(const ParamSpec& spec, std::size_t size, const std::string& noun,
                         const std::string& label, std::string& error) {
    if (spec.list_size && size != *spec.list_size) {
      error =
          fmt::format("{}: expected a list of {}, found {}", label, count_of(*spec.list_size, noun), size);
      return false;
    }
    if (spec.list_min_size && size < *spec.list_min_size) {
      error = fmt::format("{}: expected a list of at least {}, found {}", label,
                          count_of(*spec.list_min_size, noun), size);
      return false;
    }
    return true;
  }

  std::string name_;
  const Registry& registry_;
  const ConfigOptions& options_;
  std::vector<Problem> problems_;
  std::vector<std::string> notes_;
  std::map<std::string, std::string> positions_;  // "table.key" -> where its value was given
  std::map<std::string, SetOption> set_keys_;     // "path.type", "metric[1].samples" -> the --set that set it
  std::map<std::string, SetOption> created_;      // "run", "metric[2]" -> the --set that created the table
  std::map<std::string, std::string> file_types_;  // "path" -> its type before the first --set path.type
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
    throw ConfigError(
        {fmt::format("{}:{}:{}: TOML syntax error: {}", name, begin.line, begin.column, description)});
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
    out += "\n[" + slot.table + "]\ntype = " + toml_string(it->second.type) + "\n";
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
