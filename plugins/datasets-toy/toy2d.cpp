// Plugin "datasets-toy": the 2D toy targets of flow-matching tutorials, drawn with tensor ops
// (no per-point loops) from the generator the engine passes in, and the standard Gaussian, the
// default [source] of every pipeline.
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "pathline/plugin.hpp"

namespace {

using pathline::Batch;
using pathline::BuildContext;
using pathline::DataInfo;
using pathline::Params;
using pathline::ParamSpec;

constexpr double kPi = 3.14159265358979323846;

enum class Shape { moons, circles, eight_gaussians, checkerboard, spirals, gaussian };

Shape parse_shape(const std::string& name) {
  if (name == "moons") return Shape::moons;
  if (name == "circles") return Shape::circles;
  if (name == "8gaussians") return Shape::eight_gaussians;
  if (name == "checkerboard") return Shape::checkerboard;
  if (name == "spirals") return Shape::spirals;
  if (name == "gaussian") return Shape::gaussian;
  throw pathline::InputError("toy2d: unknown shape '" + name +
                             "'; use moons, circles, 8gaussians, checkerboard, spirals or gaussian");
}

// What a labelled draw calls its classes: the part of the distribution a point was drawn from.
std::vector<std::string> class_names_of(Shape shape) {
  std::vector<std::string> names;
  switch (shape) {
    case Shape::moons:
      return {"upper moon", "lower moon"};
    case Shape::circles:
      return {"outer circle", "inner circle"};
    case Shape::spirals:
      return {"arm 0", "arm 1"};
    case Shape::eight_gaussians:
      for (int k = 0; k < 8; ++k) names.push_back("mode " + std::to_string(k));
      return names;
    case Shape::checkerboard:
      // Label 2 c + r / 2 is the filled cell in column c (0..3 from the left) and row r (0..3 from
      // the bottom); each column has two filled cells, rows of the column's parity.
      for (int column = 0; column < 4; ++column)
        for (int row = column % 2; row < 4; row += 2)
          names.push_back("cell (" + std::to_string(column) + ", " + std::to_string(row) + ")");
      return names;
    case Shape::gaussian:
      return names;
  }
  return names;
}

class Toy2d : public pathline::Dataset {
 public:
  Toy2d(const Params& p, const BuildContext&)
      : shape_(parse_shape(p.string("shape"))),
        noise_(p.real("noise")),
        diagonal_jitter_(p.string("jitter") == "diagonal_uniform"),
        scale_(p.real("scale")),
        offset_(p.real_list("offset")),
        mode_std_(p.real("mode_std")),
        labelled_(p.boolean("labelled")) {
    if (offset_.size() != 2)  // the config validator checks this first (size(2))
      throw pathline::InputError("toy2d: offset must hold 2 numbers, got " + std::to_string(offset_.size()));
  }

  DataInfo info() const override {
    DataInfo info;
    info.shape = {2};
    if (labelled_) {
      info.class_names = class_names_of(shape_);
      info.num_classes = static_cast<std::int64_t>(info.class_names.size());
    }
    return info;  // unbounded: the default infinite range
  }

  Batch sample(std::int64_t n, at::Generator& gen) override {
    // The labels come from the draws that choose the mode, cell or component, so that a labelled
    // and an unlabelled data set consume the generator alike and draw the same points.
    auto [x, labels] = draw(n, gen);
    if (noise_ > 0) {
      if (diagonal_jitter_)  // one U[0, noise) shift along (1, 1) per point, as torchdyn's moons
        x.add_(torch::rand({n, 1}, gen, f32()), noise_);
      else
        x.add_(torch::randn({n, 2}, gen, f32()), noise_);
    }
    if (scale_ != 1.0) x.mul_(scale_);
    if (offset_[0] != 0.0 || offset_[1] != 0.0) x.add_(torch::tensor({offset_[0], offset_[1]}, f32()));
    if (!labelled_) labels = torch::Tensor();
    return {x, labels};
  }

