// What the files of plugin "solvers" share: one registration function per family (ode.cpp holds
// the plugin's descriptor and calls them) and the path's coefficients at one time as numbers.
#pragma once

#include <cstdio>
#include <string>

#include "pathline/plugin.hpp"

namespace pathline::solvers {

void register_adaptive(Registrar& registrar);   // dopri5.cpp
void register_multistep(Registrar& registrar);  // multistep.cpp
void register_sde(Registrar& registrar);        // sde.cpp

// alpha_t, sigma_t and their derivatives at one time, as doubles (field.coefficients(t) is [1]).
struct ScalarCoefficients {
  double alpha, sigma, d_alpha, d_sigma;
};

inline ScalarCoefficients scalar_coefficients(const VectorField& field, double t) {
  const PathCoefficients c = field.coefficients(t);
  auto value = [](const torch::Tensor& v) { return v.to(torch::kCPU, torch::kFloat64).item<double>(); };
  return {value(c.alpha), value(c.sigma), value(c.d_alpha), value(c.d_sigma)};
}

// A time for error messages, with up to 10 significant digits.
inline std::string time_text(double t) {
  char buffer[40];
  std::snprintf(buffer, sizeof buffer, "%.10g", t);
  return buffer;
}

}  // namespace pathline::solvers
