// Conformance with the libraries a user would otherwise pick, run on the same torch (issue 22):
// Meta's flow_matching for paths and parameterization conversions, torchdiffeq for the ODE solvers,
// POT for the optimal-transport couplings (docs/conformance.md). Pathline's numbers come from the
// built-in plugins through the registry; the peers' from tests/conformance/peers.py, which runs the
// peers' own code in the project's Python (.venv); inputs and outputs travel as .npy. A test skips
// only when that Python cannot import the peer it needs.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/sinkhorn.hpp"
#include "pathline/engine/io.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

const Registry& registry() { return testing::builtin_registry(); }

template <class Interface>
std::shared_ptr<Interface> make(const std::string& name,
                                const std::map<std::string, ParamValue>& changes = {}) {
  return registry().create<Interface>(
      name, testing::default_params(registry(), KindOf<Interface>::value, name, changes), BuildContext{});
}

at::Generator generator(std::uint64_t seed) { return at::detail::createCPUGenerator(seed); }
const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

std::string number(double v, int digits = 10) {
  char buffer[40];
  std::snprintf(buffer, sizeof buffer, "%.*g", digits, v);
  return buffer;
}

// ---------------------------------------------------------------------------------------------
// Running the peers

// One job of peers.py: its folder (the inputs the test wrote, the peer's outputs) and its status:
// "ok", "skip: <why>" when the project's Python lacks the peer, or "error: <what>".
struct PeerJob {
  fs::path dir;
  std::string status;
  bool skipped() const { return status.rfind("skip: ", 0) == 0; }
  bool ok() const { return status == "ok"; }
};

// The job's results, from peers.py run at the first test that asks (see the end of this file); the
// inputs come from the write_*_inputs functions below.
const PeerJob& peer_job(const std::string& job);

// In a test: the job's results as `var`, or a skip saying which module is missing, or a failure
// with the peer's traceback.
#define PEER_JOB(var, job)                       \
  const PeerJob& var = peer_job(job);            \
  if (var.skipped()) GTEST_SKIP() << var.status; \
  ASSERT_TRUE(var.ok()) << var.status

torch::Tensor peer_output(const PeerJob& job, const std::string& name) {
  return read_npy(job.dir / (name + ".npy"));
}

// ---------------------------------------------------------------------------------------------
// Comparing

// The worst element of |got - want| / max(1, |want|): relative for large values, absolute for small.
struct Discrepancy {
  double error = 0;
  std::int64_t row = -1, column = -1;
  double got = 0, want = 0;
};

// Over the rows of [B] or [B, ...] tensors where `compare` ([B, D] after flattening) is true; a
// non-finite value on either side there is an infinite error.
Discrepancy worst(const torch::Tensor& got, const torch::Tensor& want, const torch::Tensor& compare) {
  auto g = got.to(torch::kFloat64).reshape({got.size(0), -1});
  auto w = want.to(torch::kFloat64).reshape({want.size(0), -1});
  auto error = (g - w).abs() / w.abs().clamp_min(1.0);
  error = torch::where(torch::isfinite(g) & torch::isfinite(w), error,
                       torch::full_like(error, std::numeric_limits<double>::infinity()));
  error = torch::where(compare.reshape(error.sizes()), error, torch::zeros_like(error));
  const std::int64_t at = error.flatten().argmax().item<std::int64_t>();
  const std::int64_t width = error.size(1);
  Discrepancy d;
  d.row = at / width;
  d.column = at % width;
  d.error = error.flatten()[at].item<double>();
  d.got = g[d.row][d.column].item<double>();
  d.want = w[d.row][d.column].item<double>();
  return d;
}

std::string describe(const Discrepancy& d, const std::string& peer) {
  return "row " + std::to_string(d.row) + ", element " + std::to_string(d.column) + ": Pathline " +
         number(d.got, 17) + ", " + peer + " " + number(d.want, 17);
}

// ---------------------------------------------------------------------------------------------
// Paths and parameterizations against flow_matching's AffineProbPath

// Each Pathline path (with parameters) beside the flow_matching scheduler that should be the same
// path. The parameters are chosen so that a swapped convention shows: vp with beta_min != 0.1 and
// beta_max != 20 (flow_matching's beta_min is also the rate at the data end, t = 1), polynomial with
// exponents below, at and above 2.
struct PathCase {
  std::string name, path;
  std::map<std::string, ParamValue> params;
  std::string scheduler;  // peers.py's words: the scheduler and its parameters
};

const std::vector<PathCase>& path_cases() {
  static const std::vector<PathCase> cases = {
      {"linear", "linear", {}, "condot"},
      {"cosine", "cosine", {}, "cosine"},
      {"vp", "vp", {}, "vp 0.1 20"},
      {"vp_custom", "vp", {{"beta_min", 0.5}, {"beta_max", 5.0}}, "vp 0.5 5"},
      {"linear_vp", "linear_vp", {}, "linear_vp"},
      {"polynomial", "polynomial", {}, "polynomial 2"},
      {"polynomial_half", "polynomial", {{"exponent", 0.5}}, "polynomial 0.5"},
      {"polynomial_3", "polynomial", {{"exponent", 3.0}}, "polynomial 3"},
  };
  return cases;
}

