// Tests of the objective kind (plugin objectives: flow_matching, cnf_mle, meanflow), the meanflow
// solver, the reflow coupling and the models' second time: the default objective is the trainer's
// flow-matching loss, cnf_mle's likelihood of known flows is the analytic one, the MeanFlow
// Jacobian-vector product agrees with finite differences, reflow's pairs are the teacher's ODE end
// points, runs resume exactly, and pipelines that cannot work are one-line errors.
#include <nlohmann/json.hpp>

#include "pathline/engine/build.hpp"
#include "pathline/engine/checkpoint.hpp"
#include "pathline/engine/config.hpp"
#include "pathline/engine/io.hpp"
#include "pathline/engine/registry.hpp"
#include "pathline/engine/run.hpp"
#include "pathline/engine/sample.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::read_text;
using testing::run_cli;

template <class Interface>
std::shared_ptr<Interface> make(Kind kind, const std::string& type, const BuildContext& ctx,
                                const std::map<std::string, ParamValue>& changes = {}) {
  const Registry& registry = testing::builtin_registry();
  return registry.create<Interface>(type, testing::default_params(registry, kind, type, changes), ctx);
}

// What an objective is built with on 2D data: the linear path, velocity prediction, the Gaussian
// source and uniform times.
BuildContext context_2d() {
  BuildContext ctx;
  ctx.data.shape = {2};
  ctx.flow = ctx.data;
  ctx.path = make<Path>(Kind::path, "linear", ctx);
  ctx.parameterization = make<Parameterization>(Kind::parameterization, "velocity", ctx);
  ctx.source = make<Dataset>(Kind::dataset, "gaussian", ctx);
  ctx.time_sampler = make<TimeSampler>(Kind::time_sampler, "uniform", ctx);
  return ctx;
}

// A model with a known field: v(x, t) = A x, A a parameter (so the loss has gradients).
class LinearField final : public Model {
 public:
  explicit LinearField(torch::Tensor a) { a_ = register_parameter("a", std::move(a)); }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const Condition& condition) override {
    (void)t;
    (void)condition;
    return torch::matmul(x, a_.to(x.scalar_type()).t());
  }

 private:
  torch::Tensor a_;
};

TEST(Objectives, FlowMatchingIsTheRegressionOnTheParameterizationsTarget) {
  BuildContext ctx = context_2d();
  auto objective = make<Objective>(Kind::objective, "flow_matching", ctx);
  ctx.slot = "model";
  auto model =
      make<Model>(Kind::model, "mlp", ctx, {{"width", std::int64_t{16}}, {"depth", std::int64_t{2}}});
  at::Generator gen = at::detail::createCPUGenerator(3);
  TrainingBatch b;
  b.x0 = torch::randn({32, 2}, gen);
  b.x1 = torch::randn({32, 2}, gen);
  b.t = torch::rand({32}, gen);
  b.coefficients = ctx.path->coefficients(b.t).broadcast_to_rank(2);
  b.at = ctx.path->sample(b.x0, b.x1, b.t, gen);
  // The trainer's loss before the objective kind, bit for bit: mse against x1 - x0 (the linear
  // path's velocity target), and the weighted mean when [train] loss_weighting gives weights.
  const torch::Tensor output = model->forward(b.at.x_t, b.t, {});
  const torch::Tensor goal = ctx.parameterization->target(b.x0, b.x1, b.coefficients);
  EXPECT_TRUE(torch::equal(goal, b.x1 - b.x0));
  EXPECT_TRUE(torch::equal(objective->loss(*model, b, gen).loss, torch::mse_loss(output, goal)));
  b.weight = b.coefficients.sigma.square().to(torch::kFloat32);
  EXPECT_TRUE(
      torch::equal(objective->loss(*model, b, gen).loss, (b.weight * (output - goal).square()).mean()));
  EXPECT_TRUE(objective->statistics().empty());
  EXPECT_TRUE(objective->model_times().empty());
}

TEST(Objectives, DefaultObjectiveKeepsTheTrainingKeysOfRunsBeforeIt) {
  const Registry& registry = testing::builtin_registry();
  testing::TempDir dir;
  const std::string base = "[dataset]\ntype = \"toy2d\"\n[model]\ntype = \"mlp\"\n";
  testing::write_text(dir / "a.toml", base);
  testing::write_text(dir / "b.toml", base + "[objective]\ntype = \"meanflow\"\n");
  const PipelineConfig plain = load_config(dir / "a.toml", registry);
  EXPECT_EQ(plain.component("objective").type, "flow_matching");
  const auto keys = training_keys(plain);
  for (const auto& [key, value] : keys) EXPECT_EQ(key.rfind("objective.", 0), std::string::npos) << key;
  const auto other = training_keys(load_config(dir / "b.toml", registry));
  EXPECT_EQ(other.at("objective.type"), "meanflow");
  EXPECT_EQ(other.at("objective.interval_ratio"), "0.25");
  // meanflow suggests its own sampler.
  EXPECT_EQ(load_config(dir / "b.toml", registry).component("solver").type, "meanflow");
}

