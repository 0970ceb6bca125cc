#!/usr/bin/env python3
r"""Pathline's benchmarks: the engine side by side with plain PyTorch scripts and against the hardware.

    bash tools/bench/run.sh                  # everything (about 10 minutes on 2 cores)
    bash tools/bench/run.sh --quick          # every benchmark at a tiny size (what the tests run)

Every number is measured in this run: the matrix-product peak (`pathline bench peak`), then each
benchmark as interleaved pairs (Pathline, then the PyTorch script, `--rounds` times) whose medians
give the ratio. The PyTorch scripts run with /usr/bin/python3 and Debian's python3-torch, the same
LibTorch, the same threads, and the same OpenBLAS kernels as Pathline (OPENBLAS_CORETYPE as Pathline
chose it; see docs/performance.md). Results: OUT/results.json and OUT/results.md (default OUT:
runs/bench), and the table on stdout.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_json(cmd, env=None):
    """Runs a command that prints JSON objects (one per line); returns them."""
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr.strip()}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def median(values):
    return statistics.median(values) if values else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that every benchmark runs")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved Pathline/PyTorch pairs per benchmark")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--pathline", default=os.path.join(ROOT, "build", "bin", "pathline"))
    ap.add_argument("--python", default="/usr/bin/python3", help="the interpreter with Debian's python3-torch")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "bench"))
    ap.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    args = ap.parse_args()
    quick = args.quick
    rounds = 1 if quick else args.rounds
    os.makedirs(args.out, exist_ok=True)
    threads = str(args.threads)
    pl = [args.pathline, "bench"]

    peak = run_json(pl + ["peak", "--threads", threads, "--size", "256" if quick else "2048",
                          "--repeats", "2" if quick else "10"])[0]
    blas = peak["blas"]
    py_env = dict(os.environ)
    if blas:
        py_env["OPENBLAS_CORETYPE"] = blas.upper()
    print(f"bench: matrix-product peak {peak['gflops']:.1f} GFLOP/s ({peak['size']}x{peak['size']} float32, "
          f"{peak['threads']} threads, OpenBLAS kernels {blas or '?'})", flush=True)

    # 2D: the quickstart's pipeline with the PyTorch script's settings.
    def flow2d(width, batch):
        return ["--set", f"model.width={width}", "--set", "model.depth=4", "--set", f"train.batch_size={batch}",
                "--set", "train.lr=1e-3", "--set", 'train.lr_schedule="constant"', "--set", "train.warmup_steps=0",
                "--set", f"run.threads={threads}"]

    quickstart = os.path.join(ROOT, "configs", "quickstart.toml")
    small_steps, recipe_steps = ("20", "4") if quick else ("400", "60")
    benchmarks = [
        {"name": "2d-small", "what": "2D training, MLP 4x256, batch 256", "unit": "steps/s", "key": "steps_per_s",
         "target": 1.5,
         "pathline": pl + ["train", quickstart, "--steps", small_steps, "--warmup", "20"] + flow2d(256, 256),
         "python": [args.python, "tools/bench/flow2d.py", "train", "--width", "256", "--batch", "256",
                    "--steps", small_steps, "--warmup", "20", "--threads", threads],
         "variants": {"LibTorch's per-tensor optimizer": (["--set", "train.fused_optimizer=false"], {})}},
        {"name": "2d-recipe", "what": "2D training, MLP 4x512, batch 1024", "unit": "steps/s", "key": "steps_per_s",
         "target": 1.2, "peak_target": 0.8,
         "pathline": pl + ["train", quickstart, "--steps", recipe_steps, "--warmup", "5"] + flow2d(512, 1024),
         "python": [args.python, "tools/bench/flow2d.py", "train", "--width", "512", "--batch", "1024",
                    "--steps", recipe_steps, "--warmup", "5", "--threads", threads],
         "variants": {"LibTorch's per-tensor optimizer": (["--set", "train.fused_optimizer=false"], {}),
                      "OpenBLAS's own kernel choice": ([], {"PATHLINE_BLAS_CHECK": "0"})}},
        {"name": "2d-sample", "what": "2D sampling, 10,000 samples, midpoint, NFE 40", "unit": "samples/s",
         "key": "samples_per_s", "target": 2.0,
         "pathline": pl + ["sample", quickstart, "--warmup", "1", "--repeats", "1" if quick else "3",
                           "--set", "sample.trajectories=0", "--set", f"sample.n={1000 if quick else 10000}",
                           "--set", "solver.steps=20", "--set", f"run.threads={threads}"],
         "python": [args.python, "tools/bench/flow2d.py", "sample", "--n", "1000" if quick else "10000",
                    "--solver-steps", "20", "--warmup", "1", "--repeats", "1" if quick else "3",
                    "--threads", threads],
         "variants": {}},
    ]
    image_steps = "2" if quick else "8"
    image_batch = "16" if quick else "128"
    for model, config, extra, peak_target in [
            ("unet", "fmnist-unet.toml", [], 0.35),
            ("dit", "fmnist-dit.toml", ["--set", "model.patch_size=2"], 0.5)]:
        for precision in ["fp32", "bf16"]:
            benchmarks.append({
                "name": f"{model}-{precision}", "what": f"{'DiT' if model == 'dit' else 'U-Net'} training, "
                f"28x28, batch {image_batch}, {precision}", "unit": "images/s", "key": "samples_per_s",
                "python_key": "images_per_s", "target": 1.0, "peak_target": peak_target,
                "pathline": pl + ["train", os.path.join(ROOT, "configs", config), "--steps", image_steps,
                                  "--warmup", "2", "--set", f"train.batch_size={image_batch}",
                                  "--set", f'train.precision="{precision}"', "--set", "train.ema_decay=0",
                                  "--set", f"run.threads={threads}"] + extra,
                "python": [args.python, "tools/bench/image_models.py", "--json", "--model", model,
                           "--precision", precision, "--batch", image_batch, "--steps", image_steps,
                           "--warmup", "2", "--threads", threads, "--patch", "2"],
                "variants": {}})
    if args.only:
        wanted = args.only.split(",")
        benchmarks = [b for b in benchmarks if b["name"] in wanted]

    results = []
    for b in benchmarks:
        ours, theirs, variants, memory = [], [], {name: [] for name in b["variants"]}, []
        for _ in range(rounds):
            r = run_json(b["pathline"])[0]
            ours.append(r[b["key"]])
            memory.append(r["peak_mb"])
            p = run_json(b["python"], py_env)[0]
            theirs.append(p[b.get("python_key", b["key"])])
            for name, (extra, env) in b["variants"].items():
                variants[name].append(run_json(b["pathline"] + extra, dict(os.environ, **env))[0][b["key"]])
        row = {"name": b["name"], "what": b["what"], "unit": b["unit"], "pathline": median(ours),
               "pytorch": median(theirs), "pathline_runs": ours, "pytorch_runs": theirs,
               "ratio": median(ours) / median(theirs), "target": b["target"], "peak_mb": max(memory),
               "python_peak_mb": p.get("peak_mb"), "variants": {k: median(v) for k, v in variants.items()}}
        if "gflops" in r:
            row["gflops"] = median(ours) / r[b["key"]] * r["gflops"]
            row["peak_fraction"] = row["gflops"] / peak["gflops"]
            row["peak_target"] = b.get("peak_target")
            row["loss"] = {"pathline_last": r.get("last_loss"), "pytorch_last": p.get("last_loss")}
        results.append(row)
        print(f"bench: {b['name']}: Pathline {row['pathline']:.1f} {b['unit']}, PyTorch {row['pytorch']:.1f}, "
              f"ratio {row['ratio']:.2f} (target {b['target']})", flush=True)
        save(args, quick, rounds, peak, None, results)  # so far, in case the run is stopped

    # Start-up: the fastest of five `pathline plugins`.
    startup = []
    for _ in range(2 if quick else 5):
        start = time.perf_counter()
        subprocess.run([args.pathline, "plugins"], cwd=ROOT, capture_output=True, check=True)
        startup.append(time.perf_counter() - start)

    print(save(args, quick, rounds, peak, min(startup), results))


def save(args, quick, rounds, peak, startup, results):
    """Writes results.json and results.md; returns the Markdown."""
    report = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads,
                          "platform": platform.platform()},
              "command": " ".join(["bash tools/bench/run.sh"] + shown_arguments()),
              "quick": quick, "rounds": rounds, "peak": peak, "startup_s": startup, "results": results}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    table = markdown(report)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    return table


def shown_arguments():
    """The command-line arguments without --pathline PATH (which run.sh adds)."""
    shown, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--pathline":
            skip = True
        elif not a.startswith("--pathline="):
            shown.append(a)
    return shown


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def markdown(report):
    peak = report["peak"]
    lines = [f"Measured {report['date']} on {report['machine']['cpu']} ({report['machine']['cores']} cores, "
             f"{report['machine']['threads']} threads), {report['rounds']} interleaved rounds, medians; "
             f"float32 matrix-product peak {peak['gflops']:.0f} GFLOP/s ({peak['size']}x{peak['size']}, "
             f"OpenBLAS {peak['blas']} kernels). Command: `{report['command']}`.", "",
             "| benchmark | Pathline | PyTorch script | ratio (target) | GFLOP/s (% of peak, target) | peak memory |",
             "|---|---|---|---|---|---|"]
    for r in report["results"]:
        ratio = f"**{r['ratio']:.2f}x**" if r["ratio"] >= r["target"] else f"{r['ratio']:.2f}x"
        flops = "-"
        if "gflops" in r:
            target = f", {r['peak_target']:.0%}" if r.get("peak_target") else ""
            flops = f"{r['gflops']:.0f} ({r['peak_fraction']:.0%}{target})"
        memory = f"{r['peak_mb']:.0f} MB"
        if r.get("python_peak_mb"):
            memory += f" (PyTorch {r['python_peak_mb']:.0f} MB)"
        lines.append(f"| {r['what']} | {r['pathline']:.1f} {r['unit']} | {r['pytorch']:.1f} | {ratio} "
                     f"({r['target']}x) | {flops} | {memory} |")
        for name, value in r["variants"].items():
            lines.append(f"| &nbsp;&nbsp;the same with {name} | {value:.1f} {r['unit']} | | "
                         f"{value / r['pytorch']:.2f}x | | |")
    if report["startup_s"] is not None:
        lines += ["", f"Start-up (`pathline plugins`, fastest of several): {report['startup_s']:.2f} s "
                  "(target under 1 s)."]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
