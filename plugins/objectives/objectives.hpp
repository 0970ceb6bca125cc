// Plugin "objectives": what a training step minimises. `flow_matching` (the default), `cnf_mle`
// (maximum likelihood through an ODE solve) and `meanflow` (average velocities for one-step
// sampling). Each file registers its own.
#pragma once

#include "pathline/plugin.hpp"

namespace pathline::objectives {

void register_flow_matching(Registrar& registrar);
void register_cnf_mle(Registrar& registrar);
void register_meanflow(Registrar& registrar);

// The path and parameterization an objective reads, which the engine builds before it; InputError
// when a context filled by hand lacks them.
inline void require_flow_parts(const BuildContext& ctx, const char* objective) {
  if (!ctx.path || !ctx.parameterization)
    throw InputError(std::string(objective) +
                     ": the path and the parameterization must be built first (the engine builds [objective] "
                     "after them)");
}

// Objectives whose model output is a velocity (its average, for meanflow): InputError naming the
// objective, `why`, and what the parameterization predicts instead.
inline void require_velocity(const BuildContext& ctx, const char* objective, const std::string& why) {
  const Quantity predicted = ctx.parameterization->predicts();
  if (predicted != Quantity::velocity)
    throw InputError(std::string(objective) + ": " + why +
                     "; set [parameterization] type = \"velocity\" (it predicts the " + to_string(predicted) +
                     ")");
}

}  // namespace pathline::objectives
