#include "pathline/engine/plugin_call.hpp"

#include <fmt/format.h>

#include <exception>
#include <new>

#include "pathline/engine/config.hpp"
#include "pathline/engine/train.hpp"

namespace pathline {

namespace {

// The first line of a message, without the trailing blanks LibTorch leaves.
std::string first_line(const std::string& text) {
  std::string line = text.substr(0, text.find('\n'));
  while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) line.pop_back();
  return line.empty() ? std::string("(no message)") : line;
}

}  // namespace

std::string ComponentOrigin::describe() const {
  std::string text = fmt::format("[{}] (type '{}'", slot, type);
  if (plugin) {
    text += fmt::format(", plugin '{}'", plugin->name);
    if (!plugin->file.empty()) text += fmt::format(" from {}", plugin->file.string());
  }
  return text + ")";
}

void rethrow_from_plugin(const ComponentOrigin& origin, const char* call) {
  const std::string prefix =
      fmt::format("{}{}{}: {}", origin.where, origin.where.empty() ? "" : ": ", origin.describe(), call);
  try {
    throw;
  } catch (const ConfigError&) {
    throw;
  } catch (const PluginCallError&) {
    throw;  // a nested call (a solver evaluating the model) already named its component
  } catch (const PluginInputError&) {
    throw;
  } catch (const Interrupted&) {
    throw;
  } catch (const NonFiniteError&) {
    throw;
  } catch (const InputError& e) {
    throw PluginInputError(fmt::format("{}: {}", prefix, first_line(e.what())));
  } catch (const c10::Error& e) {
    throw PluginCallError(
        fmt::format("{} failed in LibTorch: {}", prefix, first_line(e.what_without_backtrace())));
  } catch (const std::bad_alloc&) {
    throw PluginCallError(fmt::format("{} ran out of memory", prefix));
  } catch (const std::exception& e) {
    throw PluginCallError(fmt::format("{} failed: {}", prefix, first_line(e.what())));
  } catch (...) {
    throw PluginCallError(
        fmt::format("{} threw something that is not a std::exception (plugins throw pathline::Error, "
                    "pathline::InputError or another std::exception)",
                    prefix));
  }
}

}  // namespace pathline
