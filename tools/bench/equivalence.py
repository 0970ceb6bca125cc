#!/usr/bin/env python3
r"""Checks that the PyTorch copies of Pathline's models compute what Pathline's models compute.

The benchmarks compare Pathline with plain PyTorch scripts (flow2d.py's MLP, image_models.py's U-Net
and DiT); a ratio means something only if both sides run the same network. For each model this
script:

  1. builds the PyTorch copy and moves every parameter away from its initialisation (several
     layers start at zero, which would hide a wrong branch);
  2. writes its state_dict as a safetensors file (docs/weights.md), which `pathline sample --weights`
     loads only when every name and shape matches Pathline's model: the weights layout is checked;
  3. makes a run directory with `pathline train` (one step at a tiny batch), then samples from the
     same source points with those weights and one Euler step from t = 0 to 1, in float32 and
     without guidance: each sample is x0 + v(x0, 0, label);
  4. computes x0 + v(x0, 0, label) with the PyTorch copy and compares.

    .venv/bin/python tools/bench/equivalence.py --pathline build/bin/pathline
    .venv/bin/python tools/bench/equivalence.py --pathline build/bin/pathline --model dit

Prints one line per model with the largest difference; exits 1 if one is above the tolerance.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy
import torch

sys.dont_write_bytecode = True  # no __pycache__ in the source tree for the two imports below
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flow2d  # noqa: E402  (beside this file)
import image_models  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Each model: Pathline's pipeline, the overrides that make the run tiny, the PyTorch copy, and
# whether the data are labelled (Pathline then cycles the labels 0, 1, ..., 9 over the samples).
MODELS = {
    "mlp": ("quickstart.toml", [], lambda: flow2d.MLP(256, 4), False),
    "unet": ("fmnist-unet.toml", ["--set", "dataset.limit=8"],
             lambda: image_models.build("unet", (1, 28, 28), 10, 2), True),
    # The benchmark's DiT: patch 2 (the config's default is 4).
    "dit": ("fmnist-dit.toml", ["--set", "dataset.limit=8", "--set", "model.patch_size=2"],
            lambda: image_models.build("dit", (1, 28, 28), 10, 2), True),
}


def write_safetensors(path, tensors):
    """Writes float32 tensors in the safetensors layout: header length, JSON header (padded with
    spaces to a multiple of 8), then the raw little-endian data back to back."""
    header, blobs, offset = {}, [], 0
    for name, tensor in tensors.items():
        data = tensor.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        f.writelines(blobs)


def pathline(args, *command):
    """Runs a `pathline` command; stops with its error output if it fails."""
    proc = subprocess.run([args.pathline, *command], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"equivalence: pathline {' '.join(command)} failed ({proc.returncode}):\n{proc.stderr.strip()}")
    return proc.stdout


def check(args, name, work):
    """The largest difference between Pathline's and the PyTorch copy's x0 + v(x0, 0, label), and
    its scale (the largest velocity)."""
    config, extra, make, labelled = MODELS[name]
    torch.manual_seed(1)
    model = make().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    weights = os.path.join(work, f"{name}.safetensors")
    write_safetensors(weights, model.state_dict())

    run = os.path.join(work, f"{name}-run")
    threads = ["--set", f"run.threads={args.threads}"]
    pathline(args, "train", os.path.join(ROOT, "configs", config), "--run-dir", run, "--overwrite",
             "--set", "train.steps=1", "--set", "train.batch_size=2", "--set", "train.checkpoint_every=0",
             *extra, *threads)

    n = 20
    shape = (2,) if name == "mlp" else (1, 28, 28)
    x0 = torch.randn(n, *shape)
    noise = os.path.join(work, f"{name}-x0.npy")
    numpy.save(noise, x0.numpy())
    out = os.path.join(work, f"{name}-sample")
    pathline(args, "sample", run, "--weights", weights, "--noise", noise, "--out", out,
             "--set", 'solver.type="euler"', "--set", "solver.steps=1", "--set", "sample.t_start=0",
             "--set", "sample.t_end=1", "--set", "sample.guidance_scale=1", "--set", 'sample.precision="fp32"',
             "--set", "sample.trajectories=0", *threads)
    theirs = torch.from_numpy(numpy.load(os.path.join(out, "samples.npy")))

    with torch.no_grad():
        t = torch.zeros(n)
        labels = torch.arange(n) % 10 if labelled else None
        velocity = model(x0, t) if labels is None else model(x0, t, labels)
    ours = x0 + velocity
    return (ours - theirs).abs().max().item(), velocity.abs().max().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pathline", default=os.path.join(ROOT, "build", "bin", "pathline"))
    ap.add_argument("--model", choices=["all", *MODELS], default="all")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    # Both sides call the same kernels in the same order: the differences are float rounding (often
    # none at all), far below the 1e-3 relative change a wrong scale or a missing term would make.
    ap.add_argument("--tolerance", type=float, default=1e-5, help="relative to the largest velocity")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    failed = False
    with tempfile.TemporaryDirectory() as work:
        for name in MODELS if args.model == "all" else [args.model]:
            difference, scale = check(args, name, work)
            ok = difference <= args.tolerance * scale
            failed |= not ok
            print(f"equivalence: {name}: the PyTorch copy's velocity is {'' if ok else 'NOT '}Pathline's: "
                  f"largest difference {difference:.2e} (largest velocity {scale:.2f}; tolerance "
                  f"{args.tolerance:g} of it)", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
