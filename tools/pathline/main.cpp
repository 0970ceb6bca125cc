// The `pathline` command line: the table of commands (command_table) and the commands other than
// `launch` (launch.cpp). Shared parts (options, the plugin session, the console) are in cli.cpp and
// console.cpp.
// Exit codes: 0 success, 2 bad usage or invalid config, 1 failure while running, 130 / 143 training
// stopped by SIGINT / SIGTERM (after a checkpoint).
// Results go to stdout; messages, progress and errors go to stderr.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "cli.hpp"
#include "pathline/engine/bench.hpp"
#include "pathline/engine/build.hpp"
#include "pathline/engine/io.hpp"
#include "process.hpp"

using namespace pathline;
using namespace pathline::cli;

namespace {

const std::vector<Command>& command_table();

// ------------------------------------------------------------------------------------------------

int cmd_plugins(const std::string& name, const std::vector<std::string>& args) {
  po::options_description options("Options");
  auto vm = parse(name, args, options, {}, "[--plugin-dir DIR]");
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

int cmd_inspect(const std::string& name, const std::vector<std::string>& args) {
  po::options_description options("Options");
  options.add_options()("what", po::value<std::vector<std::string>>(),
                        "KIND NAME, KIND.NAME or an engine table")(
      "markdown", "an engine table's keys as the Markdown table of docs/pipeline.md");
  po::positional_options_description positional;
  positional.add("what", -1);
  auto vm = parse(name, args, options, positional,
                  "KIND NAME | KIND.NAME | run|train|sample|eval [--markdown] | ablation");
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
    if (vm->count("markdown")) {
      std::cout << settings_markdown(engine_table_specs(what[0]));
      return kOk;
    }
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

int cmd_validate(const std::string& name, const std::vector<std::string>& args) {
  po::options_description options("Options");
  options.add_options()("config", po::value<std::string>(), "pipeline TOML file")(
      "print", "print the resolved config (every default filled in) to stdout");
  add_set_option(options);
  auto vm = parse(name, args, options, single_positional("config"), "CONFIG [--set key=value ...] [--print]");
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

// Runs an ablation's children as `pathline` processes (this very executable), stderr into their logs.
class ProcessRunner final : public ChildRunner {
 public:
  long start(const std::vector<std::string>& args, const std::filesystem::path& log) override {
    process::Spec spec;
    spec.program = "/proc/self/exe";
    spec.argv0 = std::filesystem::read_symlink("/proc/self/exe").string();
    spec.args = args;
    spec.out = "/dev/null";
    spec.err = log;
    return process::spawn(spec);
  }
  Finished finished() override {
    const auto done = process::wait_any();
    if (!done) return {};
    return {done->pid, done->code == 0,
            done->signal ? fmt::format("killed by signal {}", done->signal) : std::string()};
  }
};

int cmd_ablate(const std::string& name, const std::vector<std::string>& args) {
  po::options_description options("Options");
  options.add_options()("config", po::value<std::string>(), "pipeline TOML file with an [ablation] table")(
      "jobs,j", po::value<int>()->default_value(1), "variants run at once; the cores are split between them")(
      "out", po::value<std::string>(), "the ablation directory (default: <run.dir>/<config stem>-ablation)")(
      "dry-run", "expand and validate the sweep, list the variants, run nothing");
  add_set_option(options);
  auto vm = parse(name, args, options, single_positional("config"),
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
  ProcessRunner runner;
  ablate.runner = &runner;
  if (vm->count("plugin-dir")) ablate.plugin_dirs = (*vm)["plugin-dir"].as<std::vector<std::string>>();
  const AblateResult result = ablate_job(file, s.registry, ablate, stderr_logger());
  if (!result.dir.empty()) std::cout << result.dir.string() << "\n";
  // Some variants failed: the results are written, but the command says so.
  return result.failed == 0 ? kOk : kFailure;
}

int cmd_resume(const std::string& name, const std::vector<std::string>& args) {
  po::options_description options("Options");
  options.add_options()("run", po::value<std::string>(),
                        "a run directory made by 'pathline run' or 'pathline train'");
  add_set_option(options);
  auto vm = parse(name, args, options, single_positional("run"),
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

int cmd_sample(const std::string& name, const std::vector<std::string>& args) {
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
  auto vm = parse(name, args, options, single_positional("run"),
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

int cmd_eval(const std::string& name, const std::vector<std::string>& args) {
  po::options_description options("Options");
  options.add_options()("run", po::value<std::string>(),
                        "a run directory made by 'pathline run' or 'pathline train'")(
      "fresh",
      "draw fresh samples instead of using the run's samples.npy (implied by --set sample.*, solver.*, "
      "time_grid.*, and for runs without samples)")("nll", "also compute the likelihood metric nll")(
      "out", po::value<std::string>(), "write the results here (default: RUN_DIR/eval.json)");
  add_set_option(options);
  auto vm = parse(name, args, options, single_positional("run"),
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

int cmd_bench(const std::string& name, const std::vector<std::string>& args) {
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
      parse(name, args, options, positional,
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

// The one table of commands: `pathline --help`, dispatch, the suggestion for a mistyped name, the
// commands that compute (fast BLAS kernels first) and those `launch` may start all read it.
const std::vector<Command>& command_table() {
  static const std::vector<Command> table = {
      {"plugins", "plugins", "list loaded plugins and their components", cmd_plugins, false, false},
      {"inspect", "inspect KIND NAME",
       "show a component's parameters (also KIND.NAME, or an engine table: run, train, sample, eval)",
       cmd_inspect, false, false},
      {"validate", "validate CONFIG", "check a pipeline config and report every problem", cmd_validate, false,
       false},
      {"run", "run CONFIG", "train, sample and evaluate; writes a run directory", cmd_run, true, true},
      {"train", "train CONFIG", "train only; writes a run directory with the weights", cmd_run, true, true},
      {"resume", "resume RUN_DIR", "continue a stopped or killed run from its latest good checkpoint",
       cmd_resume, true, true},
      {"sample", "sample RUN_DIR", "sample and evaluate a trained run, optionally with another solver",
       cmd_sample, true, false},
      {"ablate", "ablate CONFIG",
       "run every variant of the config's [ablation] sweep; results.csv, .md and charts", cmd_ablate, true,
       false},
      {"eval", "eval RUN_DIR",
       "compute a run's metrics (and nll) on its samples or fresh ones into eval.json", cmd_eval, true,
       false},
      {"launch", "launch -- COMMAND",
       "start the ranks of a data-parallel run (as torchrun does) and watch them", cmd_launch, false, false},
      {"bench", "bench JOB [CONFIG]",
       "time the engine's training step, sampling or matrix products (JSON); the full\n"
       "comparison with PyTorch is tools/bench/run.sh",
       cmd_bench, true, false},
  };
  return table;
}

int dispatch(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout
        << "Usage: pathline [--version] [--help] COMMAND [ARGS]\n\n"
           "Pathline trains and samples flow-matching models from TOML pipelines whose parts are plugins.\n\n"
        << commands_help();
    return args.empty() ? kUsage : kOk;
  }
  if (args[0] == "--version" || args[0] == "-V") {
    std::cout << "pathline " << PATHLINE_VERSION << " (SDK ABI " << PATHLINE_SDK_ABI_VERSION << ", LibTorch "
              << TORCH_VERSION << ")\n";
    return kOk;
  }
  const std::string name = args[0];
  const Command* command = find_command(name);
  if (!command) {
    std::vector<std::string> names;
    for (const Command& c : commands()) names.push_back(c.name);
    std::string suggestion = closest_match(name, names);
    std::cerr << "pathline: unknown command '" << name << "'"
              << (suggestion.empty() ? "" : "; did you mean '" + suggestion + "'?") << "\n\n"
              << commands_help();
    return kUsage;
  }
  std::vector<std::string> rest(args.begin() + 1, args.end());
  try {
    return command->handler(name, rest);
  } catch (const Interrupted& e) {
    Console::get().line("pathline " + name + ": " + e.what());
    return 128 + e.signal;
  } catch (const UsageError& e) {
    Console::get().end_live();
    std::cerr << "pathline " << name << ": " << e.what() << " (see 'pathline " << name << " --help')\n";
    return kUsage;
  } catch (const ConfigError& e) {
    Console::get().end_live();
    for (const auto& line : e.problems()) std::cerr << line << "\n";
    return kUsage;
  } catch (const c10::Error& e) {
    Console::get().end_live();
    std::string what = e.what_without_backtrace();
    std::cerr << "pathline " << name << ": error: " << what.substr(0, what.find('\n')) << "\n";
    return kFailure;
  } catch (const std::exception& e) {
    Console::get().end_live();
    std::string what = e.what();
    std::cerr << "pathline " << name << ": error: " << what.substr(0, what.find('\n')) << "\n";
    return kFailure;
  }
}

// The commands that compute run on the BLAS kernels the processor supports: when the loaded
// OpenBLAS chose slower ones (blas_kernel_override), the process starts itself again with
// OPENBLAS_CORETYPE set, which OpenBLAS reads only as it loads. The others start as they are.
void use_fast_blas(int argc, char** argv) {
  if (argc < 2) return;
  const Command* command = find_command(argv[1]);
  if (!command || !command->computes) return;
  const char* check = std::getenv("PATHLINE_BLAS_CHECK");
  if (check && std::string(check) == "0") return;
  const auto core = blas_kernel_override();
  if (!core) return;
  ::setenv("OPENBLAS_CORETYPE", core->c_str(), 1);
  ::execv("/proc/self/exe", argv);  // returns only on failure: go on with the kernels there are
}

}  // namespace

namespace pathline::cli {

const std::vector<Command>& commands() { return command_table(); }

const Command* find_command(const std::string& name) {
  for (const Command& c : commands())
    if (name == c.name) return &c;
  return nullptr;
}

std::string commands_help() {
  std::string text = "Commands:\n";
  for (const Command& c : commands()) {
    std::string summary = c.summary;
    for (std::size_t at = summary.find('\n'); at != std::string::npos; at = summary.find('\n', at + 1))
      summary.insert(at + 1, std::string(23, ' '));
    text += fmt::format("  {:<20} {}\n", c.usage, summary);
  }
  return text + "\nRun 'pathline COMMAND --help' for a command's options.\n";
}

}  // namespace pathline::cli

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
