// The one table of pipeline slots. Everything that lists slots derives from it: the config's slot
// specs (pipeline_slots: validation, defaults, resolved configs, `pathline inspect`), the members
// of Components and the order build_components builds them in, the keys that decide what training
// computes (checkpoints and resume, ablations sharing a training), and `plugins`/`inspect` listings.
#pragma once

#include "pathline/plugin.hpp"

namespace pathline {

// Which jobs read a slot's component. A slot read by training is part of what a checkpoint must
// match on resume, and of what ablation variants must share to share a training.
enum SlotPhase : unsigned { kTrainPhase = 1u, kSamplePhase = 2u, kEvaluatePhase = 4u };

// The single slots (one component each), in pipeline order: the order components are built in
// (each sees the ones before it in its BuildContext), of resolved configs and of `pathline inspect`.
//   X(table, Interface, default type ("" with required: none), required, phases, doc)
// Adding a slot is a row here (its member of Components and its place in the build follow) plus
// what the engine does with the component.
#define PATHLINE_SLOTS(X)                                                                                  \
  X(dataset, Dataset, "", true, kTrainPhase | kEvaluatePhase,                                              \
    "the target distribution q(x1): the data the flow learns to generate")                                 \
  X(autoencoder, Autoencoder, "", false, kTrainPhase | kSamplePhase,                                       \
    "maps the data to the latent space the flow runs in and back (none, or identity: the flow runs on "    \
    "the data); "                                                                                          \
    "a trained one is named by `run`, and a pipeline without [model] trains it")                           \
  X(source, Dataset, "gaussian", false, kTrainPhase | kSamplePhase,                                        \
    "the source distribution p(x0): the standard Gaussian, or any data set (e.g. 8gaussians to moons)")    \
  X(path, Path, "linear", false, kTrainPhase | kSamplePhase,                                               \
    "the probability path from the source (t = 0) to the data (t = 1): x_t = alpha_t x1 + sigma_t x0, or " \
    "a path that draws its own x_t")                                                                       \
  X(coupling, Coupling, "independent", false, kTrainPhase,                                                 \
    "how the source and data samples of a batch are paired (independently, or by optimal transport)")      \
  X(time_sampler, TimeSampler, "uniform", false, kTrainPhase,                                              \
    "the distribution of training times t in [0, 1]")                                                      \
  X(parameterization, Parameterization, "velocity", false, kTrainPhase | kSamplePhase,                     \
    "what the model predicts (velocity, noise, data, score) and how that converts to a velocity")          \
  X(objective, Objective, "flow_matching", false, kTrainPhase | kSamplePhase,                              \
    "what a training step minimises: conditional flow matching, maximum likelihood through an ODE solve "  \
    "(cnf_mle), or average velocities for one-step sampling (meanflow)")                                   \
  X(model, Model, "", true, kTrainPhase | kSamplePhase,                                                    \
    "the network that predicts the parameterization's target from (x_t, t)")                               \
  X(solver, Solver, "euler", false, kSamplePhase,                                                          \
    "the ODE solver that integrates the learned velocity at sampling")                                     \
  X(time_grid, TimeGrid, "uniform", false, kSamplePhase, "how the sampling interval is cut into solver steps")

// The one slot of many components (a table [metric] or a list [[metric]]), after the single ones.
#define PATHLINE_METRIC_SLOT(M)     \
  M(metric, Metric, kEvaluatePhase, \
    "scores of the generated samples against fresh data: a table [metric] or a list [[metric]]")

}  // namespace pathline
