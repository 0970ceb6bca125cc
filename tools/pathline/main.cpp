// The `pathline` command line: plugins, inspect, validate, run, train, resume, sample, eval.
// Exit codes: 0 success, 2 bad usage or invalid config, 1 failure while running, 130 / 143 training
// stopped by SIGINT / SIGTERM (after a checkpoint).
// Results go to stdout; messages, progress and errors go to stderr.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "pathline/engine/bench.hpp"
#include "pathline/engine/build.hpp"
#include "pathline/engine/config.hpp"
#include "pathline/engine/distributed.hpp"
#include "pathline/engine/host.hpp"
#include "pathline/engine/io.hpp"
#include "pathline/engine/pipeline.hpp"

namespace po = boost::program_options;
using namespace pathline;

namespace {

constexpr int kOk = 0, kFailure = 1, kUsage = 2;

// A usage problem: printed as "pathline <cmd>: message" with a hint, exit 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* kCommands =
    "Commands:\n"
    "  plugins              list loaded plugins and their components\n"
    "  inspect KIND NAME    show a component's parameters (also KIND.NAME, or an engine table: run, train, "
    "sample, eval)\n"
    "  validate CONFIG      check a pipeline config and report every problem\n"
    "  run CONFIG           train, sample and evaluate; writes a run directory\n"
    "  train CONFIG         train only; writes a run directory with the weights\n"
    "  resume RUN_DIR       continue a stopped or killed run from its latest good checkpoint\n"
    "  sample RUN_DIR       sample and evaluate a trained run, optionally with another solver\n"
    "  ablate CONFIG        run every variant of the config's [ablation] sweep; results.csv, .md and charts\n"
    "  eval RUN_DIR         compute a run's metrics (and nll) on its samples or fresh ones into eval.json\n"
    "  launch -- COMMAND    start the ranks of a data-parallel run (as torchrun does) and watch them\n"
    "  bench JOB [CONFIG]   time the engine's training step, sampling or matrix products (JSON); the full\n"
    "                       comparison with PyTorch is tools/bench/run.sh\n"
    "\nRun 'pathline COMMAND --help' for a command's options.\n";

po::options_description common_options() {
  po::options_description common("Common options");
  common.add_options()("plugin-dir", po::value<std::vector<std::string>>()->composing(),
                       "also load plugins from this directory (repeatable; after the built-in folder and "
                       "PATHLINE_PLUGIN_PATH)")("help,h", "show this help");
  return common;
}

struct Session {
  Registry registry;
  PluginHost host{registry};
  void load(const po::variables_map& vm, bool quiet_failures = false) {
    std::vector<std::filesystem::path> dirs;
    if (vm.count("plugin-dir"))
      for (const auto& d : vm["plugin-dir"].as<std::vector<std::string>>()) dirs.emplace_back(d);
    host.load_search_path(dirs);
    if (!quiet_failures)
      for (const auto& f : host.failures()) std::cerr << "pathline: warning: " << f.line() << "\n";
  }
  // Loads the plugins, then the pipeline file with the command's --set overrides, validated.
  PipelineConfig load_pipeline(const po::variables_map& vm, const std::string& file);
};

// Parses a subcommand's options; returns nullopt when --help was printed.
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

// What validation did quietly (keys dropped by a type override), one "note:" line each.
void print_notes(const PipelineConfig& config) {
  for (const auto& note : config.notes) std::cerr << "note: " << note << "\n";
}

// stderr: log lines, and on a terminal one live progress line rewritten in place (cleared before
// the next log line). Not on a terminal (CI, a log file, | tee) there is no live line: the engine
// prints plain progress lines instead.
class Console {
 public:
  static Console& get() {
    static Console console;
    return console;
  }
  bool is_terminal() const { return terminal_; }
  void line(const std::string& text) {
    end_live();
    std::cerr << text << "\n";
  }
  void live(const std::string& text) {
    std::cerr << "\r\033[K" << text << std::flush;
    pending_ = true;
  }
  void end_live() {
    if (pending_) std::cerr << "\r\033[K" << std::flush;
    pending_ = false;
  }

