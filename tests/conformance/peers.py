#!/usr/bin/env python3
r"""The peers' side of tests/test_conformance.cpp: the numbers of the libraries a user would
otherwise pick, computed with their own code on the same torch, written as .npy for the C++ test.

    .venv/bin/python tests/conformance/peers.py ROOT JOB...

Each JOB reads the inputs the test wrote to ROOT/JOB (.npy, and `cases.txt`: one case a line, its
first word the case's name), writes its outputs there as `<case>.<quantity>.npy` (float64; int64
for counts), and reports in ROOT/JOB/status.txt: "ok", "skip: ..." when this Python cannot import
the peer (the test then skips, saying so), or "error: ..." with the traceback. One process runs
every job: importing torch and POT takes seconds.

JOB and its case lines:
  paths       `<case> <scheduler> [parameters]`, scheduler one of condot, cosine, vp BETA_MIN
              BETA_MAX, linear_vp, polynomial N; inputs t.npy [B], x0.npy, x1.npy, xt.npy, pred.npy
              [B, D]. Meta's flow_matching AffineProbPath: the scheduler's alpha, sigma, d_alpha,
              d_sigma; x_t and dx_t of path.sample(x0, x1, t); each conversion applied to `pred` at
              the state `xt`; and the score conversions through epsilon = -sigma_t score.
  fixed_step  `<case> <field> <method>`, method one of torchdiffeq's euler, midpoint, heun2, rk4,
              or classic_rk4; inputs times.npy (the grid), x0.npy [B, 2]. Every state on the grid,
              trajectory [len(times), B, 2], and the field's evaluations.
  dopri5      `<case> <field> <rtol> <atol>`; inputs times.npy [t0, t1], x0.npy. torchdiffeq's
              odeint(method="dopri5") at t1, and the field's evaluations.
  emd         `<case>`; inputs <case>.x0.npy, <case>.x1.npy [n, d]. POT's squared Euclidean cost
              ot.dist and exact plan ot.emd with uniform weights.
  sinkhorn    `<case> <reg_scale> <reg> <iterations> <method> <order>`: reg_scale absolute or
              mean_cost (eps = reg * mean cost, Pathline's default), method sinkhorn or
              sinkhorn_log (POT's), order pot (POT's problem as given) or pathline (the transposed
              problem, see `sinkhorn` below); inputs as for emd. POT's cost, eps and plan after
              exactly `iterations` iterations.

The analytic fields are written out in FIELDS below and in test_conformance.cpp (AnalyticField):
keep the two in step.
"""
import os
import pathlib
import sys
import traceback

# POT on NumPy arrays only: its other backends (torch, JAX, CuPy, TensorFlow) are not needed here
# and importing them for POT costs seconds.
for _backend in ("PYTORCH", "JAX", "CUPY", "TENSORFLOW"):
    os.environ.setdefault(f"POT_BACKEND_DISABLE_{_backend}", "1")


def cases(folder):
    lines = (folder / "cases.txt").read_text().splitlines()
    return [line.split() for line in lines if line.strip()]


def load(folder, name):
    import numpy as np

    return np.load(folder / f"{name}.npy")


def save(folder, name, array):
    import numpy as np

    np.save(folder / f"{name}.npy", np.ascontiguousarray(array))


# --------------------------------------------------------------------------------------------
# paths: Meta's flow_matching


