// End to end: training lowers the loss and brings samples near the data, outputs decode, runs are
// deterministic; the training step's options each do what they say; the [source] slot, labels,
// label dropout and guidance.
#include <nlohmann/json.hpp>
#include <set>

#include "pathline/engine/io.hpp"
#include "pathline/engine/pipeline.hpp"
#include "pathline/plot/plot.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

using testing::TempDir;

PipelineConfig config_for(const std::string& extra, const std::vector<std::string>& overrides = {}) {
  std::string text =
      "[dataset]\ntype = \"toy2d\"\nshape = \"8gaussians\"\n"
      "[model]\ntype = \"mlp\"\nwidth = 64\ndepth = 2\n"
      "[solver]\ntype = \"midpoint\"\nsteps = 10\n"
      "[sample]\nn = 1000\ntrajectories = 8\n"
      "[[metric]]\ntype = \"energy_distance\"\n"
      "[run]\nthreads = 1\n" +
      extra;
  ConfigOptions options;
  options.overrides = overrides;
  return parse_config(text, "e2e.toml", testing::builtin_registry(), options);
}

nlohmann::json summary_of(const std::filesystem::path& dir) {
  return nlohmann::json::parse(testing::read_text(dir / "summary.json"));
}

double energy(const PipelineConfig& config, const std::filesystem::path& dir) {
  run_job(config, testing::builtin_registry(), JobOptions{dir, true, true}, nullptr);
  return summary_of(dir)["metrics"]["energy_distance"].get<double>();
}

// The energy distance between two point sets, through the registered metric.
double energy_between(const torch::Tensor& a, const torch::Tensor& b) {
  auto metric = testing::builtin_registry().create<Metric>(
      "energy_distance",
      testing::default_params(testing::builtin_registry(), Kind::metric, "energy_distance"), {});
  MetricInput input;
  input.generated = a;
  input.reference = b;
  return metric->compute(input).value;
}

TEST(Pipeline, TrainingLowersLossAndSamplesLandNearTheData) {
  TempDir dir;
  PipelineConfig trained = config_for("[train]\nsteps = 600\nbatch_size = 256\nlr = 3e-3\nlog_every = 50\n");
  double ed_trained = energy(trained, dir / "trained");
  PipelineConfig untrained = config_for("[train]\nsteps = 0\n");
  double ed_untrained = energy(untrained, dir / "untrained");
  // The untrained field leaves samples near N(0, I); the trained one reaches the 8 modes.
  EXPECT_GT(ed_untrained, 0.5);
  EXPECT_LT(ed_trained, 0.1);

  // The loss curve falls: the last window is well below the first.
  std::ifstream csv(dir / "trained/metrics.csv");
  std::string header, line;
  std::getline(csv, header);
  EXPECT_EQ(header, "step,loss,lr,elapsed_s");
  std::vector<double> losses;
  while (std::getline(csv, line)) losses.push_back(std::stod(line.substr(line.find(',') + 1)));
  ASSERT_EQ(losses.size(), 12u);
  EXPECT_LT(losses.back(), 0.8 * losses.front());
  auto summary = summary_of(dir / "trained");
  EXPECT_EQ(summary["metric_details"]["energy_distance"]["direction"], "lower");
  EXPECT_EQ(summary["metric_details"]["energy_distance"]["generated_samples"], 1000);
}

TEST(Pipeline, OutputsDecodeAndRoundTrip) {
  TempDir dir;
  PipelineConfig config = config_for("[train]\nsteps = 20\nbatch_size = 64\n");
  apply_thread_setting(config);  // as run_job does: the thread count is process-wide
  Components c = build_components(config, testing::builtin_registry());
  train(config, c, {}, nullptr);
  SampleResult s = sample(config, c);
  run_job(config, testing::builtin_registry(), JobOptions{dir / "run", true, true}, nullptr);

  torch::Tensor saved = read_npy(dir / "run/samples.npy");
  EXPECT_EQ(saved.sizes(), (std::vector<std::int64_t>{1000, 2}));
  EXPECT_EQ(saved.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(saved, s.samples))
      << (saved - s.samples).abs().max();                         // same config, seed, samples
  EXPECT_FALSE(std::filesystem::exists(dir / "run/labels.npy"));  // unlabelled data

  for (std::string f : {"samples.png", "trajectories.png", "loss.png"}) {
    if (!plot::available()) {  // a build without charts (PATHLINE_CHARTS=OFF) draws none
      EXPECT_FALSE(std::filesystem::exists(dir / ("run/" + f))) << f;
      continue;
    }
    Image image = read_image(dir / ("run/" + f));
    EXPECT_GE(image.width, 400) << f;
    EXPECT_GE(image.height, 300) << f;
  }
  ASSERT_TRUE(s.trajectories.defined());
  EXPECT_EQ(s.trajectories.sizes(), (std::vector<std::int64_t>{11, 8, 2}));  // 10 steps + the start
  EXPECT_EQ(s.nfe, 20);                                                      // midpoint: 2 per step
}

