// The compiled half of the Python module `pathline` (pathline/_pathline*.so): the engine's jobs,
// registry and models over pybind11 with LibTorch's tensor casters. The public API, its checks of
// Python arguments and its docstrings are in pathline/__init__.py; this file turns every engine
// exception into a Python one, so that no call can take the interpreter down.
#include <fmt/format.h>
#include <torch/extension.h>

#include <csignal>
#include <filesystem>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "pathline/engine/ablate.hpp"
#include "pathline/engine/build.hpp"
#include "pathline/engine/host.hpp"
#include "pathline/engine/run.hpp"
#include "pathline/engine/sample.hpp"
#include "process.hpp"

namespace py = pybind11;
namespace fs = std::filesystem;
using namespace pathline;

namespace {

// ------------------------------------------------------------------------------------------------
// Exceptions

// One problem of an invalid config, as ConfigError.problems holds them.
struct Problem {
  std::string file;
  std::optional<std::int64_t> line, column;
  std::string message;
  std::string text;  // the engine's line: "file:line:column: message"
};

Problem parse_problem(const std::string& text) {
  static const std::regex located(R"(^(.*?):(\d+):(\d+): (.*)$)");
  static const std::regex named(R"(^(--set [^:]*|[^:]+): (.*)$)");
  std::smatch m;
  Problem p;
  p.text = text;
  if (std::regex_match(text, m, located)) {
    p.file = m[1];
    p.line = std::stoll(m[2]);
    p.column = std::stoll(m[3]);
    p.message = m[4];
  } else if (std::regex_match(text, m, named)) {
    p.file = m[1];
    p.message = m[2];
  } else {
    p.message = text;
  }
  return p;
}

// The Python exception types, made in PYBIND11_MODULE.
PyObject* g_error = nullptr;         // pathline.Error(RuntimeError)
PyObject* g_input_error = nullptr;   // pathline.InputError(Error, ValueError)
PyObject* g_config_error = nullptr;  // pathline.ConfigError(InputError)
PyObject* g_plugin_error = nullptr;  // pathline.PluginError(Error)

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

void raise_config_error(const ConfigError& e) {
  py::list problems;
  std::string message;
  for (const auto& line : e.problems()) {
    problems.append(py::cast(parse_problem(line)));
    message += (message.empty() ? "" : "\n") + line;
  }
  py::object error = py::reinterpret_borrow<py::object>(g_config_error)(message);
  error.attr("problems") = problems;
  PyErr_SetObject(g_config_error, error.ptr());
}

void translate(std::exception_ptr p) {
  try {
    std::rethrow_exception(p);
  } catch (const ConfigError& e) {
    raise_config_error(e);
  } catch (const Interrupted& e) {
    PyErr_SetString(PyExc_KeyboardInterrupt, e.what());
  } catch (const PluginCallError& e) {
    PyErr_SetString(g_plugin_error, e.what());
  } catch (const PluginError& e) {
    PyErr_SetString(g_plugin_error, e.what());
  } catch (const InputError& e) {
    PyErr_SetString(g_input_error, e.what());
  } catch (const Error& e) {
    PyErr_SetString(g_error, e.what());
  } catch (const c10::Error& e) {
    PyErr_SetString(g_error, first_line(e.what_without_backtrace()).c_str());
  }
}

// ------------------------------------------------------------------------------------------------
// Values

py::object to_python(const ParamValue& value) {
  return std::visit(
      [](const auto& v) -> py::object {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, double>) {
          if (std::isnan(v)) return py::str("auto");
          return py::float_(v);
        } else {
          return py::cast(v);
        }
      },
      value);
}

py::dict spec_dict(const ParamSpec& spec) {
  py::dict d;
  d["name"] = spec.name;
  d["type"] = to_string(spec.type);
  d["doc"] = spec.doc;
  d["required"] = spec.is_required();
  d["default"] = spec.default_value ? to_python(*spec.default_value) : py::none();
  d["choices"] = spec.choices;
  d["lower"] = spec.lower ? py::cast(*spec.lower) : py::none();
  d["upper"] = spec.upper ? py::cast(*spec.upper) : py::none();
  d["range"] = spec.range_text();
  d["list_size"] = spec.list_size ? py::cast(*spec.list_size) : py::none();
  d["multiple"] = spec.multiple ? py::cast(*spec.multiple) : py::none();
  d["allows_auto"] = spec.allows_auto;
  return d;
}

