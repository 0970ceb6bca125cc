#!/usr/bin/env bash
# The PyTorch copies the benchmarks compare with (tools/bench/flow2d.py's MLP, image_models.py's U-Net
# and DiT) compute what Pathline's models compute: the same weights, loaded by name into both, give
# the same velocities (tools/bench/equivalence.py). Needs Fashion-MNIST (tools/install-deps.sh).
# Skipped (exit 77) where the Python given (the project's .venv) has no torch.
set -euo pipefail
pathline="$1"
source_dir="$2"
python="${3:-python3}"
"$python" -c "import torch, numpy" 2>/dev/null || { echo "$python has no torch: skipped"; exit 77; }
"$python" "$source_dir/tools/bench/equivalence.py" --pathline "$pathline"