// log p_1(x1) for v = A x from N(0, I) at t = 0: x0 = exp(-A) x1, log N(x0) - tr(A).
torch::Tensor analytic_log_likelihood(const torch::Tensor& a, const torch::Tensor& x1) {
  const torch::Tensor x0 =
      torch::matmul(x1.to(torch::kFloat64), torch::linalg_matrix_exp(-a.to(torch::kFloat64)).t());
  return -0.5 * x0.square().sum(1) - std::log(2 * M_PI) - a.trace().to(torch::kFloat64);
}

TEST(Objectives, CnfLikelihoodOfALinearFlowIsTheAnalyticOne) {
  BuildContext ctx = context_2d();
  at::Generator gen = at::detail::createCPUGenerator(5);
  TrainingBatch b;
  b.x1 = torch::randn({64, 2}, gen);
  const torch::Tensor a = torch::tensor({{0.3, 0.4}, {-0.2, 0.6}}, torch::kFloat32);
  LinearField field(a.clone());
  const double expected = (-analytic_log_likelihood(a, b.x1).mean() / 2.0).item<double>();
  // Exact divergence with fixed-step rk4 and with adaptive dopri5, each within its solver's error.
  for (const auto& [solver, steps, tolerance] :
       {std::tuple<std::string, std::int64_t, double>{"rk4", 8, 1e-5},
        {"dopri5", 4, 1e-4},
        {"euler", 200, 5e-3}}) {
    auto cnf = make<Objective>(Kind::objective, "cnf_mle", ctx,
                               {{"solver", solver}, {"steps", steps}, {"divergence", std::string("exact")}});
    ObjectiveLoss out = cnf->loss(field, b, gen);
    EXPECT_NEAR(out.loss.item<double>(), expected, tolerance) << solver;
    ASSERT_TRUE(out.statistics.count("nfe")) << solver;
    if (solver == "rk4") {
      EXPECT_EQ(out.statistics.at("nfe"), 32.0);
    } else if (solver == "euler") {
      EXPECT_EQ(out.statistics.at("nfe"), 200.0);
    }
    // Gradients reach the field's parameter through the solve.
    field.zero_grad();
    out.loss.backward();
    ASSERT_TRUE(field.parameters()[0].grad().defined());
    EXPECT_GT(field.parameters()[0].grad().abs().sum().item<double>(), 0.0);
  }
  // Hutchinson's estimate is exact for a diagonal Jacobian (e_i^2 = 1).
  const torch::Tensor diagonal = torch::tensor({{0.3, 0.0}, {0.0, -0.5}}, torch::kFloat32);
  LinearField diag(diagonal.clone());
  auto hutchinson =
      make<Objective>(Kind::objective, "cnf_mle", ctx, {{"divergence", std::string("hutchinson")}});
  EXPECT_NEAR(hutchinson->loss(diag, b, gen).loss.item<double>(),
              (-analytic_log_likelihood(diagonal, b.x1).mean() / 2.0).item<double>(), 1e-5);
}

TEST(Objectives, CnfRefusesWhatItCannotTrain) {
  BuildContext ctx = context_2d();
  ctx.parameterization = make<Parameterization>(Kind::parameterization, "noise", ctx);
  EXPECT_CONTAINS(testing::input_error_of([&] { make<Objective>(Kind::objective, "cnf_mle", ctx); }),
                  "set [parameterization] type = \"velocity\"");
  ctx = context_2d();
  ctx.source = make<Dataset>(Kind::dataset, "toy2d", ctx, {{"shape", std::string("moons")}});
  EXPECT_CONTAINS(testing::input_error_of([&] { make<Objective>(Kind::objective, "cnf_mle", ctx); }),
                  "the [source] has no density");
}