// Paths without a flow_matching scheduler, and why. (`linear` with sigma_min > 0 has none either:
// flow_matching's CondOTScheduler is sigma_min = 0.)
const std::map<std::string, std::string> kWithoutMetaScheduler = {
    {"ve", "alpha_t = 1 is variance exploding; flow_matching 1.0.10 has no VE scheduler"},
    {"stochastic_interpolant",
     "not affine (x_t adds gamma_t z, drawn by Path::sample); flow_matching 1.0.10's schedulers are affine"}};

// What a conversion divides by (Pathline floors each divisor at kMinDivisor, flow_matching does
// not) and whether it uses the derivatives alpha', sigma'.
enum Divisor : unsigned { kByAlpha = 1, kBySigma = 2, kByDet = 4 };

// flow_matching's conversions and Pathline's (from, to) for each. flow_matching says target for
// data (x1) and epsilon for noise (x0); it has no score, so the score rows are its epsilon
// conversions through score = -epsilon / sigma_t (peers.py).
struct ConversionCase {
  const char* meta;
  Quantity from, to;
  unsigned divisors;
  bool derivatives;
};
const std::vector<ConversionCase> kConversions = {
    {"target_to_velocity", Quantity::data, Quantity::velocity, kBySigma, true},
    {"epsilon_to_velocity", Quantity::noise, Quantity::velocity, kByAlpha, true},
    {"velocity_to_target", Quantity::velocity, Quantity::data, kByDet, true},
    {"velocity_to_epsilon", Quantity::velocity, Quantity::noise, kByDet, true},
    {"target_to_epsilon", Quantity::data, Quantity::noise, kBySigma, false},
    {"epsilon_to_target", Quantity::noise, Quantity::data, kByAlpha, false},
    {"score_to_velocity", Quantity::score, Quantity::velocity, kByAlpha, true},
    {"score_to_target", Quantity::score, Quantity::data, kByAlpha, false},
    {"velocity_to_score", Quantity::velocity, Quantity::score, kByDet | kBySigma, true},
    {"target_to_score", Quantity::data, Quantity::score, kBySigma, false},
};

constexpr double kPathTolerance = 1e-6;  // the bound; float64 on both sides agrees to ~1e-15
constexpr std::int64_t kEnds = 2;        // rows 0 and 1 hold t = 0 and t = 1

// Inputs shared by every path case: times (t = 0 and 1 first, then inner times), a pair (x0, x1),
// and, for the conversions, an arbitrary state xt and prediction pred (the conversions are linear in
// both, so any values test them; they need not lie on the path).
//
// The inner times stay within [0.05, 0.95], where every divisor of every conversion on these cases
// is above the SDK's floor kMinDivisor (parameterization.hpp) and Pathline's conversions are exact:
// below the floor (polynomial_3's alpha = t^3 < 1e-4 for t < 0.046) Pathline clamps by design and
// flow_matching divides as is. ConversionsMatchFlowMatching checks that this holds.
struct PathInputs {
  torch::Tensor t, x0, x1, xt, pred;
};

const PathInputs& path_inputs() {
  static const PathInputs in = [] {
    auto gen = generator(2215);
    PathInputs r;
    auto inner = 0.05 + 0.9 * at::rand({61}, gen, kF64);
    r.t = torch::cat({torch::tensor({0.0, 1.0, 0.5}, kF64), inner});
    const std::int64_t b = r.t.size(0), d = 3;
    r.x0 = at::randn({b, d}, gen, kF64);
    r.x1 = 1.5 * at::randn({b, d}, gen, kF64) + 0.5;
    r.xt = 2.0 * at::randn({b, d}, gen, kF64);
    r.pred = 2.0 * at::randn({b, d}, gen, kF64);
    return r;
  }();
  return in;
}

void write_path_inputs(const fs::path& dir) {
  const PathInputs& in = path_inputs();
  write_npy(dir / "t.npy", in.t);
  write_npy(dir / "x0.npy", in.x0);
  write_npy(dir / "x1.npy", in.x1);
  write_npy(dir / "xt.npy", in.xt);
  write_npy(dir / "pred.npy", in.pred);
  std::string cases;
  for (const auto& c : path_cases()) cases += c.name + " " + c.scheduler + "\n";
  testing::write_text(dir / "cases.txt", cases);
}