 private:
  static torch::TensorOptions f32() { return torch::TensorOptions().dtype(torch::kFloat32); }
  static torch::Tensor uniform(std::int64_t n, at::Generator& gen) { return torch::rand({n}, gen, f32()); }
  // 0 or 1 with equal probability, as float.
  static torch::Tensor coin(std::int64_t n, at::Generator& gen) { return torch::randint(2, {n}, gen, f32()); }
  static torch::Tensor as_labels(const torch::Tensor& k) { return k.to(torch::kInt64); }

  // The points and, for every shape but gaussian, the label of each.
  std::pair<torch::Tensor, torch::Tensor> draw(std::int64_t n, at::Generator& gen) const {
    switch (shape_) {
      case Shape::moons: {
        // scikit-learn make_moons: upper (cos u, sin u), lower (1 - cos u, 1/2 - sin u), u in
        // [0, pi]; then centred at (1/2, 1/4) and doubled, so x in [-3, 3], y in [-1.5, 1.5].
        auto u = uniform(n, gen).mul_(kPi);
        auto lower = coin(n, gen);
        auto sign = 1.0 - 2.0 * lower;
        auto x = (sign * torch::cos(u) + lower - 0.5) * 2.0;
        auto y = (sign * torch::sin(u) + 0.5 * lower - 0.25) * 2.0;
        return {torch::stack({x, y}, 1), as_labels(lower)};
      }
      case Shape::circles: {
        // scikit-learn make_circles(factor=0.5) times 3: radii 3 and 1.5, half the points each.
        auto angle = uniform(n, gen).mul_(2.0 * kPi);
        auto inner = coin(n, gen);
        auto radius = 3.0 - 1.5 * inner;
        return {torch::stack({radius * torch::cos(angle), radius * torch::sin(angle)}, 1), as_labels(inner)};
      }
      case Shape::eight_gaussians: {
        // FFJORD (Grathwohl et al. 2019) "8gaussians": modes at angles k pi/4 on a circle of
        // radius 4/sqrt(2) = 2 sqrt(2), each an isotropic Gaussian of std 0.5/sqrt(2) (`mode_std`).
        auto mode = torch::randint(8, {n}, gen, f32());
        auto angle = mode * (kPi / 4.0);
        auto centers = torch::stack({torch::cos(angle), torch::sin(angle)}, 1);
        centers.mul_(2.0 * std::sqrt(2.0));
        centers.add_(torch::randn({n, 2}, gen, f32()), mode_std_);
        return {centers, as_labels(mode)};
      }
      case Shape::checkerboard: {
        // Meta flow_matching, examples/standalone_flow_matching: x1 uniform on [-2, 2), x2 in one
        // of the two rows of the column's parity, cells with col + row even, all divided by 0.45.
        auto x1 = uniform(n, gen).mul_(4.0).sub_(2.0);
        auto x2 = uniform(n, gen);
        auto lower = coin(n, gen);
        auto column = torch::floor(x1);  // -2 .. 1
        x2.sub_(lower * 2.0).add_(torch::remainder(column, 2.0));
        // x2 lies in row -2 or -1 (lower = 1) or in row 0 or 1 (lower = 0): the upper cell of the
        // column is its second class.
        auto cell = (column + 2.0) * 2.0 + (1.0 - lower);
        return {torch::stack({x1, x2}, 1).div_(0.45), as_labels(cell)};
      }
      case Shape::spirals: {
        // FFJORD "2spirals" without its Gaussian jitter (use `noise`): a = 3 pi sqrt(u),
        // arm (-a cos a, a sin a) + U[0, 0.5)^2, mirrored through the origin for half the points,
        // all divided by 3.
        auto a = uniform(n, gen).sqrt_().mul_(3.0 * kPi);
        auto x = -torch::cos(a) * a + uniform(n, gen).mul_(0.5);
        auto y = torch::sin(a) * a + uniform(n, gen).mul_(0.5);
        auto mirrored = coin(n, gen);
        auto sign = (1.0 - 2.0 * mirrored).div_(3.0);
        return {torch::stack({x * sign, y * sign}, 1), as_labels(mirrored)};
      }
      case Shape::gaussian:
        return {torch::randn({n, 2}, gen, f32()), torch::Tensor()};
    }
    throw pathline::Error("toy2d: unknown shape");
  }

