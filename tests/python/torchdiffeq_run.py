"""Integrates a trained velocity run's PyTorch port with torchdiffeq from given source points.

    python torchdiffeq_run.py RUN_DIR X0.npy OUT_DIR

Loads RUN_DIR/model.safetensors into the port of docs/weights.md (pathline_ports.load_run) and
solves dx/dt = v(x, t) from t = 0 to 1 in float32, starting from X0 itself (the linear path's
sigma_0 = 1), with torchdiffeq's fixed-step midpoint method and step 0.05: the same 20 steps as
`pathline sample RUN_DIR --noise X0.npy --set solver.type=midpoint --set solver.steps=20`. Writes
OUT_DIR/midpoint.npy, and OUT_DIR/euler.npy (the same grid with Euler's method, which the test uses
to show that its tolerance tells solvers apart), and OUT_DIR/weights.txt (the file's
pathline.weights metadata: which weights it holds).
"""

import os
import sys

import numpy as np
import torch
import torchdiffeq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pathline_ports  # noqa: E402


def main(run_dir, x0_file, out_dir):
    torch.set_num_threads(1)
    model = pathline_ports.load_run(run_dir)
    _, metadata = pathline_ports.read_safetensors(os.path.join(run_dir, "model.safetensors"))
    x0 = torch.from_numpy(np.load(x0_file)).float()
    times = torch.tensor([0.0, 1.0])

    def velocity(t, x):
        return model(x, t)  # t: one time for the whole batch

    with torch.no_grad():
        for method in ("midpoint", "euler"):
            x1 = torchdiffeq.odeint(velocity, x0, times, method=method, options={"step_size": 0.05})[-1]
            np.save(os.path.join(out_dir, method + ".npy"), x1.numpy())
    with open(os.path.join(out_dir, "weights.txt"), "w") as f:
        f.write(metadata.get("pathline.weights", "") + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