// Compares one quantity of one path case: on the inner rows everywhere; on the end rows (t = 0, 1)
// where `end_rows` ([B] bool) allows and flow_matching's value is finite. Elsewhere at the ends
// Pathline's value must still be finite: there flow_matching divides by a vanishing alpha_t,
// sigma_t or det_t, or uses a diverging derivative, and returns inf, nan or 1e16-sized values,
// while Pathline floors the divisor (or the derivative's denominator) at kMinDivisor. Returns how
// many end elements were compared.
std::int64_t expect_matches_meta(const PathCase& c, const std::string& quantity, const torch::Tensor& got,
                                 const torch::Tensor& want, const torch::Tensor& end_rows) {
  const std::string what =
      "path '" + c.path + "' (" + c.name + ", flow_matching scheduler '" + c.scheduler + "'): " + quantity;
  if (got.sizes() != want.sizes()) {
    ADD_FAILURE() << what << ": Pathline's shape " << got.sizes() << " is not flow_matching's "
                  << want.sizes();
    return 0;
  }
  auto g = got.reshape({got.size(0), -1});
  auto w = want.reshape({want.size(0), -1});
  auto is_end = (torch::arange(g.size(0)) < kEnds).unsqueeze(1).expand(g.sizes());
  auto end_ok = end_rows.unsqueeze(1).expand(g.sizes()) & torch::isfinite(w);
  auto compare = ~is_end | end_ok;
  const Discrepancy d = worst(got, want, compare);
  const auto& t = path_inputs().t;
  EXPECT_LE(d.error, kPathTolerance) << what << " differs from flow_matching's by " << number(d.error)
                                     << " (relative to max(1, |value|)) at t = "
                                     << number(t[d.row].item<double>()) << ", "
                                     << describe(d, "flow_matching") << "; tolerance "
                                     << number(kPathTolerance);
  auto bad = is_end & ~compare & ~torch::isfinite(g);
  EXPECT_FALSE(bad.any().item<bool>()) << what << ": not finite in Pathline at an end (t = 0 or 1); Pathline "
                                       << "floors divisors there to stay finite:\n"
                                       << g.slice(0, 0, kEnds);
  return (is_end & end_ok).sum().item<std::int64_t>();
}

TEST(Conformance, EveryPathHasAFlowMatchingSchedulerOrAReason) {
  for (const std::string& name : registry().names(Kind::path)) {
    const bool tested = std::any_of(path_cases().begin(), path_cases().end(),
                                    [&](const PathCase& c) { return c.path == name; });
    EXPECT_TRUE(tested || kWithoutMetaScheduler.count(name))
        << "path '" << name << "' is neither compared with a flow_matching scheduler (path_cases() in "
        << "test_conformance.cpp) nor listed in kWithoutMetaScheduler with the reason it has none";
    EXPECT_FALSE(tested && kWithoutMetaScheduler.count(name))
        << "path '" << name << "' is compared and also listed as having no scheduler";
  }
}

TEST(Conformance, PathsMatchFlowMatchingSchedulers) {
  PEER_JOB(peers, "paths");
  const PathInputs& in = path_inputs();
  // x_t, dx_t and the coefficients divide by nothing: every end value flow_matching has is compared.
  const auto all_ends = torch::ones({in.t.size(0)}, torch::kBool);
  std::int64_t ends_compared = 0;
  for (const PathCase& c : path_cases()) {
    auto path = make<Path>(c.path, c.params);
    auto coefficients = path->coefficients(in.t);
    auto b = coefficients.broadcast_to_rank(2);
    const std::vector<std::pair<std::string, torch::Tensor>> ours = {
        {"alpha", coefficients.alpha},
        {"sigma", coefficients.sigma},
        {"d_alpha", coefficients.d_alpha},
        {"d_sigma", coefficients.d_sigma},
        {"x_t", Path::interpolate(b, in.x0, in.x1)},
        {"dx_t", Path::conditional_velocity(b, in.x0, in.x1)}};
    for (const auto& [quantity, got] : ours)
      ends_compared +=
          expect_matches_meta(c, quantity, got, peer_output(peers, c.name + "." + quantity), all_ends);
  }
  // x_t is finite at both ends on every scheduler: the ends are compared, not skipped.
  EXPECT_GE(ends_compared, std::int64_t(path_cases().size()) * kEnds * in.x0.size(1));
}

TEST(Conformance, ConversionsMatchFlowMatching) {
  PEER_JOB(peers, "paths");
  const PathInputs& in = path_inputs();
  std::int64_t ends_compared = 0;
  for (const PathCase& c : path_cases()) {
    auto path = make<Path>(c.path, c.params);
    auto coefficients = path->coefficients(in.t);
    // Which rows a conversion may be compared on at the ends: flow_matching's own coefficients there
    // (they equal Pathline's where finite: PathsMatchFlowMatchingSchedulers) are finite where used,
    // and the divisors are above the floor. The inner rows must satisfy this everywhere.
    auto alpha = peer_output(peers, c.name + ".alpha"), sigma = peer_output(peers, c.name + ".sigma");
    auto d_alpha = peer_output(peers, c.name + ".d_alpha"), d_sigma = peer_output(peers, c.name + ".d_sigma");
    auto above_floor = [](const torch::Tensor& d, const torch::Tensor& scale) {
      return torch::isfinite(d) & (d.abs() >= kMinDivisor * scale.clamp_min(1.0));
    };
    // det's floor is relative to the size of the coefficients (parameterization.hpp).
    auto det = alpha * d_sigma - sigma * d_alpha;
    auto det_scale = (alpha.abs() + sigma.abs()) * (d_alpha.abs() + d_sigma.abs());
    auto alpha_ok = above_floor(alpha, torch::ones_like(alpha)),
         sigma_ok = above_floor(sigma, torch::ones_like(sigma));
    auto det_ok = above_floor(det, torch::nan_to_num(det_scale));
    auto finite_derivatives = torch::isfinite(d_alpha) & torch::isfinite(d_sigma);
    auto inner = torch::arange(in.t.size(0)) >= kEnds;
    const std::vector<std::pair<std::string, torch::Tensor>> regular = {{"alpha_t", alpha_ok},
                                                                        {"sigma_t", sigma_ok},
                                                                        {"det_t", det_ok},
                                                                        {"a derivative", finite_derivatives}};
    for (const auto& [name, ok] : regular)
      ASSERT_TRUE((ok | ~inner).all().item<bool>())
          << c.name << ": " << name
          << " reaches the SDK's divisor floor (or is not finite) at an inner time; "
          << "the comparison would measure the floor rather than the conversion";

    auto b = coefficients.broadcast_to_rank(2);
    for (const ConversionCase& conversion : kConversions) {
      auto rows = torch::ones_like(inner);
      if (conversion.divisors & kByAlpha) rows = rows & alpha_ok;
      if (conversion.divisors & kBySigma) rows = rows & sigma_ok;
      if (conversion.divisors & kByDet) rows = rows & det_ok;
      if (conversion.derivatives) rows = rows & finite_derivatives;
      auto from = make<Parameterization>(to_string(conversion.from));
      auto got = from->convert(in.pred, in.xt, b, conversion.to);
      const std::string quantity = std::string(conversion.meta) +
                                   " (Pathline: " + to_string(conversion.from) + " -> " +
                                   to_string(conversion.to) + ")";
      ends_compared +=
          expect_matches_meta(c, quantity, got, peer_output(peers, c.name + "." + conversion.meta), rows);
    }
  }
  EXPECT_GT(ends_compared, 0);
}