py::object plugin_dict(const std::shared_ptr<const PluginInfo>& plugin) {
  if (!plugin) return py::none();
  py::dict d;
  d["name"] = plugin->name;
  d["version"] = plugin->version;
  d["origin"] = plugin->origin;
  d["file"] = plugin->file.string();
  return d;
}

// A Logger that hands each line to a Python callable (taking the GIL); none: lines are dropped.
Logger python_logger(py::object log) {
  if (log.is_none()) return Logger();
  auto target = std::make_shared<py::object>(std::move(log));
  return [target](const std::string& line) {
    py::gil_scoped_acquire gil;
    try {
      (*target)(line);
    } catch (py::error_already_set&) {
      PyErr_Clear();  // a failing log callback must not stop the job
    }
  };
}

// Sets the live progress line for the length of a job (the engine prints plain progress lines
// when none is set; a Python caller shows its own progress instead).
class LiveProgressScope {
 public:
  explicit LiveProgressScope(bool quiet) : saved_(live_progress()), active_(quiet) {
    if (active_) set_live_progress([](const std::string&) {});
  }
  ~LiveProgressScope() {
    if (active_) set_live_progress(saved_);
  }
  LiveProgressScope(const LiveProgressScope&) = delete;
  LiveProgressScope& operator=(const LiveProgressScope&) = delete;

 private:
  Logger saved_;
  bool active_;
};

// ------------------------------------------------------------------------------------------------
// The engine: a registry with its plugins

class Engine {
 public:
  explicit Engine(const std::vector<std::string>& plugin_dirs) : dirs_(plugin_dirs) {
    std::vector<fs::path> dirs(plugin_dirs.begin(), plugin_dirs.end());
    host_.load_search_path(dirs);
  }

  const Registry& registry() const { return registry_; }
  const std::vector<std::string>& plugin_dirs() const { return dirs_; }

  py::dict plugins() const {
    py::list plugins;
    for (const auto& p : host_.plugins()) plugins.append(plugin_dict(p));
    py::dict components;
    for (Kind kind : kAllKinds) {
      py::list entries;
      for (const auto* e : registry_.list(kind)) {
        py::dict d;
        d["name"] = e->decl.name;
        d["doc"] = e->decl.doc;
        d["plugin"] = e->plugin ? py::cast(e->plugin->name) : py::cast("host");
        d["version"] = e->plugin ? e->plugin->version : std::string();
        entries.append(d);
      }
      components[to_string(kind)] = entries;
    }
    py::list failures;
    for (const auto& f : host_.failures()) {
      py::dict d;
      d["file"] = f.file.string();
      d["stage"] = f.stage;
      d["message"] = f.message;
      d["line"] = f.line();
      failures.append(d);
    }
    py::dict out;
    out["plugins"] = plugins;
    out["components"] = components;
    out["failures"] = failures;
    return out;
  }

