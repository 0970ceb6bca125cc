// Typed parameter specs: every component declares what it accepts; the host validates a TOML
// table against the specs and hands the component a resolved `Params` with defaults filled in.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "pathline/errors.hpp"

namespace pathline {

enum class ParamType { boolean, integer, real, string, choice, real_list, int_list, string_list };

inline const char* to_string(ParamType type) {
  switch (type) {
    case ParamType::boolean:
      return "bool";
    case ParamType::integer:
      return "integer";
    case ParamType::real:
      return "float";
    case ParamType::string:
      return "string";
    case ParamType::choice:
      return "choice";
    case ParamType::real_list:
      return "list of numbers";
    case ParamType::int_list:
      return "list of integers";
    case ParamType::string_list:
      return "list of strings";
  }
  return "?";
}

// A choice is stored as its string; a list of numbers as doubles.
using ParamValue = std::variant<bool, std::int64_t, double, std::string, std::vector<double>,
                                std::vector<std::int64_t>, std::vector<std::string>>;

// One declared parameter. Build with the named constructors and refine with the chained setters:
//   ParamSpec::integer("width", 256, "hidden units per layer").at_least(1)
struct PATHLINE_API ParamSpec {
  std::string name;
  ParamType type = ParamType::real;
  std::string doc;
  std::optional<ParamValue> default_value;  // empty: the key is required
  // Bounds for integer and float parameters, and for every element of a list.
  std::optional<double> lower, upper;
  bool lower_open = false, upper_open = false;
  // For ParamType::choice; for ParamType::string_list, when not empty, what every element must be.
  std::vector<std::string> choices;
  std::optional<std::size_t> list_size;      // for lists: exact length
  std::optional<std::size_t> list_min_size;  // for lists: at least this many elements
  std::optional<std::int64_t> multiple;      // for ParamType::integer: must be a multiple of this
  // For ParamType::real: the string "auto" is also accepted, meaning "let the engine (or the
  // component) choose"; it is held as NaN (Params::is_auto) and written back as "auto".
  bool allows_auto = false;

  static ParamSpec boolean(std::string name, bool value, std::string doc) {
    return make(std::move(name), ParamType::boolean, value, std::move(doc));
  }
  static ParamSpec integer(std::string name, std::int64_t value, std::string doc) {
    return make(std::move(name), ParamType::integer, value, std::move(doc));
  }
  static ParamSpec real(std::string name, double value, std::string doc) {
    return make(std::move(name), ParamType::real, value, std::move(doc));
  }
  static ParamSpec string(std::string name, std::string value, std::string doc) {
    return make(std::move(name), ParamType::string, std::move(value), std::move(doc));
  }
  static ParamSpec choice(std::string name, std::vector<std::string> options, std::string value,
                          std::string doc) {
    ParamSpec spec = make(std::move(name), ParamType::choice, std::move(value), std::move(doc));
    spec.choices = std::move(options);
    return spec;
  }
  static ParamSpec real_list(std::string name, std::vector<double> value, std::string doc) {
    return make(std::move(name), ParamType::real_list, std::move(value), std::move(doc));
  }
  // A list of integers; bounds (at_least, ...) apply to every element.
  static ParamSpec int_list(std::string name, std::vector<std::int64_t> value, std::string doc) {
    return make(std::move(name), ParamType::int_list, std::move(value), std::move(doc));
  }
  // A list of strings; one_of() restricts every element to a set.
  static ParamSpec string_list(std::string name, std::vector<std::string> value, std::string doc) {
    return make(std::move(name), ParamType::string_list, std::move(value), std::move(doc));
  }

  // A float that may also be "auto", with "auto" as its default: ParamSpec::real_auto("t_start",
  // "...").range(0, 1). The component reads Params::is_auto(key) before Params::real(key).
  static ParamSpec real_auto(std::string name, std::string doc) {
    ParamSpec spec = make(std::move(name), ParamType::real, auto_value(), std::move(doc));
    spec.allows_auto = true;
    return spec;
  }
  // The value that stands for "auto" (a quiet NaN, which no number a user writes can be).
  static double auto_value() { return std::numeric_limits<double>::quiet_NaN(); }
  // Accepts "auto" besides numbers (the default stays what it was).
  ParamSpec or_auto() const {
    ParamSpec copy = *this;
    copy.allows_auto = true;
    return copy;
  }

  // The key has no default and must be given.
  ParamSpec required() const {
    ParamSpec copy = *this;
    copy.default_value.reset();
    return copy;
  }
  ParamSpec at_least(double v) const { return bound(v, false, true); }
  ParamSpec greater_than(double v) const { return bound(v, true, true); }
  ParamSpec at_most(double v) const { return bound(v, false, false); }
  ParamSpec less_than(double v) const { return bound(v, true, false); }
  ParamSpec range(double lo, double hi) const { return at_least(lo).at_most(hi); }
  ParamSpec multiple_of(std::int64_t k) const {
    ParamSpec copy = *this;
    copy.multiple = k;
    return copy;
  }
  ParamSpec size(std::size_t n) const {
    ParamSpec copy = *this;
    copy.list_size = n;
    return copy;
  }
  ParamSpec min_size(std::size_t n) const {
    ParamSpec copy = *this;
    copy.list_min_size = n;
    return copy;
  }
  // For a string list: every element must be one of these.
  ParamSpec one_of(std::vector<std::string> options) const {
    ParamSpec copy = *this;
    copy.choices = std::move(options);
    return copy;
  }
  bool is_list() const {
    return type == ParamType::real_list || type == ParamType::int_list || type == ParamType::string_list;
  }