// ---------------------------------------------------------------------------------------------
// Solvers against torchdiffeq

// The analytic fields of peers.py (FIELDS), written identically (same operations in the same order,
// so that fixed-step trajectories agree to rounding), with their exact flows.
//   gaussian: the marginal velocity from N(0, I) at t = 0 to N(mu, s^2 I) at t = 1 on the linear path,
//             v = mu + v'_t / (2 v_t) (x - t mu), v_t = t^2 s^2 + (1 - t)^2; flow
//             x(t1) = t1 mu + sqrt(v_t1 / v_t0) (x(t0) - t0 mu).
//   cubic:    dx/dt = -2 t x^3, element by element; flow x(t1) = x / sqrt(1 + 2 x^2 (t1^2 - t0^2)).
class AnalyticField : public VectorField {
 public:
  explicit AnalyticField(std::string name) : name_(std::move(name)) {
    if (name_ != "gaussian" && name_ != "cubic") throw Error("test: no analytic field '" + name_ + "'");
  }

  std::int64_t evaluations = 0;

  torch::Tensor predict(Quantity q, const torch::Tensor& x, double t) override {
    if (q != Quantity::velocity)
      throw Error("analytic field '" + name_ + "': asked for " + to_string(q) +
                  "; it gives the velocity only");
    ++evaluations;
    if (name_ == "gaussian") {
      auto mu = torch::tensor({kMean[0], kMean[1]}, x.options());
      const double s2 = kStd * kStd;
      const double var = t * t * s2 + (1 - t) * (1 - t);
      const double d_var = 2 * t * s2 - 2 * (1 - t);
      return mu + (d_var / (2 * var)) * (x - t * mu);
    }
    return (-2 * t) * (x * x * x);
  }

  PathCoefficients coefficients(double t) const override {
    auto tt = torch::full({1}, t, kF64);
    return {tt, 1.0 - tt, torch::ones_like(tt), -torch::ones_like(tt)};
  }

  torch::Tensor exact(const torch::Tensor& x, double t0, double t1) const {
    if (name_ == "gaussian") {
      auto mu = torch::tensor({kMean[0], kMean[1]}, x.options());
      auto var = [](double t) { return t * t * kStd * kStd + (1 - t) * (1 - t); };
      return t1 * mu + std::sqrt(var(t1) / var(t0)) * (x - t0 * mu);
    }
    return x / torch::sqrt(1 + 2 * x.square() * (t1 * t1 - t0 * t0));
  }

 private:
  static constexpr double kMean[2] = {1.0, -0.5};  // peers.py: GAUSSIAN_MEAN
  static constexpr double kStd = 0.4;              // peers.py: GAUSSIAN_STD
  std::string name_;
};

const std::vector<std::string> kFields = {"gaussian", "cubic"};

const torch::Tensor& solver_start() {
  static const torch::Tensor x0 = [] {
    auto gen = generator(2216);
    return at::randn({6, 2}, gen, kF64);
  }();
  return x0;
}

// Pathline's fixed-step solvers beside torchdiffeq's methods that are the same Runge-Kutta scheme.
// torchdiffeq's method "rk4" is the 3/8 rule (rk_common.rk4_alt_step_func), not the classic RK4 of
// Pathline's rk4; the classic one is torchdiffeq's rk_common.rk4_step_func, which odeint does not
// offer as a method, so peers.py steps it over the grid itself ("classic_rk4").
struct FixedStepCase {
  std::string solver, peer;
};
const std::vector<FixedStepCase> kFixedStep = {
    {"euler", "euler"}, {"midpoint", "midpoint"}, {"heun", "heun2"}, {"rk4", "classic_rk4"}};
constexpr std::int64_t kFixedSteps = 16;

// "To float64 rounding": a few ulps per step, over 16 steps.
constexpr double kStepTolerance = 1e-13;