// The derivative along (v, 1, 0) by central differences, in float64.
torch::Tensor finite_difference(Model& model, const torch::Tensor& x, const torch::Tensor& t,
                                const torch::Tensor& s, const torch::Tensor& v, const Condition& condition) {
  const double eps = 1e-6;
  Condition c = condition;
  c.extras[kIntervalEnd] = s;
  torch::NoGradGuard no_grad;
  return (model.forward(x + eps * v, t + eps, c) - model.forward(x - eps * v, t - eps, c)) / (2 * eps);
}

void expect_jvp_matches_differences(Model& model, const std::vector<std::int64_t>& shape,
                                    std::int64_t classes) {
  model.to(torch::kFloat64);
  model.eval();
  at::Generator gen = at::detail::createCPUGenerator(11);
  std::vector<std::int64_t> sizes = {3};
  sizes.insert(sizes.end(), shape.begin(), shape.end());
  const torch::Tensor x = torch::randn(sizes, gen, torch::kFloat64),
                      v = torch::randn(sizes, gen, torch::kFloat64);
  const torch::Tensor t = torch::rand({3}, gen, torch::kFloat64) * 0.5, s = t + 0.3;
  Condition condition;
  if (classes > 0)
    condition.labels = torch::tensor(std::vector<std::int64_t>{0, 1, kNullLabel}, torch::kInt64);
  const IntervalDerivative d = interval_derivative(model, x, t, s, v, condition);
  const torch::Tensor expected = finite_difference(model, x, t, s, v, condition);
  EXPECT_GT(expected.abs().max().item<double>(), 1e-3) << "a derivative too small to test";
  // Central differences in float64 at eps = 1e-6 agree to about 1e-7 of the derivative's scale.
  const double scale = expected.abs().max().item<double>();
  EXPECT_TRUE(torch::allclose(d.du_dt, expected, 1e-5, 1e-6 * scale))
      << (d.du_dt - expected).abs().max().item<double>() << " of " << expected.abs().max().item<double>();
  // u is the model's output on the interval, and the interval's length matters.
  Condition with_end = condition;
  with_end.extras[kIntervalEnd] = s;
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::allclose(d.u, model.forward(x, t, with_end), 1e-10, 1e-12));
  // Without the end, the model gives its output on the empty interval: s = t.
  Condition empty = condition;
  empty.extras[kIntervalEnd] = t;
  EXPECT_TRUE(torch::allclose(model.forward(x, t, condition), model.forward(x, t, empty), 1e-12, 1e-12));
}

TEST(Objectives, MeanFlowJvpEqualsFiniteDifferencesForEveryModel) {
  torch::manual_seed(2);
  BuildContext ctx = context_2d();
  ctx.model_times = {kIntervalEnd};
  ctx.slot = "model";
  auto mlp = make<Model>(Kind::model, "mlp", ctx, {{"width", std::int64_t{32}}, {"depth", std::int64_t{2}}});
  EXPECT_EQ(mlp->times(), std::vector<std::string>{kIntervalEnd});
  expect_jvp_matches_differences(*mlp, {2}, 0);

  BuildContext image = ctx;
  image.data.shape = {1, 8, 8};
  image.data.num_classes = 2;
  image.flow = image.data;
  auto unet = make<Model>(Kind::model, "unet", image,
                          {{"channels", std::int64_t{8}},
                           {"channel_mult", std::vector<std::int64_t>{1, 2}},
                           {"num_res_blocks", std::int64_t{1}},
                           {"attention_resolutions", std::vector<std::int64_t>{4}},
                           {"heads", std::int64_t{2}}});
  // A U-Net's last convolution starts at zero: perturb every weight so the output depends on x.
  {
    torch::NoGradGuard no_grad;
    for (auto& p : unet->parameters()) p.add_(torch::randn_like(p) * 0.05);
  }
  EXPECT_EQ(unet->times(), std::vector<std::string>{kIntervalEnd});
  expect_jvp_matches_differences(*unet, {1, 8, 8}, 2);
  auto dit = make<Model>(Kind::model, "dit", image,
                         {{"patch_size", std::int64_t{4}},
                          {"hidden", std::int64_t{16}},
                          {"depth", std::int64_t{1}},
                          {"heads", std::int64_t{2}},
                          {"time_embedding", std::int64_t{16}}});
  {
    torch::NoGradGuard no_grad;
    for (auto& p : dit->parameters()) p.add_(torch::randn_like(p) * 0.05);
  }
  expect_jvp_matches_differences(*dit, {1, 8, 8}, 2);
  // Models built without the interval take no end.
  BuildContext plain = context_2d();
  plain.slot = "model";
  EXPECT_TRUE(make<Model>(Kind::model, "mlp", plain)->times().empty());
  ctx.model_times = {"t_other"};
  EXPECT_CONTAINS(testing::input_error_of([&] { make<Model>(Kind::model, "mlp", ctx); }),
                  "mlp: takes no time 't_other' beside t");
}