  py::dict inspect(const std::string& kind_name, const std::string& name) const {
    py::dict out;
    auto kind = kind_from_string(kind_name);
    if (!kind)
      if (const SlotSpec* slot = find_slot(kind_name)) kind = slot->kind;
    if (!kind) {
      std::vector<std::string> kinds;
      for (Kind k : kAllKinds) kinds.push_back(to_string(k));
      std::string list;
      for (const auto& k : kinds) list += (list.empty() ? "" : ", ") + k;
      const std::string suggestion = closest_match(kind_name, kinds);
      throw InputError(fmt::format("unknown kind '{}'; {}kinds: {}", kind_name,
                                   suggestion.empty() ? "" : "did you mean '" + suggestion + "'? ", list));
    }
    const ComponentEntry* entry = registry_.find(*kind, name);
    if (!entry) {
      auto names = registry_.names(*kind);
      std::string list;
      for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
      const std::string suggestion = closest_match(name, names);
      throw InputError(fmt::format("unknown {} '{}'; {}registered: {}", to_string(*kind), name,
                                   suggestion.empty() ? "" : "did you mean '" + suggestion + "'? ",
                                   list.empty() ? "(none)" : list));
    }
    out["kind"] = to_string(*kind);
    out["name"] = entry->decl.name;
    out["doc"] = entry->decl.doc;
    out["plugin"] = plugin_dict(entry->plugin);
    py::dict suggests;
    for (const auto& [slot, type] : entry->decl.suggests) suggests[py::str(slot)] = type;
    out["suggests"] = suggests;
    py::list params;
    for (const auto& spec : entry->decl.params) params.append(spec_dict(spec));
    out["params"] = params;
    return out;
  }

 private:
  std::vector<std::string> dirs_;
  Registry registry_;
  PluginHost host_{registry_};
};

py::dict engine_table(const std::string& table) {
  if (std::find(kEngineTables.begin(), kEngineTables.end(), table) == kEngineTables.end())
    throw InputError("unknown engine table '" + table + "'; tables: run, train, sample, eval");
  py::dict out;
  out["kind"] = "engine table";
  out["name"] = table;
  out["doc"] = "[" + table + "] (engine table)";
  out["plugin"] = py::none();
  out["suggests"] = py::dict();
  py::list params;
  for (const auto& spec : engine_table_specs(table)) params.append(spec_dict(spec));
  out["params"] = params;
  return out;
}

// ------------------------------------------------------------------------------------------------
// Pipelines and jobs

struct Validated {
  std::string toml;                // the resolved config, every default written out
  std::vector<std::string> notes;  // what validation and building said
};

PipelineConfig load(const Engine& engine, const std::string& file,
                    const std::vector<std::string>& overrides) {
  ConfigOptions options;
  options.overrides = overrides;
  return load_config(file, engine.registry(), options);
}

Validated validate(const Engine& engine, const std::string& file, const std::vector<std::string>& overrides) {
  py::gil_scoped_release nogil;
  PipelineConfig config = load(engine, file, overrides);
  Validated v;
  v.notes = config.notes;
  for (auto& note : check_pipeline(config, engine.registry())) v.notes.push_back(std::move(note));
  v.toml = config.to_toml();
  return v;
}

// Runs a training job with Python's progress callable and Ctrl-C: `on_step(step, steps, loss,
// steps_per_second, seconds)` after each step (its own throttle is the caller's), returning true
// to stop; a pending KeyboardInterrupt (PyErr_CheckSignals) stops training after a checkpoint too.
// Whatever Python error stopped it (the interrupt, or one raised by on_step) is raised again after.
// With a progress display the engine's own progress lines are left out; without one (on_step None)
// the log gets them every [train] progress_every steps, as a command's log file does.
template <class Job>
std::string run_training(py::object on_step, py::object log, Job&& job) {
  struct Stop {
    std::optional<py::error_already_set> error;
  };
  auto stop = std::make_shared<Stop>();
  auto hook_target = std::make_shared<py::object>(std::move(on_step));
  StepHook hook = [stop, hook_target](const TrainProgress& p) -> bool {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) {
      stop->error.emplace();
      return true;
    }
    if (hook_target->is_none()) return false;
    try {
      return py::cast<bool>((*hook_target)(p.step, p.steps, p.loss, p.steps_per_second, p.seconds));
    } catch (py::error_already_set& e) {
      stop->error.emplace(std::move(e));
      return true;
    }
  };
  fs::path dir;
  try {
    LiveProgressScope quiet(!hook_target->is_none());
    Logger logger = python_logger(log);
    py::gil_scoped_release nogil;
    dir = job(hook, logger);
  } catch (const Interrupted& e) {
    if (stop->error) {
      // KeyboardInterrupt: say where the checkpoint is; another error: as it was raised.
      if (stop->error->matches(PyExc_KeyboardInterrupt)) {
        PyErr_SetString(PyExc_KeyboardInterrupt, e.what());
        throw py::error_already_set();
      }
      throw *stop->error;
    }
    throw;
  }
  if (stop->error) throw *stop->error;  // Ctrl-C in the last step: the run is complete, the interrupt stands
  return dir.string();
}