TEST(Pipeline, Determinism) {
  TempDir dir;
  std::vector<std::string> overrides = {"train.steps=40", "train.batch_size=128", "train.log_every=5",
                                        "run.seed=7"};
  PipelineConfig config = config_for("", overrides);
  for (std::string name : {"a", "b"})
    run_job(config, testing::builtin_registry(), JobOptions{dir / name, true, true}, nullptr);
  auto strip_time = [](const std::string& csv) {
    std::string out;
    std::stringstream in(csv);
    std::string line;
    while (std::getline(in, line)) out += line.substr(0, line.rfind(',')) + "\n";
    return out;
  };
  EXPECT_EQ(strip_time(testing::read_text(dir / "a/metrics.csv")),
            strip_time(testing::read_text(dir / "b/metrics.csv")));
  EXPECT_TRUE(torch::equal(read_npy(dir / "a/samples.npy"), read_npy(dir / "b/samples.npy")));
  // Another seed gives other samples.
  overrides.back() = "run.seed=8";
  run_job(config_for("", overrides), testing::builtin_registry(), JobOptions{dir / "c", true, true}, nullptr);
  EXPECT_FALSE(torch::equal(read_npy(dir / "a/samples.npy"), read_npy(dir / "c/samples.npy")));
}

TEST(Pipeline, RandomStreamsAreHashedAndDistinct) {
  // Seeds 0 and 1 used to share streams (seed * 4 + k); hashed ones differ for every pair here.
  std::set<std::uint64_t> seen;
  for (std::uint64_t seed = 0; seed < 50; ++seed)
    for (Stream s : {Stream::train, Stream::sample, Stream::eval, Stream::init, Stream::plot})
      for (std::uint64_t rank = 0; rank < 8; ++rank) seen.insert(derive_seed(seed, s, rank));
  EXPECT_EQ(seen.size(), 50u * 5u * 8u);
  EXPECT_NE(derive_seed(0, Stream::sample), derive_seed(1, Stream::train));
}

TEST(Pipeline, RunDirectoriesAreNeverOverwrittenUnlessAsked) {
  TempDir dir;
  PipelineConfig config =
      config_for("", {"train.steps=0", "run.dir=\"" + (dir / "runs").string() + "\"", "run.name=x"});
  EXPECT_EQ(create_run_dir(config, std::nullopt, false), dir / "runs/x");
  testing::write_text(dir / "runs/x/keep", "1");
  EXPECT_EQ(create_run_dir(config, std::nullopt, false), dir / "runs/x-2");
  EXPECT_TRUE(std::filesystem::exists(dir / "runs/x/keep"));
  EXPECT_THROW(create_run_dir(config, dir / "runs/x", false), InputError);
  EXPECT_EQ(create_run_dir(config, std::nullopt, true), dir / "runs/x");
  EXPECT_FALSE(std::filesystem::exists(dir / "runs/x/keep"));
}

