// The solvers beyond the fixed-step Runge-Kutta methods and the time grids beyond the uniform one:
// dopri5 meets its tolerance and reports its steps, the multistep solvers converge at their order in
// one evaluation per step, Euler-Maruyama samples the right Gaussian from its seed, and the shifted
// and EDM grids keep their ends, their direction and their defining spacing.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "support/support.hpp"

namespace pathline {
namespace {

template <class Interface>
std::shared_ptr<Interface> make(const std::string& name,
                                const std::map<std::string, ParamValue>& changes = {}) {
  const Registry& registry = testing::builtin_registry();
  return registry.create<Interface>(
      name, testing::default_params(registry, KindOf<Interface>::value, name, changes), BuildContext{});
}

at::Generator generator(std::uint64_t seed) { return at::detail::createCPUGenerator(seed); }

PathCoefficients linear_coefficients(double t) {
  auto tt = torch::full({1}, t, torch::kFloat64);
  return {tt, 1.0 - tt, torch::ones_like(tt), -torch::ones_like(tt)};
}

// dx/dt = (1 + t) J x, a rotation: x(t1) is x(t0) rotated by (t1 - t0) + (t1^2 - t0^2) / 2 (as in
// test_builtin_plugins.cpp). Velocity only.
class RotatingField : public VectorField {
 public:
  int calls = 0;
  torch::Tensor predict(Quantity q, const torch::Tensor& x, double t) override {
    if (q != Quantity::velocity) throw Error(std::string("rotating field: asked for ") + to_string(q));
    ++calls;
    return torch::stack({-x.select(1, 1), x.select(1, 0)}, 1).mul_(1.0 + t);
  }
  PathCoefficients coefficients(double t) const override { return linear_coefficients(t); }

  static torch::Tensor exact(const torch::Tensor& x0, double t0, double t1) {
    const double theta = (t1 - t0) + (t1 * t1 - t0 * t0) / 2;
    auto a = x0.select(1, 0), b = x0.select(1, 1);
    return torch::stack(
        {a * std::cos(theta) - b * std::sin(theta), a * std::sin(theta) + b * std::cos(theta)}, 1);
  }
};

torch::Tensor start_points() { return torch::tensor({{1.0, 0.0}, {0.3, -0.7}, {-2.0, 0.5}}, torch::kDouble); }

// From x0 ~ N(0, I) to data x1 ~ N(mu, s^2 I), independent, on the linear path x_t = t x1 + (1 - t) x0.
// The marginal is p_t = N(t mu, v_t I) with v_t = t^2 s^2 + (1 - t)^2, and with y = x - t mu:
//   E[x1 | x] = mu + t s^2 y / v_t,   E[x0 | x] = (1 - t) y / v_t,   score = -y / v_t,
//   velocity  = E[x1 - x0 | x] = mu + (v'_t / (2 v_t)) y,
// whose flow map is x(t) = t mu + sqrt(v_t) x(0). Every quantity is exact and consistent, so a solver
// may ask for any of them; calls are counted per quantity.
class GaussianField : public VectorField {
 public:
  GaussianField(std::vector<double> mu, double s) : mu_(torch::tensor(mu, torch::kDouble)), s_(s) {}

  std::map<Quantity, int> calls;
  int total_calls() const {
    int n = 0;
    for (const auto& [q, count] : calls) n += count;
    return n;
  }

  torch::Tensor predict(Quantity q, const torch::Tensor& x, double t) override {
    ++calls[q];
    const double v = variance(t);
    auto mu = mu_.to(x.scalar_type());
    auto y = x - t * mu;
    switch (q) {
      case Quantity::velocity:
        return mu + y * ((t * s_ * s_ - (1 - t)) / v);
      case Quantity::data:
        return mu + y * (t * s_ * s_ / v);
      case Quantity::noise:
        return y * ((1 - t) / v);
      case Quantity::score:
        return y * (-1.0 / v);
    }
    throw Error("gaussian field: unknown quantity");
  }
  PathCoefficients coefficients(double t) const override { return linear_coefficients(t); }

