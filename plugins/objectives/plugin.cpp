// Plugin "objectives": `flow_matching`, `cnf_mle` and `meanflow`.
#include "objectives.hpp"

namespace {

void register_objectives(pathline::Registrar& registrar) {
  pathline::objectives::register_flow_matching(registrar);
  pathline::objectives::register_cnf_mle(registrar);
  pathline::objectives::register_meanflow(registrar);
}

}  // namespace

PATHLINE_PLUGIN("objectives", "0.1.0", register_objectives)
