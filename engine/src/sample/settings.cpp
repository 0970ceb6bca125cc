// [sample]: its keys, declared beside the sampler that reads them (sample.cpp), and read once.
#include "pathline/engine/settings.hpp"

namespace pathline {

const std::vector<ParamSpec>& SampleSettings::specs() {
  static const std::vector<ParamSpec> specs = {
      ParamSpec::integer("n", 10000, "samples to generate").at_least(1),
      ParamSpec::integer("batch_size", 10000, "samples integrated at once").at_least(1),
      ParamSpec::integer("trajectories", 48, "paths drawn in `trajectories.png`; 0 disables").at_least(0),
      ParamSpec::real_auto("t_start",
                           "integrate from this time; `\"auto\"`: 0, or where alpha_t reaches 0.02 for noise "
                           "and score prediction (t = 0.02 on `linear`)")
          .range(0, 1)
          .less_than(1),
      ParamSpec::real_auto("t_end",
                           "integrate up to this time; `\"auto\"`: 1, or where sigma_t falls to 0.02 for "
                           "data prediction (t = 0.98 on `linear`)")
          .range(0, 1)
          .greater_than(0),
      ParamSpec::choice("final_step", {"auto", "denoise", "none"}, "auto",
                        "after the solver: `\"denoise\"` jumps from x(t_end) to the predicted data in one "
                        "more evaluation; `\"none\"` stops at t_end; `\"auto\"`: denoise when t_end < 1"),
      ParamSpec::boolean("use_ema", true,
                         "sample with the EMA weights when the run kept them; false: the raw weights"),
      ParamSpec::choice(
          "precision", {"fp32", "bf16"}, "fp32",
          "`\"bf16\"`: model evaluations under bfloat16 autocast (the solver's state stays float32)"),
      ParamSpec::real("guidance_scale", 1.0,
                      "classifier-free guidance weight w (at least 0); 1 is the plain conditional model")
          .at_least(0),
      ParamSpec::int_list("labels", {},
                          "the classes to generate, in turn; empty: every class in turn; -1: the "
                          "unconditional model (labelled data only)")
          .at_least(-1)};
  return specs;
}

SampleSettings SampleSettings::read(const Params& t) {
  SampleSettings s;
  s.n = t.integer("n");
  s.batch_size = t.integer("batch_size");
  s.trajectories = t.integer("trajectories");
  if (!t.is_auto("t_start")) s.t_start = t.real("t_start");
  if (!t.is_auto("t_end")) s.t_end = t.real("t_end");
  s.final_step = t.string("final_step");
  s.use_ema = t.boolean("use_ema");
  s.precision = t.string("precision");
  s.guidance_scale = t.real("guidance_scale");
  s.labels = t.int_list("labels");
  return s;
}

}  // namespace pathline