TEST(Objectives, MeanFlowLossIsTheRegressionOnTheMeanFlowIdentity) {
  // A linear field's average velocity over [t, s] from x is exact to compute: with u = A x the model
  // ignores s, du/dt = A v, and the target is v + (s - t) A v. With p = 0 the loss is the mean
  // squared error against it.
  BuildContext ctx = context_2d();
  auto meanflow =
      make<Objective>(Kind::objective, "meanflow", ctx, {{"adaptive_power", 0.0}, {"interval_ratio", 1.0}});
  EXPECT_EQ(meanflow->model_times(), std::vector<std::string>{kIntervalEnd});
  const torch::Tensor a = torch::tensor({{0.5, -0.3}, {0.2, 0.1}}, torch::kFloat32);
  LinearField field(a.clone());
  at::Generator gen = at::detail::createCPUGenerator(9), copy = at::detail::createCPUGenerator(9);
  TrainingBatch b;
  b.x0 = torch::randn({16, 2});
  b.x1 = torch::randn({16, 2});
  b.t = torch::rand({16});
  const float loss = meanflow->loss(field, b, gen).loss.item<float>();
  // The same draws: a second time from the uniform sampler, every sample on an interval.
  const torch::Tensor other = ctx.time_sampler->sample(16, copy);
  const torch::Tensor t = torch::minimum(b.t, other), s = torch::maximum(b.t, other);
  (void)torch::rand({16}, copy);
  const torch::Tensor x_t = t.view({-1, 1}) * b.x1 + (1 - t.view({-1, 1})) * b.x0, v = b.x1 - b.x0;
  const torch::Tensor u = torch::matmul(x_t, a.t());
  const torch::Tensor target = v + (s - t).view({-1, 1}) * torch::matmul(v, a.t());
  EXPECT_NEAR(loss, (u - target).square().mean().item<float>(), 1e-6);
}

TEST(Objectives, MeanFlowSolverStepsTheAverageVelocityAndIsEulerOtherwise) {
  const Registry& registry = testing::builtin_registry();
  BuildContext ctx = context_2d();
  auto solver =
      registry.create<Solver>("meanflow", testing::default_params(registry, Kind::solver, "meanflow"), ctx);
  EXPECT_EQ(solver->grid_steps(), 1);
  // A field whose average velocity is known: u(x, t, s) = x (s + 1), velocity x.
  class Known final : public VectorField {
   public:
    torch::Tensor predict(Quantity q, const torch::Tensor& x, double t) override {
      (void)q;
      (void)t;
      return x.clone();
    }
    PathCoefficients coefficients(double t) const override {
      return PathCoefficients{torch::full({1}, t, torch::kFloat64), torch::full({1}, 1 - t, torch::kFloat64),
                              torch::ones({1}, torch::kFloat64), -torch::ones({1}, torch::kFloat64)};
    }
    torch::Tensor average_velocity(const torch::Tensor& x, double t, double s) override {
      ends.emplace_back(t, s);
      return x * (s + 1);
    }
    std::vector<std::pair<double, double>> ends;
  } known;
  SolveRequest request;
  request.times = {0.0, 0.25, 1.0};
  const torch::Tensor x = torch::ones({2, 2});
  const torch::Tensor out = solver->solve(known, x, request);
  ASSERT_EQ(known.ends.size(), 2u);
  EXPECT_EQ(known.ends[1], std::make_pair(0.25, 1.0));
  // x (1 + 0.25 * 1.25) (1 + 0.75 * 2)
  EXPECT_NEAR(out[0][0].item<double>(), (1 + 0.25 * 1.25) * (1 + 0.75 * 2), 1e-6);
}

