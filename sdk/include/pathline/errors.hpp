// The exception types that may cross the plugin boundary. Plugins throw only these (or
// std::exception); the host catches them where it calls into a plugin.
#pragma once

#include <stdexcept>
#include <string>

#include "pathline/abi.hpp"

namespace pathline {

// Base of every Pathline error. The message is one line, complete in itself.
class PATHLINE_API Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bad input from the user: a config value a component cannot accept, a missing file.
class PATHLINE_API InputError : public Error {
 public:
  using Error::Error;
};

// A plugin that cannot be loaded or registered.
class PATHLINE_API PluginError : public Error {
 public:
  using Error::Error;
};

}  // namespace pathline