  Shape shape_;
  double noise_;
  bool diagonal_jitter_;
  double scale_;
  std::vector<double> offset_;
  double mode_std_;
  bool labelled_;
};

// The standard normal N(0, I) on samples of any shape: the usual source p(x0) of flow matching
// (Lipman et al. 2022), and that of every pipeline without a [source] table. Scaling to the path's
// sigma at the start of sampling is the engine's business, as for any source.
class StandardGaussian : public pathline::Dataset {
 public:
  StandardGaussian(const Params& p, const BuildContext& ctx) : shape_(p.int_list("shape")) {
    // As the source, it draws in the flow's space (the data's, or an autoencoder's latents).
    if (shape_.empty()) shape_ = ctx.slot == "source" ? ctx.flow_space().shape : ctx.data.shape;
    if (shape_.empty())
      throw pathline::InputError(
          "gaussian: the sample shape is unknown: set `shape` (e.g. shape = [2]) in the [" +
          (ctx.slot.empty() ? std::string("dataset") : ctx.slot) +
          "] table; it is taken from the data only when the gaussian fills [source]");
  }

  DataInfo info() const override {
    DataInfo info;
    info.shape = shape_;
    return info;
  }

  Batch sample(std::int64_t n, at::Generator& gen) override {
    // One at::randn over the whole batch, as the engine drew its noise before SDK 2: the same
    // generator gives the same noise.
    std::vector<std::int64_t> sizes = {n};
    sizes.insert(sizes.end(), shape_.begin(), shape_.end());
    return {at::randn(sizes, gen, torch::TensorOptions().dtype(torch::kFloat32)), torch::Tensor()};
  }

  // log N(x; 0, I) = -|x|^2 / 2 - D/2 log(2 pi), per sample.
  torch::Tensor log_prob(const torch::Tensor& x) const override {
    const torch::Tensor flat = x.to(torch::kFloat64).reshape({x.size(0), -1});
    const double dims = static_cast<double>(flat.size(1));
    return -0.5 * flat.square().sum(1) - 0.5 * dims * std::log(2.0 * 3.14159265358979323846);
  }

 private:
  std::vector<std::int64_t> shape_;
};

void register_toy(pathline::Registrar& registrar) {
  registrar.add_type<pathline::Dataset, Toy2d>(pathline::ComponentDecl{
      "toy2d",
      "2D toy distributions: moons, circles, 8gaussians, checkerboard, spirals, gaussian; optionally "
      "labelled with the mode, cell or component each point was drawn from",
      {ParamSpec::choice("shape", {"moons", "circles", "8gaussians", "checkerboard", "spirals", "gaussian"},
                         "checkerboard", "which 2D distribution to draw from"),
       ParamSpec::real("noise", 0.0, "size of the jitter added to every point, before `scale`").at_least(0.0),
       ParamSpec::choice("jitter", {"gaussian", "diagonal_uniform"}, "gaussian",
                         "gaussian: N(0, noise^2) on each coordinate; diagonal_uniform: one U[0, noise) "
                         "added to both coordinates (torchdyn's moons, used by TorchCFM and C2OT)"),
       ParamSpec::real("scale", 1.0, "factor multiplying every point (after the jitter)").greater_than(0.0),
       ParamSpec::real_list("offset", {0.0, 0.0}, "added to every point after `scale`").size(2),
       ParamSpec::real("mode_std", 0.5 / std::sqrt(2.0),
                       "8gaussians: standard deviation of each mode, before `scale` (FFJORD: 0.5/sqrt(2))")
           .greater_than(0.0),
       ParamSpec::boolean("labelled", false,
                          "label every point with what it was drawn from: 8gaussians its mode (8 classes), "
                          "checkerboard its cell (8), moons its moon (2), circles its circle (2), spirals "
                          "its arm (2); gaussian stays unlabelled. The points are the same either way")}});
  registrar.add_type<pathline::Dataset, StandardGaussian>(pathline::ComponentDecl{
      "gaussian",
      "the standard normal N(0, I), unlabelled: the default [source]",
      {ParamSpec::int_list("shape", {},
                           "shape of one sample, e.g. [2] or [1, 28, 28]; empty: the shape of the "
                           "[dataset] (only when filling [source])")
           .at_least(1)}});
}

}  // namespace

PATHLINE_PLUGIN("datasets-toy", "0.1.0", register_toy)
