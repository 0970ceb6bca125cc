// The built-in plugins, loaded from the build tree through the plugin host: solvers converge at
// their order, the toy data sets draw what they claim, the path, the MLP and the metric behave.
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
  Loaded() {
    host.load_directory(std::filesystem::path(PATHLINE_BINARY_DIR) / "lib/pathline/plugins");
  }
};

// Loaded once for every test in this file; plugins are never unloaded anyway.
Loaded& loaded() {
  static Loaded* instance = new Loaded();
  return *instance;
}

// Every declared key at its default, then the overrides (which must be declared keys).
Params params_for(Kind kind, const std::string& name,
                  const std::map<std::string, ParamValue>& overrides) {
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
  return loaded().registry.create<Interface>(
      name, params_for(KindOf<Interface>::value, name, overrides), ctx);
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

// dx/dt = w(t) J x, a rotation with speed w(t) = 1 + t: x(t1) is x(t0) rotated by
// theta = (t1 - t0) + (t1^2 - t0^2) / 2.
class RotatingField : public VectorField {
 public:
  int calls = 0;
  torch::Tensor velocity(const torch::Tensor& x, double t) override {
    ++calls;
    return torch::stack({-x.select(1, 1), x.select(1, 0)}, 1).mul_(1.0 + t);
  }
  torch::Tensor score(const torch::Tensor& x, double) override { return -x; }

  static torch::Tensor exact(const torch::Tensor& x0, double t0, double t1) {
    const double theta = (t1 - t0) + (t1 * t1 - t0 * t0) / 2;
    auto a = x0.select(1, 0), b = x0.select(1, 1);
    return torch::stack(
        {a * std::cos(theta) - b * std::sin(theta), a * std::sin(theta) + b * std::cos(theta)}, 1);
  }
};

// dx/dt = x, returning its input itself: solvers must not rely on owning the field's output.
class AliasingField : public VectorField {
 public:
  torch::Tensor velocity(const torch::Tensor& x, double) override { return x; }
  torch::Tensor score(const torch::Tensor& x, double) override { return -x; }
};

torch::Tensor start_points() {
  return torch::tensor({{1.0, 0.0}, {0.3, -0.7}, {-2.0, 0.5}}, torch::kDouble);
}

double solve_error(const std::string& solver, std::int64_t steps, double t0, double t1) {
  RotatingField field;
  auto x0 = start_points();
  SolveRequest req;
  req.t0 = t0;
  req.t1 = t1;
  auto x = make<Solver>(solver, {{"steps", steps}})->solve(field, x0, req);
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
  const double measured2 = std::log2(solve_error(c.solver, c.steps, 0.25, 2.0) /
                                     solve_error(c.solver, 2 * c.steps, 0.25, 2.0));
  EXPECT_NEAR(measured2, c.order, 0.3) << c.solver;
}

TEST_P(SolverOrder, ObservesEveryStepAndKeepsTheInput) {
  const OrderCase& c = GetParam();
  RotatingField field;
  auto x0 = start_points();
  auto copy = x0.clone();
  std::vector<double> times;
  std::vector<torch::Tensor> states;
  SolveRequest req;
  req.t0 = 0.1;
  req.t1 = 0.9;
  req.observer = [&](double t, const torch::Tensor& x) {
    times.push_back(t);
    states.push_back(x.clone());
  };
  const std::int64_t steps = 7;
  auto x = make<Solver>(c.solver, {{"steps", steps}})->solve(field, x0, req);
  EXPECT_TRUE(torch::equal(x0, copy)) << "the caller's tensor was modified";
  ASSERT_EQ(times.size(), static_cast<std::size_t>(steps + 1));
  EXPECT_DOUBLE_EQ(times.front(), 0.1);
  EXPECT_DOUBLE_EQ(times.back(), 0.9);
  for (std::size_t i = 1; i < times.size(); ++i)
    EXPECT_NEAR(times[i] - times[i - 1], 0.8 / steps, 1e-12);
  EXPECT_TRUE(torch::equal(states.front(), x0));
  EXPECT_TRUE(torch::equal(states.back(), x));
  EXPECT_EQ(field.calls, steps * c.evals_per_step);
}

TEST_P(SolverOrder, HandlesAFieldThatReturnsItsInput) {
  const OrderCase& c = GetParam();
  AliasingField field;
  auto x0 = start_points();
  auto x = make<Solver>(c.solver, {{"steps", std::int64_t{64}}})->solve(field, x0, SolveRequest{});
  // Error of order h^p for dx/dt = x from 0 to 1: exact e * x0.
  const double error = (x - std::exp(1.0) * x0).abs().max().item<double>();
  EXPECT_LT(error, 5.0 * std::pow(1.0 / 64, c.order)) << c.solver;
  EXPECT_TRUE(torch::equal(x0, start_points()));
}

INSTANTIATE_TEST_SUITE_P(Builtin, SolverOrder,
                         ::testing::Values(OrderCase{"euler", 1.0, 64, 1},
                                           OrderCase{"midpoint", 2.0, 32, 2},
                                           OrderCase{"heun", 2.0, 32, 2},
                                           OrderCase{"rk4", 4.0, 16, 4}),
                         [](const auto& info) { return info.param.solver; });

TEST(BuiltinSolvers, DefaultStepCounts) {
  const std::map<std::string, std::int64_t> defaults = {
      {"euler", 100}, {"midpoint", 50}, {"heun", 50}, {"rk4", 25}};
  for (const auto& [name, steps] : defaults)
    EXPECT_EQ(params_for(Kind::solver, name, {}).integer("steps"), steps) << name;
}

// ---------------------------------------------------------------------------------------------
// toy2d

torch::Tensor draw(const std::string& shape, std::int64_t n, std::uint64_t seed,
                   std::map<std::string, ParamValue> overrides = {}) {
  overrides["shape"] = shape;
  auto gen = generator(seed);
  return make<Dataset>("toy2d", overrides)->sample(n, gen);
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
  EXPECT_EQ(make<Dataset>("toy2d", {{"shape", shape}})->sample_shape(),
            std::vector<std::int64_t>{2});
  // `scale` multiplies the same draws; `noise` adds a jitter of that std to them.
  EXPECT_TRUE(torch::allclose(draw(shape, 4000, 7, {{"scale", 2.5}}), 2.5 * x, 1e-6, 1e-5));
  auto jitter = draw(shape, 4000, 7, {{"noise", 0.1}}) - x;
  EXPECT_NEAR(jitter.std().item<double>(), 0.1, 0.01) << shape;
  EXPECT_LT(jitter.mean().abs().item<double>(), 0.01) << shape;
}

INSTANTIATE_TEST_SUITE_P(Builtin, Toy2dShape,
                         ::testing::Values("moons", "circles", "8gaussians", "checkerboard",
                                           "spirals", "gaussian"),
                         [](const auto& info) {
                           return info.param == "8gaussians" ? std::string("eight_gaussians")
                                                             : info.param;
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

// ---------------------------------------------------------------------------------------------
// Path, coupling, time sampler, parameterizations

TEST(LinearPath, CoefficientsAndSigmaMin) {
  auto t = torch::tensor({0.0, 0.25, 1.0, 0.5, 0.75, 0.1}).reshape({2, 3});
  auto c = make<Path>("linear")->coefficients(t);
  for (const auto* k : {&c.alpha, &c.sigma, &c.d_alpha, &c.d_sigma})
    EXPECT_EQ(k->sizes(), t.sizes());
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
  auto x0 = torch::randn({5, 2}), x1 = torch::randn({5, 2});
  auto [a, b] = make<Coupling>("independent")->couple(x0, x1, gen);
  EXPECT_TRUE(torch::equal(a, x0));
  EXPECT_TRUE(torch::equal(b, x1));
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
    ctx.data_shape = shape;
    auto model = make<Model>("mlp", {{"width", std::int64_t{32}}, {"depth", std::int64_t{2}}}, ctx);
    EXPECT_EQ(model->parameters().size(), 6u);  // depth + 1 linear layers
    EXPECT_EQ(model->named_buffers().size(), 2u);
    std::vector<std::int64_t> batch_shape = {5};
    batch_shape.insert(batch_shape.end(), shape.begin(), shape.end());
    auto x = torch::randn(batch_shape);
    auto t = torch::rand({5});
    auto y = model->forward(x, t);
    EXPECT_EQ(y.sizes(), x.sizes());
    EXPECT_FALSE(torch::allclose(y, model->forward(x, t + 0.3)));
    y.pow(2).mean().backward();
    for (const auto& p : model->named_parameters()) {
      ASSERT_TRUE(p.value().grad().defined()) << p.key();
      EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
    }
    // Buffers follow the module to double.
    model->to(torch::kDouble);
    EXPECT_EQ(model->forward(x.to(torch::kDouble), t.to(torch::kDouble)).scalar_type(),
              torch::kDouble);
  }
}

TEST(Mlp, RawTimeAndValidation) {
  BuildContext ctx;
  ctx.data_shape = {3};
  for (const char* activation : {"silu", "relu", "gelu", "tanh"}) {
    auto model = make<Model>("mlp",
                             {{"width", std::int64_t{8}},
                              {"time_embedding", std::int64_t{0}},
                              {"activation", std::string(activation)}},
                             ctx);
    EXPECT_EQ(model->named_buffers().size(), 0u);
    auto x = torch::randn({4, 3});
    auto y = model->forward(x, torch::full({4}, 0.5));
    EXPECT_EQ(y.sizes(), x.sizes());
    EXPECT_FALSE(torch::allclose(y, model->forward(x, torch::full({4}, 0.9))));
  }
  EXPECT_THROW(make<Model>("mlp", {{"time_embedding", std::int64_t{3}}}, ctx), InputError);
}

// ---------------------------------------------------------------------------------------------
// Energy distance

TEST(EnergyDistance, MatchesDefinitionAndBehaves) {
  auto metric = make<Metric>("energy_distance");
  torch::manual_seed(11);
  auto x = torch::randn({1500, 3});
  auto y = torch::randn({1300, 3}) + 0.2;
  // V-statistic over all pairs, in one go, without the matmul shortcut.
  auto mean_dist = [](const torch::Tensor& a, const torch::Tensor& b) {
    return torch::cdist(a.to(torch::kDouble), b.to(torch::kDouble), 2.0, 2).mean().item<double>();
  };
  const double expected = 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y);
  EXPECT_NEAR(metric->compute(x, y), expected, 1e-9);
  EXPECT_NEAR(metric->compute(y, x), metric->compute(x, y), 1e-9);

  EXPECT_NEAR(metric->compute(x, x), 0.0, 1e-6);
  EXPECT_NEAR(metric->compute(x, x.clone()), 0.0, 1e-6);

  auto same = torch::randn({1500, 3});
  double previous = metric->compute(x, same);
  const double independent = previous;
  for (double shift : {0.5, 1.0, 2.0}) {
    const double d = metric->compute(x, same + shift);
    EXPECT_GT(d, previous) << shift;
    previous = d;
  }
  EXPECT_LT(independent, 0.1 * metric->compute(x, same + 0.5));

  // Samples are flattened; max_samples keeps the first rows.
  auto images = torch::randn({40, 1, 2, 2}), other = torch::randn({30, 1, 2, 2}) + 1;
  EXPECT_NEAR(metric->compute(images, other),
              metric->compute(images.reshape({40, 4}), other.reshape({30, 4})), 1e-12);
  auto few = make<Metric>("energy_distance", {{"max_samples", std::int64_t{10}}});
  EXPECT_NEAR(few->compute(images, other),
              metric->compute(images.narrow(0, 0, 10), other.narrow(0, 0, 10)), 1e-12);
}

}  // namespace
}  // namespace pathline
