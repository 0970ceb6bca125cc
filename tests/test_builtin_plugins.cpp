// The built-in plugins, loaded from the build tree through the plugin host: solvers converge at
// their order on the uniform time grid, the toy data sets draw what they claim (and label it), the
// Gaussian source takes the data's shape, couplings keep labels with their rows, the path, the
// (conditional) MLP and the metric behave.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "pathline/engine/host.hpp"

namespace pathline {
namespace {

struct Loaded {
  Registry registry;
  PluginHost host{registry};
  Loaded() { host.load_directory(std::filesystem::path(PATHLINE_BINARY_DIR) / "lib/pathline/plugins"); }
};

// Loaded once for every test in this file; plugins are never unloaded anyway.
Loaded& loaded() {
  static Loaded* instance = new Loaded();
  return *instance;
}

// Every declared key at its default, then the overrides (which must be declared keys).
Params params_for(Kind kind, const std::string& name, const std::map<std::string, ParamValue>& overrides) {
  const ComponentEntry* entry = loaded().registry.find(kind, name);
  if (!entry) throw Error(std::string("no ") + to_string(kind) + " '" + name + "' registered");
  Params params;
  for (const auto& spec : entry->decl.params)
    if (spec.default_value) params.set(spec.name, *spec.default_value);
  for (const auto& [key, value] : overrides) {
    if (!entry->find_param(key)) throw Error(name + " has no parameter '" + key + "'");
    params.set(key, value);
  }
  return params;
}

template <class Interface>
std::shared_ptr<Interface> make(const std::string& name,
                                const std::map<std::string, ParamValue>& overrides = {},
                                const BuildContext& ctx = {}) {
  return loaded().registry.create<Interface>(name, params_for(KindOf<Interface>::value, name, overrides),
                                             ctx);
}

at::Generator generator(std::uint64_t seed) { return at::detail::createCPUGenerator(seed); }

TEST(BuiltinPlugins, AllLoadWithOneKindEach) {
  const std::map<std::string, Kind> expected = {{"datasets-toy", Kind::dataset},
                                                {"paths", Kind::path},
                                                {"couplings", Kind::coupling},
                                                {"time-samplers", Kind::time_sampler},
                                                {"parameterizations", Kind::parameterization},
                                                {"models-mlp", Kind::model},
                                                {"solvers", Kind::solver},
                                                {"time-grids", Kind::time_grid},
                                                {"metrics", Kind::metric}};
  for (const auto& failure : loaded().host.failures()) ADD_FAILURE() << failure.line();
  for (const auto& [plugin, kind] : expected) {
    bool found = false;
    for (const auto& info : loaded().host.plugins()) found = found || info->name == plugin;
    EXPECT_TRUE(found) << plugin;
    for (Kind other : kAllKinds)
      for (const ComponentEntry* entry : loaded().registry.list(other))
        if (entry->plugin && entry->plugin->name == plugin) {
          EXPECT_EQ(other, kind) << plugin << " registers " << entry->decl.name;
          for (const auto& spec : entry->decl.params) EXPECT_FALSE(spec.doc.empty()) << spec.name;
          EXPECT_FALSE(entry->decl.doc.empty()) << entry->decl.name;
        }
  }
}

// ---------------------------------------------------------------------------------------------
// Solvers

// A test field knows only its velocity; the path's coefficients are the linear path's, which no
// solver here reads.
class VelocityOnlyField : public VectorField {
 public:
  int calls = 0;
  torch::Tensor predict(Quantity q, const torch::Tensor& x, double t) override {
    if (q != Quantity::velocity) throw Error(std::string("test field: asked for ") + to_string(q));
    ++calls;
    return velocity_at(x, t);
  }
  PathCoefficients coefficients(double t) const override {
    auto tt = torch::full({1}, t, torch::kFloat64);
    return {tt, 1.0 - tt, torch::ones_like(tt), -torch::ones_like(tt)};
  }

 protected:
  virtual torch::Tensor velocity_at(const torch::Tensor& x, double t) = 0;
};

// dx/dt = w(t) J x, a rotation with speed w(t) = 1 + t: x(t1) is x(t0) rotated by
// theta = (t1 - t0) + (t1^2 - t0^2) / 2.
class RotatingField : public VelocityOnlyField {
 public:
  static torch::Tensor exact(const torch::Tensor& x0, double t0, double t1) {
    const double theta = (t1 - t0) + (t1 * t1 - t0 * t0) / 2;
    auto a = x0.select(1, 0), b = x0.select(1, 1);
    return torch::stack(
        {a * std::cos(theta) - b * std::sin(theta), a * std::sin(theta) + b * std::cos(theta)}, 1);
  }

