// The theory behind paths, parameterizations, time samplers and loss weightings, checked on the
// built-in plugins: boundary values and exact derivatives of every path, conversions between every
// pair of quantities on every path, time samplers that draw what SD3 defines, and, end to end, that
// every path and every parameterization trains to 2D samples of comparable quality.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "pathline/engine/pipeline.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

constexpr double kPi = 3.14159265358979323846;

const Registry& registry() { return testing::builtin_registry(); }

template <class Interface>
std::shared_ptr<Interface> make(const std::string& name,
                                const std::map<std::string, ParamValue>& changes = {}) {
  return registry().create<Interface>(
      name, testing::default_params(registry(), KindOf<Interface>::value, name, changes), BuildContext{});
}

at::Generator generator(std::uint64_t seed) { return at::detail::createCPUGenerator(seed); }

double max_abs(const torch::Tensor& t) { return t.abs().max().item<double>(); }
bool all_finite(const torch::Tensor& t) { return torch::isfinite(t).all().item<bool>(); }

const std::vector<Quantity> kQuantities = {Quantity::velocity, Quantity::noise, Quantity::data,
                                           Quantity::score};

// ---------------------------------------------------------------------------------------------
// Paths

// What theory says each path's coefficients are at t = 0 and t = 1 with its default parameters.
// A path not listed here must follow the convention of docs/concepts.md: alpha_0 = 0, sigma_0 = 1,
// alpha_1 = 1, sigma_1 = 0.
struct Ends {
  double alpha0, sigma0, alpha1, sigma1;
};

Ends expected_ends(const std::string& path) {
  if (path == "vp") {
    // alpha_0 = exp(-T(1) / 2), T(1) = beta_min + (beta_max - beta_min) / 2 = 10.05.
    const double alpha0 = std::exp(-0.5 * (0.1 + 0.5 * (20.0 - 0.1)));
    return {alpha0, std::sqrt(1.0 - alpha0 * alpha0), 1.0, 0.0};
  }
  if (path == "ve") return {1.0, 15.0, 1.0, 0.01};  // alpha = 1; sigma from sigma_max to sigma_min
  return {0.0, 1.0, 1.0, 0.0};
}

TEST(TheoryPaths, EveryPathHitsItsBoundaryValues) {
  for (const std::string& name : registry().names(Kind::path)) {
    SCOPED_TRACE(name);
    auto path = make<Path>(name);
    const Ends e = expected_ends(name);
    for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
      const double tol = dtype == torch::kFloat64 ? 1e-12 : 1e-6;
      auto c = path->coefficients(torch::tensor({0.0, 1.0}, dtype));
      for (const auto* k : {&c.alpha, &c.sigma, &c.d_alpha, &c.d_sigma}) {
        EXPECT_EQ(k->scalar_type(), dtype);
        EXPECT_EQ(k->sizes(), (std::vector<std::int64_t>{2}));
        EXPECT_TRUE(all_finite(*k)) << *k;  // derivatives included, even where they diverge
      }
      EXPECT_NEAR(c.alpha[0].item<double>(), e.alpha0, tol * std::max(1.0, e.alpha0));
      EXPECT_NEAR(c.sigma[0].item<double>(), e.sigma0, tol * std::max(1.0, e.sigma0));
      EXPECT_NEAR(c.alpha[1].item<double>(), e.alpha1, tol);
      EXPECT_NEAR(c.sigma[1].item<double>(), e.sigma1, tol);
    }
    // Any shape of t comes back in that shape.
    auto t = torch::rand({3, 4}, torch::kFloat64);
    auto c = path->coefficients(t);
    for (const auto* k : {&c.alpha, &c.sigma, &c.d_alpha, &c.d_sigma}) EXPECT_EQ(k->sizes(), t.sizes());
  }
}