std::string run_pipeline(const Engine& engine, const std::string& file,
                         const std::vector<std::string>& overrides, std::optional<std::string> run_dir,
                         bool overwrite, bool do_sample, py::object on_step, py::object log) {
  PipelineConfig config;
  {
    py::gil_scoped_release nogil;
    config = load(engine, file, overrides);
  }
  return run_training(std::move(on_step), std::move(log), [&](const StepHook& hook, const Logger& logger) {
    JobOptions job;
    if (run_dir) job.run_dir = *run_dir;
    job.overwrite = overwrite;
    job.do_sample = do_sample;
    job.on_step = hook;
    return run_job(config, engine.registry(), job, logger);
  });
}

std::string resume_run(const Engine& engine, const std::string& run_dir,
                       const std::vector<std::string>& overrides, py::object on_step, py::object log) {
  return run_training(std::move(on_step), std::move(log), [&](const StepHook& hook, const Logger& logger) {
    ResumeOptions resume;
    resume.overrides = overrides;
    resume.on_step = hook;
    return resume_job(run_dir, engine.registry(), resume, logger);
  });
}

std::string sample_run(const Engine& engine, const std::string& run_dir,
                       const std::vector<std::string>& overrides, std::optional<std::string> out,
                       std::optional<std::string> weights, std::optional<std::string> noise, py::object log) {
  Logger logger = python_logger(std::move(log));
  py::gil_scoped_release nogil;
  std::optional<fs::path> out_dir, weights_file, noise_file;
  if (out) out_dir = *out;
  if (weights) weights_file = *weights;
  if (noise) noise_file = *noise;
  return sample_job(run_dir, engine.registry(), overrides, out_dir, logger, weights_file, noise_file)
      .string();
}

std::string eval_run(const Engine& engine, const std::string& run_dir,
                     const std::vector<std::string>& overrides, bool fresh, bool nll,
                     std::optional<std::string> out, py::object log) {
  Logger logger = python_logger(std::move(log));
  py::gil_scoped_release nogil;
  EvalOptions eval;
  eval.overrides = overrides;
  eval.fresh = fresh;
  eval.nll = nll;
  if (out) eval.out = *out;
  return eval_job(run_dir, engine.registry(), eval, logger).string();
}

// ------------------------------------------------------------------------------------------------
// Ablations: children are `pathline` processes, the executable built and installed beside the
// engine library (<lib>/../bin/pathline).

fs::path pathline_executable() {
  return PluginHost::builtin_plugin_dir().parent_path().parent_path().parent_path() / "bin" / "pathline";
}

class ExecutableRunner final : public ChildRunner {
 public:
  explicit ExecutableRunner(fs::path program) : program_(std::move(program)) {}
  long start(const std::vector<std::string>& args, const fs::path& log) override {
    process::Spec spec;
    spec.program = program_;
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

 private:
  fs::path program_;
};

py::dict ablate(const Engine& engine, const std::string& file, const std::vector<std::string>& overrides,
                int jobs, std::optional<std::string> out, bool dry_run, py::object log) {
  if (jobs < 1) throw InputError(fmt::format("jobs must be at least 1, got {}", jobs));
  const fs::path program = pathline_executable();
  std::error_code ec;
  if (!dry_run && !fs::exists(program, ec))
    throw Error(program.string() + ": the pathline executable that runs an ablation's variants is not there");
  AblateOptions options;
  options.overrides = overrides;
  options.jobs = jobs;
  if (out) options.out = *out;
  options.dry_run = dry_run;
  options.plugin_dirs = engine.plugin_dirs();
  ExecutableRunner runner(program);
  options.runner = &runner;
  Logger logger = python_logger(std::move(log));
  AblateResult result;
  {
    py::gil_scoped_release nogil;
    result = ablate_job(file, engine.registry(), options, logger);
  }
  py::dict d;
  d["dir"] = result.dir.string();
  d["variants"] = result.variants;
  d["failed"] = result.failed;
  return d;
}

// ------------------------------------------------------------------------------------------------
// A trained run: its model as a function, and sampling

class TrainedRun {
 public:
  // Keeps the engine (whose plugin libraries hold the components' code) alive as long as the run.
  TrainedRun(std::shared_ptr<Engine> engine, const std::string& run_dir,
             const std::vector<std::string>& overrides, std::optional<std::string> weights)
      : engine_(std::move(engine)) {
    py::gil_scoped_release nogil;
    std::optional<fs::path> file;
    if (weights) file = *weights;
    run_ = std::make_unique<LoadedRun>(open_run(run_dir, engine_->registry(), overrides, file));
    run_->components.model->eval();
  }