TEST(Pipeline, WeightsRoundTripAndCorruptCheckpointIsAClearError) {
  TempDir dir;
  PipelineConfig config = config_for("", {"train.steps=3", "train.batch_size=16"});
  Components a = build_components(config, testing::builtin_registry());
  train(config, a, {}, nullptr);
  save_weights(*a.model, dir / "w.safetensors");
  PipelineConfig other_seed = config_for("", {"run.seed=99"});
  Components b = build_components(other_seed, testing::builtin_registry());
  load_weights(*b.model, dir / "w.safetensors");
  auto pa = a.model->parameters(), pb = b.model->parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (std::size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(torch::equal(pa[i], pb[i]));

  // A damaged file of either format: one line that starts with the file (old runs' LibTorch
  // archives are still read).
  for (const char* name : {"bad.safetensors", "bad.pt"}) {
    testing::write_text(dir / name, "garbage");
    try {
      load_weights(*b.model, dir / name);
      ADD_FAILURE() << name << " loaded";
    } catch (const InputError& e) {
      std::string what = e.what();
      EXPECT_EQ(what.rfind((dir / name).string() + ": ", 0), 0u) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
  }
  try {
    load_weights(*b.model, dir / "bad.pt");
  } catch (const InputError& e) {
    EXPECT_CONTAINS(std::string(e.what()), "corrupt or incompatible LibTorch weights archive");
  }
}

// ------------------------------------------------------------------------------------------------
// The training step's options

std::vector<torch::Tensor> snapshot(Model& model) {
  std::vector<torch::Tensor> out;
  for (const auto& p : model.parameters()) out.push_back(p.detach().clone());
  return out;
}

TEST(TrainStep, LearningRateWarmupAndCosineSchedule) {
  PipelineConfig config = config_for(
      "", {"train.steps=110", "train.lr=0.01", "train.warmup_steps=10", "train.lr_schedule=cosine"});
  LearningRateSchedule schedule(config.table("train"));
  EXPECT_DOUBLE_EQ(schedule.at(0), 0.001);  // warm-up: (step + 1) / warmup of the base
  EXPECT_DOUBLE_EQ(schedule.at(4), 0.005);
  EXPECT_DOUBLE_EQ(schedule.at(9), 0.01);
  EXPECT_DOUBLE_EQ(schedule.at(10), 0.01);     // cosine starts at the base
  EXPECT_NEAR(schedule.at(60), 0.005, 1e-12);  // halfway down
  EXPECT_NEAR(schedule.at(109), 0.01 * 0.5 * (1 + std::cos(M_PI * 99.0 / 100.0)), 1e-15);
  PipelineConfig constant = config_for("", {"train.lr=0.01"});
  EXPECT_DOUBLE_EQ(LearningRateSchedule(constant.table("train")).at(1000), 0.01);

  // The loop uses it: metrics.csv's lr column is the schedule at each logged step.
  TempDir dir;
  PipelineConfig logged = config_for("", {"train.steps=30", "train.batch_size=16", "train.lr=0.01",
                                          "train.warmup_steps=20", "train.log_every=5"});
  Components c = build_components(logged, testing::builtin_registry());
  train(logged, c, dir.path(), nullptr);
  auto lines = testing::lines_of(testing::read_text(dir / "metrics.csv"));
  ASSERT_EQ(lines.size(), 7u);
  LearningRateSchedule expected(logged.table("train"));
  for (std::size_t i = 1; i < lines.size(); ++i) {
    std::stringstream row(lines[i]);
    std::string step, loss, lr;
    std::getline(row, step, ',');
    std::getline(row, loss, ',');
    std::getline(row, lr, ',');
    EXPECT_NEAR(std::stod(lr), expected.at(std::stoll(step) - 1), 1e-9) << lines[i];
  }
}

TEST(TrainStep, GradientClippingBoundsTheUpdate) {
  // AdamW's update is lr * g / (|g| + eps) per coordinate, nearly lr whatever the gradient's scale,
  // unless the gradient is far below eps = 1e-8: clipping its norm to 1e-14 shrinks the first step
  // by about a million; without clipping every parameter moves by about lr.
  auto first_step_change = [](const std::string& clip) {
    PipelineConfig config =
        config_for("", {"train.batch_size=64", "train.lr=0.01", "train.grad_clip=" + clip});
    Components c = build_components(config, testing::builtin_registry());
    auto before = snapshot(*c.model);
    Trainer trainer(config, c);
    trainer.step();
    double most = 0;
    auto after = c.model->parameters();
    for (std::size_t i = 0; i < after.size(); ++i)
      most = std::max(most, (after[i] - before[i]).abs().max().item<double>());
    return most;
  };
  EXPECT_NEAR(first_step_change("0"), 0.01, 1e-4);
  EXPECT_LT(first_step_change("1e-14"), 1e-7);
}

TEST(TrainStep, WeightDecayIsDecoupled) {
  // AdamW (Loshchilov & Hutter 2019): p <- p (1 - lr wd) - lr adam(g). Two runs from the same start
  // that differ only in wd differ after one step by exactly -lr wd p0.
  auto one_step = [](const std::string& wd) {
    PipelineConfig config =
        config_for("", {"train.batch_size=64", "train.lr=0.01", "train.weight_decay=" + wd});
    Components c = build_components(config, testing::builtin_registry());
    auto start = snapshot(*c.model);
    Trainer(config, c).step();
    return std::make_pair(start, snapshot(*c.model));
  };
  auto [start, plain] = one_step("0");
  auto [start2, decayed] = one_step("0.5");
  for (std::size_t i = 0; i < plain.size(); ++i) {
    ASSERT_TRUE(torch::equal(start[i], start2[i]));
    EXPECT_TRUE(torch::allclose(decayed[i] - plain[i], -0.01 * 0.5 * start[i], 1e-5, 1e-7))
        << "parameter " << i;
  }
}

TEST(TrainStep, EmaIsTheExponentialAverageOfTheRawWeights) {
  PipelineConfig config = config_for("", {"train.batch_size=32", "train.lr=0.01", "train.ema_decay=0.75"});
  Components c = build_components(config, testing::builtin_registry());
  auto ema = snapshot(*c.model);
  Trainer trainer(config, c);
  for (int k = 0; k < 5; ++k) {
    trainer.step();
    auto raw = snapshot(*c.model);
    // The warm-up: decay min(0.75, (1 + k) / (10 + k)) after step k.
    const double decay = std::min(0.75, (1.0 + k) / (10.0 + k));
    EXPECT_DOUBLE_EQ(trainer.ema_decay_at(k), decay);
    for (std::size_t i = 0; i < ema.size(); ++i) ema[i] = decay * ema[i] + (1 - decay) * raw[i];
  }
  EXPECT_DOUBLE_EQ(trainer.ema_decay_at(100), 0.75);
  auto raw = snapshot(*c.model);
  trainer.copy_sampling_weights_to_model();
  auto sampled = snapshot(*c.model);
  bool differs = false;
  for (std::size_t i = 0; i < ema.size(); ++i) {
    EXPECT_TRUE(torch::allclose(sampled[i], ema[i], 1e-5, 1e-7)) << "parameter " << i;
    differs = differs || !torch::equal(sampled[i], raw[i]);
  }
  EXPECT_TRUE(differs);  // the EMA is kept apart from the raw weights
}

TEST(TrainStep, SavedStateContinuesExactly) {
  // k steps, save, a fresh trainer loads and finishes = one trainer doing all the steps. (The full
  // kill-and-resume story is the checkpoints' job; this is the unit it builds on.)
  PipelineConfig config = config_for("", {"train.batch_size=32", "train.ema_decay=0.9", "train.steps=8",
                                          "train.lr_schedule=cosine", "train.warmup_steps=2"});
  Components whole = build_components(config, testing::builtin_registry());
  Trainer straight(config, whole);
  std::vector<double> losses;
  for (int k = 0; k < 8; ++k) losses.push_back(straight.step().item<double>());

  Components first = build_components(config, testing::builtin_registry());
  Trainer before(config, first);
  for (int k = 0; k < 3; ++k) EXPECT_EQ(before.step().item<double>(), losses[k]);
  NamedState out;
  before.save_state(out);
  const std::string bytes = out.encode("state");

  PipelineConfig other_seed =
      config_for("", {"train.batch_size=32", "train.ema_decay=0.9", "train.steps=8",
                      "train.lr_schedule=cosine", "train.warmup_steps=2", "run.seed=5"});
  Components second = build_components(other_seed, testing::builtin_registry());
  Trainer after(config, second);
  after.load_state(NamedState::decode(bytes, "state"), "state");
  EXPECT_EQ(after.steps_done(), 3);
  for (int k = 3; k < 8; ++k) EXPECT_EQ(after.step().item<double>(), losses[k]) << "step " << k;
  straight.copy_sampling_weights_to_model();
  after.copy_sampling_weights_to_model();
  auto a = whole.model->parameters(), b = second.model->parameters();
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << "parameter " << i;
}

TEST(TrainStep, GradientHookSeesGradientsBeforeTheUpdate) {
  PipelineConfig config = config_for("", {"train.batch_size=16"});
  Components c = build_components(config, testing::builtin_registry());
  Trainer trainer(config, c);
  auto before = snapshot(*c.model);
  int calls = 0;
  trainer.gradient_hook = [&](const std::vector<torch::Tensor>& params) {
    ++calls;
    ASSERT_EQ(params.size(), before.size());
    for (std::size_t i = 0; i < params.size(); ++i) {
      EXPECT_TRUE(params[i].grad().defined());
      EXPECT_TRUE(torch::equal(params[i], before[i]));  // not stepped yet
      params[i].mutable_grad().zero_();                 // a hook may rewrite the gradients
    }
  };
  trainer.step();
  EXPECT_EQ(calls, 1);
  // Zero gradients: AdamW moves nothing (no weight decay by default).
  auto after = snapshot(*c.model);
  for (std::size_t i = 0; i < after.size(); ++i) EXPECT_TRUE(torch::equal(after[i], before[i]));
}

// ------------------------------------------------------------------------------------------------
// [source], labels, guidance

TEST(Source, EightGaussiansToMoons) {
  // torchcfm's example: a flow from one data set to another (no Gaussian involved).
  TempDir dir;
  PipelineConfig config = parse_config(
      "[dataset]\ntype = \"toy2d\"\nshape = \"moons\"\n"
      "[source]\ntype = \"toy2d\"\nshape = \"8gaussians\"\n"
      "[coupling]\ntype = \"minibatch_ot\"\n"
      "[model]\ntype = \"mlp\"\nwidth = 64\ndepth = 3\n"
      "[train]\nsteps = 800\nbatch_size = 256\nlr = 3e-3\n"
      "[solver]\ntype = \"midpoint\"\nsteps = 10\n"
      "[sample]\nn = 1000\n[[metric]]\ntype = \"energy_distance\"\n[run]\nthreads = 1\n",
      "source.toml", testing::builtin_registry());
  Components c = build_components(config, testing::builtin_registry());
  train(config, c, {}, nullptr);
  SampleResult s = sample(config, c);
  at::Generator gen = make_generator(123, Stream::eval);
  torch::Tensor moons = c.dataset->sample(1000, gen).x;
  torch::Tensor eight = c.source->sample(1000, gen).x;
  const double to_moons = energy_between(s.samples, moons), to_source = energy_between(s.samples, eight);
  EXPECT_LT(to_moons, 0.05);
  EXPECT_GT(to_source, 10 * to_moons);
  // Sampling starts from fresh source draws: the trajectories' 48 starting points are far nearer
  // (in energy distance) to the 8 Gaussians than to the standard normal the default source draws.
  ASSERT_TRUE(s.trajectories.defined());
  torch::Tensor start = s.trajectories[0];
  EXPECT_LT(energy_between(start, eight), 0.2 * energy_between(start, torch::randn({1000, 2})));
}

TEST(Source, ShapeMismatchIsAClearError) {
  PipelineConfig config = parse_config(
      "[dataset]\ntype = \"toy2d\"\n[source]\ntype = \"gaussian\"\nshape = [3]\n[model]\ntype = \"mlp\"\n",
      "s.toml", testing::builtin_registry());
  try {
    build_components(config, testing::builtin_registry());
    FAIL();
  } catch (const InputError& e) {
    EXPECT_EQ(
        std::string(e.what()),
        "s.toml:4:8: [source] (type 'gaussian') draws samples of shape [3], but [dataset] (type 'toy2d') "
        "draws [2]; a flow maps between spaces of the same shape");
  }
}

PipelineConfig labelled_config(const std::vector<std::string>& overrides = {}) {
  ConfigOptions options;
  options.overrides = overrides;
  return parse_config(
      "[dataset]\ntype = \"toy2d\"\nshape = \"8gaussians\"\nlabelled = true\n"
      "[model]\ntype = \"mlp\"\nwidth = 128\ndepth = 3\n"
      "[train]\nsteps = 1500\nbatch_size = 256\nlr = 3e-3\nlabel_dropout = 0.2\n"
      "[solver]\ntype = \"midpoint\"\nsteps = 10\n"
      "[sample]\nn = 800\n[run]\nthreads = 1\n",
      "labelled.toml", testing::builtin_registry(), options);
}

TEST(Guidance, ConditionalSamplesLandInTheirClassAndGuidanceOneIsThePlainConditionalModel) {
  PipelineConfig config = labelled_config();
  Components c = build_components(config, testing::builtin_registry());
  ASSERT_EQ(c.data().num_classes, 8);
  train(config, c, {}, nullptr);

  // Every class in turn by default.
  SampleResult s = sample(config, c);
  ASSERT_TRUE(s.labels.defined());
  EXPECT_TRUE(
      torch::equal(s.labels.narrow(0, 0, 10), torch::tensor({0, 1, 2, 3, 4, 5, 6, 7, 0, 1}, torch::kInt64)));

  // Each class's samples sit on that class's mode: the mean of its samples is near the mean of the
  // data of that class, and far from every other class's.
  at::Generator gen = make_generator(9, Stream::eval);
  Batch data = c.dataset->sample(20000, gen);
  std::vector<torch::Tensor> centres;
  for (std::int64_t k = 0; k < 8; ++k) centres.push_back(data.x.index({data.labels == k}).mean(0));
  for (std::int64_t k = 0; k < 8; ++k) {
    torch::Tensor mine = s.samples.index({s.labels == k});
    ASSERT_EQ(mine.size(0), 100);
    torch::Tensor distances = torch::stack(centres).sub(mine.mean(0)).norm(2, 1);
    EXPECT_EQ(distances.argmin().item<std::int64_t>(), k) << "class " << k;
    EXPECT_LT(distances[k].item<double>(), 0.5) << "class " << k;
    // Nearly every sample is nearer its own mode than any other.
    torch::Tensor nearest = torch::cdist(mine, torch::stack(centres)).argmin(1);
    EXPECT_GT((nearest == k).to(torch::kFloat).mean().item<double>(), 0.9) << "class " << k;
  }

  // Guidance scale 1 is exactly the conditional prediction; scale w is u + w (c - u).
  c10::InferenceMode inference;
  torch::Tensor x = torch::randn({16, 2}), labels = torch::arange(16, torch::kInt64) % 8;
  torch::Tensor t = torch::full({16}, 0.4);
  torch::Tensor conditional = c.model->forward(x, t, Condition{labels});
  torch::Tensor unconditional =
      c.model->forward(x, t, Condition{torch::full({16}, kNullLabel, torch::kInt64)});
  EXPECT_FALSE(torch::allclose(conditional, unconditional));
  ModelField plain(*c.model, *c.path, *c.parameterization, 2, 1.0);
  plain.set_labels(labels);
  EXPECT_TRUE(torch::equal(plain.predict(Quantity::velocity, x, 0.4), conditional));
  ModelField guided(*c.model, *c.path, *c.parameterization, 2, 3.0);
  guided.set_labels(labels);
  EXPECT_TRUE(torch::allclose(guided.predict(Quantity::velocity, x, 0.4),
                              unconditional + 3.0 * (conditional - unconditional), 1e-5, 1e-5));
  EXPECT_EQ(guided.evaluations(), 1);  // both halves in one forward
}

TEST(Guidance, AskedForLabelsAreHonouredAndCheckedAgainstTheData) {
  PipelineConfig config = labelled_config({"train.steps=0", "sample.labels=[3, -1]", "sample.n=5"});
  Components c = build_components(config, testing::builtin_registry());
  SampleResult s = sample(config, c);
  EXPECT_TRUE(torch::equal(s.labels, torch::tensor({3, -1, 3, -1, 3}, torch::kInt64)));
  try {
    build_components(labelled_config({"sample.labels=[8]"}), testing::builtin_registry());
    FAIL();
  } catch (const InputError& e) {
    EXPECT_EQ(
        std::string(e.what()),
        "--set sample.labels=[8]: sample.labels: 8 is not a class of dataset 'toy2d' (classes 0 to 7, or -1 "
        "for unconditional samples)");
  }
}

TEST(Guidance, LabelledRunsWriteTheirLabels) {
  TempDir dir;
  PipelineConfig config = labelled_config({"train.steps=2", "sample.n=12", "sample.guidance_scale=2"});
  run_job(config, testing::builtin_registry(), JobOptions{dir / "run", true, true}, nullptr);
  torch::Tensor labels = read_npy(dir / "run/labels.npy");
  EXPECT_EQ(labels.scalar_type(), torch::kInt64);
  EXPECT_TRUE(torch::equal(labels, torch::arange(12, torch::kInt64) % 8));
  EXPECT_EQ(summary_of(dir / "run")["sampling"]["guidance_scale"], 2.0);
}

}  // namespace
}  // namespace pathline
