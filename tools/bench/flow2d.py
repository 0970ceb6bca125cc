#!/usr/bin/env python3
r"""The 2D flow-matching job of Pathline's quickstart, written as a plain PyTorch script.

This is the reference Pathline's 2D benchmarks are measured against (tools/bench/run.py runs both
in the same session, interleaved). It does what `pathline train` does by default, the way the
lecture writes the loop, with nothing tuned:

  - data: the checkerboard of Meta's flow_matching example (x1 uniform on [-2, 2), x2 in a filled
    cell of the column, divided by 0.45), drawn fresh every step; source: standard normal;
  - time: uniform on [0, 1); path: linear, x_t = t x1 + (1 - t) x0; target: the velocity x1 - x0;
  - model: an MLP on [x, sin(w t + phase)] (32 sinusoidal features, frequencies 1 to 1000),
    `depth` hidden layers of `width` units with SiLU, a linear output;
  - loss: mean squared error; AdamW (PyTorch's defaults: betas 0.9, 0.999, eps 1e-8, and
    weight decay 0, as Pathline's); an EMA of the weights (decay min(0.999, (1+k)/(10+k)));
  - sampling: the midpoint rule from t = 0 to 1 under torch.no_grad().

    /usr/bin/python3 tools/bench/flow2d.py train --width 256 --depth 4 --batch 256 --steps 300
    /usr/bin/python3 tools/bench/flow2d.py sample --n 10000 --solver-steps 20

One JSON object per run on stdout: steps (or samples) per second, seconds, peak memory.
"""
import argparse
import json
import math
import resource
import time

import torch
import torch.nn as nn


class MLP(nn.Module):
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
    x1 = torch.rand(n) * 4 - 2
    x2 = torch.rand(n) - torch.randint(2, (n,)).float() * 2
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1) / 0.45


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train(args, model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    ema = [p.detach().clone() for p in model.parameters()]

    def step(k):
        x1 = checkerboard(args.batch)
        x0 = torch.randn_like(x1)
        t = torch.rand(args.batch)
        tt = t[:, None]
        xt = tt * x1 + (1 - tt) * x0
        loss = ((model(xt, t) - (x1 - x0)) ** 2).mean()
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


def sample(args, model):
    model.eval()

    def draw():
        with torch.no_grad():
            x = torch.randn(args.n, 2)
            h = 1.0 / args.solver_steps
            for i in range(args.solver_steps):
                t = torch.full((args.n,), i * h)
                k1 = model(x, t)
                k2 = model(x + 0.5 * h * k1, t + 0.5 * h)
                x = x + h * k2
            return x

    for _ in range(args.warmup):
        draw()
    start = time.perf_counter()
    for _ in range(args.repeats):
        draw()
    seconds = time.perf_counter() - start
    return {"samples_per_s": args.n * args.repeats / seconds, "seconds": seconds,
            "nfe": 2 * args.solver_steps}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job", choices=["train", "sample"])
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
    model = MLP(args.width, args.depth)
    result = train(args, model) if args.job == "train" else sample(args, model)
    result.update({"job": args.job, "threads": torch.get_num_threads(), "peak_mb": peak_mb(),
                   "torch": torch.__version__})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
