# %% [markdown]
# # The quickstart from Python
#
# A notebook in plain Python (the `# %%` cells run one by one in VS Code, PyCharm or Jupyter with
# jupytext; `python examples/quickstart_notebook.py` runs them all). It trains the quickstart
# pipeline (flow matching on the 2D checkerboard) with a progress bar, draws the learned velocity
# field and the trajectories it carries noise along, and samples with two solvers.
#
# Needs the `pathline` module (`bash tools/quickstart.sh` or `bash tools/test.sh` builds it;
# `.venv/bin/python` finds it) and matplotlib. Environment knobs, for a quick look or the tests:
# PATHLINE_EXAMPLE_STEPS (training steps, default the config's 8,000), PATHLINE_EXAMPLE_QUICK=1
# (the run's own samples and likelihood on fewer points) and PATHLINE_EXAMPLE_OUT (where the run
# and the figures go, default runs/notebook).

# %%
import os
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules and not os.environ.get("DISPLAY"):
    matplotlib.use("Agg")  # neither a notebook nor a screen: the figures go to files only
import matplotlib.pyplot as plt
import torch

import pathline

ROOT = Path(__file__).resolve().parents[1] if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("PATHLINE_EXAMPLE_OUT", ROOT / "runs" / "notebook"))
OUT.mkdir(parents=True, exist_ok=True)
overrides = {}
if "PATHLINE_EXAMPLE_STEPS" in os.environ:
    overrides["train.steps"] = int(os.environ["PATHLINE_EXAMPLE_STEPS"])
if os.environ.get("PATHLINE_EXAMPLE_QUICK") == "1":
    overrides.update({"sample.n": 2000, "metric[1].n": 200})

# %% [markdown]
# ## Train
# The same TOML file as `pathline run configs/quickstart.toml`, checked first; Ctrl-C (the
# notebook's interrupt) stops after a checkpoint and `pathline.resume(run.dir)` goes on.

# %%
pipeline = pathline.Pipeline.from_file(ROOT / "configs" / "quickstart.toml", overrides).validate()
print("model:", pipeline.config["model"])
run = pipeline.run(run_dir=OUT / "quickstart", overwrite=True, progress=True, log=False)
print("metrics:", run.metrics)

# %% [markdown]
# ## The learned velocity field
# `run.model(x, t)` is the trained network as a function on torch tensors.

# %%
side = torch.linspace(-4, 4, 25)
grid = torch.stack(torch.meshgrid(side, side, indexing="xy"), dim=-1).reshape(-1, 2)
fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharey=True)
with torch.no_grad():
    for ax, t in zip(axes, (0.0, 0.5, 0.9)):
        v = run.model(grid, t)
        speed = v.norm(dim=1)
        ax.quiver(grid[:, 0], grid[:, 1], v[:, 0], v[:, 1], speed, cmap="viridis")
        ax.set_title(f"velocity at t = {t}")
        ax.set_aspect("equal")
fig.tight_layout()
fig.savefig(OUT / "field.png", dpi=80)

# %% [markdown]
# ## Trajectories
# The states of 300 samples at each of the midpoint solver's 20 steps, from the Gaussian (t = 0)
# to the checkerboard (t = 1).

# %%
traj = run.trajectories(n=300, count=300, solver="midpoint", steps=20, seed=0)
fig, ax = plt.subplots(figsize=(5, 5))
paths = traj.states.numpy()
for i in range(paths.shape[1]):
    ax.plot(paths[:, i, 0], paths[:, i, 1], color="0.6", linewidth=0.4)
ax.scatter(paths[0, :, 0], paths[0, :, 1], s=3, color="tab:blue", label="t = 0")
ax.scatter(paths[-1, :, 0], paths[-1, :, 1], s=3, color="tab:red", label="t = 1")
ax.set_aspect("equal")
ax.legend(loc="upper right")
fig.savefig(OUT / "trajectories.png", dpi=80)

# %% [markdown]
# ## Two solvers, the same noise
# Four Euler steps against twenty midpoint steps, from the same source points.

# %%
noise = torch.randn(5000, 2, generator=torch.Generator().manual_seed(0))
samples = {
    "euler, 4 steps": run.sample(solver="euler", steps=4, noise=noise),
    "midpoint, 20 steps": run.sample(solver="midpoint", steps=20, noise=noise),
}
fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), sharex=True, sharey=True)
for ax, (name, xs) in zip(axes, samples.items()):
    ax.scatter(xs[:, 0], xs[:, 1], s=1)
    ax.set_title(name)
    ax.set_aspect("equal")
fig.savefig(OUT / "solvers.png", dpi=80)
gap = (samples["euler, 4 steps"] - samples["midpoint, 20 steps"]).norm(dim=1).mean().item()
print(f"mean distance between the two solvers' samples: {gap:.3f}")