const std::vector<double>& fixed_step_grid() {
  static const std::vector<double> grid =
      make<TimeGrid>("uniform")->times(kFixedSteps, 0.0, 1.0, *make<Path>("linear"));
  return grid;
}

void write_fixed_step_inputs(const fs::path& dir) {
  write_npy(dir / "times.npy", torch::tensor(fixed_step_grid(), kF64));
  write_npy(dir / "x0.npy", solver_start());
  std::string cases;
  for (const auto& field : kFields) {
    for (const auto& c : kFixedStep) cases += field + "-" + c.solver + " " + field + " " + c.peer + "\n";
    // The 3/8 rule, to show that the comparison tells two fourth-order methods apart.
    cases += field + "-rk4_38 " + field + " rk4\n";
  }
  testing::write_text(dir / "cases.txt", cases);
}

TEST(Conformance, FixedStepSolversMatchTorchdiffeqStepForStep) {
  PEER_JOB(peers, "fixed_step");
  const auto& grid = fixed_step_grid();
  for (const auto& field_name : kFields) {
    for (const auto& c : kFixedStep) {
      const std::string what = "solver '" + c.solver + "' vs torchdiffeq '" + c.peer + "' on the " +
                               field_name + " field, " + std::to_string(kFixedSteps) + " uniform steps";
      AnalyticField field(field_name);
      SolveRequest request;
      request.times = grid;
      std::vector<torch::Tensor> states;
      request.observer = [&](double, const torch::Tensor& x) { states.push_back(x.clone()); };
      make<Solver>(c.solver, {{"steps", kFixedSteps}})->solve(field, solver_start(), request);
      const auto ours = torch::stack(states);
      const auto theirs = peer_output(peers, field_name + "-" + c.solver + ".trajectory");
      ASSERT_EQ(ours.sizes(), theirs.sizes()) << what << ": trajectories of different shapes";
      // Row k of the flattened comparison is the state after step k.
      const Discrepancy d = worst(ours, theirs, torch::ones({ours.size(0), ours[0].numel()}, torch::kBool));
      EXPECT_LE(d.error, kStepTolerance)
          << what << ": the state after step " << d.row
          << " (t = " << number(grid[static_cast<std::size_t>(d.row)]) << ") differs by " << number(d.error)
          << " (relative to max(1, |x|)), " << describe(d, "torchdiffeq") << "; tolerance "
          << number(kStepTolerance);
      const auto peer_evaluations = peer_output(peers, field_name + "-" + c.solver + ".evaluations");
      EXPECT_EQ(field.evaluations, peer_evaluations.item<std::int64_t>())
          << what << ": evaluations of the field, Pathline vs torchdiffeq";
    }
    // Pathline's rk4 (classic) and torchdiffeq's rk4 (3/8 rule) are both fourth order and differ by
    // O(h^5) per step: far more than rounding, so a step-for-step match above means the same method.
    const auto classic = peer_output(peers, field_name + "-rk4.trajectory");
    const auto three_eighths = peer_output(peers, field_name + "-rk4_38.trajectory");
    const double apart = (classic - three_eighths).abs().max().item<double>();
    EXPECT_GT(apart, 1e3 * kStepTolerance)
        << field_name << " field: torchdiffeq's rk4 (3/8 rule) and its classic RK4 step agree to "
        << number(apart) << "; the step-for-step comparison could not tell them apart";
  }
}

// The global error of an adaptive solve is its local tolerance times the error's growth over the
// steps: 50 (atol + rtol max |x|) bounds it for both solvers on these fields (measured at most 15
// times for Pathline, on the gaussian field at 1e-4, and 13 for torchdiffeq, on the cubic at 1e-4).
constexpr double kGlobalErrorFactor = 50;
// Pathline's dopri5 may use at most this many times torchdiffeq's evaluations (the bound).
constexpr double kEvaluationRatio = 1.2;
const std::vector<double> kDopri5Tolerances = {1e-4, 1e-6, 1e-8};

void write_dopri5_inputs(const fs::path& dir) {
  write_npy(dir / "times.npy", torch::tensor({0.0, 1.0}, kF64));
  write_npy(dir / "x0.npy", solver_start());
  std::string cases;
  for (const auto& field : kFields)
    for (std::size_t k = 0; k < kDopri5Tolerances.size(); ++k)
      cases += field + "-" + std::to_string(k) + " " + field + " " + number(kDopri5Tolerances[k]) + " " +
               number(kDopri5Tolerances[k]) + "\n";
  testing::write_text(dir / "cases.txt", cases);
}