// Runs on the checkerboard, small: a flow-matching teacher, and pipelines of each objective.
class ObjectiveRuns : public testing::FolderTest {
 protected:
  static std::string pipeline(const std::string& extra, std::int64_t steps = 60) {
    return "[run]\nthreads = 1\n[dataset]\ntype = \"toy2d\"\n[model]\ntype = \"mlp\"\nwidth = 32\ndepth = 2\n"
           "[train]\nsteps = " +
           std::to_string(steps) +
           "\nbatch_size = 64\ncheckpoint_every = 20\nlog_every = 10\n[sample]\nn = 200\ntrajectories = 0\n"
           "[[metric]]\ntype = \"energy_distance\"\n" +
           extra;
  }
  fs::path run(const std::string& name, const std::string& toml, const std::string& env = "") {
    testing::write_text(path(name + ".toml"), toml);
    auto r = run_cli("run '" + path(name + ".toml").string() + "' --run-dir '" + path(name).string() + "'",
                     {}, env);
    EXPECT_EQ(r.code, 0) << r.err;
    return path(name);
  }
  // A pipeline that cannot run: exit 2, one line, no run directory.
  std::string error_of(const std::string& toml) {
    testing::write_text(path("bad.toml"), toml);
    auto r = run_cli("run '" + path("bad.toml").string() + "' --run-dir '" + path("out").string() + "'");
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_EQ(testing::lines_of(r.err).size(), 1u) << r.err;
    EXPECT_FALSE(fs::exists(path("out")));
    return r.err;
  }
};

TEST_F(ObjectiveRuns, CnfRunReportsItsEvaluationsPerStepAndResumesExactly) {
  const std::string toml = pipeline("[objective]\ntype = \"cnf_mle\"\nsteps = 4\n", 30);
  const fs::path reference = run("reference", toml);
  const std::string csv = read_text(reference / "metrics.csv");
  EXPECT_EQ(csv.substr(0, csv.find('\n')), "step,loss,lr,elapsed_s,nfe");
  EXPECT_NE(csv.find(",16\n"), std::string::npos) << csv;  // rk4: 4 steps of 4 evaluations
  const json summary = json::parse(read_text(reference / "summary.json"));
  EXPECT_EQ(summary["train"]["objective"]["nfe"].get<double>(), 16.0);
  EXPECT_GT(summary["train"]["seconds_per_step"].get<double>(), 0.0);
  // Killed in the middle of a step, resumed: the same weights and the same metrics.csv rows.
  testing::write_text(path("killed.toml"), toml);
  auto k = run_cli("run '" + path("killed.toml").string() + "' --run-dir '" + path("killed").string() + "'",
                   {}, "PATHLINE_FAULT=kill-in-step:25");
  ASSERT_TRUE(k.code == 137 || k.code == -1) << k.code << k.err;
  auto resumed = run_cli("resume '" + path("killed").string() + "'");
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_TRUE(read_text(reference / "model.safetensors") == read_text(path("killed") / "model.safetensors"));
  auto rows = [](const std::string& text) {  // without the elapsed seconds
    std::vector<std::string> out;
    for (const auto& line : testing::lines_of(text)) {
      const auto parts = line.find(",", line.find(",", line.find(",") + 1) + 1);
      out.push_back(line.substr(0, parts) + line.substr(line.rfind(",")));
    }
    return out;
  };
  EXPECT_EQ(rows(csv), rows(read_text(path("killed") / "metrics.csv")));
}

TEST_F(ObjectiveRuns, MeanFlowTrainsSamplesInOneStepAndResumesExactly) {
  const std::string toml = pipeline("[objective]\ntype = \"meanflow\"\n");
  const fs::path reference = run("reference", toml);
  const json summary = json::parse(read_text(reference / "summary.json"));
  EXPECT_EQ(summary["sampling"]["nfe"].get<double>(), 1.0);
  EXPECT_NE(read_text(reference / "config.toml").find("[solver]\ntype = \"meanflow\""), std::string::npos);
  testing::write_text(path("killed.toml"), toml);
  auto k = run_cli("run '" + path("killed.toml").string() + "' --run-dir '" + path("killed").string() + "'",
                   {}, "PATHLINE_FAULT=kill-in-step:33");
  ASSERT_TRUE(k.code == 137 || k.code == -1) << k.code << k.err;
  ASSERT_EQ(run_cli("resume '" + path("killed").string() + "'").code, 0);
  EXPECT_TRUE(read_text(reference / "model.safetensors") == read_text(path("killed") / "model.safetensors"));
  EXPECT_TRUE(read_text(reference / "samples.npy") == read_text(path("killed") / "samples.npy"));
  // Sampled again with more steps of its average velocity, or as a flow by euler.
  for (const char* solver : {"solver.steps=4", "solver.type=euler"}) {
    auto again = run_cli("sample '" + reference.string() + "' --set " + solver + " --out '" +
                         path(std::string("again-") + solver).string() + "'");
    EXPECT_EQ(again.code, 0) << again.err;
  }
}

