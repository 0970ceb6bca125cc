// See names.h: the Gloo names LibTorch's ProcessGroupGloo.hpp needs.
#pragma once
#include "../names.h"
