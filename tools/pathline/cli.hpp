// What the `pathline` command's files share: exit codes, usage errors, option parsing, the plugin
// session, the console, and the table of commands.
#pragma once

#include <boost/program_options.hpp>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "pathline/engine/config.hpp"
#include "pathline/engine/host.hpp"
#include "pathline/engine/pipeline.hpp"

namespace pathline::cli {

namespace po = boost::program_options;

constexpr int kOk = 0, kFailure = 1, kUsage = 2;

// A usage problem: printed as "pathline <cmd>: message" with a hint, exit 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One command: its name, what `pathline --help` shows (usage and summary), the function that runs
// it (given the name it was called by and the arguments after it), whether it computes (then it
// first makes sure the BLAS runs the processor's fastest kernels), and whether `pathline launch`
// may start it on every rank of a data-parallel run.
struct Command {
  const char* name;
  const char* usage;    // "inspect KIND NAME"
  const char* summary;  // one line; a "\n" continues it under the summary column
  int (*handler)(const std::string& name, const std::vector<std::string>& args);
  bool computes;
  bool launchable;
};
// Every command, in the order `pathline --help` lists them.
const std::vector<Command>& commands();
const Command* find_command(const std::string& name);
// The "Commands:" block of `pathline --help`, from commands().
std::string commands_help();

// --plugin-dir and --help, which every command takes.
po::options_description common_options();

// The registry and the plugin host of one command.
struct Session {
  Registry registry;
  PluginHost host{registry};
  // Loads the built-in plugins, PATHLINE_PLUGIN_PATH and --plugin-dir; warns about each failure
  // unless `quiet_failures`.
  void load(const po::variables_map& vm, bool quiet_failures = false);
  // Loads the plugins, then the pipeline file with the command's --set overrides, validated.
  PipelineConfig load_pipeline(const po::variables_map& vm, const std::string& file);
};

// Parses a command's options (plus the common ones); returns nullopt when --help was printed.
std::optional<po::variables_map> parse(const std::string& command, const std::vector<std::string>& args,
                                       po::options_description options,
                                       const po::positional_options_description& positional,
                                       const std::string& usage);
std::vector<std::string> overrides_of(const po::variables_map& vm);
void add_set_option(po::options_description& options);
// What validation did quietly (keys dropped by a type override), one "note:" line each.
void print_notes(const PipelineConfig& config);
po::positional_options_description single_positional(const char* name);
std::string required_positional(const po::variables_map& vm, const char* name, const char* what);
// The RUN_DIR positional of `sample`, `eval` and `resume`, checked to be a run directory.
std::string run_dir_argument(const po::variables_map& vm);

// stderr: log lines, and on a terminal one live progress line rewritten in place (cleared before
// the next log line). Not on a terminal (CI, a log file, | tee) there is no live line: the engine
// prints plain progress lines instead.
class Console {
 public:
  static Console& get();
  bool is_terminal() const { return terminal_; }
  void line(const std::string& text);
  void live(const std::string& text);
  void end_live();

 private:
  Console();
  bool terminal_ = false, pending_ = false;
};
// The engine's logger for a command: lines through the console, and live progress on a terminal.
Logger stderr_logger();

// `pathline launch` (launch.cpp).
int cmd_launch(const std::string& name, const std::vector<std::string>& args);

}  // namespace pathline::cli