TEST_F(ObjectiveRuns, ReflowPairsAreTheTeachersOdeEndPointsAndTheStudentStartsAsTheTeacher) {
  const fs::path teacher = run("teacher", pipeline("[solver]\ntype = \"midpoint\"\nsteps = 5\n"));
  const std::string student = pipeline("[coupling]\ntype = \"reflow\"\nteacher = \"" + teacher.string() +
                                           "\"\n[solver]\ntype = \"euler\"\nsteps = 1\n",
                                       0);
  // No training: the student's weights are the teacher's.
  const fs::path untrained = run("untrained", student);
  const auto teacher_weights = read_safetensors(teacher / "model.safetensors");
  const auto student_weights = read_safetensors(untrained / "model.safetensors");
  ASSERT_EQ(teacher_weights.size(), student_weights.size());
  for (std::size_t i = 0; i < teacher_weights.size(); ++i) {
    EXPECT_EQ(teacher_weights[i].first, student_weights[i].first);
    EXPECT_TRUE(torch::equal(teacher_weights[i].second, student_weights[i].second))
        << teacher_weights[i].first;
  }

  // The coupling's pairs: each source row with the teacher's samples from it.
  const Registry& registry = testing::builtin_registry();
  testing::write_text(path("student.toml"), student);
  const PipelineConfig config = load_config(path("student.toml"), registry);
  Components c = build_components(config, registry);
  at::Generator gen = at::detail::createCPUGenerator(1);
  Batch source = c.source->sample(50, gen), data = c.dataset->sample(50, gen);
  auto [x0, x1] = c.coupling->couple(source, data, gen);
  EXPECT_TRUE(torch::equal(x0.x, source.x));
  LoadedRun run_of_teacher = open_run(teacher, registry, {});
  const SampleResult expected = sample(run_of_teacher.config, run_of_teacher.components, {}, source.x);
  EXPECT_EQ(expected.nfe, 10);
  EXPECT_TRUE(torch::allclose(x1.x, expected.samples, 1e-6, 1e-7));

  // Cached pairs: drawn from the pair set, each still a teacher end point.
  const std::string cached = student.substr(0, student.find("[solver]")) + "pairs = 300\n" +
                             student.substr(student.find("[solver]"));
  testing::write_text(path("cached.toml"), cached);
  Components cc = build_components(load_config(path("cached.toml"), registry), registry);
  auto [p0, p1] = cc.coupling->couple(source, data, gen);
  EXPECT_FALSE(torch::equal(p0.x, source.x));
  EXPECT_TRUE(torch::allclose(
      p1.x, sample(run_of_teacher.config, run_of_teacher.components, {}, p0.x).samples, 1e-6, 1e-7));
  // A student trained on them.
  const fs::path trained = run("trained", pipeline(cached.substr(cached.find("[coupling]")), 40));
  EXPECT_TRUE(fs::exists(trained / "samples.npy"));
}

TEST_F(ObjectiveRuns, PipelinesThatCannotWorkAreOneLineErrors) {
  EXPECT_CONTAINS(
      error_of(pipeline("[objective]\ntype = \"meanflow\"\n[parameterization]\ntype = \"noise\"\n")),
      "set [parameterization] type = \"velocity\"");
  EXPECT_CONTAINS(error_of(pipeline("[objective]\ntype = \"cnf_mle\"\n[source]\ntype = \"toy2d\"\nshape = "
                                    "\"moons\"\n")),
                  "the [source] has no density");
  EXPECT_CONTAINS(error_of(pipeline("[coupling]\ntype = \"reflow\"\n")), "reflow: set teacher = \"RUN_DIR\"");
  EXPECT_CONTAINS(
      error_of(pipeline("[coupling]\ntype = \"reflow\"\nteacher = \"" + path("nowhere").string() + "\"\n")),
      "no such run directory");
  // A teacher on other data, and a student whose model is not the teacher's.
  const fs::path teacher = run("teacher", pipeline(""));
  const std::string reflow = "[coupling]\ntype = \"reflow\"\nteacher = \"" + teacher.string() + "\"\n";
  std::string wide = pipeline(reflow);
  wide.replace(wide.find("width = 32"), 10, "width = 48");
  EXPECT_CONTAINS(error_of(wide), "does not fit this [model]");
  EXPECT_CONTAINS(
      error_of("[run]\nthreads = 1\n[dataset]\ntype = \"fashion_mnist\"\nlimit = 8\n[model]\ntype = "
               "\"mlp\"\n" +
               reflow),
      "flows on samples of shape [2], this pipeline on [1, 28, 28]");
}

}  // namespace
}  // namespace pathline
