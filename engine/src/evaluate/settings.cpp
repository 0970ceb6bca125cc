// [eval]: its keys, declared beside the evaluation that reads them (evaluate.cpp), and read once.
#include "pathline/engine/settings.hpp"

namespace pathline {

const std::vector<ParamSpec>& EvalSettings::specs() {
  static const std::vector<ParamSpec> specs = {
      ParamSpec::integer("reference_n", 0,
                         "fresh data samples the metrics compare against; 0 means `[sample] n`")
          .at_least(0)};
  return specs;
}

EvalSettings EvalSettings::read(const Params& t) {
  EvalSettings s;
  s.reference_n = t.integer("reference_n");
  return s;
}

}  // namespace pathline