TEST(TheoryPaths, DerivativesMatchCentralDifferences) {
  torch::manual_seed(1);
  // Away from the ends, where VP's sigma' and (for n < 1) polynomial's alpha' diverge.
  auto t = 0.05 + 0.9 * torch::rand({64}, torch::kFloat64);
  const double h = 1e-6;
  auto check = [&](const std::string& name, const std::map<std::string, ParamValue>& changes) {
    SCOPED_TRACE(name);
    auto path = make<Path>(name, changes);
    auto c = path->coefficients(t);
    auto up = path->coefficients(t + h), down = path->coefficients(t - h);
    auto fd_alpha = (up.alpha - down.alpha) / (2 * h), fd_sigma = (up.sigma - down.sigma) / (2 * h);
    // Central differences err by h^2 f''' / 6 + rounding ~ 1e-16 |f| / h: 1e-8 relative is ample.
    EXPECT_LT(max_abs((fd_alpha - c.d_alpha) / (1.0 + c.d_alpha.abs())), 1e-7);
    EXPECT_LT(max_abs((fd_sigma - c.d_sigma) / (1.0 + c.d_sigma.abs())), 1e-7);
  };
  for (const std::string& name : registry().names(Kind::path)) check(name, {});
  check("linear", {{"sigma_min", 0.05}});
  check("vp", {{"beta_min", 0.5}, {"beta_max", 5.0}});
  check("ve", {{"sigma_min", 0.1}, {"sigma_max", 3.0}});
  check("polynomial", {{"exponent", 0.5}});
  check("polynomial", {{"exponent", 3.0}});
}

TEST(TheoryPaths, EachPathIsWhatItsPaperSays) {
  auto t = torch::linspace(0.0, 1.0, 101, torch::kFloat64);
  // Cosine, VP and linear VP preserve variance: alpha^2 + sigma^2 = 1.
  for (const char* name : {"cosine", "vp", "linear_vp"}) {
    auto c = make<Path>(name)->coefficients(t);
    EXPECT_LT(max_abs(c.alpha.square() + c.sigma.square() - 1.0), 1e-12) << name;
  }
  auto cosine = make<Path>("cosine")->coefficients(t);
  EXPECT_LT(max_abs(cosine.alpha - torch::sin(t * kPi / 2)), 1e-15);
  // VP: d log(alpha) / dt = beta(1 - t) / 2 with beta(s) = beta_min + (beta_max - beta_min) s.
  auto vp = make<Path>("vp", {{"beta_min", 0.2}, {"beta_max", 12.0}})->coefficients(t);
  EXPECT_LT(max_abs(vp.d_alpha / vp.alpha - 0.5 * (0.2 + 11.8 * (1.0 - t))), 1e-12);
  EXPECT_NEAR(vp.alpha[0].item<double>(), std::exp(-(0.2 + 12.0) / 4), 1e-15);
  // At t = 1, sigma' is -alpha alpha' over the clamped sigma: finite, large, negative.
  EXPECT_NEAR(vp.d_sigma[100].item<double>(), -0.1 / kMinDivisor, 1e-9);
  // Linear VP: alpha = t, and sigma' = -t / sigma, floored at t = 1 like VP's.
  auto lvp = make<Path>("linear_vp")->coefficients(t);
  EXPECT_LT(max_abs(lvp.alpha - t), 1e-300);
  EXPECT_LT(max_abs((lvp.d_sigma * lvp.sigma + t).slice(0, 0, 100)), 1e-12);
  EXPECT_NEAR(lvp.d_sigma[100].item<double>(), -1.0 / kMinDivisor, 1e-9);
  // VE: alpha = 1, log sigma linear in t.
  auto ve = make<Path>("ve", {{"sigma_min", 0.02}, {"sigma_max", 8.0}})->coefficients(t);
  EXPECT_LT(max_abs(ve.alpha - 1.0), 0.0 + 1e-300);
  EXPECT_LT(max_abs(ve.d_alpha), 1e-300);
  EXPECT_LT(max_abs(torch::log(ve.sigma) - (std::log(0.02) + (1.0 - t) * std::log(400.0))), 1e-12);
  EXPECT_LT(max_abs(ve.d_sigma + std::log(400.0) * ve.sigma), 1e-12);
  // Polynomial with n = 1 is the linear path; with n = 3, alpha = t^3.
  auto lin = make<Path>("linear")->coefficients(t);
  auto p1 = make<Path>("polynomial", {{"exponent", 1.0}})->coefficients(t);
  for (auto [a, b] : {std::pair{&lin.alpha, &p1.alpha},
                      {&lin.sigma, &p1.sigma},
                      {&lin.d_alpha, &p1.d_alpha},
                      {&lin.d_sigma, &p1.d_sigma}})
    EXPECT_LT(max_abs(*a - *b), 1e-15);
  auto p3 = make<Path>("polynomial", {{"exponent", 3.0}})->coefficients(t);
  EXPECT_LT(max_abs(p3.alpha - t.pow(3)), 1e-15);
  // n < 1: alpha' diverges at 0; it is finite there, from t floored at kMinDivisor.
  auto half = make<Path>("polynomial", {{"exponent", 0.5}})->coefficients(torch::zeros({1}, torch::kFloat64));
  EXPECT_NEAR(half.d_alpha.item<double>(), 0.5 / std::sqrt(kMinDivisor), 1e-9);
  EXPECT_THROW(make<Path>("ve", {{"sigma_min", 2.0}, {"sigma_max", 1.0}}), InputError);
  EXPECT_THROW(make<Path>("vp", {{"beta_min", 2.0}, {"beta_max", 1.0}}), InputError);
}

