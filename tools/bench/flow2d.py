#!/usr/bin/env python3
r"""The 2D flow-matching job of Pathline's quickstart, in plain PyTorch and with the real peers.

This is what Pathline's 2D benchmarks are measured against (tools/bench/run.py runs every side in
the same session, interleaved, on the project's torch). The plain PyTorch side (`--peer pytorch`)
does what `pathline train` does by default, the way the lecture writes the loop, with nothing tuned:

  - data: the checkerboard of Meta's flow_matching example (x1 uniform on [-2, 2), x2 in a filled
    cell of the column, divided by 0.45), drawn fresh every step; source: standard normal;
  - time: uniform on [0, 1); path: linear, x_t = t x1 + (1 - t) x0; target: the velocity x1 - x0;
  - model: an MLP on [x, sin(w t + phase)] (32 sinusoidal features, frequencies 1 to 1000),
    `depth` hidden layers of `width` units with SiLU, a linear output;
  - loss: mean squared error; AdamW (PyTorch's defaults: betas 0.9, 0.999, eps 1e-8, and
    weight decay 0, as Pathline's); an EMA of the weights (decay min(0.999, (1+k)/(10+k)));
  - sampling: the midpoint rule from t = 0 to 1 under torch.no_grad().

The other peers keep the data, the MLP, the optimizer, the EMA and the timing, and replace only
the flow-matching machinery with their own code, called as their documentation shows:

  - `--peer flow_matching`: Meta's flow_matching, AffineProbPath(scheduler=CondOTScheduler()) gives
    x_t and dx_t from path.sample(x_0, x_1, t); sampling with its ODESolver (torchdiffeq's midpoint
    rule with step_size 1 / solver-steps), the MLP wrapped in its ModelWrapper;
  - `--peer torchcfm`: torchcfm's ConditionalFlowMatcher(sigma=0.0), whose
    sample_location_and_conditional_flow(x0, x1) draws t and gives x_t and the target u_t;
  - `--peer torchcfm_ot`: its ExactOptimalTransportConditionalFlowMatcher(sigma=0.0), the same after
    pairing the batch's x0 and x1 by an exact optimal-transport plan (POT's emd; OT-CFM, Tong et
    al. 2023), the peer of Pathline's `[coupling] type = "minibatch_ot"`.

    .venv/bin/python tools/bench/flow2d.py train --width 256 --depth 4 --batch 256 --steps 300
    .venv/bin/python tools/bench/flow2d.py train --peer torchcfm_ot --batch 256 --steps 100
    .venv/bin/python tools/bench/flow2d.py sample --peer flow_matching --n 10000 --solver-steps 20

One JSON object per run on stdout: steps (or samples) per second, seconds, peak memory, the model's
parameters and multiply-accumulates per sample (run.py checks them against Pathline's), and for
sampling the number of model evaluations each sample took.
"""
import argparse
import json
import math
import resource
import time

import numpy
import torch
import torch.nn as nn


class MLP(nn.Module):
    """Pathline's `mlp` model: [x, sin(w t + phase)] through `depth` SiLU layers of `width`, then 2
    outputs. The buffers and layer names are those of Pathline's model.safetensors (docs/weights.md)."""

    def __init__(self, width, depth, embedding=32):
        super().__init__()
        half = embedding // 2
        w = torch.logspace(0.0, 3.0, half)
        self.register_buffer("freqs", torch.cat([w, w])[None])
        self.register_buffer("phase", torch.cat([torch.zeros(half), torch.full((half,), math.pi / 2)])[None])
        layers, size = [], 2 + embedding
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.SiLU()]
            size = width
        layers.append(nn.Linear(width, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, x, t):
        features = torch.sin(torch.addcmul(self.phase, t.reshape(-1, 1), self.freqs))
        return self.net(torch.cat([x, features.expand(x.shape[0], -1)], 1))


def checkerboard(n):
    """n points of the 2D checkerboard of Meta's flow_matching example (Pathline's toy2d checkerboard)."""
    x1 = torch.rand(n) * 4 - 2
    x2 = torch.rand(n) - torch.randint(2, (n,)).float() * 2
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1) / 0.45


def peak_mb():
    """The process's peak resident memory so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def macs_per_sample(model):
    """Multiply-accumulates of one forward pass of one sample: those of the Linear layers."""
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


# ------------------------------------------------------------------------------------------------
# Training: each peer's loss of a batch (x0, x1); everything around it is shared.


def pytorch_loss(model):
    """The lecture's loss, written out: linear path, velocity target."""
    def loss(x0, x1):
        t = torch.rand(x1.shape[0])
        tt = t[:, None]
        xt = tt * x1 + (1 - tt) * x0
        return ((model(xt, t) - (x1 - x0)) ** 2).mean()
    return loss


def flow_matching_loss(model):
    """Meta's flow_matching: the affine path with the conditional-OT scheduler (alpha = t, sigma = 1 - t)."""
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler

    path = AffineProbPath(scheduler=CondOTScheduler())

    def loss(x0, x1):
        t = torch.rand(x1.shape[0])
        sample = path.sample(x_0=x0, x_1=x1, t=t)
        return ((model(sample.x_t, sample.t) - sample.dx_t) ** 2).mean()
    return loss


