// Plugin "time-samplers": distributions of the training time t in [0, 1].
#include "pathline/plugin.hpp"

namespace {

// t ~ U[0, 1), the choice of Lipman et al. 2022.
class UniformTime : public pathline::TimeSampler {
 public:
  UniformTime(const pathline::Params&, const pathline::BuildContext&) {}

  torch::Tensor sample(std::int64_t n, at::Generator& gen) override {
    return torch::rand({n}, gen, torch::TensorOptions().dtype(torch::kFloat32));
  }
};

void register_time_samplers(pathline::Registrar& registrar) {
  registrar.add_type<pathline::TimeSampler, UniformTime>(
      pathline::ComponentDecl{"uniform", "t ~ U[0, 1)", {}});
}

}  // namespace

PATHLINE_PLUGIN("time-samplers", "0.1.0", register_time_samplers)