def paths(folder):
    import torch
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import (
        CondOTScheduler,
        CosineScheduler,
        LinearVPScheduler,
        PolynomialConvexScheduler,
        VPScheduler,
    )

    def scheduler(words):
        kind, args = words[0], [float(w) for w in words[1:]]
        if kind == "condot":
            return CondOTScheduler()
        if kind == "cosine":
            return CosineScheduler()
        if kind == "vp":
            return VPScheduler(beta_min=args[0], beta_max=args[1])
        if kind == "linear_vp":
            return LinearVPScheduler()
        if kind == "polynomial":
            return PolynomialConvexScheduler(n=args[0])
        raise SystemExit(f"peers.py paths: unknown scheduler '{kind}' in cases.txt")

    tensor = lambda name: torch.from_numpy(load(folder, name)).to(torch.float64)
    t, x0, x1, xt, pred = (tensor(n) for n in ("t", "x0", "x1", "xt", "pred"))
    # The conversions broadcast t against the samples themselves (AffineProbPath.sample expands it).
    tb = t.reshape(-1, *([1] * (x0.dim() - 1)))
    for words in cases(folder):
        name = words[0]
        s = scheduler(words[1:])
        path = AffineProbPath(scheduler=s)
        out = s(t)
        sample = path.sample(x_0=x0, x_1=x1, t=t)
        sigma = s(tb).sigma_t
        results = {
            "alpha": out.alpha_t,
            "sigma": out.sigma_t,
            "d_alpha": out.d_alpha_t,
            "d_sigma": out.d_sigma_t,
            "x_t": sample.x_t,
            "dx_t": sample.dx_t,
            "target_to_velocity": path.target_to_velocity(x_1=pred, x_t=xt, t=tb),
            "epsilon_to_velocity": path.epsilon_to_velocity(epsilon=pred, x_t=xt, t=tb),
            "velocity_to_target": path.velocity_to_target(velocity=pred, x_t=xt, t=tb),
            "velocity_to_epsilon": path.velocity_to_epsilon(velocity=pred, x_t=xt, t=tb),
            "target_to_epsilon": path.target_to_epsilon(x_1=pred, x_t=xt, t=tb),
            "epsilon_to_target": path.epsilon_to_target(epsilon=pred, x_t=xt, t=tb),
            # flow_matching has no score parameterization; the score of the Gaussian path is
            # -epsilon / sigma_t, so these are its epsilon conversions seen through that identity.
            "score_to_velocity": path.epsilon_to_velocity(epsilon=-sigma * pred, x_t=xt, t=tb),
            "score_to_target": path.epsilon_to_target(epsilon=-sigma * pred, x_t=xt, t=tb),
            "velocity_to_score": -path.velocity_to_epsilon(velocity=pred, x_t=xt, t=tb) / sigma,
            "target_to_score": -path.target_to_epsilon(x_1=pred, x_t=xt, t=tb) / sigma,
        }
        for quantity, value in results.items():
            save(folder, f"{name}.{quantity}", value.numpy())


# --------------------------------------------------------------------------------------------
# solvers: torchdiffeq

# Written identically in test_conformance.cpp (AnalyticField), with their exact flows there.
GAUSSIAN_MEAN = (1.0, -0.5)
GAUSSIAN_STD = 0.4


def gaussian_field(t, x):
    # The marginal velocity from N(0, I) at t = 0 to N(mu, s^2 I) at t = 1 on the linear path:
    # v = mu + v'_t / (2 v_t) (x - t mu), v_t = t^2 s^2 + (1 - t)^2.
    import torch

    mu = torch.tensor(GAUSSIAN_MEAN, dtype=x.dtype)
    s2 = GAUSSIAN_STD * GAUSSIAN_STD
    var = t * t * s2 + (1 - t) * (1 - t)
    d_var = 2 * t * s2 - 2 * (1 - t)
    return mu + (d_var / (2 * var)) * (x - t * mu)


def cubic_field(t, x):
    # dx/dt = -2 t x^3, element by element.
    return -2 * t * (x * x * x)


FIELDS = {"gaussian": gaussian_field, "cubic": cubic_field}


class Counted:
    """The field as torchdiffeq calls it, f(t, y), counting evaluations."""

    def __init__(self, field):
        self.field, self.calls = field, 0

    def __call__(self, t, y, perturb=None):  # perturb: passed by torchdiffeq's step functions
        self.calls += 1
        return self.field(t, y)


def field_of(words):
    if words not in FIELDS:
        raise SystemExit(f"peers.py: unknown field '{words}' in cases.txt (known: {', '.join(FIELDS)})")
    return Counted(FIELDS[words])


