#include "pathline/engine/build.hpp"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <dlfcn.h>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "pathline/engine/io.hpp"
#include "pathline/engine/random.hpp"
#include "pathline/engine/run.hpp"
#include "pathline/engine/sample.hpp"

namespace pathline {

namespace fs = std::filesystem;

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

bool cuda_visible() { return torch::cuda::is_available(); }

std::string cuda_absence() {
#if !defined(PATHLINE_TORCH_HAS_CUDA)
  return fmt::format("this LibTorch {} was built without CUDA", TORCH_VERSION);
#else
  return fmt::format(
      "this LibTorch {} has CUDA compiled in but finds no GPU (no NVIDIA driver, no device, or "
      "CUDA_VISIBLE_DEVICES hides them)",
      TORCH_VERSION);
#endif
}

torch::Device run_device(const PipelineConfig& config) {
  const std::string& name = config.run.device;
  if (name == "cpu" || (name == "auto" && !cuda_visible())) return torch::Device(torch::kCPU);
  if (!cuda_visible())
    throw InputError(fmt::format("run.device = \"cuda\", but {}; use \"auto\" or \"cpu\"", cuda_absence()));
  int index = 0;
  if (const char* local = std::getenv("LOCAL_RANK"); local && *local) index = std::atoi(local);
  const int count = static_cast<int>(torch::cuda::device_count());
  if (index >= count)
    throw InputError(fmt::format("run.device = \"{}\": this is local rank {}, but only {} GPU{} visible",
                                 name, index, count, count == 1 ? " is" : "s are"));
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
}

void apply_thread_setting(const PipelineConfig& config) {
  std::int64_t threads = config.run.threads;
  if (threads <= 0) {
    // Data parallel: the ranks on this machine share its cores.
    int local = 1;
    if (const char* text = std::getenv("LOCAL_WORLD_SIZE")) local = std::max(1, std::atoi(text));
    threads = std::max<std::int64_t>(1, std::thread::hardware_concurrency() / local);
  }
  at::set_num_threads(static_cast<int>(threads));
  keep_freed_memory();
}

std::string blas_kernel_name() {
  using CoreName = char* (*)();
  auto name = reinterpret_cast<CoreName>(::dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (!name) return "";
  const char* text = name();
  return text ? text : "";
}

std::optional<std::string> blas_kernel_override() {
  if (std::getenv("OPENBLAS_CORETYPE")) return std::nullopt;
  std::string core = blas_kernel_name();
  if (core.empty()) return std::nullopt;
  std::transform(core.begin(), core.end(), core.begin(), [](unsigned char c) { return std::tolower(c); });
  // What the kernels OpenBLAS chose need of the processor: 3 AVX-512, 2 AVX2 + FMA, 1 AVX, 0 SSE.
  // A name not listed here is a family this code does not know: its choice is left alone.
  static const std::vector<std::pair<std::string, int>> levels = {
      {"prescott", 0},    {"core2", 0},     {"penryn", 0},     {"dunnington", 0},   {"nehalem", 0},
      {"atom", 0},        {"nano", 0},      {"opteron", 0},    {"opteron_sse3", 0}, {"barcelona", 0},
      {"bobcat", 0},      {"katmai", 0},    {"coppermine", 0}, {"northwood", 0},    {"banias", 0},
      {"sandybridge", 1}, {"bulldozer", 1}, {"piledriver", 2}, {"steamroller", 2},  {"excavator", 2},
      {"haswell", 2},     {"zen", 2},       {"skylakex", 3},   {"cooperlake", 3},   {"sapphirerapids", 3}};
  auto known = std::find_if(levels.begin(), levels.end(), [&](const auto& l) { return l.first == core; });
  if (known == levels.end()) return std::nullopt;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // __builtin_cpu_supports also checks that the operating system saves the wider registers.
  if (known->second < 3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512cd"))
    return std::string("SKYLAKEX");
  if (known->second < 2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return std::string("HASWELL");
  if (known->second < 1 && __builtin_cpu_supports("avx")) return std::string("SANDYBRIDGE");
#endif
  return std::nullopt;
}

void keep_freed_memory() {
#if defined(__GLIBC__)
  // A training step frees and reallocates the same few megabyte-sized activations thousands of
  // times. By default glibc returns such blocks to the system (mmap/munmap, or trimming the heap's
  // top) and the next step faults every page back in, zero-filled: measured here, that made a small
  // CNN's step 3.5x slower, and sampling a U-Net at 400 images a batch (40 MB activations) 4x slower
  // than at 200. Serve every block from the heap (no mmap, whatever the size), and keep up to 1 GB
  // of freed top and 128 MB of slack instead of trimming.
  static const bool once = [] {
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    mallopt(M_TOP_PAD, 128 << 20);
    return true;
  }();
  (void)once;
#endif
}

namespace {

// Builds one slot: an InputError from the factory is a config problem, reported where the component
// is named; anything else it throws names the slot, the component and its plugin file.
template <class Interface>
std::shared_ptr<Interface> build_slot(const ComponentConfig& cc, const Registry& registry, BuildContext& ctx,
                                      ComponentOrigin& origin) {
  ctx.slot = cc.slot;
  origin.slot = cc.name.empty() ? cc.slot : cc.slot + "." + cc.name;
  origin.type = cc.type;
  origin.where = cc.where;
  if (const ComponentEntry* entry = registry.find(KindOf<Interface>::value, cc.type))
    origin.plugin = entry->plugin;
  try {
    return registry.create<Interface>(cc.type, cc.params, ctx);
  } catch (const ConfigError&) {
    throw;
  } catch (const InputError& e) {
    // The component refused its parameters (a check across keys, or against the data).
    // Components after an autoencoder see its latent space, which the user did not write down.
    const bool latent = !ctx.flow.shape.empty() && ctx.flow.shape != ctx.data.shape && cc.slot != "metric";
    throw ConfigError({fmt::format("{}: [{}] (type '{}'): {}{}", cc.where, cc.slot, cc.type, e.what(),
                                   latent ? fmt::format(" (the flow runs in the autoencoder's latent space, "
                                                        "samples of shape {})",
                                                        shape_text(ctx.flow.shape))
                                          : std::string())});
  } catch (...) {
    rethrow_from_plugin(origin, "building it");
  }
}

template <class Interface>
std::shared_ptr<Interface> build_slot(const ComponentConfig& cc, const Registry& registry, Components& c) {
  return build_slot<Interface>(cc, registry, c.context, c.origins[cc.slot]);
}

void check_labels(const PipelineConfig& config, const DataInfo& data, const std::string& dataset_type) {
  const double guidance = config.sample.guidance_scale;
  const auto& labels = config.sample.labels;
  auto problem = [&](const std::string& key, const std::string& message) {
    return ConfigError({config.position_of(key) + ": " + message});
  };
  if (!data.labelled()) {
    if (guidance != 1.0)
      throw problem(
          "sample.guidance_scale",
          fmt::format("sample.guidance_scale = {} needs labelled data, but dataset '{}' has no labels; "
                      "set guidance_scale = 1 or use a labelled data set",
                      guidance, dataset_type));
    if (!labels.empty())
      throw problem(
          "sample.labels",
          fmt::format("sample.labels is set, but dataset '{}' has no labels; remove it", dataset_type));
    return;
  }
  for (std::int64_t label : labels)
    if (label != kNullLabel && (label < 0 || label >= data.num_classes))
      throw problem(
          "sample.labels",
          fmt::format("sample.labels: {} is not a class of dataset '{}' (classes 0 to {}, or -1 for "
                      "unconditional samples)",
                      label, dataset_type, data.num_classes - 1));
}

// The sampling interval and the solver's grid resolve, and the solver follows the path's exact flow
// of a point mass closely enough (noise_scale_error): refused at the solver's default steps, a note
// when the user chose the steps. The advice names the steps that would do, where doubling finds them.
void check_sampling(const PipelineConfig& config, const Registry& registry, Components& c) {
  const ComponentConfig& solver = config.component("solver");
  SamplingInterval interval;
  try {
    interval = sampling_interval(config, c);
    solver_times(c, interval.t_start, interval.t_end);
  } catch (const ConfigError&) {
    throw;
  } catch (const InputError& e) {
    // The sampling interval and the grid come from [sample], [solver] and [time_grid] together.
    throw ConfigError({fmt::format("{}: {}", solver.where, e.what())});
  }
  if (!(interval.t_start < interval.t_end)) return;  // sample() says why
  // The point mass's exact flow is that of the affine path's coefficients; another path has its own.
  if (!c.path->affine()) return;
  // A model trained on intervals gives solvers its average velocity (MeanFlow's one step).
  const std::vector<std::string> times = c.model->times();
  const bool intervals = std::find(times.begin(), times.end(), kIntervalEnd) != times.end();
  const double error = plugin_call(c.origin("solver"), "solving the point-mass check", [&] {
    return noise_scale_error(*c.solver, *c.time_grid, *c.path, interval.t_start, interval.t_end, intervals);
  });
  if (error <= kMaxNoiseScaleError) return;
  const std::int64_t steps = c.solver->grid_steps();
  std::string advice;
  if (steps > 0) {
    for (std::int64_t more = 2 * steps; more <= 64 * steps; more *= 2) {
      Params params = solver.params;
      params.set("steps", more);
      auto candidate = plugin_call(c.origin("solver"), "building it",
                                   [&] { return registry.create<Solver>(solver.type, params, c.context); });
      const double e = plugin_call(c.origin("solver"), "solving the point-mass check", [&] {
        return noise_scale_error(*candidate, *c.time_grid, *c.path, interval.t_start, interval.t_end,
                                 intervals);
      });
      if (e <= kMaxNoiseScaleError) {
        advice = fmt::format("solver.steps = {} ({:.1f}%), ", more, 100 * e);
        break;
      }
    }
  }
  const std::string what = fmt::format(
      "solver '{}'{} on path '{}' (time grid '{}') misses the exact flow by {:.1f}% where the noise "
      "dominates (a point mass at 0: x_t = sigma_t x0; at most {:.0f}% at the solver's default steps); "
      "{}a higher-order solver (midpoint, heun) or dpmpp_2m samples this path well",
      solver.type, steps > 0 ? fmt::format(" with {} steps", steps) : std::string(),
      config.component("path").type, config.component("time_grid").type, 100 * error,
      100 * kMaxNoiseScaleError, advice);
  if (config.positions.count("solver.steps")) {
    c.notes.push_back(what);
    return;
  }
  throw ConfigError({fmt::format("{}: {}", solver.where, what)});
}

// A path that is not affine (its own Path::sample) gives velocity targets only, and the conversions
// a solver might ask for (noise, data, score from the velocity) assume the affine form.
void check_non_affine(const PipelineConfig& config, const Components& c) {
  if (c.path->affine()) return;
  const ComponentConfig& path = config.component("path");
  if (c.parameterization->predicts() != Quantity::velocity) {
    const ComponentConfig& p = config.component("parameterization");
    throw ConfigError({fmt::format(
        "{}: [parameterization] (type '{}') predicts the {}, but path '{}' is not affine (x_t is not "
        "alpha_t x1 + sigma_t x0): it trains velocity predictions only; use type = \"velocity\"",
        p.where, p.type, to_string(c.parameterization->predicts()), path.type)});
  }
  for (Quantity q : c.solver->quantities())
    if (q != Quantity::velocity) {
      const ComponentConfig& solver = config.component("solver");
      throw ConfigError({fmt::format(
          "{}: [solver] (type '{}') asks for the {}, which follows from the velocity only on an affine "
          "path, and path '{}' is not one; use a velocity solver (euler, midpoint, heun, rk4, dopri5, ...)",
          solver.where, solver.type, to_string(q), path.type)});
    }
}

// A trained autoencoder's run (a pipeline without [model]), checked against the flow pipeline that
// names it in [autoencoder] run: the same type, the same data set and sample shape, and no key the
// pipeline sets that the run trained with another value. Rebuilds the component with the run's
// settings when the pipeline left some at defaults the run did not use, loads the weights and reads
// the latent scale. Every problem is one ConfigError line at the `run` key.
void load_autoencoder_run(const PipelineConfig& config, const Registry& registry, Components& c) {
  const ComponentConfig& given = config.component("autoencoder");
  const std::string run = config.autoencoder_run();
  const std::string where = config.position_of("autoencoder.run");
  auto problem = [&](const std::string& message) {
    return ConfigError({fmt::format("{}: [autoencoder] run = \"{}\": {}", where, run, message)});
  };
  const fs::path dir = run;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    return void(
        throw problem("no such run directory (train one with a pipeline that has this [autoencoder] "
                      "and no [model], e.g. pathline run configs/fmnist-vae.toml)"));
  if (!fs::is_regular_file(dir / "config.toml", ec))
    throw problem("not a run directory (it has no config.toml)");
  PipelineConfig trained;
  try {
    ConfigOptions options;
    options.check_device = false;
    trained = load_config(dir / "config.toml", registry, options);
  } catch (const InputError& e) {
    std::string first = e.what();
    throw problem("its config.toml does not load: " + first.substr(0, first.find('\n')));
  }
  if (!trained.trains_autoencoder())
    throw problem(
        "a flow run (its pipeline has a [model]), not an autoencoder run; name the run of a pipeline "
        "with this [autoencoder] and no [model]");
  const ComponentConfig& ae = trained.component("autoencoder");
  if (ae.type != given.type)
    throw problem(
        fmt::format("that run trained autoencoder '{}', but this pipeline names '{}'", ae.type, given.type));
  const std::string data_type = config.component("dataset").type;
  if (trained.component("dataset").type != data_type)
    throw problem(fmt::format("that autoencoder was trained on dataset '{}', but this pipeline's is '{}'",
                              trained.component("dataset").type, data_type));
  for (const auto& key : given.order) {
    if (!config.positions.count("autoencoder." + key)) continue;  // left at its default: the run's holds
    if (!ae.params.contains(key) || format_value(ae.params.at(key)) == format_value(given.params.at(key)))
      continue;
    throw ConfigError({fmt::format(
        "{}: [autoencoder] {} = {}, but run \"{}\" trained it with {} = {}; remove the key (a trained "
        "autoencoder's settings come from its run) or train another",
        config.position_of("autoencoder." + key), key, format_value(given.params.at(key)), run, key,
        format_value(ae.params.at(key)))});
  }
  const fs::path weights = dir / kAutoencoderWeights;
  if (!fs::is_regular_file(weights, ec))
    throw problem(
        fmt::format("it has no {} (has it finished training? pathline resume {})", kAutoencoderWeights, run));
  std::map<std::string, std::string> metadata;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  try {
    tensors = read_safetensors(weights, &metadata);
  } catch (const InputError& e) {
    throw problem(e.what());
  }
  const std::string shape = shape_text(c.context.data.shape);
  if (auto it = metadata.find("pathline.data_shape"); it != metadata.end() && it->second != shape)
    throw problem(
        fmt::format("that autoencoder was trained on samples of shape {}, but this pipeline's dataset "
                    "gives {}",
                    it->second, shape));
  auto scale = metadata.find("pathline.latent_scale");
  double value = 0.0;
  if (scale != metadata.end()) {
    try {
      value = std::stod(scale->second);
    } catch (const std::exception&) {
      value = 0.0;
    }
  }
  if (!(value > 0.0) || !std::isfinite(value))
    throw problem(fmt::format("{} has no valid pathline.latent_scale in its metadata", weights.string()));
  // The run's settings where the pipeline kept defaults that differ from them.
  bool differ = false;
  for (const auto& key : ae.order)
    differ = differ || !given.params.contains(key) ||
             format_value(ae.params.at(key)) != format_value(given.params.at(key));
  if (differ)
    c.autoencoder = plugin_call(c.origin("autoencoder"), "building it with its run's settings",
                                [&] { return registry.create<Autoencoder>(ae.type, ae.params, c.context); });
  try {
    load_named_weights(*c.autoencoder, tensors, weights);
  } catch (const InputError& e) {
    throw problem(e.what());
  }
  c.latent_scale = value;
  c.autoencoder_run = dir;
}

// What the engine does with a slot's component as soon as it is built: later slots see it in their
// BuildContext, and what only the built component can tell is checked before going on.
void after_building(const std::string& slot, const PipelineConfig& config, const Registry& registry,
                    Components& c) {
  BuildContext& ctx = c.context;
  if (slot == "dataset") {
    const ComponentConfig& dataset = config.component("dataset");
    ctx.data = c.dataset->info();
    ctx.flow = ctx.data;  // no component maps the data to another space (yet)
    ctx.dataset = c.dataset;
    if (ctx.data.shape.empty())
      throw ConfigError({fmt::format("{}: [dataset] (type '{}'): it reports an empty sample shape",
                                     dataset.where, dataset.type)});
    check_labels(config, ctx.data, dataset.type);
  } else if (slot == "autoencoder") {
    const ComponentConfig& ae = config.component("autoencoder");
    if (ae.type == "identity" && !config.trains_autoencoder()) return;  // the flow runs on the data
    const bool trainable =
        plugin_call(c.origin("autoencoder"), "trainable", [&] { return c.autoencoder->trainable(); });
    if (config.trains_autoencoder()) {
      if (!trainable)
        throw ConfigError({fmt::format(
            "{}: [autoencoder] (type '{}') has nothing to train, and a pipeline without [model] trains its "
            "autoencoder; add a [model] to train a flow",
            ae.where, ae.type)});
      plugin_call(c.origin("autoencoder"), "moving it to the device", [&] { c.autoencoder->to(ctx.device); });
      return;  // trained on the data
    }
    if (trainable) {
      if (config.autoencoder_run().empty())
        throw ConfigError(
            {fmt::format("{}: [autoencoder] (type '{}') must be trained before a flow can use it: set run = "
                         "\"RUN_DIR\", a "
                         "run of a pipeline with this [autoencoder] and no [model] (e.g. pathline run "
                         "configs/fmnist-vae.toml)",
                         ae.where, ae.type)});
      load_autoencoder_run(config, registry, c);
    }
    plugin_call(c.origin("autoencoder"), "moving it to the device", [&] {
      c.autoencoder->to(ctx.device);
      c.autoencoder->eval();
      for (auto& p : c.autoencoder->parameters()) p.set_requires_grad(false);
    });
    DataInfo latent =
        plugin_call(c.origin("autoencoder"), "latent", [&] { return c.autoencoder->latent(ctx.data); });
    if (latent.shape.empty() || latent.numel() <= 0)
      throw ConfigError({fmt::format("{}: [autoencoder] (type '{}'): it reports an empty latent shape",
                                     ae.where, ae.type)});
    // Labels are the data's: guidance and class-conditional models see the same classes.
    latent.num_classes = ctx.data.num_classes;
    latent.class_names = ctx.data.class_names;
    ctx.flow = latent;
    c.latent = true;
  } else if (slot == "source") {
    ctx.source = c.source;
    const ComponentConfig& source = config.component("source");
    if (auto shape = c.source->info().shape; shape != ctx.flow.shape)
      throw ConfigError({fmt::format(
          "{}: [source] (type '{}') draws samples of shape {}, but [dataset] (type '{}') draws {}; "
          "a flow maps between spaces of the same shape",
          source.where, source.type, shape_text(shape), config.component("dataset").type,
          shape_text(ctx.flow.shape))});
  } else if (slot == "path") {
    ctx.path = c.path;
  } else if (slot == "time_sampler") {
    ctx.time_sampler = c.time_sampler;
  } else if (slot == "parameterization") {
    ctx.parameterization = c.parameterization;
  } else if (slot == "objective") {
    ctx.model_times =
        plugin_call(c.origin("objective"), "model_times", [&] { return c.objective->model_times(); });
  } else if (slot == "model") {
    const ComponentConfig& model = config.component("model");
    const std::vector<std::string> takes =
        plugin_call(c.origin("model"), "times", [&] { return c.model->times(); });
    for (const auto& name : ctx.model_times)
      if (std::find(takes.begin(), takes.end(), name) == takes.end())
        throw ConfigError(
            {fmt::format("{}: [model] (type '{}') does not take the time '{}' beside t, which [objective] "
                         "(type '{}') trains "
                         "it on (models that do: mlp, unet, dit)",
                         model.where, model.type, name, config.component("objective").type)});
    plugin_call(c.origin("model"), "moving it to the device", [&] { c.model->to(ctx.device); });
    // A coupling may start the model from trained weights (reflow's student starts as its teacher).
    const std::string initial =
        plugin_call(c.origin("coupling"), "initial_weights", [&] { return c.coupling->initial_weights(); });
    if (!initial.empty()) {
      try {
        load_weights(*c.model, initial);
      } catch (const InputError& e) {
        std::string why = e.what();
        why = why.substr(0, why.find('\n'));
        const ComponentConfig& coupling = config.component("coupling");
        throw ConfigError(
            {fmt::format("{}: [coupling] (type '{}') starts the model from {}, which does not fit this "
                         "[model] (type '{}'): {}",
                         coupling.where, coupling.type, initial, model.type, why)});
      }
    }
  }
}

// Turns LibTorch's deterministic kernels on or off as [run] deterministic says (process-wide).
void apply_determinism(const PipelineConfig& config) {
  const bool on = config.run.deterministic;
  if (on) {
    // cuBLAS shares its workspace between streams unless each gets a fixed size, and then its
    // results can change from run to run (cuBLAS documentation, "Results reproducibility"). LibTorch
    // reads the variable at the process's first matrix product: in the `pathline` command that comes
    // later; a program that ran one before must set it itself (LibTorch's error then says so).
    ::setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);
  }
  // Set both ways: these are process-wide, and a process may build pipelines of both kinds.
  at::globalContext().setDeterministicAlgorithms(on, /*warn_only=*/false);
  at::globalContext().setDeterministicCuDNN(on);
  if (on) at::globalContext().setBenchmarkCuDNN(false);  // timing-based choices differ between runs
}

}  // namespace

Components build_components(const PipelineConfig& config, const Registry& registry) {
  Components c;
  BuildContext& ctx = c.context;
  ctx.device = run_device(config);
  apply_determinism(config);
  ctx.seed = config.run.seed;
  // Parameter initialisation draws from LibTorch's global generator.
  torch::manual_seed(derive_seed(ctx.seed, Stream::init));
  // Components may open other runs (reflow's teacher); building one leaves this pipeline's global
  // generator (the models' initialisation) where it was.
  ctx.open_run = [&registry](const std::string& run_dir) {
    at::Generator global = at::detail::getDefaultCPUGenerator();
    const torch::Tensor state = global.get_state();
    std::shared_ptr<TrainedFlow> flow = open_trained_flow(run_dir, registry);
    global.set_state(state);
    return flow;
  };

  // Each slot in pipeline order (slots.hpp), then what the engine does with what it just built.
  // A pipeline that trains its autoencoder has no [model].
#define PATHLINE_BUILD_SLOT(table, Interface, ...)                          \
  if (config.components.count(#table)) {                                    \
    c.table = build_slot<Interface>(config.component(#table), registry, c); \
    after_building(#table, config, registry, c);                            \
  }
  PATHLINE_SLOTS(PATHLINE_BUILD_SLOT)
#undef PATHLINE_BUILD_SLOT
  for (const auto& m : config.metrics()) {
    BuiltMetric built{m.name, m.type, m.entry.integer("samples"), nullptr, {}};
    built.metric = build_slot<Metric>(m, registry, ctx, built.origin);
    if (c.latent && m.type == "nll")
      throw ConfigError({fmt::format(
          "{}: [[metric]] (type 'nll') needs the flow to run on the data, but it runs in the latent space of "
          "[autoencoder] (type '{}'), where the decoder's change of volume is unknown; remove the metric",
          m.where, config.component("autoencoder").type)});
    c.metrics.push_back(std::move(built));
  }
  ctx.slot.clear();
  ctx.open_run = nullptr;  // it refers to `registry`, which need not outlive the components
  if (config.trains_autoencoder()) return c;  // no flow to check
  check_non_affine(config, c);
  check_sampling(config, registry, c);
  return c;
}

torch::Tensor Components::to_flow(const torch::Tensor& x, const Condition& condition) const {
  if (!latent) return x;
  torch::NoGradGuard no_grad;
  Posterior posterior =
      plugin_call(origin("autoencoder"), "encode", [&] { return autoencoder->encode(x, condition); });
  return latent_scale == 1.0 ? posterior.mean : posterior.mean * latent_scale;
}

torch::Tensor Components::to_data(const torch::Tensor& z, const Condition& condition) const {
  if (!latent) return z;
  torch::NoGradGuard no_grad;
  return plugin_call(origin("autoencoder"), "decode", [&] {
    return autoencoder->decode(latent_scale == 1.0 ? z : z / latent_scale, condition);
  });
}

const ComponentOrigin& Components::origin(const std::string& slot) const {
  if (auto found = origins.find(slot); found != origins.end()) return found->second;
  static std::map<std::string, ComponentOrigin> unnamed;  // slots of hand-assembled components
  static std::mutex lock;
  std::lock_guard<std::mutex> guard(lock);
  ComponentOrigin& o = unnamed[slot];
  o.slot = slot;
  o.type = "?";
  return o;
}

std::vector<std::string> check_pipeline(const PipelineConfig& config, const Registry& registry) {
  return build_components(config, registry).notes;
}

}  // namespace pathline