 protected:
  torch::Tensor velocity_at(const torch::Tensor& x, double t) override {
    return torch::stack({-x.select(1, 1), x.select(1, 0)}, 1).mul_(1.0 + t);
  }
};

// dx/dt = x, returning its input itself: solvers must not rely on owning the field's output.
class AliasingField : public VelocityOnlyField {
 protected:
  torch::Tensor velocity_at(const torch::Tensor& x, double) override { return x; }
};

torch::Tensor start_points() { return torch::tensor({{1.0, 0.0}, {0.3, -0.7}, {-2.0, 0.5}}, torch::kDouble); }

// What the engine hands a solver: the uniform grid cut into the solver's own number of steps.
SolveRequest uniform_request(const Solver& solver, double t0, double t1) {
  SolveRequest req;
  req.times = make<TimeGrid>("uniform")->times(solver.grid_steps(), t0, t1, *make<Path>("linear"));
  return req;
}

double solve_error(const std::string& name, std::int64_t steps, double t0, double t1) {
  RotatingField field;
  auto x0 = start_points();
  auto solver = make<Solver>(name, {{"steps", steps}});
  EXPECT_EQ(solver->grid_steps(), steps);
  auto x = solver->solve(field, x0, uniform_request(*solver, t0, t1));
  return (x - RotatingField::exact(x0, t0, t1)).abs().max().item<double>();
}

struct OrderCase {
  std::string solver;
  double order;
  std::int64_t steps;  // coarse grid; the fine one has twice as many
  int evals_per_step;
};

std::ostream& operator<<(std::ostream& out, const OrderCase& c) { return out << c.solver; }

class SolverOrder : public ::testing::TestWithParam<OrderCase> {};

TEST_P(SolverOrder, ConvergesAtItsOrder) {
  const OrderCase& c = GetParam();
  const double coarse = solve_error(c.solver, c.steps, 0.0, 1.0);
  const double fine = solve_error(c.solver, 2 * c.steps, 0.0, 1.0);
  const double measured = std::log2(coarse / fine);
  EXPECT_NEAR(measured, c.order, 0.3) << c.solver << " errors " << coarse << " -> " << fine;
  EXPECT_LT(fine, 0.05);
  std::cout << "[ order    ] " << c.solver << ": " << measured << "\n";
  // The same on another interval, where stage times matter differently.
  const double measured2 =
      std::log2(solve_error(c.solver, c.steps, 0.25, 2.0) / solve_error(c.solver, 2 * c.steps, 0.25, 2.0));
  EXPECT_NEAR(measured2, c.order, 0.3) << c.solver;
  // And backwards in time, from data to noise, on the reversed grid.
  const double measured3 =
      std::log2(solve_error(c.solver, c.steps, 2.0, 0.25) / solve_error(c.solver, 2 * c.steps, 2.0, 0.25));
  EXPECT_NEAR(measured3, c.order, 0.3) << c.solver << " backwards";
}

TEST_P(SolverOrder, ObservesEveryStepAndKeepsTheInput) {
  const OrderCase& c = GetParam();
  RotatingField field;
  auto x0 = start_points();
  auto copy = x0.clone();
  std::vector<double> times;
  std::vector<torch::Tensor> states;
  const std::int64_t steps = 7;
  auto solver = make<Solver>(c.solver, {{"steps", steps}});
  SolveRequest req = uniform_request(*solver, 0.1, 0.9);
  req.observer = [&](double t, const torch::Tensor& x) {
    times.push_back(t);
    states.push_back(x.clone());
  };
  auto x = solver->solve(field, x0, req);
  EXPECT_TRUE(torch::equal(x0, copy)) << "the caller's tensor was modified";
  ASSERT_EQ(times.size(), static_cast<std::size_t>(steps + 1));
  EXPECT_DOUBLE_EQ(times.front(), 0.1);
  EXPECT_DOUBLE_EQ(times.back(), 0.9);
  for (std::size_t i = 1; i < times.size(); ++i) EXPECT_NEAR(times[i] - times[i - 1], 0.8 / steps, 1e-12);
  EXPECT_TRUE(torch::equal(states.front(), x0));
  EXPECT_TRUE(torch::equal(states.back(), x));
  EXPECT_EQ(field.calls, steps * c.evals_per_step);

  // Backwards, from data to noise: the same grid reversed, and the flow undone up to the error.
  RotatingField back;
  SolveRequest reverse = uniform_request(*solver, 0.9, 0.1);
  std::vector<double> reverse_times;
  reverse.observer = [&](double t, const torch::Tensor&) { reverse_times.push_back(t); };
  solver->solve(back, x, reverse);
  ASSERT_EQ(reverse_times.size(), times.size());
  EXPECT_DOUBLE_EQ(reverse_times.front(), 0.9);
  EXPECT_DOUBLE_EQ(reverse_times.back(), 0.1);
  for (std::size_t i = 1; i < reverse_times.size(); ++i)
    EXPECT_NEAR(reverse_times[i] - reverse_times[i - 1], -0.8 / steps, 1e-12);
}

TEST_P(SolverOrder, StepsThroughAnyGridItIsGiven) {
  // The grid is the engine's: a solver walks the times it is handed, whatever their spacing, and
  // keeps its order on a grid refined towards the end, t_i = 1 - (1 - i / n)^2.
  const OrderCase& c = GetParam();
  auto solver = make<Solver>(c.solver, {{"steps", std::int64_t{3}}});  // the grid decides, not `steps`
  auto error_on_graded_grid = [&](std::int64_t n) {
    RotatingField field;
    SolveRequest req;
    for (std::int64_t i = 0; i <= n; ++i)
      req.times.push_back(1.0 - std::pow(1.0 - double(i) / double(n), 2.0));
    std::vector<double> seen;
    req.observer = [&](double t, const torch::Tensor&) { seen.push_back(t); };
    auto x = solver->solve(field, start_points(), req);
    EXPECT_EQ(seen, req.times);
    EXPECT_EQ(field.calls, n * c.evals_per_step);
    return (x - RotatingField::exact(start_points(), 0.0, 1.0)).abs().max().item<double>();
  };
  const double measured = std::log2(error_on_graded_grid(c.steps) / error_on_graded_grid(2 * c.steps));
  EXPECT_NEAR(measured, c.order, 0.3) << c.solver;
}

TEST_P(SolverOrder, HandlesAFieldThatReturnsItsInput) {
  const OrderCase& c = GetParam();
  AliasingField field;
  auto x0 = start_points();
  auto solver = make<Solver>(c.solver, {{"steps", std::int64_t{64}}});
  auto x = solver->solve(field, x0, uniform_request(*solver, 0.0, 1.0));
  // Error of order h^p for dx/dt = x from 0 to 1: exact e * x0.
  const double error = (x - std::exp(1.0) * x0).abs().max().item<double>();
  EXPECT_LT(error, 5.0 * std::pow(1.0 / 64, c.order)) << c.solver;
  EXPECT_TRUE(torch::equal(x0, start_points()));
}

INSTANTIATE_TEST_SUITE_P(Builtin, SolverOrder,
                         ::testing::Values(OrderCase{"euler", 1.0, 64, 1}, OrderCase{"midpoint", 2.0, 32, 2},
                                           OrderCase{"heun", 2.0, 32, 2}, OrderCase{"rk4", 4.0, 16, 4}),
                         [](const auto& info) { return info.param.solver; });

TEST(BuiltinSolvers, DefaultStepCounts) {
  const std::map<std::string, std::int64_t> defaults = {
      {"euler", 100}, {"midpoint", 50}, {"heun", 50}, {"rk4", 25}};
  for (const auto& [name, steps] : defaults) {
    EXPECT_EQ(params_for(Kind::solver, name, {}).integer("steps"), steps) << name;
    EXPECT_EQ(make<Solver>(name)->grid_steps(), steps) << name;
  }
}

// ---------------------------------------------------------------------------------------------
// Time grids

TEST(UniformTimeGrid, EndsExactlyAndStepsEvenlyEitherWay) {
  auto grid = make<TimeGrid>("uniform");
  auto path = make<Path>("linear");
  // Ends chosen so that t0 + steps h misses t1 in double: the last time must be t1 itself.
  for (auto [t0, t1] : {std::pair{0.0, 1.0}, {0.1, 0.7}, {1e-3, 0.999}, {1.0, 0.0}, {0.9, 0.1}}) {
    for (std::int64_t steps : {1, 3, 7, 10, 49, 100}) {
      SCOPED_TRACE(std::to_string(t0) + " -> " + std::to_string(t1) + ", " + std::to_string(steps) +
                   " steps");
      auto times = grid->times(steps, t0, t1, *path);
      ASSERT_EQ(times.size(), static_cast<std::size_t>(steps + 1));
      EXPECT_EQ(times.front(), t0);
      EXPECT_EQ(times.back(), t1);
      const double h = (t1 - t0) / static_cast<double>(steps);
      for (std::size_t i = 1; i < times.size(); ++i) {
        EXPECT_NEAR(times[i] - times[i - 1], h, 1e-14);
        EXPECT_TRUE(t1 > t0 ? times[i] > times[i - 1] : times[i] < times[i - 1]);
      }
    }
  }
  // Where t0 + steps h rounds away from t1 (0 + 49 (1 / 49) = 0.9999999999999999), the grid still
  // ends at t1; a solver would otherwise stop short of it, or evaluate past it.
  EXPECT_NE(0.0 + 49 * (1.0 / 49), 1.0);
  EXPECT_EQ(grid->times(49, 0.0, 1.0, *path).back(), 1.0);
  EXPECT_NE(0.9 + 3 * ((0.1 - 0.9) / 3), 0.1);
  EXPECT_EQ(grid->times(3, 0.9, 0.1, *path).back(), 0.1);
  EXPECT_THROW(grid->times(0, 0.0, 1.0, *path), Error);
}

// ---------------------------------------------------------------------------------------------
// toy2d

Batch draw_batch(const std::string& shape, std::int64_t n, std::uint64_t seed,
                 std::map<std::string, ParamValue> overrides = {}) {
  overrides["shape"] = shape;
  auto gen = generator(seed);
  return make<Dataset>("toy2d", overrides)->sample(n, gen);
}

torch::Tensor draw(const std::string& shape, std::int64_t n, std::uint64_t seed,
                   std::map<std::string, ParamValue> overrides = {}) {
  return draw_batch(shape, n, seed, std::move(overrides)).x;
}

class Toy2dShape : public ::testing::TestWithParam<std::string> {};

TEST_P(Toy2dShape, DrawsFiniteDeterministicPointsWithPlausibleSpread) {
  const std::string shape = GetParam();
  auto x = draw(shape, 4000, 7);
  ASSERT_EQ(x.sizes(), (std::vector<std::int64_t>{4000, 2}));
  EXPECT_EQ(x.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::isfinite(x).all().item<bool>());
  EXPECT_LT(x.abs().max().item<double>(), 6.0);
  auto spread = x.std(0);
  EXPECT_GT(spread.min().item<double>(), 0.3) << shape;
  EXPECT_LT(spread.max().item<double>(), 4.0) << shape;
  EXPECT_LT(x.mean(0).abs().max().item<double>(), 0.5) << shape;
  EXPECT_TRUE(torch::equal(x, draw(shape, 4000, 7)));
  EXPECT_FALSE(torch::equal(x, draw(shape, 4000, 8)));
  const DataInfo info = make<Dataset>("toy2d", {{"shape", shape}})->info();
  EXPECT_EQ(info.shape, std::vector<std::int64_t>{2});
  EXPECT_EQ(info.num_classes, 0);
  EXPECT_TRUE(std::isinf(info.min_value) && info.min_value < 0);
  EXPECT_TRUE(std::isinf(info.max_value) && info.max_value > 0);
  EXPECT_FALSE(draw_batch(shape, 10, 7).labels.defined());
  // `scale` multiplies the same draws; `noise` adds a jitter of that std to them.
  EXPECT_TRUE(torch::allclose(draw(shape, 4000, 7, {{"scale", 2.5}}), 2.5 * x, 1e-6, 1e-5));
  auto jitter = draw(shape, 4000, 7, {{"noise", 0.1}}) - x;
  EXPECT_NEAR(jitter.std().item<double>(), 0.1, 0.01) << shape;
  EXPECT_LT(jitter.mean().abs().item<double>(), 0.01) << shape;
  // jitter = "diagonal_uniform": one U[0, noise) per point, the same on both coordinates.
  auto diagonal = draw(shape, 4000, 7, {{"noise", 0.6}, {"jitter", std::string("diagonal_uniform")}}) - x;
  EXPECT_TRUE(torch::allclose(diagonal.select(1, 0), diagonal.select(1, 1), 0.0, 1e-5)) << shape;
  EXPECT_GE(diagonal.min().item<double>(), -1e-5) << shape;
  EXPECT_LT(diagonal.max().item<double>(), 0.6) << shape;
  EXPECT_NEAR(diagonal.mean().item<double>(), 0.3, 0.02) << shape;
  EXPECT_NEAR(diagonal.std().item<double>(), 0.6 / std::sqrt(12.0), 0.01) << shape;
  // `offset` moves every point after `scale`.
  EXPECT_TRUE(
      torch::allclose(draw(shape, 4000, 7, {{"scale", 2.0}, {"offset", std::vector<double>{0.5, -1.0}}}),
                      2.0 * x + torch::tensor({0.5f, -1.0f}), 1e-6, 1e-5));
}

TEST(Toy2d, EightGaussiansModeStdSetsTheSpreadOfEachMode) {
  for (double s : {0.1, 0.5}) {
    auto b = draw_batch("8gaussians", 16000, 5, {{"mode_std", s}, {"labelled", true}});
    // The distance to the mode's centre, radius 2 sqrt(2) at angle k pi/4, has std s per axis.
    auto angle = b.labels.to(torch::kFloat64) * (M_PI / 4.0);
    auto centre = torch::stack({torch::cos(angle), torch::sin(angle)}, 1) * (2.0 * std::sqrt(2.0));
    auto offset = b.x.to(torch::kFloat64) - centre;
    EXPECT_NEAR(offset.std(0).min().item<double>(), s, 0.03 * s) << s;
    EXPECT_NEAR(offset.std(0).max().item<double>(), s, 0.03 * s) << s;
    EXPECT_LT(offset.mean(0).abs().max().item<double>(), 0.05 * s + 0.005) << s;
  }
}

INSTANTIATE_TEST_SUITE_P(Builtin, Toy2dShape,
                         ::testing::Values("moons", "circles", "8gaussians", "checkerboard", "spirals",
                                           "gaussian"),
                         [](const auto& info) {
                           return info.param == "8gaussians" ? std::string("eight_gaussians") : info.param;
                         });

TEST(Toy2d, CheckerboardIsMetasEightCells) {
  const std::int64_t n = 16000;
  auto y = draw("checkerboard", n, 3).to(torch::kDouble) * 0.45;
  EXPECT_EQ(params_for(Kind::dataset, "toy2d", {}).string("shape"), "checkerboard");
  EXPECT_GE(y.min().item<double>(), -2.0 - 1e-6);
  EXPECT_LT(y.max().item<double>(), 2.0 + 1e-6);
  auto cell = torch::floor(y).clamp(-2, 1).to(torch::kLong) + 2;  // (col, row) in 0..3
  auto col = cell.select(1, 0), row = cell.select(1, 1);
  // Rounding of /0.45 and *0.45 may move a point on a cell edge across it: ignore those.
  auto on_edge = ((y - torch::round(y)).abs() < 1e-5).any(1);
  auto odd = (col + row).remainder(2) == 1;
  EXPECT_EQ((odd & ~on_edge).sum().item<std::int64_t>(), 0);
  EXPECT_LT(on_edge.sum().item<std::int64_t>(), n / 100);
  auto counts = torch::bincount(col * 4 + row, {}, 16).to(torch::kDouble) / n;
  for (std::int64_t c = 0; c < 4; ++c)
    for (std::int64_t r = 0; r < 4; ++r) {
      const double share = counts[c * 4 + r].item<double>();
      if ((c + r) % 2 == 0)
        EXPECT_NEAR(share, 0.125, 0.015) << "cell " << c << "," << r;
      else
        EXPECT_LT(share, 0.001) << "cell " << c << "," << r;
    }
}

TEST(Toy2d, ShapesHaveTheirGeometry) {
  auto circles = draw("circles", 2000, 1).norm(2, 1);
  auto inner = (circles - 1.5).abs() < 1e-4, outer = (circles - 3.0).abs() < 1e-4;
  EXPECT_TRUE((inner | outer).all().item<bool>());
  EXPECT_NEAR(inner.to(torch::kDouble).mean().item<double>(), 0.5, 0.05);

  auto gauss = draw("gaussian", 20000, 1);
  EXPECT_LT(gauss.mean(0).abs().max().item<double>(), 0.03);
  EXPECT_NEAR(gauss.std(0).min().item<double>(), 1.0, 0.03);
  EXPECT_NEAR(gauss.std(0).max().item<double>(), 1.0, 0.03);

  auto eight = draw("8gaussians", 20000, 1);
  EXPECT_NEAR(eight.norm(2, 1).mean().item<double>(), 2.0 * std::sqrt(2.0), 0.1);

  auto moons = draw("moons", 2000, 1);
  EXPECT_LE(moons.select(1, 0).abs().max().item<double>(), 3.0 + 1e-5);
  EXPECT_LE(moons.select(1, 1).abs().max().item<double>(), 1.5 + 1e-5);
}

TEST(Toy2d, LabelledDrawsTheSamePointsAndLabelsThem) {
  const std::map<std::string, std::int64_t> classes = {{"moons", 2},   {"circles", 2},      {"8gaussians", 8},
                                                       {"spirals", 2}, {"checkerboard", 8}, {"gaussian", 0}};
  for (const auto& [shape, num_classes] : classes) {
    SCOPED_TRACE(shape);
    for (const std::map<std::string, ParamValue>& extra :
         {std::map<std::string, ParamValue>{}, {{"noise", 0.1}, {"scale", 1.5}}}) {
      auto plain_params = extra, labelled_params = extra;
      labelled_params["labelled"] = true;
      auto g1 = generator(21), g2 = generator(21);
      Batch plain = draw_batch(shape, 3000, 21, plain_params);
      Batch labelled = draw_batch(shape, 3000, 21, labelled_params);
      // The same points from the same generator, and the generator left in the same state.
      EXPECT_TRUE(torch::equal(plain.x, labelled.x));
      plain_params["shape"] = labelled_params["shape"] = shape;
      make<Dataset>("toy2d", plain_params)->sample(5, g1);
      make<Dataset>("toy2d", labelled_params)->sample(5, g2);
      EXPECT_TRUE(torch::equal(torch::rand({4}, g1), torch::rand({4}, g2)));
      EXPECT_FALSE(plain.labels.defined());
      if (num_classes == 0) {
        EXPECT_FALSE(labelled.labels.defined());
        continue;
      }
      ASSERT_TRUE(labelled.labels.defined());
      EXPECT_EQ(labelled.labels.scalar_type(), torch::kInt64);
      ASSERT_EQ(labelled.labels.sizes(), (std::vector<std::int64_t>{3000}));
      // Every class drawn about equally often.
      auto counts = torch::bincount(labelled.labels, {}, num_classes).to(torch::kDouble) / 3000.0;
      ASSERT_EQ(counts.size(0), num_classes) << "a label beyond the classes";
      EXPECT_GE(labelled.labels.min().item<std::int64_t>(), 0);
      EXPECT_LT((counts - 1.0 / num_classes).abs().max().item<double>(), 0.05);
    }
    const DataInfo info = make<Dataset>("toy2d", {{"shape", shape}, {"labelled", true}})->info();
    EXPECT_EQ(info.num_classes, num_classes);
    EXPECT_EQ(info.class_names.size(), static_cast<std::size_t>(num_classes));
    EXPECT_EQ(info.shape, std::vector<std::int64_t>{2});
  }
}

TEST(Toy2d, EightGaussiansLabelIsTheNearestMode) {
  auto batch = draw_batch("8gaussians", 20000, 4, {{"labelled", true}});
  const double radius = 2.0 * std::sqrt(2.0);
  auto angles = torch::arange(8, torch::kDouble) * (3.14159265358979323846 / 4.0);
  auto modes = torch::stack({torch::cos(angles), torch::sin(angles)}, 1) * radius;  // [8, 2]
  auto nearest = std::get<1>(torch::cdist(batch.x.to(torch::kDouble), modes).min(1));
  // Modes are 2.16 apart with std 0.35: a point crosses to a neighbour's side with probability
  // about 0.2%, by chance, not by a wrong label.
  const double agree = (nearest == batch.labels).to(torch::kDouble).mean().item<double>();
  EXPECT_GT(agree, 0.99);
  // Each point lies at the std of its labelled mode (not of some other mode).
  auto offset = batch.x.to(torch::kDouble) - modes.index_select(0, batch.labels);
  EXPECT_NEAR(offset.std().item<double>(), 0.5 / std::sqrt(2.0), 0.01);
  EXPECT_EQ(make<Dataset>("toy2d", {{"shape", std::string("8gaussians")}, {"labelled", true}})
                ->info()
                .class_names[3],
            "mode 3");
}

TEST(Toy2d, CheckerboardLabelIsTheCell) {
  auto batch = draw_batch("checkerboard", 16000, 5, {{"labelled", true}});
  auto y = batch.x.to(torch::kDouble) * 0.45;
  auto cell = torch::floor(y).clamp(-2, 1).to(torch::kLong) + 2;  // (col, row) in 0..3
  auto col = cell.select(1, 0), row = cell.select(1, 1);
  // Label 2 col + row / 2: the two filled cells of each column, bottom one first.
  auto expected = col * 2 + torch::div(row, 2, "floor");
  auto on_edge = ((y - torch::round(y)).abs() < 1e-5).any(1);
  EXPECT_EQ(((expected != batch.labels) & ~on_edge).sum().item<std::int64_t>(), 0);
  EXPECT_LT(on_edge.sum().item<std::int64_t>(), 160);
  const DataInfo info = make<Dataset>("toy2d", {{"labelled", true}})->info();
  EXPECT_EQ(info.class_names[0], "cell (0, 0)");
  EXPECT_EQ(info.class_names[3], "cell (1, 3)");
  // Circles: label 1 is the inner circle; moons: label 1 the lower moon, centred lower.
  auto circles = draw_batch("circles", 2000, 5, {{"labelled", true}});
  auto inner = (circles.x.norm(2, 1) - 1.5).abs() < 1e-4;
  EXPECT_TRUE(torch::equal(inner.to(torch::kLong), circles.labels));
  auto moons = draw_batch("moons", 2000, 5, {{"labelled", true}});
  auto lower = moons.labels == 1;
  EXPECT_LT(moons.x.select(1, 1).masked_select(lower).mean().item<double>(),
            moons.x.select(1, 1).masked_select(~lower).mean().item<double>() - 0.5);
}

// ---------------------------------------------------------------------------------------------
// The Gaussian source

TEST(GaussianSource, TakesTheDataShapeAndDrawsTheEnginesNoise) {
  BuildContext ctx;
  ctx.slot = "source";
  ctx.data.shape = {1, 4, 3};
  ctx.data.num_classes = 10;
  auto source = make<Dataset>("gaussian", {}, ctx);
  EXPECT_EQ(source->info().shape, (std::vector<std::int64_t>{1, 4, 3}));
  EXPECT_EQ(source->info().num_classes, 0);
  auto g1 = generator(8), g2 = generator(8);
  Batch batch = source->sample(500, g1);
  EXPECT_FALSE(batch.labels.defined());
  ASSERT_EQ(batch.x.sizes(), (std::vector<std::int64_t>{500, 1, 4, 3}));
  EXPECT_EQ(batch.x.scalar_type(), torch::kFloat32);
  // Exactly the draw the engine made for its noise before there was a [source].
  EXPECT_TRUE(
      torch::equal(batch.x, at::randn({500, 1, 4, 3}, g2, torch::TensorOptions().dtype(torch::kFloat32))));
  EXPECT_NEAR(batch.x.mean().item<double>(), 0.0, 0.05);
  EXPECT_NEAR(batch.x.std().item<double>(), 1.0, 0.05);
  // An explicit shape wins over the data's.
  EXPECT_EQ(make<Dataset>("gaussian", {{"shape", std::vector<std::int64_t>{3}}}, ctx)->info().shape,
            std::vector<std::int64_t>{3});
  EXPECT_EQ(make<Dataset>("gaussian", {{"shape", std::vector<std::int64_t>{2}}})->sample(7, g1).x.sizes(),
            (std::vector<std::int64_t>{7, 2}));
}

TEST(GaussianSource, WithoutAnyShapeSaysToSetIt) {
  BuildContext ctx;
  ctx.slot = "dataset";
  try {
    make<Dataset>("gaussian", {}, ctx);
    ADD_FAILURE() << "built without a shape";
  } catch (const InputError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("gaussian"), std::string::npos) << message;
    EXPECT_NE(message.find("`shape`"), std::string::npos) << message;
    EXPECT_NE(message.find("[dataset]"), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

// ---------------------------------------------------------------------------------------------
// Path, coupling, time sampler, parameterizations

TEST(LinearPath, CoefficientsAndSigmaMin) {
  auto t = torch::tensor({0.0, 0.25, 1.0, 0.5, 0.75, 0.1}).reshape({2, 3});
  auto c = make<Path>("linear")->coefficients(t);
  for (const auto* k : {&c.alpha, &c.sigma, &c.d_alpha, &c.d_sigma}) EXPECT_EQ(k->sizes(), t.sizes());
  EXPECT_TRUE(torch::allclose(c.alpha, t));
  EXPECT_TRUE(torch::allclose(c.sigma, 1 - t));
  EXPECT_TRUE(torch::allclose(c.d_alpha, torch::ones_like(t)));
  EXPECT_TRUE(torch::allclose(c.d_sigma, -torch::ones_like(t)));
  EXPECT_FLOAT_EQ(c.alpha[0][0].item<float>(), 0.0f);
  EXPECT_FLOAT_EQ(c.sigma[0][0].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(c.alpha[0][2].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(c.sigma[0][2].item<float>(), 0.0f);

  auto s = make<Path>("linear", {{"sigma_min", 0.1}})->coefficients(t);
  EXPECT_TRUE(torch::allclose(s.alpha, t));
  EXPECT_TRUE(torch::allclose(s.sigma, 1 - 0.9 * t));
  EXPECT_FLOAT_EQ(s.sigma[0][0].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(s.sigma[0][2].item<float>(), 0.1f);
  EXPECT_TRUE(torch::allclose(s.d_sigma, torch::full_like(t, -0.9)));
  // d_sigma is the derivative of sigma.
  auto h = 1e-3;
  auto fd = (make<Path>("linear", {{"sigma_min", 0.1}})->coefficients(t + h).sigma - s.sigma) / h;
  EXPECT_TRUE(torch::allclose(fd, s.d_sigma, 1e-3, 1e-3));
}

TEST(IndependentCoupling, ReturnsItsInputs) {
  auto gen = generator(0);
  Batch source{torch::randn({5, 2}), torch::tensor({0, 1, 2, 3, 4}, torch::kLong)};
  Batch target{torch::randn({5, 2}), torch::Tensor()};
  auto [a, b] = make<Coupling>("independent")->couple(source, target, gen);
  EXPECT_TRUE(torch::equal(a.x, source.x));
  EXPECT_TRUE(torch::equal(a.labels, source.labels));
  EXPECT_TRUE(torch::equal(b.x, target.x));
  EXPECT_FALSE(b.labels.defined());
}

// A label that is a function of x (the quadrant) stays that function of the row it comes out with:
// couplings move labels with their rows, on both sides.
TEST(Couplings, KeepLabelsWithTheirRows) {
  auto quadrant = [](const torch::Tensor& x) {
    return (x.select(1, 0) > 0).to(torch::kLong) + 2 * (x.select(1, 1) > 0).to(torch::kLong);
  };
  for (const std::string name : {"independent", "minibatch_ot", "sinkhorn", "conditional_ot"}) {
    SCOPED_TRACE(name);
    auto gen = generator(3);
    auto x0 = at::randn({128, 2}, gen, torch::TensorOptions().dtype(torch::kFloat32));
    auto x1 = at::randn({128, 2}, gen, torch::TensorOptions().dtype(torch::kFloat32)) * 2.0 + 1.0;
    Batch source{x0, quadrant(x0)}, target{x1, 10 + quadrant(x1)};
    auto [a, b] = make<Coupling>(name)->couple(source, target, gen);
    ASSERT_TRUE(a.labels.defined() && b.labels.defined());
    EXPECT_TRUE(torch::equal(a.labels, quadrant(a.x)));
    EXPECT_TRUE(torch::equal(b.labels, 10 + quadrant(b.x)));
    if (name != "independent") {
      EXPECT_FALSE(torch::equal(a.x, x0)) << "the rows were not paired anew";
    }
    // Unlabelled batches stay unlabelled.
    auto [c, d] = make<Coupling>(name)->couple(Batch{x0, {}}, Batch{x1, {}}, gen);
    EXPECT_FALSE(c.labels.defined());
    EXPECT_FALSE(d.labels.defined());
  }
}

// C2OT: noise moves only among the rows of one class (each class keeps the noise that independent
// pairing gave it), and within a class the pairing is the exact OT one, the same as minibatch_ot on
// that class alone.
TEST(ConditionalOtCoupling, PairsOptimallyWithinEachClassOnly) {
  auto gen = generator(11);
  const std::int64_t n = 60;
  auto x0 = at::randn({n, 2}, gen, torch::TensorOptions().dtype(torch::kFloat32));
  auto labels = torch::arange(n, torch::kLong) % 3;
  auto x1 = at::randn({n, 2}, gen, torch::TensorOptions().dtype(torch::kFloat32)) +
            labels.unsqueeze(1).to(torch::kFloat32) * 4;
  Batch source{x0, torch::Tensor()}, target{x1, labels};
  auto [a, b] = make<Coupling>("conditional_ot")->couple(source, target, gen);
  EXPECT_TRUE(torch::equal(b.x, x1));
  EXPECT_FALSE(torch::equal(a.x, x0));
  auto ot = make<Coupling>("minibatch_ot");
  for (std::int64_t c = 0; c < 3; ++c) {
    auto rows = torch::nonzero(labels == c).flatten();
    // The same noise rows, reordered: sorted, the class's source rows are what they were.
    auto mine = a.x.index_select(0, rows), given = x0.index_select(0, rows);
    EXPECT_TRUE(torch::equal(std::get<0>(mine.select(1, 0).sort()), std::get<0>(given.select(1, 0).sort())));
    auto [best, unused] = ot->couple(Batch{given, {}}, Batch{x1.index_select(0, rows), {}}, gen);
    EXPECT_TRUE(torch::equal(mine, best.x)) << "class " << c;
  }
  // Unlabelled data: plain minibatch OT.
  auto [u, v] = make<Coupling>("conditional_ot")->couple(Batch{x0, {}}, Batch{x1, {}}, gen);
  auto [w, z] = ot->couple(Batch{x0, {}}, Batch{x1, {}}, gen);
  EXPECT_TRUE(torch::equal(u.x, w.x));
}

TEST(UniformTime, DrawsFromUnitInterval) {
  auto sampler = make<TimeSampler>("uniform");
  auto g1 = generator(5), g2 = generator(5);
  auto t = sampler->sample(10000, g1);
  ASSERT_EQ(t.sizes(), (std::vector<std::int64_t>{10000}));
  EXPECT_EQ(t.scalar_type(), torch::kFloat32);
  EXPECT_GE(t.min().item<double>(), 0.0);
  EXPECT_LT(t.max().item<double>(), 1.0);
  EXPECT_NEAR(t.mean().item<double>(), 0.5, 0.02);
  EXPECT_TRUE(torch::equal(t, sampler->sample(10000, g2)));
}

TEST(Parameterizations, ReportTheirQuantity) {
  for (Quantity q : {Quantity::velocity, Quantity::noise, Quantity::data, Quantity::score})
    EXPECT_EQ(make<Parameterization>(to_string(q))->predicts(), q) << to_string(q);
  // The SDK's default target follows: velocity of the linear path is x1 - x0.
  auto x0 = torch::randn({4, 2}), x1 = torch::randn({4, 2});
  auto c = make<Path>("linear")->coefficients(torch::rand({4})).broadcast_to_rank(2);
  EXPECT_TRUE(torch::allclose(make<Parameterization>("velocity")->target(x0, x1, c), x1 - x0));
}

// ---------------------------------------------------------------------------------------------
// MLP

TEST(Mlp, KeepsShapeLearnsAndDependsOnTime) {
  for (const auto& shape : {std::vector<std::int64_t>{2}, std::vector<std::int64_t>{1, 4, 4}}) {
    BuildContext ctx;
    ctx.data.shape = shape;
    auto model = make<Model>("mlp", {{"width", std::int64_t{32}}, {"depth", std::int64_t{2}}}, ctx);
    EXPECT_EQ(model->parameters().size(), 6u);  // depth + 1 linear layers
    EXPECT_EQ(model->named_buffers().size(), 2u);
    // MACs: (dim + 32 time features) x 32, 32 x 32, 32 x dim.
    const double dim = static_cast<double>(ctx.data.numel());
    EXPECT_EQ(model->macs_per_sample(), (dim + 32) * 32 + 32 * 32 + 32 * dim);
    std::vector<std::int64_t> batch_shape = {5};
    batch_shape.insert(batch_shape.end(), shape.begin(), shape.end());
    auto x = torch::randn(batch_shape);
    auto t = torch::rand({5});
    auto y = model->forward(x, t, {});
    EXPECT_EQ(y.sizes(), x.sizes());
    EXPECT_FALSE(torch::allclose(y, model->forward(x, t + 0.3, {})));
    y.pow(2).mean().backward();
    for (const auto& p : model->named_parameters()) {
      ASSERT_TRUE(p.value().grad().defined()) << p.key();
      EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
    }
    // Buffers follow the module to double.
    model->to(torch::kDouble);
    EXPECT_EQ(model->forward(x.to(torch::kDouble), t.to(torch::kDouble), {}).scalar_type(), torch::kDouble);
  }
}

TEST(Mlp, UnconditionalWeightsAreAPlainStackOfLinearLayers) {
  // Unlabelled data gives the MLP of SDK 1: the same layers created in the same order, so the same
  // seed draws the same initial weights (and today's runs reproduce).
  BuildContext ctx;
  ctx.data.shape = {2};
  torch::manual_seed(42);
  auto model = make<Model>("mlp", {{"width", std::int64_t{16}}, {"depth", std::int64_t{2}}}, ctx);
  torch::manual_seed(42);
  std::vector<torch::nn::Linear> reference = {torch::nn::Linear(2 + 32, 16), torch::nn::Linear(16, 16),
                                              torch::nn::Linear(16, 2)};
  auto params = model->parameters();
  ASSERT_EQ(params.size(), 6u);
  for (std::size_t i = 0; i < reference.size(); ++i) {
    EXPECT_TRUE(torch::equal(params[2 * i], reference[i]->weight)) << "layer " << i;
    EXPECT_TRUE(torch::equal(params[2 * i + 1], reference[i]->bias)) << "layer " << i;
  }
  // Labels given to an unconditional model change nothing.
  auto x = torch::randn({4, 2});
  auto t = torch::rand({4});
  EXPECT_TRUE(torch::equal(model->forward(x, t, {}), model->forward(x, t, {torch::tensor({0, 1, 0, 1})})));
}

TEST(Mlp, ConditionalOnLabelledDataWithANullLabelRow) {
  BuildContext ctx;
  ctx.data.shape = {2};
  ctx.data.num_classes = 3;
  auto model = make<Model>(
      "mlp", {{"width", std::int64_t{32}}, {"depth", std::int64_t{2}}, {"class_embedding", std::int64_t{8}}},
      ctx);
  // The embedding: one row per class and the null label's row, num_classes.
  auto params = model->named_parameters();
  ASSERT_TRUE(params.contains("classes.weight"));
  EXPECT_EQ(params["classes.weight"].sizes(), (std::vector<std::int64_t>{4, 8}));
  EXPECT_EQ(model->parameters().size(), 7u);
  EXPECT_EQ(model->macs_per_sample(), (2.0 + 32 + 8) * 32 + 32 * 32 + 32 * 2);

  auto x = torch::randn({6, 2});
  auto t = torch::rand({6});
  auto as_labels = [](std::vector<std::int64_t> v) { return torch::tensor(v, torch::kLong); };
  auto y0 = model->forward(x, t, {as_labels({0, 0, 0, 0, 0, 0})});
  auto y1 = model->forward(x, t, {as_labels({1, 1, 1, 1, 1, 1})});
  auto null = model->forward(x, t, {as_labels({-1, -1, -1, -1, -1, -1})});
  EXPECT_EQ(y0.sizes(), x.sizes());
  // The output depends on the label; kNullLabel and no labels at all are the same (the last row).
  EXPECT_GT((y0 - y1).abs().min().item<double>(), 0.0);
  EXPECT_GT((y0 - null).abs().min().item<double>(), 0.0);
  EXPECT_TRUE(torch::equal(null, model->forward(x, t, {})));
  // Two calls with the same inputs agree exactly; a mixed batch is the rows of the plain ones.
  EXPECT_TRUE(torch::equal(y0, model->forward(x, t, {as_labels({0, 0, 0, 0, 0, 0})})));
  auto mixed = model->forward(x, t, {as_labels({0, 1, kNullLabel, 0, 1, kNullLabel})});
  EXPECT_TRUE(torch::allclose(mixed[0], y0[0]) && torch::allclose(mixed[1], y1[1]) &&
              torch::allclose(mixed[2], null[2]));
  // The null label's row learns from unconditional batches, and only from them.
  null.pow(2).mean().backward();
  auto grad = params["classes.weight"].grad();
  ASSERT_TRUE(grad.defined());
  EXPECT_GT(grad[3].abs().sum().item<double>(), 0.0);
  EXPECT_EQ(grad.narrow(0, 0, 3).abs().sum().item<double>(), 0.0);
  // A label the data does not have is an error that says which.
  EXPECT_THROW(model->forward(x, t, {as_labels({0, 1, 2, 3, 0, 0})}), Error);
  EXPECT_THROW(model->forward(x, t, {as_labels({0, 1})}), Error);
}

TEST(Mlp, RawTimeAndValidation) {
  BuildContext ctx;
  ctx.data.shape = {3};
  for (const char* activation : {"silu", "relu", "gelu", "tanh"}) {
    auto model = make<Model>("mlp",
                             {{"width", std::int64_t{8}},
                              {"time_embedding", std::int64_t{0}},
                              {"activation", std::string(activation)}},
                             ctx);
    EXPECT_EQ(model->named_buffers().size(), 0u);
    auto x = torch::randn({4, 3});
    auto y = model->forward(x, torch::full({4}, 0.5), {});
    EXPECT_EQ(y.sizes(), x.sizes());
    EXPECT_FALSE(torch::allclose(y, model->forward(x, torch::full({4}, 0.9), {})));
  }
  EXPECT_THROW(make<Model>("mlp", {{"time_embedding", std::int64_t{3}}}, ctx), InputError);
  EXPECT_THROW(make<Model>("mlp", {}, BuildContext{}), InputError);  // no data shape
}

// ---------------------------------------------------------------------------------------------
// Energy distance

// The metric on generated and reference samples, as the engine calls it.
double energy(Metric& metric, const torch::Tensor& generated, const torch::Tensor& reference) {
  MetricInput input;
  input.generated = generated;
  input.reference = reference;
  return metric.compute(input).value;
}

TEST(EnergyDistance, MatchesDefinitionAndBehaves) {
  auto metric_ptr = make<Metric>("energy_distance");
  Metric& metric = *metric_ptr;
  EXPECT_EQ(metric.direction(), Direction::lower_is_better);
  torch::manual_seed(11);
  auto x = torch::randn({1500, 3});
  auto y = torch::randn({1300, 3}) + 0.2;
  // V-statistic over all pairs, in one go, without the matmul shortcut.
  auto mean_dist = [](const torch::Tensor& a, const torch::Tensor& b) {
    return torch::cdist(a.to(torch::kDouble), b.to(torch::kDouble), 2.0, 2).mean().item<double>();
  };
  const double expected = 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y);
  EXPECT_NEAR(energy(metric, x, y), expected, 1e-9);
  EXPECT_NEAR(energy(metric, y, x), energy(metric, x, y), 1e-9);

  EXPECT_NEAR(energy(metric, x, x), 0.0, 1e-6);
  EXPECT_NEAR(energy(metric, x, x.clone()), 0.0, 1e-6);

  auto same = torch::randn({1500, 3});
  double previous = energy(metric, x, same);
  const double independent = previous;
  for (double shift : {0.5, 1.0, 2.0}) {
    const double d = energy(metric, x, same + shift);
    EXPECT_GT(d, previous) << shift;
    previous = d;
  }
  EXPECT_LT(independent, 0.1 * energy(metric, x, same + 0.5));

  // Samples are flattened; max_samples keeps the first rows.
  auto images = torch::randn({40, 1, 2, 2}), other = torch::randn({30, 1, 2, 2}) + 1;
  EXPECT_NEAR(energy(metric, images, other), energy(metric, images.reshape({40, 4}), other.reshape({30, 4})),
              1e-12);
  auto few = make<Metric>("energy_distance", {{"max_samples", std::int64_t{10}}});
  EXPECT_NEAR(energy(*few, images, other), energy(metric, images.narrow(0, 0, 10), other.narrow(0, 0, 10)),
              1e-12);
  // Missing or empty sets are the caller's error, said in one line.
  EXPECT_THROW(energy(metric, x, torch::Tensor()), InputError);
  EXPECT_THROW(energy(metric, torch::zeros({0, 3}), x), InputError);
  EXPECT_THROW(energy(metric, x, torch::randn({10, 2})), InputError);
}

}  // namespace
}  // namespace pathline
