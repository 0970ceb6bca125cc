// Text helpers of the config code (internal to the engine): joins, plurals, TOML strings and values
// as written back, TOML nodes as the user wrote them, the names of tables and entries; and the parsing
// of --set overrides.
#pragma once

#include <fmt/format.h>
#include <toml++/toml.h>

#include <optional>
#include <string>
#include <vector>

#include "pathline/engine/config.hpp"

namespace pathline::config_detail {

// ------------------------------------------------------------------------------------------------
// Text helpers

inline std::string join(const std::vector<std::string>& items, const std::string& sep = ", ") {
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

inline std::string join_or_none(const std::vector<std::string>& names) {
  return names.empty() ? "(none)" : join(names);
}

inline std::string plural(Kind kind) { return std::string(to_string(kind)) + "s"; }

// "1 integer", "2 integers".
inline std::string count_of(std::size_t n, const std::string& noun) {
  return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
}

// A TOML basic string: quotes, backslashes and control characters escaped, so that any string
// reads back as itself.
inline std::string toml_string(const std::string& text) {
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

inline std::string toml_value(const ParamValue& value) { return std::visit(TomlValueWriter{}, value); }

// A TOML node as the user would have written it: 0.01, "cosine", [1, 2].
inline std::string render(const toml::node& node) {
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
inline std::string describe(const toml::node& node) {
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

inline std::vector<std::string> known_tables() {
  std::vector<std::string> known;
  for (const auto& slot : pipeline_slots()) known.push_back(slot.table);
  for (const auto& table : kEngineTables) known.push_back(table);
  return known;
}

inline std::string unknown_table_message(const std::string& table) {
  std::vector<std::string> known = known_tables();
  std::string suggestion = closest_match(table, known);
  return fmt::format("unknown table [{}]; {}known tables: {}", table,
                     suggestion.empty() ? "" : "did you mean [" + suggestion + "]? ", join(known));
}

// The address of an entry of a `many` slot, as written in messages and in --set: "metric[1]".
inline std::string entry_address(const std::string& table, std::size_t index) {
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

inline std::string trim(const std::string& text) {
  auto begin = text.find_first_not_of(" \t");
  if (begin == std::string::npos) return "";
  auto end = text.find_last_not_of(" \t");
  return text.substr(begin, end - begin + 1);
}

inline std::optional<Override> parse_override(const std::string& text) {
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
inline toml::table parse_override_value(const std::string& value) {
  try {
    toml::table parsed = toml::parse("value = " + value);
    if (parsed.size() == 1 && parsed.contains("value")) return parsed;
  } catch (const toml::parse_error&) {
  }
  toml::table bare;
  bare.insert("value", value);
  return bare;
}

}  // namespace pathline::config_detail