def fixed_step(folder):
    import numpy as np
    import torch
    from torchdiffeq import odeint

    times = torch.from_numpy(load(folder, "times"))
    x0 = torch.from_numpy(load(folder, "x0"))
    for name, field_name, method in cases(folder):
        f = field_of(field_name)
        if method == "classic_rk4":
            # torchdiffeq's method="rk4" is the 3/8 rule (rk4_alt_step_func); its classic RK4 step is
            # rk_common.rk4_step_func, which odeint does not offer as a method: step it on the grid.
            from torchdiffeq._impl.rk_common import rk4_step_func

            states = [x0]
            for t0, t1 in zip(times[:-1], times[1:]):
                states.append(states[-1] + rk4_step_func(f, t0, t1 - t0, t1, states[-1]))
            trajectory = torch.stack(states)
        else:
            # Fixed-grid methods step from each time of `t` to the next when given no step_size.
            trajectory = odeint(f, x0, times, method=method)
        save(folder, f"{name}.trajectory", trajectory.numpy())
        save(folder, f"{name}.evaluations", np.array([f.calls], dtype=np.int64))


def dopri5(folder):
    import numpy as np
    import torch
    from torchdiffeq import odeint

    times = torch.from_numpy(load(folder, "times"))
    x0 = torch.from_numpy(load(folder, "x0"))
    for name, field_name, rtol, atol in cases(folder):
        f = field_of(field_name)
        x1 = odeint(f, x0, times, rtol=float(rtol), atol=float(atol), method="dopri5")[-1]
        save(folder, f"{name}.x1", x1.numpy())
        save(folder, f"{name}.evaluations", np.array([f.calls], dtype=np.int64))


# --------------------------------------------------------------------------------------------
# couplings: POT


def emd(folder):
    import ot

    for (name,) in cases(folder):
        x0, x1 = load(folder, f"{name}.x0"), load(folder, f"{name}.x1")
        cost = ot.dist(x0, x1)  # squared Euclidean, POT's default metric
        plan = ot.emd(ot.unif(len(x0)), ot.unif(len(x1)), cost)
        save(folder, f"{name}.cost", cost)
        save(folder, f"{name}.plan", plan)


def sinkhorn(folder):
    import numpy as np
    import ot

    for name, reg_scale, reg, iterations, method, order in cases(folder):
        x0, x1 = load(folder, f"{name}.x0"), load(folder, f"{name}.x1")
        cost = ot.dist(x0, x1)
        eps = float(reg) * (cost.mean() if reg_scale == "mean_cost" else 1.0)
        a, b = ot.unif(len(x0)), ot.unif(len(x1))
        # stopThr = 0: every one of `iterations` iterations runs, as in Pathline with tolerance 0.
        options = dict(reg=eps, method=method, numItermax=int(iterations), stopThr=0.0, warn=False)
        if order == "pot":
            plan = ot.sinkhorn(a, b, cost, **options)
        elif order == "pathline":
            # POT updates the target's scaling first (v, then u), Pathline the source's. On the
            # transposed problem POT's order is Pathline's, so the two plans agree after any number
            # of iterations, not only at convergence (the plan is invariant to rescaling the pair).
            plan = ot.sinkhorn(b, a, cost.T, **options).T
        else:
            raise SystemExit(f"peers.py sinkhorn: order must be pot or pathline, got '{order}'")
        save(folder, f"{name}.cost", cost)
        save(folder, f"{name}.eps", np.array([eps]))
        save(folder, f"{name}.plan", plan)


JOBS = {"paths": paths, "fixed_step": fixed_step, "dopri5": dopri5, "emd": emd, "sinkhorn": sinkhorn}


def main():
    if len(sys.argv) < 3 or any(job not in JOBS for job in sys.argv[2:]):
        raise SystemExit(f"usage: peers.py ROOT JOB..., JOB one of {', '.join(JOBS)}; got {sys.argv[1:]}")
    root = pathlib.Path(sys.argv[1])
    for job in sys.argv[2:]:
        folder = root / job
        try:
            JOBS[job](folder)
            status = "ok"
        except ModuleNotFoundError as e:
            status = (
                f"skip: the project's Python ({sys.executable}) cannot import {e.name}, which job "
                f"'{job}' needs: tools/install-deps.sh installs the peers of "
                "tools/python-requirements.txt into .venv"
            )
        except Exception:
            status = f"error: peers.py job '{job}' failed:\n{traceback.format_exc()}"
        (folder / "status.txt").write_text(status)


if __name__ == "__main__":
    main()
