#include "cli.hpp"

#include <iostream>

namespace pathline::cli {

po::options_description common_options() {
  po::options_description common("Common options");
  common.add_options()("plugin-dir", po::value<std::vector<std::string>>()->composing(),
                       "also load plugins from this directory (repeatable; after the built-in folder and "
                       "PATHLINE_PLUGIN_PATH)")("help,h", "show this help");
  return common;
}

void Session::load(const po::variables_map& vm, bool quiet_failures) {
  std::vector<std::filesystem::path> dirs;
  if (vm.count("plugin-dir"))
    for (const auto& d : vm["plugin-dir"].as<std::vector<std::string>>()) dirs.emplace_back(d);
  host.load_search_path(dirs);
  if (!quiet_failures)
    for (const auto& f : host.failures()) std::cerr << "pathline: warning: " << f.line() << "\n";
}

std::optional<po::variables_map> parse(const std::string& command, const std::vector<std::string>& args,
                                       po::options_description options,
                                       const po::positional_options_description& positional,
                                       const std::string& usage) {
  options.add(common_options());
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(options).positional(positional).run(), vm);
    if (vm.count("help")) {
      std::cout << "Usage: pathline " << command << " " << usage << "\n\n" << options << "\n";
      return std::nullopt;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(e.what());
  }
  return vm;
}

std::vector<std::string> overrides_of(const po::variables_map& vm) {
  return vm.count("set") ? vm["set"].as<std::vector<std::string>>() : std::vector<std::string>{};
}

PipelineConfig Session::load_pipeline(const po::variables_map& vm, const std::string& file) {
  load(vm);
  ConfigOptions options;
  options.overrides = overrides_of(vm);
  return load_config(file, registry, options);
}

void add_set_option(po::options_description& options) {
  options.add_options()("set", po::value<std::vector<std::string>>()->composing(),
                        "override a config key, e.g. --set train.steps=500 (repeatable)");
}

void print_notes(const PipelineConfig& config) {
  for (const auto& note : config.notes) std::cerr << "note: " << note << "\n";
}

po::positional_options_description single_positional(const char* name) {
  po::positional_options_description positional;
  positional.add(name, 1);
  return positional;
}

std::string required_positional(const po::variables_map& vm, const char* name, const char* what) {
  if (!vm.count(name)) throw UsageError(std::string("missing ") + what);
  return vm[name].as<std::string>();
}

std::string run_dir_argument(const po::variables_map& vm) {
  std::string run = required_positional(vm, "run", "RUN_DIR (a run directory)");
  std::error_code ec;
  if (!std::filesystem::is_directory(run, ec)) throw UsageError(run + ": no such run directory");
  if (!std::filesystem::is_regular_file(std::filesystem::path(run) / "config.toml", ec))
    throw UsageError(run + ": not a run directory (no config.toml)");
  return run;
}

}  // namespace pathline::cli
