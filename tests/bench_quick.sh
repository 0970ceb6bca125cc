#!/usr/bin/env bash
# The benchmarks at a tiny size (tools/bench/run.py --quick): every one runs and reports a ratio.
# Skipped (exit 77) where the Python given (the project's .venv) has no torch, the PyTorch side.
set -euo pipefail
pathline="$1"
source_dir="$2"
python="${3:-python3}"
"$python" -c "import torch" 2>/dev/null || { echo "$python has no torch: skipped"; exit 77; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$python" "$source_dir/tools/bench/run.py" --quick --pathline "$pathline" --out "$out"
"$python" - "$out/results.json" <<'PY'
import json, math, sys
report = json.load(open(sys.argv[1]))
names = [r["name"] for r in report["results"]]
expected = ["2d-small", "2d-recipe", "2d-sample", "unet-fp32", "unet-bf16", "dit-fp32", "dit-bf16"]
assert names == expected, names
for r in report["results"]:
    assert r["pathline"] > 0 and r["pytorch"] > 0 and math.isfinite(r["ratio"]), r
assert report["peak"]["gflops"] > 0 and 0 < report["startup_s"] < 60, report
print("bench_quick: every benchmark ran")
PY
grep -q "| 2D training, MLP 4x256, batch 256 |" "$out/results.md"