TEST(Conformance, Dopri5MeetsToleranceWithTorchdiffeqsEvaluations) {
  PEER_JOB(peers, "dopri5");
  const double t0 = 0.0, t1 = 1.0;
  const auto& x0 = solver_start();
  for (const auto& field_name : kFields) {
    for (std::size_t k = 0; k < kDopri5Tolerances.size(); ++k) {
      const double tol = kDopri5Tolerances[k];
      const std::string name = field_name + "-" + std::to_string(k);
      const std::string what = "dopri5 on the " + field_name + " field, rtol = atol = " + number(tol);
      AnalyticField field(field_name);
      auto solver = make<Solver>("dopri5", {{"rtol", tol}, {"atol", tol}});
      SolveRequest request;
      request.times = {t0, t1};
      const auto ours = solver->solve(field, x0, request);
      EXPECT_EQ(double(field.evaluations), solver->statistics().at("evaluations"))
          << what << ": the solver's reported evaluations are not the field's count";
      const auto exact = field.exact(x0, t0, t1);
      const auto theirs = peer_output(peers, name + ".x1");
      const double scale = tol + tol * exact.abs().max().item<double>();
      const double our_error = (ours - exact).abs().max().item<double>();
      const double their_error = (theirs - exact).abs().max().item<double>();
      const std::int64_t their_evaluations = peer_output(peers, name + ".evaluations").item<std::int64_t>();
      std::cout << "[ dopri5   ] " << what << ": Pathline error " << number(our_error) << " ("
                << number(our_error / scale) << " tolerances) in " << field.evaluations
                << " evaluations, torchdiffeq " << number(their_error) << " (" << number(their_error / scale)
                << ") in " << their_evaluations << "\n";
      EXPECT_LE(our_error, kGlobalErrorFactor * scale)
          << what << ": Pathline's largest error from the exact flow at t = 1 is " << number(our_error)
          << " (torchdiffeq's: " << number(their_error) << "); bound " << number(kGlobalErrorFactor * scale);
      EXPECT_LE(their_error, kGlobalErrorFactor * scale)
          << what << ": torchdiffeq's largest error from the exact flow at t = 1 is " << number(their_error)
          << " (Pathline's: " << number(our_error) << "); bound " << number(kGlobalErrorFactor * scale);
      EXPECT_LE(double(field.evaluations), kEvaluationRatio * double(their_evaluations))
          << what << ": Pathline used " << field.evaluations << " evaluations, torchdiffeq "
          << their_evaluations << " (ratio " << number(double(field.evaluations) / double(their_evaluations))
          << ", at most " << kEvaluationRatio << ")";
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Couplings against POT

// The squared Euclidean cost of both OT couplings, ||x0_i - x1_j||^2, unnormalised (POT's ot.dist).
torch::Tensor squared_distances(const torch::Tensor& x0, const torch::Tensor& x1) {
  return torch::cdist(x0, x1).square();
}

// For each row of `paired`, the row of `source` it is (rows are distinct random points), or -1.
std::vector<std::int64_t> source_rows(const torch::Tensor& paired, const torch::Tensor& source) {
  auto same = (paired.unsqueeze(1) == source.unsqueeze(0)).all(2);  // [n, n]
  std::vector<std::int64_t> rows;
  for (std::int64_t j = 0; j < paired.size(0); ++j) {
    auto hits = torch::nonzero(same[j]).flatten();
    rows.push_back(hits.numel() == 1 ? hits[0].item<std::int64_t>() : -1);
  }
  return rows;
}

void expect_cost_is_pots(const std::string& what, const torch::Tensor& x0, const torch::Tensor& x1,
                         const torch::Tensor& pot_cost) {
  const auto ours = squared_distances(x0, x1);
  const double gap = ((ours - pot_cost).abs() / pot_cost.abs().clamp_min(1.0)).max().item<double>();
  EXPECT_LT(gap, 1e-12) << what << ": the squared Euclidean cost differs from POT's ot.dist by "
                        << number(gap);
}

// Batches of continuous random points: the optimal assignment is unique with probability 1.
struct OtBatch {
  std::string name;
  torch::Tensor x0, x1;
};

const std::vector<OtBatch>& emd_batches() {
  static const std::vector<OtBatch> batches = [] {
    auto gen = generator(2217);
    std::vector<OtBatch> r;
    for (auto [n, d] : {std::pair<std::int64_t, std::int64_t>{64, 2}, {128, 2}, {48, 8}}) {
      auto x0 = at::randn({n, d}, gen, kF64);
      auto x1 = 1.5 * at::randn({n, d}, gen, kF64) + 0.7;
      r.push_back({"n" + std::to_string(n) + "-d" + std::to_string(d), x0, x1});
    }
    return r;
  }();
  return batches;
}

void write_emd_inputs(const fs::path& dir) {
  std::string cases;
  for (const auto& b : emd_batches()) {
    write_npy(dir / (b.name + ".x0.npy"), b.x0);
    write_npy(dir / (b.name + ".x1.npy"), b.x1);
    cases += b.name + "\n";
  }
  testing::write_text(dir / "cases.txt", cases);
}

TEST(Conformance, MinibatchOtPairsAsPotEmd) {
  PEER_JOB(peers, "emd");
  auto coupling = make<Coupling>("minibatch_ot");
  for (const OtBatch& batch : emd_batches()) {
    const torch::Tensor &x0 = batch.x0, &x1 = batch.x1;
    const std::string& name = batch.name;
    const std::int64_t n = x0.size(0);
    const std::string what =
        "minibatch_ot on " + std::to_string(n) + " points in " + std::to_string(x0.size(1)) + "D";
    expect_cost_is_pots(what, x0, x1, peer_output(peers, name + ".cost"));
    // POT's plan: 1/n on the optimal permutation, 0 elsewhere; pot[j] = its row in column j.
    const auto plan = peer_output(peers, name + ".plan");
    ASSERT_EQ(plan.sizes(), (std::vector<std::int64_t>{n, n})) << what;
    std::vector<std::int64_t> pot;
    for (std::int64_t j = 0; j < n; ++j) {
      auto rows = torch::nonzero(plan.select(1, j) > 0.5 / double(n)).flatten();
      ASSERT_EQ(rows.numel(), 1) << what << ": POT's plan is not a permutation in column " << j;
      pot.push_back(rows[0].item<std::int64_t>());
    }
    auto gen = generator(1);
    const auto paired = coupling->couple(Batch{x0, {}}, Batch{x1, {}}, gen).first.x;
    const auto ours = source_rows(paired, x0);
    std::int64_t differ = 0, first = -1;
    for (std::int64_t j = 0; j < n; ++j)
      if (ours[static_cast<std::size_t>(j)] != pot[static_cast<std::size_t>(j)] && differ++ == 0) first = j;
    if (differ > 0) {
      auto total = [&](const std::vector<std::int64_t>& rows) {
        double sum = 0;
        for (std::int64_t j = 0; j < n; ++j)
          if (rows[static_cast<std::size_t>(j)] >= 0)
            sum += (x0[rows[static_cast<std::size_t>(j)]] - x1[j]).square().sum().item<double>();
        return sum;
      };
      ADD_FAILURE() << what << ": pairs " << differ << " of " << n
                    << " data rows with another source row than "
                    << "POT's ot.emd (first: data row " << first << " gets source row "
                    << ours[static_cast<std::size_t>(first)] << ", POT's "
                    << pot[static_cast<std::size_t>(first)] << "); total squared distance Pathline "
                    << number(total(ours)) << ", POT " << number(total(pot));
    }
  }
}

// Pathline's sinkhorn uses the plan only to draw, for each data row j, a source row from the plan's
// column P[:, j]; the plan itself is plugins/common/sinkhorn.hpp's entropic_plan, which the coupling
// calls. So: the plan against POT's, then the coupling's draws against draws from that plan.
struct SinkhornCase {
  std::string name, reg_scale;
  double reg;
  std::int64_t iterations;
  std::string order;  // "pathline": POT on the transposed problem (peers.py), iteration for iteration
  bool log_domain;    // which form Pathline must take at this eps (POT's method is chosen to match)
  double tolerance;   // on max |P - P_POT| * n (plan entries are at most 1 / n)
};

// On the transposed problem ("pathline" order) POT's iterates are Pathline's, so a few iterations
// compare the iterations themselves; many compare the converged plan (unique: the objective is
// strictly convex) whatever the order of the updates. mean_cost with reg = 0.05 is the coupling's
// default; reg = 0.002 of the mean cost puts the kernel's range beyond e^300, where Pathline
// iterates in log space (POT: method sinkhorn_log). There Sinkhorn converges too slowly to compare
// converged plans (5000 iterations still leave row sums off by 5e-4 in L1), so the log form is
// compared iteration for iteration only, at 7 and 300 iterations.
const std::vector<SinkhornCase> kSinkhornCases = {
    {"scaling-7", "mean_cost", 0.05, 7, "pathline", false, 1e-12},
    {"scaling-converged", "mean_cost", 0.05, 2000, "pot", false, 1e-9},
    {"absolute-converged", "absolute", 0.5, 2000, "pot", false, 1e-9},
    {"log-7", "mean_cost", 0.002, 7, "pathline", true, 1e-12},
    {"log-300", "mean_cost", 0.002, 300, "pathline", true, 1e-12},
};

const OtBatch& sinkhorn_batch() {
  static const OtBatch batch = [] {
    auto gen = generator(2218);
    auto x0 = at::randn({32, 2}, gen, kF64);
    auto x1 = 1.5 * at::randn({32, 2}, gen, kF64) + 0.7;
    return OtBatch{"batch", x0, x1};
  }();
  return batch;
}

void write_sinkhorn_inputs(const fs::path& dir) {
  std::string cases;
  for (const auto& c : kSinkhornCases) {
    write_npy(dir / (c.name + ".x0.npy"), sinkhorn_batch().x0);
    write_npy(dir / (c.name + ".x1.npy"), sinkhorn_batch().x1);
    cases += c.name + " " + c.reg_scale + " " + number(c.reg) + " " + std::to_string(c.iterations) + " " +
             (c.log_domain ? "sinkhorn_log" : "sinkhorn") + " " + c.order + "\n";
  }
  testing::write_text(dir / "cases.txt", cases);
}

TEST(Conformance, SinkhornPlanMatchesPot) {
  PEER_JOB(peers, "sinkhorn");
  const torch::Tensor &x0 = sinkhorn_batch().x0, &x1 = sinkhorn_batch().x1;
  const std::int64_t n = x0.size(0);
  const auto cost = squared_distances(x0, x1);
  for (const auto& c : kSinkhornCases) {
    const std::string what = "sinkhorn (" + c.name + ": reg = " + number(c.reg) +
                             ", reg_scale = " + c.reg_scale + ", " + std::to_string(c.iterations) +
                             " iterations)";
    expect_cost_is_pots(what, x0, x1, peer_output(peers, c.name + ".cost"));
    // Pathline's eps: reg times the mean squared distance (mean_cost) or reg itself; POT's `reg` is eps.
    const double eps = c.reg * (c.reg_scale == "mean_cost" ? cost.mean().item<double>() : 1.0);
    const double pot_eps = peer_output(peers, c.name + ".eps").item<double>();
    EXPECT_NEAR(eps, pot_eps, 1e-12 * pot_eps) << what << ": eps";
    const auto plan = pathline_plugins::sinkhorn::entropic_plan(cost, eps, c.iterations, /*tolerance=*/0.0);
    ASSERT_EQ(plan.log_domain, c.log_domain)
        << what << ": Pathline iterated in the other form than the case tests";
    const auto ours = plan.plan();
    const auto theirs = peer_output(peers, c.name + ".plan");
    ASSERT_EQ(ours.sizes(), theirs.sizes()) << what;
    const auto gap = ((ours - theirs).abs() * double(n)).flatten();
    const std::int64_t at = gap.argmax().item<std::int64_t>();
    EXPECT_LE(gap[at].item<double>(), c.tolerance)
        << what << ": the plan differs from POT's ot.sinkhorn by " << number(gap[at].item<double>())
        << " (times n) at source row " << at / n << ", data row " << at % n << ": Pathline "
        << number(ours.flatten()[at].item<double>()) << ", POT "
        << number(theirs.flatten()[at].item<double>()) << "; tolerance " << number(c.tolerance);
  }

  // The coupling draws data row j's source row from that plan's column j: replaying the draws from
  // entropic_plan on the same cost with the same generator gives the same rows.
  auto coupling = make<Coupling>("sinkhorn", {{"iterations", std::int64_t{2000}}, {"tolerance", 0.0}});
  auto gen = generator(7);
  const auto paired = coupling->couple(Batch{x0, {}}, Batch{x1, {}}, gen).first.x;
  const auto rows = source_rows(paired, x0);
  const double eps = 0.05 * cost.mean().item<double>();
  auto replay = generator(7);
  const auto weights = pathline_plugins::sinkhorn::entropic_plan(cost, eps, 2000, 0.0).column_weights();
  const auto expected = torch::multinomial(weights, 1, true, replay).squeeze(1);
  for (std::int64_t j = 0; j < n; ++j)
    EXPECT_EQ(rows[static_cast<std::size_t>(j)], expected[j].item<std::int64_t>())
        << "sinkhorn coupling: data row " << j << " was paired with source row "
        << rows[static_cast<std::size_t>(j)] << ", not the row drawn from the plan compared with POT's";
}

// ---------------------------------------------------------------------------------------------
// The peer runs

using InputWriter = void (*)(const fs::path&);

// Runs peers.py over `jobs` in one process, after writing their inputs under `root`.
void run_peer_jobs(const fs::path& root, const std::vector<std::pair<std::string, InputWriter>>& jobs,
                   std::map<std::string, PeerJob>& results) {
  std::string names;
  for (const auto& [name, write] : jobs) {
    fs::create_directories(root / name);
    write(root / name);
    names += " " + name;
  }
  const fs::path script = fs::path(PATHLINE_SOURCE_DIR) / "tests" / "conformance" / "peers.py";
  const fs::path log = root / ("peers" + std::to_string(results.size()) + ".log");
  // One thread: the arrays are tiny and the machine may be shared.
  const std::string command = "OMP_NUM_THREADS=1 '" + testing::python() + "' '" + script.string() + "' '" +
                              root.string() + "'" + names + " >'" + log.string() + "' 2>&1";
  const int status = std::system(command.c_str());
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  for (const auto& [name, write] : jobs) {
    PeerJob& job = results[name];
    job.dir = root / name;
    if (fs::exists(job.dir / "status.txt"))
      job.status = testing::read_text(job.dir / "status.txt");
    else if (code == 127)  // the shell found no interpreter
      job.status = "skip: there is no Python at " + testing::python() + " to run the peers";
    else
      job.status = "error: '" + script.string() + "' exited with status " + std::to_string(code) +
                   " before reporting on job '" + name + "':\n" + testing::read_text(log);
  }
}

const PeerJob& peer_job(const std::string& job) {
  // The jobs of one peer run in one Python process, at the first test that asks for one of them:
  // importing torch, torchdiffeq or POT costs seconds. (ctest runs every test in a process of its
  // own, so a test starts only its own peer's jobs.)
  static const std::vector<std::vector<std::pair<std::string, InputWriter>>> by_peer = {
      {{"paths", write_path_inputs}},
      {{"fixed_step", write_fixed_step_inputs}, {"dopri5", write_dopri5_inputs}},
      {{"emd", write_emd_inputs}, {"sinkhorn", write_sinkhorn_inputs}}};
  static TempDir root;  // constructed in place: a copy of a TempDir would remove the folder
  static std::map<std::string, PeerJob> results;
  if (!results.count(job))
    for (const auto& jobs : by_peer)
      if (std::any_of(jobs.begin(), jobs.end(), [&](const auto& j) { return j.first == job; }))
        run_peer_jobs(root.path(), jobs, results);
  auto it = results.find(job);
  if (it == results.end()) throw Error("test_conformance: no peer job '" + job + "'");
  return it->second;
}

}  // namespace
}  // namespace pathline