  Components& components() { return run_->components; }
  const PipelineConfig& config() const { return run_->config; }
  std::string weights() const { return run_->weights; }
  std::vector<std::int64_t> shape() const { return run_->components.flow().shape; }
  std::int64_t num_classes() const { return run_->components.data().num_classes; }
  std::string predicts() { return to_string(components().parameterization->predicts()); }
  std::string device() const { return run_device(config()).str(); }

  // The model at (x, t): its own prediction (raw) or the velocity it implies on the path.
  torch::Tensor call(const torch::Tensor& x, const torch::Tensor& t_in,
                     const std::optional<torch::Tensor>& labels, bool raw) {
    Components& c = components();
    const auto& shape = c.flow().shape;
    std::vector<std::int64_t> want = {-1};
    want.insert(want.end(), shape.begin(), shape.end());
    if (!x.is_floating_point())
      throw py::type_error(
          fmt::format("x must be a floating-point tensor, got {}", c10::toString(x.scalar_type())));
    bool ok = x.dim() == static_cast<std::int64_t>(shape.size()) + 1 && x.size(0) >= 1;
    for (std::size_t i = 0; ok && i < shape.size(); ++i)
      ok = x.size(static_cast<std::int64_t>(i) + 1) == shape[i];
    if (!ok)
      throw py::value_error(fmt::format("x must have shape [n, {}] for this run's model, got {}",
                                        shape_text(shape).substr(1, shape_text(shape).size() - 2),
                                        shape_text(x.sizes().vec())));
    const std::int64_t n = x.size(0);
    if (!t_in.is_floating_point() && t_in.scalar_type() != torch::kLong && t_in.scalar_type() != torch::kInt)
      throw py::type_error("t must be a number or a tensor of numbers");
    if (!(t_in.dim() == 0 || (t_in.dim() == 1 && (t_in.size(0) == n || t_in.size(0) == 1))))
      throw py::value_error(fmt::format("t must be a number, or a tensor of shape [] or [{}], got {}", n,
                                        shape_text(t_in.sizes().vec())));
    const torch::Device device = model_device();
    const auto options = torch::TensorOptions().dtype(torch::kFloat32).device(device);
    torch::Tensor xs = x.to(options);
    torch::Tensor ts = t_in.to(options).reshape({-1}).expand({n}).contiguous();
    if (!torch::isfinite(ts).all().item<bool>()) throw py::value_error("t must be finite");
    Condition condition;
    if (labels) {
      const torch::Tensor& l = *labels;
      if (l.is_floating_point() || l.is_complex() || l.scalar_type() == torch::kBool)
        throw py::type_error("labels must be integers");
      if (!(l.dim() == 1 && l.size(0) == n) && l.dim() != 0)
        throw py::value_error(fmt::format("labels must be an integer or a tensor of shape [{}], got {}", n,
                                          shape_text(l.sizes().vec())));
      if (c.data().num_classes <= 0) throw py::value_error("this run's data has no labels; pass labels=None");
      torch::Tensor ls =
          l.to(torch::TensorOptions().dtype(torch::kLong).device(device)).reshape({-1}).expand({n});
      const torch::Tensor valid = ((ls >= 0) & (ls < c.data().num_classes)) | (ls == kNullLabel);
      if (!valid.all().item<bool>())
        throw py::value_error(fmt::format("labels must be 0 to {} (or {} for unconditional)",
                                          c.data().num_classes - 1, kNullLabel));
      condition.labels = ls.contiguous();
    }
    torch::Tensor out;
    {
      py::gil_scoped_release nogil;
      out = plugin_call(c.origin("model"), "forward", [&] { return c.model->forward(xs, ts, condition); });
      if (out.scalar_type() != torch::kFloat32) out = out.to(torch::kFloat32);
      if (!raw && c.parameterization->predicts() != Quantity::velocity) {
        auto coefficients = plugin_call(c.origin("path"), "coefficients", [&] {
                              return c.path->coefficients(ts);
                            }).broadcast_to_rank(static_cast<std::int64_t>(shape.size()) + 1);
        out = plugin_call(c.origin("parameterization"), "convert", [&] {
          return c.parameterization->convert(out, xs, coefficients, Quantity::velocity);
        });
      }
    }
    return out.to(x.device());
  }

