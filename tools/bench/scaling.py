#!/usr/bin/env python3
r"""Data-parallel scaling: training steps per second at 1 and 2 ranks on this machine, the all-reduce
time per step, and a projection of the step time over N machines for a given network.

    /usr/bin/python3 tools/bench/scaling.py [--pathline build/bin/pathline] [--quick]

Each model trains the same global batch as one process (every core) and as two ranks started by
`pathline launch` (half the cores each), so on one machine the ranks share the same cores: the
measured ratio shows what data parallelism costs here, not what a second machine would give. The
projection assumes machines like this one: step time on N machines = t1 / N + ring all-reduce time
(2 (N - 1) / N x 4 bytes x parameters / bandwidth + 2 (N - 1) x latency), with t1 the one-machine step
time measured here. See docs/distributed.md.
"""
import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train(cmd):
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"scaling: {' '.join(cmd)} failed:\n{proc.stderr.strip()}")
    log = proc.stderr
    steps, seconds = re.search(r"train: (\d+) steps in ([0-9.]+)s", log).groups()
    params = int(re.search(r"model: \w+, (\d+) parameters", log).group(1))
    reduce = re.search(r"all-reduce ([0-9.]+) ms per step", log)  # the part not hidden behind backward
    return {"steps_per_s": int(steps) / float(seconds), "parameters": params,
            "allreduce_ms": float(reduce.group(1)) if reduce else 0.0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pathline", default=os.path.join(ROOT, "build", "bin", "pathline"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "bench"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    image_steps = "3" if args.quick else "12"
    models = [
        ("MLP 4x256, batch 256", "quickstart.toml", ["--set", "train.steps=" + ("50" if args.quick else "600"),
                                                     "--set", "train.batch_size=256"]),
        ("U-Net, batch 128", "fmnist-unet.toml", ["--set", "train.steps=" + image_steps]),
        ("DiT (patch 4), batch 128", "fmnist-dit.toml", ["--set", "train.steps=" + image_steps]),
    ]
    cores = os.cpu_count() or 1
    rows = []
    for name, config, extra in models:
        base = ["train", os.path.join(ROOT, "configs", config), "--overwrite", "--set", "train.checkpoint_every=0",
                "--set", "train.ema_decay=0"] + extra
        one = train([args.pathline] + base + ["--run-dir", os.path.join(args.out, "scaling-1")])
        two = train([args.pathline, "launch", "--nproc-per-node", "2", "--master-port", "0", "--"] + base +
                    ["--run-dir", os.path.join(args.out, "scaling-2")])
        rows.append((name, one, two))

    lines = [f"Measured on this machine ({cores} cores): one process on every core against 2 ranks on the same "
             "cores (`pathline launch --nproc-per-node 2`), the same global batch.", "",
             "| model | parameters | gradient per step | 1 process | 2 ranks | all-reduce wait per step |",
             "|---|---|---|---|---|---|"]
    for name, one, two in rows:
        lines.append(f"| {name} | {one['parameters'] / 1e6:.2f} M | {4 * one['parameters'] / 2**20:.1f} MiB | "
                     f"{one['steps_per_s']:.2f} steps/s | {two['steps_per_s']:.2f} steps/s | "
                     f"{two['allreduce_ms']:.1f} ms |")
    lines += ["", "Projected step time on N machines like this one (t1 / N + ring all-reduce; 50 us latency), "
              "speed-up over one machine in brackets:", "",
              "| model | network | N = 2 | N = 4 | N = 8 | N = 16 |", "|---|---|---|---|---|---|"]
    for name, one, _ in rows[1:]:
        t1 = 1.0 / one["steps_per_s"]
        grad = 4.0 * one["parameters"]
        for gbit in [1, 10, 100]:
            cells = []
            for n in [2, 4, 8, 16]:
                comm = 2 * (n - 1) / n * grad / (gbit * 1e9 / 8) + 2 * (n - 1) * 50e-6
                t = t1 / n + comm
                cells.append(f"{t * 1e3:.0f} ms ({t1 / t:.1f}x)")
            lines.append(f"| {name} (1 machine: {t1 * 1e3:.0f} ms) | {gbit} Gbit/s | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "scaling.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