def torchcfm_loss(model, exact_ot):
    """torchcfm's matcher draws t and gives x_t and u_t; the exact-OT one first re-pairs the batch."""
    from torchcfm.conditional_flow_matching import (ConditionalFlowMatcher,
                                                    ExactOptimalTransportConditionalFlowMatcher)

    matcher = (ExactOptimalTransportConditionalFlowMatcher if exact_ot else ConditionalFlowMatcher)(sigma=0.0)

    def loss(x0, x1):
        t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
        return ((model(xt, t) - ut) ** 2).mean()
    return loss


LOSSES = {"pytorch": pytorch_loss, "flow_matching": flow_matching_loss,
          "torchcfm": lambda model: torchcfm_loss(model, exact_ot=False),
          "torchcfm_ot": lambda model: torchcfm_loss(model, exact_ot=True)}


def train(args, model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    ema = [p.detach().clone() for p in model.parameters()]
    batch_loss = LOSSES[args.peer](model)

    def step(k):
        x1 = checkerboard(args.batch)
        x0 = torch.randn_like(x1)
        loss = batch_loss(x0, x1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        decay = min(0.999, (1 + k) / (10 + k))
        with torch.no_grad():
            for e, p in zip(ema, model.parameters()):
                e.lerp_(p, 1 - decay)
        return loss.item()

    for k in range(args.warmup):
        step(k)
    start = time.perf_counter()
    losses = [step(args.warmup + k) for k in range(args.steps)]
    seconds = time.perf_counter() - start
    return {"steps_per_s": args.steps / seconds, "seconds": seconds, "first_loss": losses[0],
            "last_loss": sum(losses[-20:]) / len(losses[-20:])}


# ------------------------------------------------------------------------------------------------
# Sampling: each peer's draw of n points; it returns the points and the model evaluations it made.


def pytorch_sampler(model, n, solver_steps):
    """The midpoint rule written out, under torch.no_grad()."""
    def draw():
        with torch.no_grad():
            x = torch.randn(n, 2)
            h = 1.0 / solver_steps
            for i in range(solver_steps):
                t = torch.full((n,), i * h)
                k1 = model(x, t)
                k2 = model(x + 0.5 * h * k1, t + 0.5 * h)
                x = x + h * k2
            return x, 2 * solver_steps
    return draw


def flow_matching_sampler(model, n, solver_steps):
    """Meta's ODESolver with torchdiffeq's midpoint rule; the wrapper counts the model's evaluations,
    so that the NFE compared with Pathline's is the one that happened, not the one intended."""
    from flow_matching.solver import ODESolver
    from flow_matching.utils import ModelWrapper

    class CountedVelocity(ModelWrapper):
        evaluations = 0

        def forward(self, x, t, **extras):
            CountedVelocity.evaluations += 1
            return self.model(x, t)

    solver = ODESolver(velocity_model=CountedVelocity(model))

    def draw():
        CountedVelocity.evaluations = 0
        x = solver.sample(x_init=torch.randn(n, 2), step_size=1.0 / solver_steps, method="midpoint")
        return x, CountedVelocity.evaluations
    return draw


SAMPLERS = {"pytorch": pytorch_sampler, "flow_matching": flow_matching_sampler}


def sample(args, model):
    model.eval()
    if args.peer not in SAMPLERS:
        raise SystemExit(f"flow2d.py sample: --peer {args.peer} has no sampler; use {' or '.join(SAMPLERS)}")
    draw = SAMPLERS[args.peer](model, args.n, args.solver_steps)
    for _ in range(args.warmup):
        draw()
    start = time.perf_counter()
    for _ in range(args.repeats):
        _, nfe = draw()
    seconds = time.perf_counter() - start
    return {"samples_per_s": args.n * args.repeats / seconds, "seconds": seconds, "nfe": nfe}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job", choices=["train", "sample"])
    ap.add_argument("--peer", choices=sorted(LOSSES), default="pytorch",
                    help="whose flow-matching code trains or samples (sampling: pytorch or flow_matching)")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=300, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps (or draws) first")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n", type=int, default=10000, help="samples per draw")
    ap.add_argument("--solver-steps", type=int, default=20, help="midpoint steps (2 evaluations each)")
    ap.add_argument("--repeats", type=int, default=5, help="timed draws")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    numpy.random.seed(args.seed)  # torchcfm's exact-OT matcher draws its pairs with NumPy
    model = MLP(args.width, args.depth)
    result = train(args, model) if args.job == "train" else sample(args, model)
    result.update({"job": args.job, "peer": args.peer, "threads": torch.get_num_threads(), "peak_mb": peak_mb(),
                   "torch": torch.__version__, "parameters": sum(p.numel() for p in model.parameters()),
                   "macs_per_sample": macs_per_sample(model)})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