TEST(TheoryPaths, EveryParamIsDocumentedWithARange) {
  for (Kind kind : {Kind::path, Kind::time_sampler})
    for (const ComponentEntry* entry : registry().list(kind)) {
      EXPECT_FALSE(entry->decl.doc.empty()) << entry->decl.name;
      for (const ParamSpec& spec : entry->decl.params) {
        EXPECT_FALSE(spec.doc.empty()) << entry->decl.name << "." << spec.name;
        // A choice's range is its list of options.
        EXPECT_TRUE(spec.type == ParamType::choice || !spec.range_text().empty())
            << entry->decl.name << "." << spec.name;
      }
    }
}

// ---------------------------------------------------------------------------------------------
// Parameterizations on every path

// Pairs on a path at times t, and the coefficients there.
struct PathBatch {
  PathCoefficients c;
  torch::Tensor x0, x1, x_t;
};

PathBatch batch_at(const Path& path, const torch::Tensor& t, std::int64_t dim = 3) {
  PathBatch b;
  b.c = path.coefficients(t).broadcast_to_rank(2);
  b.x0 = torch::randn({t.size(0), dim}, t.options());
  b.x1 = 2.0 * torch::randn({t.size(0), dim}, t.options()) + 0.5;
  b.x_t = Path::interpolate(b.c, b.x0, b.x1);
  return b;
}

// Relative to the size of what is compared, so that VE's sigma_max-sized values compare alike.
double relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  return max_abs(got - want) / (1.0 + max_abs(want));
}

TEST(TheoryParameterizations, ConversionsRoundTripOnEveryPath) {
  torch::manual_seed(2);
  auto t = 0.02 + 0.96 * torch::rand({256}, torch::kFloat64);
  for (const std::string& path_name : registry().names(Kind::path)) {
    auto path = make<Path>(path_name);
    PathBatch b = batch_at(*path, t);
    for (const std::string& from_name : registry().names(Kind::parameterization)) {
      SCOPED_TRACE(path_name + ", " + from_name);
      auto from = make<Parameterization>(from_name);
      // Any prediction, converted to each quantity and back, is itself.
      auto pred = 3.0 * torch::randn_like(b.x_t);
      for (Quantity to : kQuantities) {
        auto there = from->convert(pred, b.x_t, b.c, to);
        auto back = make<Parameterization>(to_string(to))->convert(there, b.x_t, b.c, from->predicts());
        EXPECT_LT(relative_error(back, pred), 1e-9) << "via " << to_string(to);
      }
      // The true target maps back to the true pair, and converts to every other true quantity.
      auto target = from->target(b.x0, b.x1, b.c);
      auto [x0, x1] = pair_from_quantity(from->predicts(), target, b.x_t, b.c);
      EXPECT_LT(relative_error(x0, b.x0), 1e-9);
      EXPECT_LT(relative_error(x1, b.x1), 1e-9);
      for (Quantity to : kQuantities)
        EXPECT_LT(
            relative_error(from->convert(target, b.x_t, b.c, to), quantity_from_pair(to, b.x0, b.x1, b.c)),
            1e-9)
            << "to " << to_string(to);
    }
  }
}