 private:
  Console() {
    const char* term = std::getenv("TERM");
    terminal_ = ::isatty(STDERR_FILENO) == 1 && !(term && std::string(term) == "dumb");
  }
  bool terminal_ = false, pending_ = false;
};

Logger stderr_logger() {
  if (Console::get().is_terminal())
    set_live_progress([](const std::string& text) { Console::get().live(text); });
  return [](const std::string& line) { Console::get().line(line); };
}

// ------------------------------------------------------------------------------------------------

int cmd_plugins(const std::vector<std::string>& args) {
  po::options_description options("Options");
  auto vm = parse("plugins", args, options, {}, "[--plugin-dir DIR]");
  if (!vm) return kOk;
  Session s;
  s.load(*vm, true);
  // Name, version, how it was found (built-in, PATHLINE_PLUGIN_PATH, --plugin-dir), file.
  std::cout << "Plugins:\n";
  for (const auto& p : s.host.plugins())
    std::cout << fmt::format("  {:<20} {:<8} {:<20} {}\n", p->name, p->version, p->origin, p->file.string());
  if (s.host.plugins().empty()) std::cout << "  (none)\n";
  for (Kind kind : kAllKinds) {
    std::cout << "\n" << to_string(kind) << ":\n";
    auto entries = s.registry.list(kind);
    if (entries.empty()) std::cout << "  (none)\n";
    for (const auto* e : entries)
      std::cout << fmt::format("  {:<18} {:<52} [{} {}]\n", e->decl.name, e->decl.doc,
                               e->plugin ? e->plugin->name : "host", e->plugin ? e->plugin->version : "");
  }
  if (!s.host.failures().empty()) {
    std::cout << "\nFailed to load:\n";
    for (const auto& f : s.host.failures()) std::cout << "  " << f.line() << "\n";
  }
  return kOk;
}

void print_params(const std::vector<ParamSpec>& specs) {
  if (specs.empty()) {
    std::cout << "  (no parameters)\n";
    return;
  }
  for (const auto& spec : specs) {
    std::string type = to_string(spec.type);
    if (spec.type == ParamType::choice) {
      type = "one of ";
      for (std::size_t i = 0; i < spec.choices.size(); ++i) type += (i ? "|" : "") + spec.choices[i];
    }
    if (spec.list_size) type += fmt::format(" ({} values)", *spec.list_size);
    if (spec.multiple) type += fmt::format(", a multiple of {}", *spec.multiple);
    if (spec.allows_auto) type += " or \"auto\"";
    std::string value = spec.is_required() ? "required" : "default " + format_value(*spec.default_value);
    std::string range = spec.range_text();
    std::cout << fmt::format("  {:<16} {}\n", spec.name, type);
    std::cout << fmt::format("  {:<16} {}{}\n", "", value, range.empty() ? "" : ", range " + range);
    std::cout << fmt::format("  {:<16} {}\n", "", spec.doc);
  }
}

// The [ablation] table, for `pathline ablate --help` and `pathline inspect ablation`.
constexpr const char* kAblationHelp =
    R"([ablation] (read by 'pathline ablate'; other commands run the base pipeline)

Every key is a config key in quotes, as --set writes it, with the list of values to try:
  "<slot>.type"          a component type per variant; "*" = every registered one of that kind
  "<slot>.<parameter>"   a component parameter ("solver.steps", "model.width")
  "<table>.<key>"        an engine key ("train.lr", "sample.n", "run.seed" for repeats over seeds)
  "metric[<i>].<key>"    a key of one [[metric]] entry
A single value (not a list) sets the key for every variant.
  mode = "grid"          every combination (the default); "zip": all keys move in step
  [ablation.NAME]        a group: its keys move together (its own mode, default "zip"), one axis
A key that is a parameter of some variants' components only (solver.steps beside dopri5) is dropped
where it does not apply, with a note; a key no variant's component has, or an unknown table, is an
error. Quote dotted keys: unquoted, TOML reads solver.type = [...] as a table [ablation.solver].

Example:
  [ablation]
  "path.type" = ["linear", "cosine"]
  "run.seed" = [0, 1, 2]
  [ablation.budget]
  "solver.type" = ["euler", "midpoint"]
  "solver.steps" = [8, 4]

Results: <run.dir>/<config stem>-ablation/results.csv, results.md, results.png and results.svg
(docs/ablations.md).
)";

