// Calls into plugins, with any exception they throw re-thrown naming the slot, the component and the
// plugin file it came from.
#pragma once

#include <memory>
#include <string>
#include <utility>

#include "pathline/engine/registry.hpp"

namespace pathline {

// Which component of a pipeline a call goes to: its slot (or a metric's name), its type, where the
// config named it, and the plugin that registered it.
struct ComponentOrigin {
  std::string slot;   // "model", "solver", "metric.energy", ...
  std::string type;   // "mlp"
  std::string where;  // "pipeline.toml:12:1", "--set model.type=mlp", or the config file
  std::shared_ptr<const PluginInfo> plugin;

  // "[model] (type 'mlp', plugin 'pathline-models' from /.../libpathline_models.so)"
  std::string describe() const;
};

// A plugin's call failed with something other than the user's input: the message names the config
// position, the component and its plugin, what was called, and what the plugin said (one line).
class PATHLINE_API PluginCallError : public Error {
 public:
  using Error::Error;
};

// A plugin's call refused its input (InputError): the same naming, still an input problem.
class PATHLINE_API PluginInputError : public InputError {
 public:
  using InputError::InputError;
};

// Inside a catch block: re-throws the exception in flight as PluginCallError or PluginInputError
// naming `origin` and `call` ("forward", "solve", ...). Passes through unchanged what already names
// its origin or is the engine's own (ConfigError, PluginCallError, PluginInputError, Interrupted,
// NonFiniteError).
[[noreturn]] PATHLINE_API void rethrow_from_plugin(const ComponentOrigin& origin, const char* call);

// Runs `body` (a call into the component of `origin`); any exception it throws leaves through
// rethrow_from_plugin. Costs nothing when nothing is thrown.
template <class Body>
decltype(auto) plugin_call(const ComponentOrigin& origin, const char* call, Body&& body) {
  try {
    return std::forward<Body>(body)();
  } catch (...) {
    rethrow_from_plugin(origin, call);
  }
}

}  // namespace pathline