TEST(TheoryParameterizations, SlowPathsStillDetermineThePairFromTheVelocity) {
  // Polynomial with n = 8 near t = 0: det = -8 t^7 is below kMinDivisor for t < 0.2, yet the system
  // is well conditioned (its second row is as small); the floor on det is relative, so the
  // conversions stay exact (an absolute floor of 1e-4 would shrink x0_hat, x1_hat by det / 1e-4).
  torch::manual_seed(5);
  auto path = make<Path>("polynomial", {{"exponent", 8.0}});
  auto t = 0.05 + 0.14 * torch::rand({64}, torch::kFloat64);
  PathBatch b = batch_at(*path, t);
  auto velocity = make<Parameterization>("velocity");
  auto v = velocity->target(b.x0, b.x1, b.c);
  EXPECT_LT(max_abs(b.c.alpha * b.c.d_sigma - b.c.sigma * b.c.d_alpha), kMinDivisor);
  for (Quantity to : kQuantities)
    EXPECT_LT(relative_error(velocity->convert(v, b.x_t, b.c, to), quantity_from_pair(to, b.x0, b.x1, b.c)),
              1e-8)
        << to_string(to);
  // The plain floor applies to alpha and sigma, and the relative one never goes below kMinDivisor^2.
  auto d = torch::tensor({0.0, -1e-9, 1e-9, -0.5, 0.5}, torch::kFloat64);
  auto plain = safe_divisor(d);
  EXPECT_TRUE(torch::equal(
      plain, torch::tensor({kMinDivisor, -kMinDivisor, kMinDivisor, -0.5, 0.5}, torch::kFloat64)));
  auto relative = safe_divisor(d, torch::tensor({0.0, 0.0, 1e-6, 1e4, 1.0}, torch::kFloat64));
  EXPECT_TRUE(torch::allclose(relative,
                              torch::tensor({kMinDivisor * kMinDivisor, -kMinDivisor * kMinDivisor,
                                             kMinDivisor * kMinDivisor, -1.0, 0.5},
                                            torch::kFloat64),
                              0, 1e-18));
}

TEST(TheoryParameterizations, VelocityTargetIsTheConditionalVelocity) {
  // d/dt x_t along a fixed pair is the velocity target, on every path (finite differences in t).
  torch::manual_seed(3);
  auto t = 0.05 + 0.9 * torch::rand({64}, torch::kFloat64);
  auto velocity = make<Parameterization>("velocity");
  for (const std::string& name : registry().names(Kind::path)) {
    auto path = make<Path>(name);
    PathBatch b = batch_at(*path, t);
    const double h = 1e-6;
    auto ahead = Path::interpolate(path->coefficients(t + h).broadcast_to_rank(2), b.x0, b.x1);
    auto behind = Path::interpolate(path->coefficients(t - h).broadcast_to_rank(2), b.x0, b.x1);
    EXPECT_LT(relative_error((ahead - behind) / (2 * h), velocity->target(b.x0, b.x1, b.c)), 1e-7) << name;
  }
}

TEST(TheoryParameterizations, EveryConversionIsFiniteAtBothEnds) {
  for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
    auto options = torch::TensorOptions().dtype(dtype);
    auto t = torch::tensor({0.0, 1.0, 0.0, 1.0}, options);
    for (const std::string& path_name : registry().names(Kind::path)) {
      auto path = make<Path>(path_name);
      PathBatch b = batch_at(*path, t, 2);
      for (const std::string& from_name : registry().names(Kind::parameterization)) {
        SCOPED_TRACE(path_name + ", " + from_name + (dtype == torch::kFloat32 ? ", float32" : ", float64"));
        auto from = make<Parameterization>(from_name);
        auto target = from->target(b.x0, b.x1, b.c);
        EXPECT_TRUE(all_finite(target));
        auto pred = torch::randn_like(b.x_t);
        auto [x0, x1] = pair_from_quantity(from->predicts(), pred, b.x_t, b.c);
        EXPECT_TRUE(all_finite(x0) && all_finite(x1));
        for (Quantity to : kQuantities) {
          EXPECT_TRUE(all_finite(from->convert(pred, b.x_t, b.c, to))) << "to " << to_string(to);
          EXPECT_TRUE(all_finite(from->convert(target, b.x_t, b.c, to))) << "to " << to_string(to);
        }
      }
    }
  }
}

// For Gaussian data x1 ~ N(m, s^2 I) and independent noise, every ideal prediction is known in
// closed form: with V_t = alpha^2 s^2 + sigma^2, E[x1 | x_t] = m + alpha s^2 (x_t - alpha m) / V_t,
// E[x0 | x_t] = sigma (x_t - alpha m) / V_t, and the ODE dx/dt = v solves to
// x_t = alpha_t m + sqrt(V_t / V_t0) (x_t0 - alpha_t0 m). Any path's ideal prediction of any quantity,
// converted to velocity by its parameterization and integrated, must follow that solution: this checks
// the paths' derivatives against their coefficients and every conversion, end to end.
class IdealGaussianField : public VectorField {
 public:
  IdealGaussianField(const Path& path, const Parameterization& param, torch::Tensor mean, double std)
      : path_(path), param_(param), mean_(std::move(mean)), var_(std * std) {}