int cmd_inspect(const std::vector<std::string>& args) {
  po::options_description options("Options");
  options.add_options()("what", po::value<std::vector<std::string>>(),
                        "KIND NAME, KIND.NAME or an engine table");
  po::positional_options_description positional;
  positional.add("what", -1);
  auto vm =
      parse("inspect", args, options, positional, "KIND NAME | KIND.NAME | run|train|sample|eval|ablation");
  if (!vm) return kOk;
  std::vector<std::string> what =
      vm->count("what") ? (*vm)["what"].as<std::vector<std::string>>() : std::vector<std::string>{};
  if (what.size() == 1 && what[0].find('.') != std::string::npos) {
    auto dot = what[0].find('.');
    what = {what[0].substr(0, dot), what[0].substr(dot + 1)};
  }
  if (what.size() == 1 && what[0] == "ablation") {
    std::cout << kAblationHelp;
    return kOk;
  }
  if (what.size() == 1 &&
      std::find(kEngineTables.begin(), kEngineTables.end(), what[0]) != kEngineTables.end()) {
    std::cout << "[" << what[0] << "] (engine table)\n\nParameters:\n";
    print_params(engine_table_specs(what[0]));
    return kOk;
  }
  if (what.size() != 2)
    throw UsageError(
        "expected KIND NAME (e.g. 'inspect path linear'), KIND.NAME, an engine table (run, train, sample, "
        "eval) "
        "or ablation");
  auto kind = kind_from_string(what[0]);
  // A slot's name works too: `inspect source gaussian` is `inspect dataset gaussian`.
  if (!kind)
    if (const SlotSpec* slot = find_slot(what[0])) kind = slot->kind;
  if (!kind) {
    std::vector<std::string> kinds;
    for (Kind k : kAllKinds) kinds.push_back(to_string(k));
    std::string suggestion = closest_match(what[0], kinds);
    std::string list;
    for (const auto& k : kinds) list += (list.empty() ? "" : ", ") + k;
    throw UsageError(fmt::format("unknown kind '{}'; {}kinds: {}", what[0],
                                 suggestion.empty() ? "" : "did you mean '" + suggestion + "'? ", list));
  }
  Session s;
  s.load(*vm);
  const ComponentEntry* entry = s.registry.find(*kind, what[1]);
  if (!entry) {
    auto names = s.registry.names(*kind);
    std::string suggestion = closest_match(what[1], names);
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
    throw UsageError(fmt::format("unknown {} '{}'; {}registered: {}", what[0], what[1],
                                 suggestion.empty() ? "" : "did you mean '" + suggestion + "'? ",
                                 list.empty() ? "(none)" : list));
  }
  std::cout << fmt::format("{} '{}'\n  {}\n", to_string(*kind), entry->decl.name, entry->decl.doc);
  if (entry->plugin)
    std::cout << fmt::format("  from plugin '{}' {} ({}: {})\n", entry->plugin->name, entry->plugin->version,
                             entry->plugin->origin, entry->plugin->file.string());
  for (const auto& [slot, type] : entry->decl.suggests)
    std::cout << fmt::format("  suggests [{}] type = \"{}\" where the pipeline names none\n", slot, type);
  std::cout << "\nParameters:\n";
  print_params(entry->decl.params);
  return kOk;
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

int cmd_validate(const std::vector<std::string>& args) {
  po::options_description options("Options");
  options.add_options()("config", po::value<std::string>(), "pipeline TOML file")(
      "print", "print the resolved config (every default filled in) to stdout");
  add_set_option(options);
  auto vm =
      parse("validate", args, options, single_positional("config"), "CONFIG [--set key=value ...] [--print]");
  if (!vm) return kOk;
  Session s;
  const std::string file = required_positional(*vm, "config", "CONFIG (a pipeline TOML file)");
  PipelineConfig config = s.load_pipeline(*vm, file);
  print_notes(config);
  // Builds every component (no training): their own checks across keys and against the data, the
  // labels asked for, the sampling interval.
  for (const auto& note : check_pipeline(config, s.registry)) std::cerr << "note: " << note << "\n";
  if (vm->count("print")) std::cout << config.to_toml();
  std::cerr << file << ": valid\n";
  return kOk;
}

int cmd_run(const std::string& command, const std::vector<std::string>& args) {
  po::options_description options("Options");
  options.add_options()("config", po::value<std::string>(), "pipeline TOML file")(
      "run-dir", po::value<std::string>(), "write the run here instead of <run.dir>/<run.name>")(
      "overwrite", "replace the run directory if it exists (default: pick a new name <name>-2, -3, ...)");
  add_set_option(options);
  auto vm = parse(command, args, options, single_positional("config"),
                  "CONFIG [--set key=value ...] [--run-dir DIR] [--overwrite]");
  if (!vm) return kOk;
  Session s;
  const std::string file = required_positional(*vm, "config", "CONFIG (a pipeline TOML file)");
  PipelineConfig config = s.load_pipeline(*vm, file);
  print_notes(config);
  JobOptions job;
  if (vm->count("run-dir")) job.run_dir = (*vm)["run-dir"].as<std::string>();
  job.overwrite = vm->count("overwrite") != 0;
  job.do_sample = command == "run";
  job.handle_signals = true;
  auto dir = run_job(config, s.registry, job, stderr_logger());
  if (!dir.empty()) std::cout << dir.string() << "\n";  // ranks other than 0 write no run
  return kOk;
}

// The RUN_DIR positional of `sample` and `eval`, checked to be a run directory.
std::string run_dir_argument(const po::variables_map& vm) {
  std::string run = required_positional(vm, "run", "RUN_DIR (a run directory)");
  std::error_code ec;
  if (!std::filesystem::is_directory(run, ec)) throw UsageError(run + ": no such run directory");
  if (!std::filesystem::is_regular_file(std::filesystem::path(run) / "config.toml", ec))
    throw UsageError(run + ": not a run directory (no config.toml)");
  return run;
}

int cmd_ablate(const std::vector<std::string>& args) {
  po::options_description options("Options");
  options.add_options()("config", po::value<std::string>(), "pipeline TOML file with an [ablation] table")(
      "jobs,j", po::value<int>()->default_value(1), "variants run at once; the cores are split between them")(
      "out", po::value<std::string>(), "the ablation directory (default: <run.dir>/<config stem>-ablation)")(
      "dry-run", "expand and validate the sweep, list the variants, run nothing");
  add_set_option(options);
  auto vm = parse("ablate", args, options, single_positional("config"),
                  "CONFIG [--jobs N] [--out DIR] [--set key=value ...] [--dry-run]");
  if (!vm) {
    std::cout << "\n" << kAblationHelp;
    return kOk;
  }
  std::string file =
      required_positional(*vm, "config", "CONFIG (a pipeline TOML file with an [ablation] table)");
  const int jobs = (*vm)["jobs"].as<int>();
  if (jobs < 1) throw UsageError("--jobs must be at least 1");
  Session s;
  s.load(*vm);
  AblateOptions ablate;
  ablate.overrides = overrides_of(*vm);
  ablate.jobs = jobs;
  if (vm->count("out")) ablate.out = (*vm)["out"].as<std::string>();
  ablate.dry_run = vm->count("dry-run") > 0;
  ablate.executable = std::filesystem::read_symlink("/proc/self/exe");
  if (vm->count("plugin-dir")) ablate.plugin_dirs = (*vm)["plugin-dir"].as<std::vector<std::string>>();
  auto dir = ablate_job(file, s.registry, ablate, stderr_logger());
  if (!dir.empty()) std::cout << dir.string() << "\n";  // ranks other than 0 write no run
  if (ablate.dry_run) return kOk;
  // Some variants failed: the results are written, but the command says so.
  const std::string csv = read_file(dir / "results.csv");
  return csv.find(",failed,") == std::string::npos ? kOk : kFailure;
}

int cmd_resume(const std::vector<std::string>& args) {
  po::options_description options("Options");
  options.add_options()("run", po::value<std::string>(),
                        "a run directory made by 'pathline run' or 'pathline train'");
  add_set_option(options);
  auto vm = parse("resume", args, options, single_positional("run"),
                  "RUN_DIR [--set key=value ...] (only keys that do not affect training may change)");
  if (!vm) return kOk;
  const std::string run = run_dir_argument(*vm);
  Session s;
  s.load(*vm);
  ResumeOptions resume;
  resume.overrides = overrides_of(*vm);
  resume.handle_signals = true;
  auto dir = resume_job(run, s.registry, resume, stderr_logger());
  if (!dir.empty()) std::cout << dir.string() << "\n";  // ranks other than 0 write no run
  return kOk;
}

int cmd_sample(const std::vector<std::string>& args) {
  po::options_description options("Options");
  options.add_options()("run", po::value<std::string>(),
                        "a run directory made by 'pathline run' or 'pathline train'")(
      "out", po::value<std::string>(), "write here (default: a new RUN_DIR/sample-<solver>)")(
      "weights", po::value<std::string>(),
      "sample with this weights file: a .safetensors file with the model's parameter names (the run's "
      "model-raw.safetensors, another run's, or another tool's), or an older run's model.pt or "
      "model-ema.pt (default: the run's model.safetensors, its EMA weights when it kept them)")(
      "noise", po::value<std::string>(),
      "start from these source points: a .npy file [n, *data shape] of floats (n replaces sample.n); the "
      "same points give the same samples");
  add_set_option(options);
  auto vm = parse("sample", args, options, single_positional("run"),
                  "RUN_DIR [--set solver.type=heun --set solver.steps=20 ...] [--out DIR] [--weights FILE] "
                  "[--noise X0.npy]");
  if (!vm) return kOk;
  const std::string run = run_dir_argument(*vm);
  Session s;
  s.load(*vm);
  std::optional<std::filesystem::path> out;
  if (vm->count("out")) out = (*vm)["out"].as<std::string>();
  std::optional<std::filesystem::path> weights;
  if (vm->count("weights")) weights = (*vm)["weights"].as<std::string>();
  std::optional<std::filesystem::path> noise;
  if (vm->count("noise")) noise = (*vm)["noise"].as<std::string>();
  std::filesystem::path dir;
  try {
    dir = sample_job(run, s.registry, overrides_of(*vm), out, stderr_logger(), weights, noise);
  } catch (const ArgumentFileError& e) {
    throw UsageError(e.what());  // --noise names a file that cannot serve: bad usage, exit 2
  }
  if (!dir.empty()) std::cout << dir.string() << "\n";  // ranks other than 0 write no run
  return kOk;
}

int cmd_eval(const std::vector<std::string>& args) {
  po::options_description options("Options");
  options.add_options()("run", po::value<std::string>(),
                        "a run directory made by 'pathline run' or 'pathline train'")(
      "fresh",
      "draw fresh samples instead of using the run's samples.npy (implied by --set sample.*, solver.*, "
      "time_grid.*, and for runs without samples)")("nll", "also compute the likelihood metric nll")(
      "out", po::value<std::string>(), "write the results here (default: RUN_DIR/eval.json)");
  add_set_option(options);
  auto vm = parse("eval", args, options, single_positional("run"),
                  "RUN_DIR [--set metric[0].samples=500 ...] [--fresh] [--nll] [--out FILE]");
  if (!vm) return kOk;
  const std::string run = run_dir_argument(*vm);
  Session s;
  s.load(*vm);
  EvalOptions eval;
  eval.overrides = overrides_of(*vm);
  eval.fresh = vm->count("fresh") > 0;
  eval.nll = vm->count("nll") > 0;
  if (vm->count("out")) eval.out = (*vm)["out"].as<std::string>();
  auto file = eval_job(run, s.registry, eval, stderr_logger());
  std::cout << file.string() << "\n";
  return kOk;
}

// `pathline launch`: starts this machine's ranks of a data-parallel run as torchrun would (the same
// environment variables), forwards SIGINT/SIGTERM/SIGHUP to them, and ends with the first failing
// rank's status after stopping the others.
volatile std::sig_atomic_t g_forward_signal = 0;
extern "C" void on_launch_signal(int signal) { g_forward_signal = signal; }

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 29500;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t size = sizeof(address);
  int port = 29500;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) == 0)
    port = ntohs(address.sin_port);
  ::close(fd);
  return port;
}

