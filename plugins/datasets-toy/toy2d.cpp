// Plugin "datasets-toy": the 2D toy targets of flow-matching tutorials, drawn with tensor ops
// (no per-point loops) from the generator the engine passes in.
#include <cmath>
#include <string>

#include "pathline/plugin.hpp"

namespace {

using pathline::BuildContext;
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
  throw pathline::InputError("toy2d: unknown shape '" + name + "'");
}

class Toy2d : public pathline::Dataset {
 public:
  Toy2d(const Params& p, const BuildContext&)
      : shape_(parse_shape(p.string("shape"))), noise_(p.real("noise")), scale_(p.real("scale")) {}

  std::vector<std::int64_t> sample_shape() const override { return {2}; }

  torch::Tensor sample(std::int64_t n, at::Generator& gen) override {
    torch::Tensor x = draw(n, gen);
    if (noise_ > 0) x.add_(torch::randn({n, 2}, gen, f32()), noise_);
    if (scale_ != 1.0) x.mul_(scale_);
    return x;
  }

 private:
  static torch::TensorOptions f32() { return torch::TensorOptions().dtype(torch::kFloat32); }
  static torch::Tensor uniform(std::int64_t n, at::Generator& gen) {
    return torch::rand({n}, gen, f32());
  }
  // 0 or 1 with equal probability, as float.
  static torch::Tensor coin(std::int64_t n, at::Generator& gen) {
    return torch::randint(2, {n}, gen, f32());
  }

  torch::Tensor draw(std::int64_t n, at::Generator& gen) const {
    switch (shape_) {
      case Shape::moons: {
        // scikit-learn make_moons: upper (cos u, sin u), lower (1 - cos u, 1/2 - sin u), u in
        // [0, pi]; then centred at (1/2, 1/4) and doubled, so x in [-3, 3], y in [-1.5, 1.5].
        auto u = uniform(n, gen).mul_(kPi);
        auto lower = coin(n, gen);
        auto sign = 1.0 - 2.0 * lower;
        auto x = (sign * torch::cos(u) + lower - 0.5) * 2.0;
        auto y = (sign * torch::sin(u) + 0.5 * lower - 0.25) * 2.0;
        return torch::stack({x, y}, 1);
      }
      case Shape::circles: {
        // scikit-learn make_circles(factor=0.5) times 3: radii 3 and 1.5, half the points each.
        auto angle = uniform(n, gen).mul_(2.0 * kPi);
        auto radius = 3.0 - 1.5 * coin(n, gen);
        return torch::stack({radius * torch::cos(angle), radius * torch::sin(angle)}, 1);
      }
      case Shape::eight_gaussians: {
        // FFJORD (Grathwohl et al. 2019) "8gaussians": modes at angles k pi/4 on a circle of
        // radius 4/sqrt(2) = 2 sqrt(2), each an isotropic Gaussian of std 0.5/sqrt(2).
        auto angle = torch::randint(8, {n}, gen, f32()).mul_(kPi / 4.0);
        auto centers = torch::stack({torch::cos(angle), torch::sin(angle)}, 1);
        centers.mul_(2.0 * std::sqrt(2.0));
        return centers.add_(torch::randn({n, 2}, gen, f32()), 0.5 / std::sqrt(2.0));
      }
      case Shape::checkerboard: {
        // Meta flow_matching, examples/standalone_flow_matching: x1 uniform on [-2, 2), x2 in one
        // of the two rows of the column's parity, cells with col + row even, all divided by 0.45.
        auto x1 = uniform(n, gen).mul_(4.0).sub_(2.0);
        auto x2 = uniform(n, gen);
        x2.sub_(coin(n, gen).mul_(2.0)).add_(torch::remainder(torch::floor(x1), 2.0));
        return torch::stack({x1, x2}, 1).div_(0.45);
      }
      case Shape::spirals: {
        // FFJORD "2spirals" without its Gaussian jitter (use `noise`): a = 3 pi sqrt(u),
        // arm (-a cos a, a sin a) + U[0, 0.5)^2, mirrored through the origin for half the points,
        // all divided by 3.
        auto a = uniform(n, gen).sqrt_().mul_(3.0 * kPi);
        auto x = -torch::cos(a) * a + uniform(n, gen).mul_(0.5);
        auto y = torch::sin(a) * a + uniform(n, gen).mul_(0.5);
        auto sign = (1.0 - 2.0 * coin(n, gen)).div_(3.0);
        return torch::stack({x * sign, y * sign}, 1);
      }
      case Shape::gaussian: return torch::randn({n, 2}, gen, f32());
    }
    throw pathline::Error("toy2d: unknown shape");
  }

  Shape shape_;
  double noise_;
  double scale_;
};

void register_toy(pathline::Registrar& registrar) {
  registrar.add_type<pathline::Dataset, Toy2d>(pathline::ComponentDecl{
      "toy2d",
      "2D toy distributions: moons, circles, 8gaussians, checkerboard, spirals, gaussian",
      {ParamSpec::choice("shape",
                         {"moons", "circles", "8gaussians", "checkerboard", "spirals", "gaussian"},
                         "checkerboard", "which 2D distribution to draw from"),
       ParamSpec::real("noise", 0.0, "std of Gaussian jitter added to every point, before `scale`")
           .at_least(0.0),
       ParamSpec::real("scale", 1.0, "factor multiplying every point (after the jitter)")
           .greater_than(0.0)}});
}

}  // namespace

PATHLINE_PLUGIN("datasets-toy", "0.1.0", register_toy)
