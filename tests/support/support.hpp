// Shared helpers for the test suites.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "pathline/engine/host.hpp"

#define EXPECT_CONTAINS(haystack, needle)                          \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) \
      << "'" << (haystack) << "' lacks '" << (needle) << "'"

namespace pathline::testing {

inline std::filesystem::path builtin_plugins() {
  return std::filesystem::path(PATHLINE_BINARY_DIR) / "lib" / "pathline" / "plugins";
}
// The Python of the project's virtual environment (tools/install-deps.sh: the pinned torch, NumPy
// and the peers), as CMake found it; python3 where there is none.
inline std::string python() { return PATHLINE_PYTHON; }
// python() if it can import every module named (e.g. "numpy", "torchdiffeq"), else "".
inline std::string python_with(const std::vector<std::string>& modules) {
  std::string imports;
  for (const auto& m : modules) imports += (imports.empty() ? "import " : ", ") + m;
  const std::string command = "'" + python() + "' -c '" + imports + "' >/dev/null 2>&1";
  return std::system(command.c_str()) == 0 ? python() : std::string();
}
inline std::filesystem::path fixture(const std::string& name) {
  return std::filesystem::path(PATHLINE_FIXTURE_DIR) / ("lib" + name + ".so");
}

// The built-in plugins, loaded once for the whole test binary.
inline const Registry& builtin_registry() {
  static Registry* registry = [] {
    auto* r = new Registry();
    PluginHost host(*r);
    host.load_directory(builtin_plugins());
    for (const auto& f : host.failures()) ADD_FAILURE() << f.line();
    return r;
  }();
  return *registry;
}

// Resolved parameters of a registered component: its defaults, with some replaced.
inline Params default_params(const Registry& registry, Kind kind, const std::string& name,
                             const std::map<std::string, ParamValue>& changes = {}) {
  const ComponentEntry* entry = registry.find(kind, name);
  if (!entry) throw Error("test: no " + std::string(to_string(kind)) + " '" + name + "'");
  Params params;
  for (const auto& spec : entry->decl.params)
    if (spec.default_value) params.set(spec.name, *spec.default_value);
  for (const auto& [k, v] : changes) params.set(k, v);
  return params;
}

// A fresh empty directory under the system temp folder, removed at scope exit.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("pathline-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// A fixture with a fresh empty folder per test, `dir_`, removed afterwards; path("x") is dir_ / "x".
class FolderTest : public ::testing::Test {
 protected:
  std::filesystem::path path(const std::string& name) const { return dir_ / name; }

  TempDir folder_;
  const std::filesystem::path& dir_ = folder_.path();
};

inline std::string read_text(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

inline void write_text(const std::filesystem::path& file, const std::string& text) {
  std::ofstream out(file, std::ios::binary);
  out << text;
}

// Runs the pathline CLI; captures exit code, stdout and stderr.
struct CliResult {
  int code = -1;
  std::string out, err;
};

// `cwd`, if given, is the working directory; `env` is prepended (e.g. "PATHLINE_PLUGIN_PATH=/x").
inline CliResult run_cli(const std::string& args, const std::filesystem::path& cwd = {},
                         const std::string& env = "") {
  TempDir capture;
  std::string command = (cwd.empty() ? "" : "cd '" + cwd.string() + "' && ") + env +
                        (env.empty() ? "" : " ") + "'" + std::string(PATHLINE_CLI) + "' " + args + " >'" +
                        (capture / "out").string() + "' 2>'" + (capture / "err").string() + "'";
  int status = std::system(command.c_str());
  CliResult result;
  result.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.out = read_text(capture / "out");
  result.err = read_text(capture / "err");
  return result;
}

// The message of the InputError that f throws ("" and a test failure if it throws nothing or
// something else).
template <typename F>
std::string input_error_of(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected InputError, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected InputError, nothing was thrown";
  return "";
}

inline std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::stringstream stream(text);
  std::string line;
  while (std::getline(stream, line))
    if (!line.empty()) lines.push_back(line);
  return lines;
}

}  // namespace pathline::testing