  // x(t1) on the flow through x at t0.
  torch::Tensor flow(const torch::Tensor& x, double t0, double t1) const {
    auto mu = mu_.to(x.scalar_type());
    return t1 * mu + (x - t0 * mu) * std::sqrt(variance(t1) / variance(t0));
  }
  double variance(double t) const { return t * t * s_ * s_ + (1 - t) * (1 - t); }
  const torch::Tensor& mu() const { return mu_; }
  double s() const { return s_; }

 private:
  torch::Tensor mu_;
  double s_;
};

GaussianField gaussian_field() { return GaussianField({1.5, -0.5}, 0.5); }

SolveRequest grid_request(const std::string& grid, std::int64_t steps, double t0, double t1,
                          const std::map<std::string, ParamValue>& grid_params = {}) {
  SolveRequest req;
  req.times = make<TimeGrid>(grid, grid_params)->times(steps, t0, t1, *make<Path>("linear"));
  return req;
}

SolveRequest ends_request(double t0, double t1) {
  SolveRequest req;
  req.times = {t0, t1};
  return req;
}

double max_error(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

// ---------------------------------------------------------------------------------------------
// dopri5

TEST(Dopri5, MeetsItsToleranceAndPaysForTighterOnes) {
  double previous_evaluations = 0;
  for (double tol : {1e-4, 1e-6, 1e-8, 1e-10}) {
    SCOPED_TRACE("tol " + std::to_string(tol));
    RotatingField field;
    auto solver = make<Solver>("dopri5", {{"atol", tol}, {"rtol", tol}});
    EXPECT_EQ(solver->grid_steps(), 0);
    auto x0 = start_points();
    auto x = solver->solve(field, x0, ends_request(0.0, 1.0));
    const double error = max_error(x, RotatingField::exact(x0, 0.0, 1.0));
    std::cout << "[ dopri5   ] tol " << tol << ": error " << error << ", " << field.calls << " evaluations\n";
    EXPECT_LT(error, 10 * tol);
    auto stats = solver->statistics();
    ASSERT_TRUE(stats.count("accepted_steps") && stats.count("rejected_steps") && stats.count("evaluations"));
    EXPECT_EQ(stats["evaluations"], field.calls);
    // FSAL: one evaluation to start, one for the automatic first step, six per attempted step.
    EXPECT_EQ(stats["evaluations"], 2 + 6 * (stats["accepted_steps"] + stats["rejected_steps"]));
    EXPECT_GT(stats["evaluations"], previous_evaluations);
    previous_evaluations = stats["evaluations"];
  }
}

TEST(Dopri5, ObservesEveryAcceptedStepAndKeepsTheInput) {
  RotatingField field;
  auto solver = make<Solver>("dopri5", {{"atol", 1e-7}, {"rtol", 1e-7}});
  auto x0 = start_points(), copy = x0.clone();
  SolveRequest req = ends_request(0.2, 1.7);
  std::vector<double> times;
  torch::Tensor last;
  req.observer = [&](double t, const torch::Tensor& x) {
    times.push_back(t);
    last = x.clone();
  };
  auto x = solver->solve(field, x0, req);
  EXPECT_TRUE(torch::equal(x0, copy));
  auto stats = solver->statistics();
  ASSERT_EQ(times.size(), static_cast<std::size_t>(stats["accepted_steps"]) + 1);
  EXPECT_EQ(times.front(), 0.2);
  EXPECT_EQ(times.back(), 1.7);
  for (std::size_t i = 1; i < times.size(); ++i) EXPECT_GT(times[i], times[i - 1]);
  EXPECT_TRUE(torch::equal(last, x));

  // The counts are the last solve's, not a running total; a first_step skips the automatic choice.
  auto again = make<Solver>("dopri5", {{"atol", 1e-7}, {"rtol", 1e-7}, {"first_step", 0.05}});
  RotatingField second;
  again->solve(second, x0, ends_request(0.2, 1.7));
  again->solve(second, x0, ends_request(0.2, 1.7));
  auto repeat = again->statistics();
  EXPECT_EQ(2 * repeat["evaluations"], second.calls);
  EXPECT_EQ(repeat["evaluations"], 1 + 6 * (repeat["accepted_steps"] + repeat["rejected_steps"]));
}

TEST(Dopri5, IntegratesBackwardsAndReturnsToTheStart) {
  auto solver = make<Solver>("dopri5", {{"atol", 1e-8}, {"rtol", 1e-8}});
  GaussianField field = gaussian_field();
  auto x0 = torch::randn({64, 2}, generator(3), torch::kDouble);
  auto x1 = solver->solve(field, x0, ends_request(0.0, 1.0));
  EXPECT_LT(max_error(x1, field.flow(x0, 0.0, 1.0)), 1e-6);
  // From the data back to the noise (t1 < t0): the inverse flow map, and the start again.
  std::vector<double> times;
  SolveRequest back = ends_request(1.0, 0.0);
  back.observer = [&](double t, const torch::Tensor&) { times.push_back(t); };
  auto returned = solver->solve(field, x1, back);
  EXPECT_LT(max_error(returned, x0), 1e-6);
  EXPECT_EQ(times.front(), 1.0);
  EXPECT_EQ(times.back(), 0.0);
  for (std::size_t i = 1; i < times.size(); ++i) EXPECT_LT(times[i], times[i - 1]);
  EXPECT_GT(solver->statistics()["accepted_steps"], 0);
}

TEST(Dopri5, WorksInFloat32AtItsDefaults) {
  RotatingField field;
  auto solver = make<Solver>("dopri5");
  auto x0 = start_points().to(torch::kFloat32);
  auto x = solver->solve(field, x0, ends_request(0.0, 1.0));
  EXPECT_EQ(x.scalar_type(), torch::kFloat32);
  EXPECT_LT(max_error(x.to(torch::kDouble), RotatingField::exact(start_points(), 0.0, 1.0)), 1e-4);
}

TEST(Dopri5, ExceedingMaxStepsIsAnInputErrorNamingIt) {
  RotatingField field;
  auto solver = make<Solver>("dopri5", {{"atol", 1e-10}, {"rtol", 1e-10}, {"max_steps", std::int64_t{5}}});
  try {
    solver->solve(field, start_points(), ends_request(0.0, 1.0));
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("max_steps"), std::string::npos) << e.what();
  }
  EXPECT_EQ(solver->statistics()["accepted_steps"] + solver->statistics()["rejected_steps"], 5);
}

TEST(Dopri5, AnEmptyIntervalCostsOneObservationAndNoEvaluation) {
  RotatingField field;
  int observed = 0;
  SolveRequest req = ends_request(0.5, 0.5);
  req.observer = [&](double, const torch::Tensor&) { ++observed; };
  auto x = make<Solver>("dopri5")->solve(field, start_points(), req);
  EXPECT_TRUE(torch::equal(x, start_points()));
  EXPECT_EQ(field.calls, 0);
  EXPECT_EQ(observed, 1);
}

// ---------------------------------------------------------------------------------------------
// Multistep solvers

// One convergence measurement: the error with `steps` and with 2 steps on `grid` from t0 to t1.
struct Refinement {
  std::string grid;
  double t0, t1;
  std::int64_t steps;
};

struct MultistepCase {
  std::string name;
  std::string solver;
  std::map<std::string, ParamValue> params;
  double order;
  int extra_evaluations;  // beyond one per step
  std::vector<Refinement> forward, backward;
};

std::ostream& operator<<(std::ostream& out, const MultistepCase& c) { return out << c.name; }

class Multistep : public ::testing::TestWithParam<MultistepCase> {
 protected:
  // The error at t1 against the exact flow map through x(t0); the observed times and the evaluation
  // count are checked on the way.
  double error(const std::string& grid, std::int64_t steps, double t0, double t1) {
    const MultistepCase& c = GetParam();
    auto params = c.params;
    params["steps"] = steps;
    auto solver = make<Solver>(c.solver, params);
    EXPECT_EQ(solver->grid_steps(), steps);
    GaussianField field = gaussian_field();
    auto x0 = field.flow(torch::randn({32, 2}, generator(11), torch::kDouble), 0.0, t0);
    SolveRequest req = grid_request(grid, steps, t0, t1);
    std::vector<double> seen;
    req.observer = [&](double t, const torch::Tensor&) { seen.push_back(t); };
    auto x = solver->solve(field, x0, req);
    EXPECT_EQ(seen, req.times);
    EXPECT_EQ(field.total_calls(), steps + c.extra_evaluations);
    return max_error(x, field.flow(x0, t0, t1));
  }
  void expect_order(const Refinement& r) {
    const MultistepCase& c = GetParam();
    const double coarse = error(r.grid, r.steps, r.t0, r.t1), fine = error(r.grid, 2 * r.steps, r.t0, r.t1);
    const double measured = std::log2(coarse / fine);
    std::cout << "[ order    ] " << c.name << " " << r.t0 << " -> " << r.t1 << ", " << r.grid << " grid, "
              << r.steps << " steps: " << coarse << " -> " << fine << ", order " << measured << "\n";
    EXPECT_NEAR(measured, c.order, 0.3) << c.name << " " << r.grid << " " << r.t0 << " -> " << r.t1;
  }
};

TEST_P(Multistep, ConvergesAtItsOrderFromNoiseToData) {
  for (const Refinement& r : GetParam().forward) expect_order(r);
}

TEST_P(Multistep, ConvergesAtItsOrderFromDataBackToNoise) {
  for (const Refinement& r : GetParam().backward) expect_order(r);
}

TEST_P(Multistep, KeepsTheCallersInput) {
  const MultistepCase& c = GetParam();
  auto params = c.params;
  params["steps"] = std::int64_t{16};
  auto solver = make<Solver>(c.solver, params);
  auto x0 = torch::randn({8, 2}, generator(5), torch::kDouble), copy = x0.clone();
  GaussianField field = gaussian_field();
  solver->solve(field, x0, grid_request("uniform", 16, 0.0, 1.0));
  EXPECT_TRUE(torch::equal(x0, copy));
}

// The step counts are where each measurement is in its asymptotic range. DPM-Solver++ steps in
// lambda = log(alpha / sigma), which is infinite at both ends of [0, 1]: on the uniform grid the
// steps next to t = 1 are as long in lambda (log 2) however fine the grid, and the order approaches
// 2 only slowly (1.5 at 32 -> 64 steps, 1.8 at 128 -> 256); the EDM grid, spaced in the noise level,
// and intervals inside (0, 1) reach it sooner.
INSTANTIATE_TEST_SUITE_P(
    Builtin, Multistep,
    ::testing::Values(
        MultistepCase{"dpmpp_2m",
                      "dpmpp_2m",
                      {},
                      2.0,
                      0,
                      {{"uniform", 0.1, 0.9, 16}, {"uniform", 0.0, 1.0, 128}, {"edm", 0.0, 1.0, 64}},
                      {{"uniform", 0.9, 0.1, 16}, {"uniform", 1.0, 0.0, 128}, {"edm", 1.0, 0.0, 64}}},
        MultistepCase{"adams_bashforth_2",
                      "adams_bashforth",
                      {{"order", std::int64_t{2}}},
                      2.0,
                      0,
                      {{"uniform", 0.0, 1.0, 32}, {"uniform", 0.1, 0.9, 32}, {"edm", 0.0, 1.0, 64}},
                      {{"uniform", 1.0, 0.0, 32}, {"uniform", 0.9, 0.1, 32}}},
        MultistepCase{"adams_bashforth_3",
                      "adams_bashforth",
                      {{"order", std::int64_t{3}}},
                      3.0,
                      1,
                      {{"uniform", 0.0, 1.0, 32}, {"uniform", 0.1, 0.9, 32}, {"shifted", 0.0, 1.0, 32}},
                      {{"uniform", 1.0, 0.0, 32}, {"uniform", 0.9, 0.1, 32}}}),
    [](const auto& info) { return info.param.name; });

TEST(Multistep, DpmSolverAsksForTheDataOncePerStep) {
  GaussianField field = gaussian_field();
  auto solver = make<Solver>("dpmpp_2m", {{"steps", std::int64_t{10}}});
  EXPECT_EQ(make<Solver>("dpmpp_2m")->grid_steps(), 20);
  solver->solve(field, torch::randn({4, 2}, generator(1), torch::kDouble),
                grid_request("uniform", 10, 0.0, 1.0));
  EXPECT_EQ(field.calls[Quantity::data], 10);
  EXPECT_EQ(field.total_calls(), 10);
  // Backwards from t = 1, where sigma = 0, the first step asks for the noise instead.
  GaussianField back = gaussian_field();
  solver->solve(back, torch::randn({4, 2}, generator(1), torch::kDouble),
                grid_request("uniform", 10, 1.0, 0.0));
  EXPECT_EQ(back.calls[Quantity::noise], 1);
  EXPECT_EQ(back.calls[Quantity::data], 9);
}

TEST(Multistep, DpmSolverIsCloseInFewSteps) {
  // 8 evaluations from noise to data: off by 0.038 (measured), where Euler's 8 are off by 0.28.
  GaussianField field = gaussian_field();
  auto x0 = torch::randn({256, 2}, generator(2), torch::kDouble);
  auto x = make<Solver>("dpmpp_2m", {{"steps", std::int64_t{8}}})
               ->solve(field, x0, grid_request("uniform", 8, 0.0, 1.0));
  EXPECT_TRUE(torch::isfinite(x).all().item<bool>());
  EXPECT_LT(max_error(x, field.flow(x0, 0.0, 1.0)), 0.06);
  EXPECT_EQ(field.total_calls(), 8);
}

// ---------------------------------------------------------------------------------------------
// Euler-Maruyama

torch::Tensor sde_samples(const std::string& diffusion, std::int64_t n, std::uint64_t seed,
                          GaussianField& field, std::int64_t steps = 100, double t_end = 1.0) {
  auto solver = make<Solver>("euler_maruyama", {{"diffusion", diffusion}, {"steps", steps}});
  auto gen = generator(seed);
  auto x0 = torch::randn({n, 2}, gen, torch::kDouble);
  SolveRequest req = grid_request("uniform", steps, 0.0, t_end);
  req.generator = &gen;
  return solver->solve(field, x0, req);
}

TEST(EulerMaruyama, SamplesTheTargetGaussian) {
  const std::int64_t n = 20000;
  for (const std::string diffusion : {"constant", "sigma", "linear"}) {
    SCOPED_TRACE(diffusion);
    GaussianField field = gaussian_field();
    auto x = sde_samples(diffusion, n, 7, field);
    EXPECT_EQ(field.calls[Quantity::velocity], 100);
    EXPECT_EQ(field.total_calls(), 100);
    auto mean = x.mean(0), var = x.var(0);
    const double s2 = field.s() * field.s();
    // Monte-Carlo standard errors: s / sqrt(n) for a mean, s^2 sqrt(2 / (n - 1)) for a variance.
    const double mean_se = field.s() / std::sqrt(double(n)), var_se = s2 * std::sqrt(2.0 / (n - 1));
    const double mean_error = (mean - field.mu()).abs().max().item<double>();
    const double var_error = (var - s2).abs().max().item<double>();
    std::cout << "[ sde      ] " << diffusion << ": mean error " << mean_error << " (se " << mean_se
              << "), variance error " << var_error << " (se " << var_se << ")\n";
    // 4 standard errors, plus the discretisation bias of 100 steps, measured with 400,000 samples:
    // the variance 0.0055 low with `sigma` (0.020 with 25 steps, 0.0019 with 400: weak order 1),
    // 0.001 with `constant`; the means within that measurement's noise (0.0011).
    EXPECT_LT(mean_error, 4 * mean_se + 0.0015);
    EXPECT_LT(var_error, 4 * var_se + 0.006);
  }
}

TEST(EulerMaruyama, TheSameSeedGivesTheSameSamples) {
  GaussianField f1 = gaussian_field(), f2 = gaussian_field(), f3 = gaussian_field();
  auto a = sde_samples("sigma", 500, 42, f1, 20), b = sde_samples("sigma", 500, 42, f2, 20);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::equal(a, sde_samples("sigma", 500, 43, f3, 20)));
  // Noise is really added: the ODE (scale 0) from the same start differs.
  auto gen = generator(42);
  auto x0 = torch::randn({500, 2}, gen, torch::kDouble);
  GaussianField f4 = gaussian_field();
  SolveRequest req = grid_request("uniform", 20, 0.0, 1.0);
  req.generator = &gen;
  auto ode =
      make<Solver>("euler_maruyama", {{"steps", std::int64_t{20}}, {"scale", 0.0}})->solve(f4, x0, req);
  EXPECT_GT(max_error(a, ode), 0.1);
  GaussianField f5 = gaussian_field();
  auto euler = make<Solver>("euler", {{"steps", std::int64_t{20}}})
                   ->solve(f5, x0, grid_request("uniform", 20, 0.0, 1.0));
  EXPECT_LT(max_error(ode, euler), 1e-12);
}

TEST(EulerMaruyama, RefusesADecreasingGridAndAMissingGenerator) {
  GaussianField field = gaussian_field();
  auto solver = make<Solver>("euler_maruyama", {{"steps", std::int64_t{10}}});
  auto gen = generator(1);
  SolveRequest back = grid_request("uniform", 10, 1.0, 0.0);
  back.generator = &gen;
  try {
    solver->solve(field, start_points(), back);
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("euler_maruyama"), std::string::npos) << e.what();
  }
  EXPECT_THROW(solver->solve(field, start_points(), grid_request("uniform", 10, 0.0, 1.0)), Error);
  EXPECT_EQ(field.total_calls(), 0);
}