  bool is_required() const { return !default_value.has_value(); }

  // Checks a number against the bounds; returns a description of the violated bound, or "".
  std::string check_bounds(double v) const {
    if (std::isnan(v)) return "must be a number, not nan";
    if (lower && (lower_open ? !(v > *lower) : !(v >= *lower)))
      return std::string(lower_open ? "must be > " : "must be >= ") + format_number(*lower);
    if (upper && (upper_open ? !(v < *upper) : !(v <= *upper)))
      return std::string(upper_open ? "must be < " : "must be <= ") + format_number(*upper);
    return "";
  }

  // "[1, inf)", "(0, 1]", or "" when unbounded.
  std::string range_text() const {
    if (!lower && !upper) return "";
    std::string text = lower ? (lower_open ? "(" : "[") + format_number(*lower) : "(-inf";
    text += ", ";
    text += upper ? format_number(*upper) + (upper_open ? ")" : "]") : "inf)";
    return text;
  }

  static std::string format_number(double v) {
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    if (v == std::floor(v) && std::fabs(v) < 1e15) return std::to_string(static_cast<long long>(v));
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.6g", v);
    return buffer;
  }

 private:
  static ParamSpec make(std::string name, ParamType type, ParamValue value, std::string doc) {
    ParamSpec spec;
    spec.name = std::move(name);
    spec.type = type;
    spec.doc = std::move(doc);
    spec.default_value = std::move(value);
    return spec;
  }
  ParamSpec bound(double v, bool open, bool is_lower) const {
    ParamSpec copy = *this;
    (is_lower ? copy.lower : copy.upper) = v;
    (is_lower ? copy.lower_open : copy.upper_open) = open;
    return copy;
  }
};

namespace detail {
// format_value's visitor; at namespace scope because a local class cannot have member templates.
struct FormatValueVisitor {
  std::string operator()(bool v) const { return v ? "true" : "false"; }
  std::string operator()(std::int64_t v) const { return std::to_string(v); }
  std::string operator()(double v) const {
    if (std::isnan(v)) return "\"auto\"";  // NaN only ever stands for "auto" (ParamSpec::allows_auto)
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    // The shortest text that reads back as the same double.
    char buffer[32];
    for (int precision = 6; precision <= 17; ++precision) {
      std::snprintf(buffer, sizeof buffer, "%.*g", precision, v);
      if (std::strtod(buffer, nullptr) == v) break;
    }
    std::string text = buffer;
    if (text.find_first_of(".eEn") == std::string::npos) text += ".0";
    return text;
  }
  std::string operator()(const std::string& v) const {
    std::string out = "\"";
    for (char c : v) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    return out + "\"";
  }
  template <class T>
  std::string operator()(const std::vector<T>& v) const {
    std::string out = "[";
    for (std::size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + (*this)(v[i]);
    return out + "]";
  }
};
}  // namespace detail

// Renders a value the way it would be written in TOML.
inline std::string format_value(const ParamValue& value) {
  return std::visit(detail::FormatValueVisitor{}, value);
}

// The resolved parameters of one component: every declared key present, defaults filled in, all
// validated. Components read them once, in their constructor.
class PATHLINE_API Params {
 public:
  Params() = default;
  explicit Params(std::map<std::string, ParamValue> values) : values_(std::move(values)) {}

  bool boolean(const std::string& key) const { return get<bool>(key); }
  std::int64_t integer(const std::string& key) const { return get<std::int64_t>(key); }
  double real(const std::string& key) const {
    const ParamValue& v = at(key);
    if (auto* i = std::get_if<std::int64_t>(&v)) return static_cast<double>(*i);
    return get<double>(key);
  }
  const std::string& string(const std::string& key) const { return get<std::string>(key); }
  const std::vector<double>& real_list(const std::string& key) const { return get<std::vector<double>>(key); }
  const std::vector<std::int64_t>& int_list(const std::string& key) const {
    return get<std::vector<std::int64_t>>(key);
  }
  const std::vector<std::string>& string_list(const std::string& key) const {
    return get<std::vector<std::string>>(key);
  }

  // True when a float parameter declared with or_auto() / real_auto() is "auto".
  bool is_auto(const std::string& key) const {
    const ParamValue& v = at(key);
    auto* d = std::get_if<double>(&v);
    return d && std::isnan(*d);
  }
  // The float, or `fallback` when it is "auto".
  double real_or(const std::string& key, double fallback) const {
    return is_auto(key) ? fallback : real(key);
  }

  bool contains(const std::string& key) const { return values_.count(key) != 0; }
  const ParamValue& at(const std::string& key) const {
    auto it = values_.find(key);
    if (it == values_.end()) throw Error("parameter '" + key + "' was not declared by the component");
    return it->second;
  }
  void set(const std::string& key, ParamValue value) { values_[key] = std::move(value); }
  const std::map<std::string, ParamValue>& values() const { return values_; }

 private:
  template <class T>
  const T& get(const std::string& key) const {
    const ParamValue& v = at(key);
    if (auto* p = std::get_if<T>(&v)) return *p;
    throw Error("parameter '" + key + "' read with the wrong type");
  }
  std::map<std::string, ParamValue> values_;
};

}  // namespace pathline