  // Samples with the run's config (the overrides given when it was opened); noise: the source points.
  py::tuple sample(const std::optional<torch::Tensor>& noise) {
    torch::Tensor x0;
    if (noise) {
      if (!noise->is_floating_point())
        throw py::type_error(fmt::format("noise must be a floating-point tensor, got {}",
                                         c10::toString(noise->scalar_type())));
      x0 = noise->to(torch::kFloat32).cpu().contiguous();
      check_noise(x0, components().flow());
    }
    SampleResult s;
    {
      py::gil_scoped_release nogil;
      s = pathline::sample(run_->config, run_->components, {}, x0);
    }
    py::dict info;
    info["nfe"] = s.nfe;
    info["seconds"] = s.seconds;
    info["t_start"] = s.interval.t_start;
    info["t_end"] = s.interval.t_end;
    info["final_denoise"] = s.interval.denoise;
    info["solver_statistics"] = s.solver_statistics;
    return py::make_tuple(s.samples, s.labels.defined() ? py::cast(s.labels) : py::none(),
                          s.trajectories.defined() ? py::cast(s.trajectories) : py::none(), s.times, info);
  }

 private:
  std::shared_ptr<Engine> engine_;
  std::unique_ptr<LoadedRun> run_;  // destroyed before the engine

  torch::Device model_device() {
    for (const auto& p : run_->components.model->parameters()) return p.device();
    return run_device(run_->config);
  }
};

}  // namespace