int cmd_launch(const std::vector<std::string>& args) {
  auto separator = std::find(args.begin(), args.end(), "--");
  std::vector<std::string> own(args.begin(), separator);
  std::vector<std::string> command(separator == args.end() ? args.end() : separator + 1, args.end());
  po::options_description options("Options");
  options.add_options()("nproc-per-node", po::value<int>()->default_value(1),
                        "ranks to start on this machine")("nnodes", po::value<int>()->default_value(1),
                                                          "machines in the run")(
      "node-rank", po::value<int>()->default_value(0), "this machine's index, 0 .. nnodes - 1")(
      "master-addr", po::value<std::string>()->default_value("127.0.0.1"),
      "address of rank 0's machine (where the rendezvous store listens)")(
      "master-port", po::value<int>()->default_value(29500),
      "port of the rendezvous store; 0 picks a free one (one machine only)");
  auto vm = parse(
      "launch", own, options, {},
      "--nproc-per-node N [--nnodes M --node-rank R --master-addr A --master-port P] -- run|train|resume "
      "...");
  if (!vm) return kOk;
  const int nproc = (*vm)["nproc-per-node"].as<int>(), nnodes = (*vm)["nnodes"].as<int>();
  const int node = (*vm)["node-rank"].as<int>();
  int port = (*vm)["master-port"].as<int>();
  if (nproc < 1 || nproc > 1024) throw UsageError("--nproc-per-node must be 1 to 1024");
  if (nnodes < 1 || nnodes > 65536) throw UsageError("--nnodes must be at least 1");
  if (node < 0 || node >= nnodes) throw UsageError(fmt::format("--node-rank must be 0 to {}", nnodes - 1));
  if (port < 0 || port > 65535) throw UsageError("--master-port must be 0 to 65535");
  if (port == 0 && nnodes > 1) throw UsageError("--master-port 0 (a free port) works on one machine only");
  if (command.empty())
    throw UsageError(
        "nothing to launch: give the command after --, e.g. pathline launch --nproc-per-node 2 -- run "
        "configs/quickstart.toml");
  static const std::vector<std::string> trainable = {"run", "train", "resume"};
  if (std::find(trainable.begin(), trainable.end(), command[0]) == trainable.end())
    throw UsageError("launch runs 'run', 'train' or 'resume' on every rank, not '" + command[0] + "'");
  if (port == 0) port = free_port();
  if (!distributed_available())
    throw std::runtime_error(
        "this build cannot train across processes: it has no c10d Gloo backend (install "
        "libgloo-dev and rebuild)");

  struct sigaction action {};
  action.sa_handler = on_launch_signal;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &action, nullptr);

  const int world = nproc * nnodes;
  std::vector<pid_t> pids(static_cast<std::size_t>(nproc), -1);
  for (int local = 0; local < nproc; ++local) {
    const int rank = node * nproc + local;
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) {
      const std::string entry = *e;
      const std::string name = entry.substr(0, entry.find('='));
      if (name != "RANK" && name != "WORLD_SIZE" && name != "LOCAL_RANK" && name != "LOCAL_WORLD_SIZE" &&
          name != "MASTER_ADDR" && name != "MASTER_PORT" && name != "GROUP_RANK")
        env.push_back(entry);
    }
    for (const auto& [name, value] : std::vector<std::pair<std::string, std::string>>{
             {"RANK", std::to_string(rank)},
             {"WORLD_SIZE", std::to_string(world)},
             {"LOCAL_RANK", std::to_string(local)},
             {"LOCAL_WORLD_SIZE", std::to_string(nproc)},
             {"GROUP_RANK", std::to_string(node)},
             {"MASTER_ADDR", (*vm)["master-addr"].as<std::string>()},
             {"MASTER_PORT", std::to_string(port)}})
      env.push_back(name + "=" + value);
    std::vector<std::string> argv_text = {"pathline"};
    argv_text.insert(argv_text.end(), command.begin(), command.end());
    std::vector<char*> argv, envp;
    for (auto& a : argv_text) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    const int err = ::posix_spawn(&pids[static_cast<std::size_t>(local)], "/proc/self/exe", nullptr, nullptr,
                                  argv.data(), envp.data());
    if (err != 0) {
      for (pid_t pid : pids)
        if (pid > 0) ::kill(pid, SIGTERM);
      throw std::runtime_error(std::string("cannot start rank ") + std::to_string(rank) + ": " +
                               std::strerror(err));
    }
  }

  int result = 0, running = nproc;
  bool stopping = false, forwarded = false;
  auto stop_deadline = std::chrono::steady_clock::time_point::max();
  while (running > 0) {
    if (g_forward_signal != 0) {
      const int sig = g_forward_signal;
      g_forward_signal = 0;
      forwarded = true;
      for (pid_t pid : pids)
        if (pid > 0) ::kill(pid, sig);
    }
    int status = 0;
    const pid_t done = ::waitpid(-1, &status, WNOHANG);
    if (done > 0) {
      auto it = std::find(pids.begin(), pids.end(), done);
      if (it == pids.end()) continue;
      const int rank = node * nproc + static_cast<int>(it - pids.begin());
      *it = -1;
      --running;
      const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      if (code != 0 && result == 0) {
        result = code;
        if (!forwarded)
          std::cerr << "pathline launch: rank " << rank << " exited with status " << code
                    << (WIFSIGNALED(status)
                            ? std::string(" (signal ") + std::to_string(WTERMSIG(status)) + ")"
                            : "")
                    << (running > 0 ? "; stopping the other ranks" : "") << "\n";
        for (pid_t pid : pids)
          if (pid > 0) ::kill(pid, SIGTERM);
        stopping = true;
        stop_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
      }
      continue;
    }
    if (stopping && std::chrono::steady_clock::now() > stop_deadline) {
      for (pid_t pid : pids)
        if (pid > 0) ::kill(pid, SIGKILL);
      stop_deadline = std::chrono::steady_clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return result;
}

int cmd_bench(const std::vector<std::string>& args) {
  po::options_description options("Options");
  options.add_options()("job", po::value<std::string>(), "train, sample or peak")(
      "config", po::value<std::string>(), "pipeline TOML file (train, sample)")(
      "steps", po::value<std::int64_t>()->default_value(100), "timed training steps (train)")(
      "warmup", po::value<std::int64_t>()->default_value(10), "untimed steps or draws first")(
      "repeats", po::value<std::int64_t>()->default_value(3), "timed draws (sample) or products (peak)")(
      "size", po::value<std::int64_t>()->default_value(2048), "matrix size (peak)")(
      "threads", po::value<int>()->default_value(0), "threads (peak; 0: every core)")(
      "dtype", po::value<std::string>()->default_value("float32"), "float32 or bfloat16 (peak)");
  add_set_option(options);
  po::positional_options_description positional;
  positional.add("job", 1).add("config", 1);
  auto vm =
      parse("bench", args, options, positional,
            "train|sample CONFIG [--steps N] [--warmup N] [--repeats N] [--set key=value ...]\n"
            "       pathline bench peak [--size N] [--threads N] [--repeats N] [--dtype float32|bfloat16]");
  if (!vm) return kOk;
  const std::string job = required_positional(*vm, "job", "JOB (train, sample or peak)");
  BenchOptions bench;
  bench.warmup = (*vm)["warmup"].as<std::int64_t>();
  bench.steps = (*vm)["steps"].as<std::int64_t>();
  bench.repeats = (*vm)["repeats"].as<std::int64_t>();
  if (bench.warmup < 0 || bench.steps < 1 || bench.repeats < 1)
    throw UsageError("--steps and --repeats must be at least 1, --warmup at least 0");
  if (job == "peak") {
    const auto size = (*vm)["size"].as<std::int64_t>();
    if (size < 1 || size > 16384) throw UsageError("--size must be 1 to 16384");
    const std::string dtype = (*vm)["dtype"].as<std::string>();
    if (dtype != "float32" && dtype != "bfloat16")
      throw UsageError("--dtype must be float32 or bfloat16, got '" + dtype + "'");
    std::cout << bench_peak(size, (*vm)["threads"].as<int>(),
                            dtype == "bfloat16" ? torch::kBFloat16 : torch::kFloat32, bench)
              << "\n";
    return kOk;
  }
  if (job != "train" && job != "sample")
    throw UsageError("unknown job '" + job + "'; use train, sample or peak");
  Session s;
  const std::string file = required_positional(*vm, "config", "CONFIG (a pipeline TOML file)");
  PipelineConfig config = s.load_pipeline(*vm, file);
  std::cout << (job == "train" ? bench_train(config, s.registry, bench)
                               : bench_sample(config, s.registry, bench))
            << "\n";
  return kOk;
}

int dispatch(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout
        << "Usage: pathline [--version] [--help] COMMAND [ARGS]\n\n"
           "Pathline trains and samples flow-matching models from TOML pipelines whose parts are plugins.\n\n"
        << kCommands;
    return args.empty() ? kUsage : kOk;
  }
  if (args[0] == "--version" || args[0] == "-V") {
    std::cout << "pathline " << PATHLINE_VERSION << " (SDK ABI " << PATHLINE_SDK_ABI_VERSION << ", LibTorch "
              << TORCH_VERSION << ")\n";
    return kOk;
  }
  const std::string command = args[0];
  std::vector<std::string> rest(args.begin() + 1, args.end());
  try {
    if (command == "plugins") return cmd_plugins(rest);
    if (command == "inspect") return cmd_inspect(rest);
    if (command == "validate") return cmd_validate(rest);
    if (command == "run" || command == "train") return cmd_run(command, rest);
    if (command == "resume") return cmd_resume(rest);
    if (command == "ablate") return cmd_ablate(rest);
    if (command == "sample") return cmd_sample(rest);
    if (command == "eval") return cmd_eval(rest);
    if (command == "bench") return cmd_bench(rest);
    if (command == "launch") return cmd_launch(rest);
  } catch (const Interrupted& e) {
    Console::get().line(std::string("pathline ") + command + ": " + e.what());
    return 128 + e.signal;
  } catch (const UsageError& e) {
    Console::get().end_live();
    std::cerr << "pathline " << command << ": " << e.what() << " (see 'pathline " << command << " --help')\n";
    return kUsage;
  } catch (const ConfigError& e) {
    Console::get().end_live();
    for (const auto& line : e.problems()) std::cerr << line << "\n";
    return kUsage;
  } catch (const c10::Error& e) {
    Console::get().end_live();
    std::string what = e.what_without_backtrace();
    std::cerr << "pathline " << command << ": error: " << what.substr(0, what.find('\n')) << "\n";
    return kFailure;
  } catch (const std::exception& e) {
    Console::get().end_live();
    std::string what = e.what();
    std::cerr << "pathline " << command << ": error: " << what.substr(0, what.find('\n')) << "\n";
    return kFailure;
  }
  std::vector<std::string> commands = {"plugins", "inspect", "validate", "run",   "train", "resume",
                                       "sample",  "ablate",  "eval",     "bench", "launch"};
  std::string suggestion = closest_match(command, commands);
  std::cerr << "pathline: unknown command '" << command << "'"
            << (suggestion.empty() ? "" : "; did you mean '" + suggestion + "'?") << "\n\n"
            << kCommands;
  return kUsage;
}

// The commands that compute run on the BLAS kernels the processor supports: when the loaded
// OpenBLAS chose slower ones (blas_kernel_override), the process starts itself again with
// OPENBLAS_CORETYPE set, which OpenBLAS reads only as it loads. The others start as they are.
void use_fast_blas(int argc, char** argv) {
  static const std::vector<std::string> computing = {"run",    "train", "resume", "sample",
                                                     "ablate", "eval",  "bench"};
  if (argc < 2 || std::find(computing.begin(), computing.end(), argv[1]) == computing.end()) return;
  const char* check = std::getenv("PATHLINE_BLAS_CHECK");
  if (check && std::string(check) == "0") return;
  const auto core = blas_kernel_override();
  if (!core) return;
  ::setenv("OPENBLAS_CORETYPE", core->c_str(), 1);
  ::execv("/proc/self/exe", argv);  // returns only on failure: go on with the kernels there are
}

}  // namespace

int main(int argc, char** argv) {
  use_fast_blas(argc, argv);
  try {
    return dispatch(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "pathline: error: " << e.what() << "\n";
    return kFailure;
  } catch (...) {
    std::cerr << "pathline: error: unknown failure\n";
    return kFailure;
  }
}
