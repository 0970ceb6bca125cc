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

}  // namespace pathline::objectives