PYBIND11_MODULE(_pathline, m) {
  m.doc() = "The compiled core of pathline (see pathline/__init__.py for the API).";
  py::register_exception_translator(translate);

  // The exception types, with the engine's classes of failure as their bases say.
  auto make = [&](const char* name, const char* doc, py::handle bases) {
    py::object type = py::reinterpret_steal<py::object>(
        PyErr_NewExceptionWithDoc((std::string("pathline.") + name).c_str(), doc, bases.ptr(), nullptr));
    if (!type) throw py::error_already_set();
    m.attr(name) = type;
    return type;
  };
  py::object error =
      make("Error", "A job failed: the engine's one-line message (what the CLI prints after 'error:').",
           PyExc_RuntimeError);
  py::object input_error =
      make("InputError", "Bad input (a file, a run directory, an argument): the engine's one-line message.",
           py::make_tuple(error, py::handle(PyExc_ValueError)));
  py::object config_error =
      make("ConfigError",
           "An invalid pipeline. `problems` lists every problem (file, line, column, message), the lines "
           "'pathline validate' prints.",
           input_error);
  py::object plugin_error =
      make("PluginError",
           "A plugin failed to load or failed inside one of its components; the message names it.", error);
  g_error = error.ptr();
  g_input_error = input_error.ptr();
  g_config_error = config_error.ptr();
  g_plugin_error = plugin_error.ptr();

  py::class_<Problem>(m, "Problem",
                      "One problem of an invalid pipeline: where it was given and what is wrong.")
      .def_readonly("file", &Problem::file, "The file (or '--set key=value' for an override).")
      .def_readonly("line", &Problem::line, "1-based line, or None where the problem has no place in a file.")
      .def_readonly("column", &Problem::column, "1-based column, or None.")
      .def_readonly("message", &Problem::message, "What is wrong.")
      .def("__str__", [](const Problem& p) { return p.text; })
      .def("__repr__", [](const Problem& p) {
        return fmt::format("Problem(file={}, line={}, column={}, message={})",
                           std::string(py::repr(py::str(p.file))), p.line ? std::to_string(*p.line) : "None",
                           p.column ? std::to_string(*p.column) : "None",
                           std::string(py::repr(py::str(p.message))));
      });

  py::class_<Engine, std::shared_ptr<Engine>>(m, "Engine")
      .def(py::init<const std::vector<std::string>&>(), py::arg("plugin_dirs"))
      .def("plugins", &Engine::plugins)
      .def("inspect", &Engine::inspect, py::arg("kind"), py::arg("name"))
      .def_property_readonly("plugin_dirs", &Engine::plugin_dirs);

  py::class_<Validated>(m, "Validated")
      .def_readonly("toml", &Validated::toml)
      .def_readonly("notes", &Validated::notes);

  m.def("engine_table", &engine_table, py::arg("table"));
  m.def("validate", &validate, py::arg("engine"), py::arg("file"), py::arg("overrides"));
  m.def("run", &run_pipeline, py::arg("engine"), py::arg("file"), py::arg("overrides"), py::arg("run_dir"),
        py::arg("overwrite"), py::arg("do_sample"), py::arg("on_step"), py::arg("log"));
  m.def("resume", &resume_run, py::arg("engine"), py::arg("run_dir"), py::arg("overrides"),
        py::arg("on_step"), py::arg("log"));
  m.def("sample_run", &sample_run, py::arg("engine"), py::arg("run_dir"), py::arg("overrides"),
        py::arg("out"), py::arg("weights"), py::arg("noise"), py::arg("log"));
  m.def("eval_run", &eval_run, py::arg("engine"), py::arg("run_dir"), py::arg("overrides"), py::arg("fresh"),
        py::arg("nll"), py::arg("out"), py::arg("log"));
  m.def("ablate", &ablate, py::arg("engine"), py::arg("file"), py::arg("overrides"), py::arg("jobs"),
        py::arg("out"), py::arg("dry_run"), py::arg("log"));
  m.def("pathline_executable", [] { return pathline_executable().string(); });
  m.def("builtin_plugin_dir", [] { return PluginHost::builtin_plugin_dir().string(); });
  m.def("version", [] { return std::string(PATHLINE_VERSION); });
  m.attr("sdk_abi") = PATHLINE_SDK_ABI_VERSION;

  py::class_<TrainedRun>(m, "TrainedRun")
      .def(py::init<std::shared_ptr<Engine>, const std::string&, const std::vector<std::string>&,
                    std::optional<std::string>>(),
           py::arg("engine"), py::arg("run_dir"), py::arg("overrides"), py::arg("weights"))
      .def("__call__", &TrainedRun::call, py::arg("x"), py::arg("t"), py::arg("labels"), py::arg("raw"))
      .def("sample", &TrainedRun::sample, py::arg("noise"))
      .def_property_readonly("toml", [](const TrainedRun& r) { return r.config().to_toml(); })
      .def_property_readonly("weights", &TrainedRun::weights)
      .def_property_readonly("shape", &TrainedRun::shape)
      .def_property_readonly("num_classes", &TrainedRun::num_classes)
      .def_property_readonly("predicts", &TrainedRun::predicts)
      .def_property_readonly("device", &TrainedRun::device)
      .def_property_readonly("notes", [](TrainedRun& r) { return r.components().notes; });
}
