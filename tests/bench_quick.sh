#!/usr/bin/env bash
# The benchmarks at a tiny size (tools/bench/run.py --quick): every row runs, on Pathline's side and
# every peer's, and reports finite positive numbers, the versions and both peaks.
# Skipped (exit 77) where the Python given (the project's .venv) lacks torch or a peer.
set -euo pipefail
pathline="$1"
source_dir="$2"
python="${3:-python3}"
"$python" -c "import torch, flow_matching, torchcfm, torchdiffeq, ot" 2>/dev/null ||
  { echo "$python lacks torch or a peer (flow_matching, torchcfm, torchdiffeq, POT): skipped"; exit 77; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$python" "$source_dir/tools/bench/run.py" --quick --pathline "$pathline" --python "$python" --out "$out"
"$python" - "$out/results.json" <<'PY'
import json, math, sys
report = json.load(open(sys.argv[1]))
names = [r["name"] for r in report["results"]]
expected = ["peak-fp32", "peak-bf16", "2d-small", "2d-recipe", "2d-ot", "2d-sample",
            "unet-fp32", "unet-bf16", "dit-fp32", "dit-bf16"]
assert names == expected, names
peers = {"peak-fp32": ["torch.mm"], "peak-bf16": ["torch.mm"], "2d-ot": ["torchcfm_ot"],
         "2d-sample": ["pytorch", "flow_matching"]}


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


for r in report["results"]:
    want = peers.get(r["name"], ["pytorch", "flow_matching", "torchcfm"] if r["name"].startswith("2d") else ["pytorch"])
    assert sorted(r["peers"]) == sorted(want), (r["name"], r["peers"])
    numbers = [r["pathline"], r["ratio"], r["gflops"], r["peak_fraction"], *r["peers"].values(), *r["ratios"].values(),
               *r["variants"].values()]
    assert all(positive(x) for x in numbers), r
    assert r["ratio"] == r["ratios"][r["fastest_peer"]] == min(r["ratios"].values()), r
torch_info = report["torch"]
assert torch_info["torch"] and torch_info["libtorch"] and torch_info["blas"], torch_info
assert torch_info["torch"].split("+")[0] == torch_info["libtorch"], torch_info  # one torch on both sides
assert report["machine"]["cpu"] and report["machine"]["threads"] > 0, report["machine"]
for precision in ["fp32", "bf16"]:
    assert positive(report["peaks"][precision]["gflops"]), report["peaks"]
assert 0 < report["startup_s"] < 60, report
print("bench_quick: every benchmark ran")
PY
grep -q "| 2D training, MLP 4x256, batch 256 |" "$out/results.md"
grep -q "Matrix-product peaks (torch.mm, the better of both sides): float32" "$out/results.md"