  torch::Tensor predict(Quantity q, const torch::Tensor& x, double t) override {
    auto c = path_.coefficients(torch::full({x.size(0)}, t, x.options())).broadcast_to_rank(2);
    auto centered = x - c.alpha * mean_;
    auto v = c.alpha.square() * var_ + c.sigma.square();
    auto x1 = mean_ + c.alpha * var_ * centered / v;
    auto x0 = c.sigma * centered / v;
    auto pred = quantity_from_pair(param_.predicts(), x0, x1, c);
    if (param_.predicts() == Quantity::score) {  // Tweedie: -E[x0 | x_t] / sigma is the marginal score
      EXPECT_LT(relative_error(pred, -centered / v), 1e-9);
    }
    return param_.convert(pred, x, c, q);
  }
  PathCoefficients coefficients(double t) const override {
    return path_.coefficients(torch::full({1}, t, torch::kFloat64));
  }

 private:
  const Path& path_;
  const Parameterization& param_;
  torch::Tensor mean_;
  double var_;
};

// The engine's grid for a solver: uniform, cut into the solver's steps.
SolveRequest uniform_request(const Solver& solver, const Path& path, double t0, double t1) {
  SolveRequest request;
  request.times = make<TimeGrid>("uniform")->times(solver.grid_steps(), t0, t1, path);
  return request;
}