// ---------------------------------------------------------------------------------------------
// Time grids

void expect_grid_shape(const std::vector<double>& times, std::int64_t steps, double t0, double t1) {
  ASSERT_EQ(times.size(), static_cast<std::size_t>(steps + 1));
  EXPECT_EQ(times.front(), t0);
  EXPECT_EQ(times.back(), t1);
  for (std::size_t i = 1; i < times.size(); ++i)
    EXPECT_TRUE(t1 > t0 ? times[i] > times[i - 1] : times[i] < times[i - 1]) << "at " << i;
}

const std::vector<std::pair<double, double>> kIntervals = {{0.0, 1.0},    {0.02, 1.0}, {0.1, 0.7},
                                                           {1e-3, 0.999}, {1.0, 0.0},  {0.9, 0.1}};

TEST(ShiftedTimeGrid, EndsExactMonotoneAndReversible) {
  auto path = make<Path>("linear");
  for (double shift : {0.5, 1.0, 3.0, 7.5}) {
    auto grid = make<TimeGrid>("shifted", {{"shift", shift}});
    for (auto [t0, t1] : kIntervals)
      for (std::int64_t steps : {1, 3, 10, 49}) {
        SCOPED_TRACE(std::to_string(shift) + ": " + std::to_string(t0) + " -> " + std::to_string(t1) + ", " +
                     std::to_string(steps));
        auto times = grid->times(steps, t0, t1, *path);
        expect_grid_shape(times, steps, t0, t1);
        auto reverse = grid->times(steps, t1, t0, *path);
        std::reverse(reverse.begin(), reverse.end());
        for (std::size_t i = 0; i < times.size(); ++i) EXPECT_NEAR(times[i], reverse[i], 1e-14);
      }
  }
  EXPECT_THROW(make<TimeGrid>("shifted")->times(0, 0.0, 1.0, *path), Error);
}

