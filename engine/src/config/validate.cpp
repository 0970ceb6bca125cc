// Validation: a TOML pipeline with its --set overrides applied, every table and key checked against
// the slot specs, the registered components' parameter specs and the engine tables, every problem
// reported with its file, line and column.
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

namespace {

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
    config.read_settings();
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

  // A pipeline without [model] whose [autoencoder] names no trained run trains that autoencoder.
  static bool trains_autoencoder(const toml::table& root) {
    const toml::table* table = root.get_as<toml::table>("autoencoder");
    if (!table) return false;
    const toml::node* run = table->get("run");
    return !run || (run->is_string() && run->as_string()->get().empty());
  }

  void read_single(const SlotSpec& slot, toml::table& root, PipelineConfig& config) {
    toml::node* node = root.get(slot.table);
    if (!node) {
      if (slot.default_type.empty()) {
        if (slot.required && !(slot.table == "model" && trains_autoencoder(root)))
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

namespace {

// A flow pipeline whose [autoencoder] names a trained run takes the run's settings for every key it
// leaves out, so that its resolved config says what the flow uses. Whatever does not fit (no such
// run, another type, a key set to another value) is left for build_components to report.
void adopt_autoencoder_settings(PipelineConfig& config, const Registry& registry) {
  auto given = config.components.find("autoencoder");
  if (given == config.components.end() || config.trains_autoencoder()) return;
  const std::string run = config.autoencoder_run();
  if (run.empty() || given->second.type == "identity") return;
  std::error_code ec;
  const std::filesystem::path file = std::filesystem::path(run) / "config.toml";
  if (!std::filesystem::is_regular_file(file, ec)) return;
  PipelineConfig trained;
  try {
    ConfigOptions options;
    options.check_device = false;
    trained = load_config(file, registry, options);
  } catch (const Error&) {
    return;
  }
  auto ae = trained.components.find("autoencoder");
  if (!trained.trains_autoencoder() || ae == trained.components.end() ||
      ae->second.type != given->second.type)
    return;
  for (const auto& key : given->second.order)
    if (!config.positions.count("autoencoder." + key) && ae->second.params.contains(key))
      given->second.params.set(key, ae->second.params.at(key));
}

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
  PipelineConfig config = validator.run(root);
  adopt_autoencoder_settings(config, registry);
  return config;
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

void PipelineConfig::read_settings() {
  run = RunSettings::read(table("run"));
  train = TrainSettings::read(table("train"));
  sample = SampleSettings::read(table("sample"));
  eval = EvalSettings::read(table("eval"));
}

}  // namespace pathline