TEST(TheoryParameterizations, IdealPredictionsTransportThePriorToTheData) {
  torch::manual_seed(4);
  auto mean = torch::tensor({{1.0, -0.5}}, torch::kFloat64);
  const double std = 0.5, t0 = 1e-3, t1 = 1.0 - 1e-3;
  auto solver = make<Solver>("rk4", {{"steps", std::int64_t{200}}});
  auto variance = [&](const PathCoefficients& c) { return c.alpha.square() * std * std + c.sigma.square(); };
  for (const std::string& path_name : registry().names(Kind::path)) {
    auto path = make<Path>(path_name);
    auto c0 = path->coefficients(torch::full({1}, t0, torch::kFloat64)).broadcast_to_rank(2);
    auto c1 = path->coefficients(torch::full({1}, t1, torch::kFloat64)).broadcast_to_rank(2);
    // Points of the exact marginal at t0, and where the exact flow takes them at t1.
    auto start = c0.alpha * mean + variance(c0).sqrt() * torch::randn({256, 2}, torch::kFloat64);
    auto exact = c1.alpha * mean + (variance(c1) / variance(c0)).sqrt() * (start - c0.alpha * mean);
    for (const std::string& param_name : registry().names(Kind::parameterization)) {
      SCOPED_TRACE(path_name + ", " + param_name);
      auto param = make<Parameterization>(param_name);
      IdealGaussianField field(*path, *param, mean, std);
      auto end = solver->solve(field, start, uniform_request(*solver, *path, t0, t1));
      // Exact up to rk4's error, unless a divisor was below kMinDivisor somewhere on the way (polynomial:
      // alpha = t^2 < 1e-4 for t < 0.01); then the velocity is off by at most kMinDivisor |x1| in all.
      const bool floored = param->predicts() != Quantity::velocity &&
                           (c0.alpha.item<double>() < kMinDivisor || c1.sigma.item<double>() < kMinDivisor);
      EXPECT_LT(relative_error(end, exact), floored ? kMinDivisor : 1e-6);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Time samplers

constexpr std::int64_t kDraws = 200000;

TEST(TheoryTimeSamplers, DrawFromTheUnitIntervalDeterministically) {
  for (const std::string& name : registry().names(Kind::time_sampler)) {
    SCOPED_TRACE(name);
    auto sampler = make<TimeSampler>(name);
    auto g1 = generator(5), g2 = generator(5), g3 = generator(6);
    auto t = sampler->sample(20000, g1);
    ASSERT_EQ(t.sizes(), (std::vector<std::int64_t>{20000}));
    EXPECT_EQ(t.scalar_type(), torch::kFloat32);
    EXPECT_GE(t.min().item<double>(), 0.0);
    EXPECT_LE(t.max().item<double>(), 1.0);
    EXPECT_TRUE(torch::equal(t, sampler->sample(20000, g2)));
    EXPECT_FALSE(torch::equal(t, sampler->sample(20000, g3)));
    // Only the generator is drawn from: the global one is untouched.
    torch::manual_seed(9);
    auto before = torch::rand({4});
    torch::manual_seed(9);
    auto g4 = generator(5);
    sampler->sample(100, g4);
    EXPECT_TRUE(torch::equal(before, torch::rand({4})));
  }
}

// The empirical distribution function of t at x, within `sigmas` Monte-Carlo standard errors.
void expect_cdf(const torch::Tensor& t, double x, double cdf, const std::string& what, double sigmas = 5.0) {
  const double n = static_cast<double>(t.size(0));
  const double empirical = (t <= x).to(torch::kFloat64).mean().item<double>();
  const double se = std::sqrt(std::max(cdf * (1 - cdf), 1e-4) / n);
  EXPECT_NEAR(empirical, cdf, sigmas * se) << what << " at " << x;
}

TEST(TheoryTimeSamplers, LogitNormalHasTheConfiguredLogitMoments) {
  for (auto [mean, std] : {std::pair{0.0, 1.0}, {0.8, 1.6}, {-1.0, 0.5}}) {
    auto sampler = make<TimeSampler>("logit_normal", {{"mean", mean}, {"std", std}});
    auto gen = generator(11);
    auto t = sampler->sample(kDraws, gen).to(torch::kFloat64);
    auto logit = torch::log(t) - torch::log1p(-t);
    const double n = static_cast<double>(kDraws);
    EXPECT_NEAR(logit.mean().item<double>(), mean, 5 * std / std::sqrt(n)) << mean << " " << std;
    EXPECT_NEAR(logit.std().item<double>(), std, 5 * std / std::sqrt(2 * n)) << mean << " " << std;
    // And the draws are sigmoid(mean + std z) of the generator's normals, element by element.
    auto replay = generator(11);
    auto z =
        torch::randn({kDraws}, replay, torch::TensorOptions().dtype(torch::kFloat32)).to(torch::kFloat64);
    EXPECT_LT(max_abs(t - torch::sigmoid(mean + std * z)), 1e-6);
  }
}

// SD3's formulas in SD3's own time (t_SD3 = noise level), element by element in double, mapped to
// ours with t = 1 - t_SD3: a slow, direct reference for the samplers' vectorised float32 code.
double sd3_mode(double u, double s) { return 1.0 - u - s * (std::pow(std::cos(kPi / 2 * u), 2) - 1.0 + u); }
double sd3_cosmap(double u) { return 1.0 - 1.0 / (std::tan(kPi / 2 * u) + 1.0); }

torch::Tensor replay_uniform(std::uint64_t seed, std::int64_t n) {
  auto gen = generator(seed);
  return torch::rand({n}, gen, torch::TensorOptions().dtype(torch::kFloat32)).to(torch::kFloat64);
}

TEST(TheoryTimeSamplers, ModeSamplingIsSd3sWithHeavyTails) {
  for (double s : {1.29, 0.0, -0.8, 1.7}) {
    SCOPED_TRACE(s);
    auto gen = generator(12);
    auto t = make<TimeSampler>("mode", {{"scale", s}})->sample(kDraws, gen).to(torch::kFloat64);
    // Element by element: t = 1 - f_mode(u; s) for the generator's uniforms.
    auto u = replay_uniform(12, 2000);
    double worst = 0;
    for (std::int64_t i = 0; i < 2000; ++i)
      worst = std::max(worst, std::abs(t[i].item<double>() - (1.0 - sd3_mode(u[i].item<double>(), s))));
    EXPECT_LT(worst, 1e-6);
    // Distribution: with g(u) = 1 - f_mode(u; s) increasing, P(t <= g(u)) = u.
    for (double p : {0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98}) expect_cdf(t, 1.0 - sd3_mode(p, s), p, "mode");
  }
  // Heavy tails: density 1 / (1 + s) at both ends (not 0 as for logit-normal), 1 / (1 - s (pi/2 - 1))
  // at the mode 1/2.
  auto gen = generator(13);
  auto t = make<TimeSampler>("mode")->sample(kDraws, gen).to(torch::kFloat64);
  const double w = 0.01;
  const double ends = ((t < w).sum() + (t > 1 - w).sum()).item<double>() / (2 * w * kDraws);
  const double middle = ((t - 0.5).abs() < w).sum().item<double>() / (2 * w * kDraws);
  EXPECT_NEAR(ends, 1.0 / 2.29, 0.05);
  EXPECT_NEAR(middle, 1.0 / (1.0 - 1.29 * (kPi / 2 - 1.0)), 0.25);
}

TEST(TheoryTimeSamplers, CosMapIsSd3s) {
  auto gen = generator(14);
  auto t = make<TimeSampler>("cosmap")->sample(kDraws, gen).to(torch::kFloat64);
  auto u = replay_uniform(14, 2000);
  double worst = 0;
  for (std::int64_t i = 0; i < 2000; ++i)
    worst = std::max(worst, std::abs(t[i].item<double>() - (1.0 - sd3_cosmap(u[i].item<double>()))));
  EXPECT_LT(worst, 1e-6);
  // Distribution function of the density 2 / (pi (1 - 2 t + 2 t^2)).
  for (double x : {0.01, 0.05, 0.2, 0.4, 0.5, 0.6, 0.8, 0.95, 0.99})
    expect_cdf(t, x, 1.0 - (2.0 / kPi) * std::atan((1.0 - x) / x), "cosmap");
}

TEST(TheoryTimeSamplers, UniformIsUniform) {
  auto gen = generator(15);
  auto t = make<TimeSampler>("uniform")->sample(kDraws, gen).to(torch::kFloat64);
  for (double x : {0.01, 0.25, 0.5, 0.75, 0.99}) expect_cdf(t, x, x, "uniform");
}

TEST(TheoryTimeSamplers, BetaHasItsMomentsAndDistribution) {
  for (auto [a, b] : {std::pair{1.0, 2.5}, {1.0, 3.0}, {2.0, 5.0}, {0.5, 0.5}}) {
    SCOPED_TRACE(std::to_string(a) + ", " + std::to_string(b));
    auto gen = generator(16);
    auto t = make<TimeSampler>("beta", {{"a", a}, {"b", b}})->sample(kDraws, gen).to(torch::kFloat64);
    const double mean = a / (a + b), var = a * b / ((a + b) * (a + b) * (a + b + 1));
    EXPECT_NEAR(t.mean().item<double>(), mean, 5 * std::sqrt(var / kDraws));
    EXPECT_NEAR(t.var().item<double>(), var, 0.02 * var);
    if (a == 1.0)  // Beta(1, b): P(t <= x) = 1 - (1 - x)^b
      for (double x : {0.05, 0.2, 0.5, 0.8}) expect_cdf(t, x, 1.0 - std::pow(1.0 - x, b), "beta");
  }
  // The default is uniform.
  auto gen = generator(17);
  auto t = make<TimeSampler>("beta")->sample(kDraws, gen).to(torch::kFloat64);
  for (double x : {0.1, 0.5, 0.9}) expect_cdf(t, x, x, "beta(1, 1)");
}

// ---------------------------------------------------------------------------------------------
// End to end through the engine

// The 2D pipeline of the end-to-end tests: 8 Gaussians, a small MLP, a budget of a few seconds.
// One intra-op thread: this MLP is far too small to gain from more, and on a busy machine OpenMP's
// spinning workers made one configuration 60 times slower (2 s -> 119 s measured on 2 shared cores).
PipelineConfig pipeline(const std::vector<std::string>& overrides) {
  const std::string text =
      "[dataset]\ntype = \"toy2d\"\nshape = \"8gaussians\"\n"
      "[model]\ntype = \"mlp\"\nwidth = 64\ndepth = 2\n"
      "[solver]\ntype = \"midpoint\"\nsteps = 20\n"
      "[train]\nsteps = 1500\nbatch_size = 512\nlr = 3e-3\nema_decay = 0.995\nlog_every = 100\n"
      "[sample]\nn = 2000\ntrajectories = 0\n"
      "[[metric]]\ntype = \"energy_distance\"\n"
      "[run]\nthreads = 1\n";
  ConfigOptions options;
  options.overrides = overrides;
  return parse_config(text, "theory.toml", registry(), options);
}

TEST(TheoryLossWeighting, EveryWeightingIsWiredAndFinite) {
  std::map<std::string, std::vector<double>> losses;
  for (const char* weighting : {"none", "sigma_sqrt", "cosmap"}) {
    PipelineConfig config =
        pipeline({"train.steps=6", "train.batch_size=64", "train.log_every=1",
                  std::string("train.loss_weighting=\"") + weighting + "\"", "run.seed=3"});
    apply_thread_setting(config);
    Components c = build_components(config, registry());
    TrainResult r = train(config, c, {}, nullptr);
    ASSERT_EQ(r.losses.size(), 6u) << weighting;
    for (double l : r.losses) EXPECT_TRUE(std::isfinite(l)) << weighting;
    losses[weighting] = r.losses;
  }
  // The same seed draws the same first batch and model: only the weights differ.
  EXPECT_NE(losses["none"][0], losses["sigma_sqrt"][0]);
  EXPECT_NE(losses["none"][0], losses["cosmap"][0]);
  EXPECT_NE(losses["sigma_sqrt"][0], losses["cosmap"][0]);
  // sigma_sqrt weights 1 / sigma_t^2 >= 1 on the linear path; cosmap's weights lie in [2/pi, 4/pi].
  EXPECT_GT(losses["sigma_sqrt"][0], losses["none"][0]);
}

// "On 2D data every path and parameterization trains to samples of comparable quality."
//
// Each configuration gets the settings its theory calls for (the rest is shared); the numbers are
// energy distances measured with this file's settings, seed 0:
// - noise and score predictions give the velocity through x1_hat = (x_t - sigma x0_hat) / alpha_t,
//   which amplifies the network's error by alpha'/alpha ~ 1/t near the noise end: sample from
//   t_start = 0.02 (linear/noise from 1e-3: 0.042; from 0.02: 0.0077).
// - data prediction gives x0_hat = (x_t - alpha x1_hat) / sigma_t, amplifying by 1/(1 - t) near the
//   data end: stop at t_end = 0.98, leaving noise of std 0.02, far below the modes' 0.35 (to t_end = 1
//   with midpoint, which never evaluates at t = 1: 0.016; with heun, which does and meets the
//   clamped divisor there: 12.4).
// - the score target -x0 / sigma_t has E|target|^2 ~ int dt / sigma_t^2, infinite under uniform t
//   (clamped at kMinDivisor: training loss 3.5e4, samples at 0.50, no better than untrained).
//   Beta(1, 3) times have density 3 (1 - t)^2 = 3 sigma_t^2: importance sampling of Song et al.
//   2021's weight lambda = sigma_t^2, finite variance, the noise end still well covered (0.011;
//   logit_normal, which also thins out the noise end: 0.024).
// - VE: the velocity loss is log(sigma_max / sigma_min)^2 sigma_t^2 times the noise loss, so plain MSE
//   is dominated by sigma_max-sized times; loss_weighting = sigma_sqrt (1 / sigma_t^2) turns it into
//   the uniformly weighted noise loss, Song et al. 2021's choice (seeds 0 to 5: 0.011 to 0.021
//   weighted, 0.017 to 0.028 over seeds 0 to 2 unweighted).
// Over seeds 0 to 5 every configuration measured below 0.03, the untrained field 0.65.
struct QualityCase {
  std::string name;
  std::vector<std::string> overrides;
};

std::ostream& operator<<(std::ostream& out, const QualityCase& c) { return out << c.name; }

double energy_distance_of(const std::vector<std::string>& overrides) {
  PipelineConfig config = pipeline(overrides);
  apply_thread_setting(config);
  Components c = build_components(config, registry());
  train(config, c, {}, nullptr);
  SampleResult s = sample(config, c);
  EXPECT_TRUE(all_finite(s.samples));
  for (const MetricRecord& record : evaluate(config, c, s.samples, s.labels))
    if (record.type == "energy_distance") return record.result.value;
  ADD_FAILURE() << "no energy_distance among the results";
  return std::nan("");
}

// Untrained, the field leaves samples near the prior N(0, I): far from the 8 modes.
double untrained_energy_distance() {
  static const double value = energy_distance_of({"train.steps=0"});
  return value;
}

class TheoryQuality : public ::testing::TestWithParam<QualityCase> {};

TEST_P(TheoryQuality, TrainsToSamplesOfComparableQuality) {
  const auto start = std::chrono::steady_clock::now();
  const double untrained = untrained_energy_distance();
  const double trained = energy_distance_of(GetParam().overrides);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "[ quality  ] " << GetParam().name << ": energy distance " << trained << " (untrained "
            << untrained << ") in " << seconds << " s\n";
  EXPECT_GT(untrained, 0.4);
  EXPECT_LT(trained, 0.05);
}

INSTANTIATE_TEST_SUITE_P(
    Builtin, TheoryQuality,
    ::testing::Values(QualityCase{"linear_velocity", {}},
                      QualityCase{"cosine_velocity", {"path.type=\"cosine\""}},
                      QualityCase{"vp_velocity", {"path.type=\"vp\""}},
                      QualityCase{"ve_velocity", {"path.type=\"ve\"", "train.loss_weighting=\"sigma_sqrt\""}},
                      QualityCase{"polynomial_velocity", {"path.type=\"polynomial\""}},
                      QualityCase{"linear_noise", {"parameterization.type=\"noise\"", "sample.t_start=0.02"}},
                      QualityCase{"linear_data", {"parameterization.type=\"data\"", "sample.t_end=0.98"}},
                      QualityCase{"linear_score",
                                  {"parameterization.type=\"score\"", "sample.t_start=0.02",
                                   "time_sampler.type=\"beta\"", "time_sampler.b=3"}}),
    [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace pathline
