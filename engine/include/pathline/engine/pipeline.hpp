// The whole engine, for the command line and tests: build, train, sample, evaluate, run.
#pragma once

#include "pathline/engine/ablate.hpp"
#include "pathline/engine/build.hpp"
#include "pathline/engine/checkpoint.hpp"
#include "pathline/engine/evaluate.hpp"
#include "pathline/engine/random.hpp"
#include "pathline/engine/run.hpp"
#include "pathline/engine/sample.hpp"
#include "pathline/engine/train.hpp"