TEST(ShiftedTimeGrid, ShiftOneIsUniformAndLargerShiftsFavourNoise) {
  auto path = make<Path>("linear");
  auto uniform = make<TimeGrid>("uniform");
  auto one = make<TimeGrid>("shifted", {{"shift", 1.0}});
  for (auto [t0, t1] : kIntervals)
    for (std::int64_t steps : {1, 7, 20})
      EXPECT_EQ(one->times(steps, t0, t1, *path), uniform->times(steps, t0, t1, *path));
  // SD3: sigma' = s sigma / (1 + (s - 1) sigma) on sigma = 1 - t of the uniform grid.
  EXPECT_EQ(make<TimeGrid>("shifted")->times(1, 0.0, 1.0, *path), (std::vector<double>{0.0, 1.0}));
  auto sd3 = make<TimeGrid>("shifted")->times(10, 0.0, 1.0, *path);
  for (int i = 0; i <= 10; ++i) {
    const double sigma = 1.0 - i / 10.0;
    EXPECT_NEAR(sd3[i], 1.0 - 3.0 * sigma / (1.0 + 2.0 * sigma), 1e-15);
  }
  EXPECT_LT(sd3[5], 0.5);  // the middle step is nearer the noise
  // Restricted to [a, b], the grid keeps the noise levels of the full one's warp.
  auto part = make<TimeGrid>("shifted")->times(4, 0.25, 1.0, *path);
  EXPECT_EQ(part.front(), 0.25);
  for (std::size_t i = 1; i < part.size(); ++i) EXPECT_GT(part[i] - part[i - 1], 0.0);
}

