// The plugin host: finds shared libraries, checks their descriptors, registers their components.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "pathline/engine/registry.hpp"

namespace pathline {

// One plugin that could not be loaded. line() is the one-line report:
//   plugin /x/libfoo.so: stage 'abi-version': expected SDK ABI version 1, found 2
struct PluginFailure {
  std::filesystem::path file;
  std::string stage;
  std::string message;
  std::string line() const;
};

class PATHLINE_API PluginHost {
 public:
  explicit PluginHost(Registry& registry) : registry_(registry) {}

  // Loads one file. Returns false, with a failure recorded, if it cannot be used; in that case the
  // registry is unchanged. Loading the same file twice is a no-op. `origin` is recorded in the
  // plugin's PluginInfo: how it was found.
  bool load_file(const std::filesystem::path& file, const std::string& origin = "explicit");
  // Loads every shared library (*.so) directly inside `dir`, in name order. A missing directory is
  // a failure too.
  void load_directory(const std::filesystem::path& dir, const std::string& origin = "explicit");
  // The search path: the built-in plugin folder (origin "built-in"), then PATHLINE_PLUGIN_PATH
  // (colon-separated; origin "PATHLINE_PLUGIN_PATH"), then the extra directories (origin
  // "--plugin-dir"), each in order.
  void load_search_path(const std::vector<std::filesystem::path>& extra_dirs, bool builtin = true);

  const std::vector<PluginFailure>& failures() const { return failures_; }
  const std::vector<std::shared_ptr<const PluginInfo>>& plugins() const { return plugins_; }

  // The folder of the plugins that were built or installed with this engine:
  // <dir of libpathline_engine.so>/pathline/plugins.
  static std::filesystem::path builtin_plugin_dir();

 private:
  void fail(const std::filesystem::path& file, std::string stage, std::string message);
  Registry& registry_;
  std::vector<PluginFailure> failures_;
  std::vector<std::shared_ptr<const PluginInfo>> plugins_;
  std::vector<std::filesystem::path> loaded_files_;
};

}  // namespace pathline