double ratio(const Path& path, double t) {
  auto c = path.coefficients(torch::full({1}, t, torch::kFloat64));
  return c.sigma.item<double>() / c.alpha.item<double>();
}

TEST(EdmTimeGrid, EndsExactAndMonotoneOnEveryPath) {
  auto grid = make<TimeGrid>("edm");
  for (const std::string& name : testing::builtin_registry().names(Kind::path)) {
    auto path = make<Path>(name);
    for (auto [t0, t1] : kIntervals)
      for (std::int64_t steps : {1, 2, 5, 18, 40}) {
        SCOPED_TRACE(name + ": " + std::to_string(t0) + " -> " + std::to_string(t1) + ", " +
                     std::to_string(steps));
        auto times = grid->times(steps, t0, t1, *path);
        expect_grid_shape(times, steps, t0, t1);
        auto reverse = grid->times(steps, t1, t0, *path);
        std::reverse(reverse.begin(), reverse.end());
        EXPECT_EQ(times, reverse);
      }
  }
}

TEST(EdmTimeGrid, SpacesTheNoiseToSignalRatioInItsRhoPower) {
  // rho = 1: evenly in sigma / alpha, where the ratio is within [ratio_min, ratio_max] at both ends
  // (ve: 15 to 0.01; linear on [0.1, 0.9]: 9 to 1/9).
  for (const std::string name : {"ve", "linear"}) {
    auto path = make<Path>(name);
    const double t0 = name == "ve" ? 0.0 : 0.1, t1 = name == "ve" ? 1.0 : 0.9;
    auto times = make<TimeGrid>("edm", {{"rho", 1.0}})->times(8, t0, t1, *path);
    const double top = ratio(*path, t0), bottom = ratio(*path, t1);
    for (int i = 0; i <= 8; ++i)
      EXPECT_NEAR(ratio(*path, times[i]), top + i / 8.0 * (bottom - top), 1e-9 * top) << name << " " << i;
  }
  // rho = 7 on ve: Karras et al.'s sigmas between sigma_max and sigma_min.
  auto ve = make<Path>("ve");
  auto times = make<TimeGrid>("edm")->times(10, 0.0, 1.0, *ve);
  const double top = std::pow(15.0, 1.0 / 7), bottom = std::pow(0.01, 1.0 / 7);
  for (int i = 0; i <= 10; ++i)
    EXPECT_NEAR(ratio(*ve, times[i]), std::pow(top + i / 10.0 * (bottom - top), 7.0), 1e-9);
  // Linear on [0, 1], where the ratio runs from infinity to 0: t = 0 first, then ratio_max = 80 down
  // to ratio_min = 0.002 in the 8 steps between, and t = 1 last (EDM's step from sigma_min to 0).
  auto linear = make<Path>("linear");
  auto clipped = make<TimeGrid>("edm")->times(10, 0.0, 1.0, *linear);
  ASSERT_EQ(clipped.size(), 11u);
  EXPECT_EQ(clipped[0], 0.0);
  EXPECT_NEAR(clipped[1], 1.0 / 81, 1e-14);
  const double a = std::pow(80.0, 1.0 / 7), b = std::pow(0.002, 1.0 / 7);
  for (int j = 0; j <= 8; ++j)
    EXPECT_NEAR(ratio(*linear, clipped[1 + j]), std::pow(a + j / 8.0 * (b - a), 7.0), 1e-9 * 80) << j;
  EXPECT_NEAR(clipped[9], 1.0 / 1.002, 1e-14);
  EXPECT_EQ(clipped[10], 1.0);
  // Fewer steps than the clipped ends need still give steps + 1 times.
  EXPECT_EQ(make<TimeGrid>("edm")->times(2, 0.0, 1.0, *linear), (std::vector<double>{0.0, clipped[1], 1.0}));
  EXPECT_EQ(make<TimeGrid>("edm")->times(1, 0.0, 1.0, *linear), (std::vector<double>{0.0, 1.0}));
  // A path whose ratio is above ratio_max on the whole interval cannot be spaced.
  EXPECT_THROW(make<TimeGrid>("edm")->times(5, 0.0, 0.005, *linear), Error);
}

}  // namespace
}  // namespace pathline
