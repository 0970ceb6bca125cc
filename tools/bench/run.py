#!/usr/bin/env python3
r"""Pathline's benchmarks: the engine beside plain PyTorch and the real peers, and against the hardware.

    bash tools/bench/run.sh                  # everything
    bash tools/bench/run.sh --quick          # every row at a tiny size (what the tests run)
    bash tools/bench/run.sh --only 2d-small,2d-ot --rounds 5

Every number is measured in this run, on one torch: the project's pinned one in .venv, whose
LibTorch Pathline links and whose Python runs the peers (this script's interpreter, or --python).
Each row is one job done by Pathline (`pathline bench ...`) and by each comparable peer, with the
same threads, data, network and recipe:

  - peak-fp32, peak-bf16: the matrix-product rate (`pathline bench peak` and tools/bench/peak.py's
    torch.mm); the larger of the two is the peak of that precision, and every row's GFLOP/s is a
    share of the peak of its own precision;
  - 2d-small, 2d-recipe: 2D training (tools/bench/flow2d.py): the plain PyTorch loop, Meta's
    flow_matching (AffineProbPath) and torchcfm (ConditionalFlowMatcher);
  - 2d-ot: 2D training with minibatch optimal-transport pairs: torchcfm's exact-OT matcher;
  - 2d-sample: 10,000 points, midpoint rule, NFE 40: the plain PyTorch loop and Meta's ODESolver;
  - unet-*, dit-*: image training (tools/bench/image_models.py), float32 and bfloat16 autocast.

The sides run as interleaved rounds (`--rounds`, in a rotating order, so that a busy moment of the
machine hits every side alike); a row's numbers are medians over the rounds, its ratio is Pathline's
median over the fastest peer's, and its target is the one the project set for that ratio (issue 25).
Results: OUT/results.json and OUT/results.md (default OUT: runs/bench), and the table on stdout.
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What each peer is called in the table.
PEERS = {"pytorch": "plain PyTorch", "flow_matching": "Meta's flow_matching", "torchcfm": "torchcfm",
         "torchcfm_ot": "torchcfm exact OT", "torch.mm": "torch.mm"}
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}


def run_json(cmd, env=None):
    """Runs a command that prints JSON objects (one per line); returns them."""
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr.strip()}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def median(values):
    return statistics.median(values) if values else float("nan")


def build_summary(config):
    """The parts of a torch build summary (torch.__config__.show(), at::show_config()) that say
    whose kernels compute: BLAS, oneDNN, OpenMP, the CPU capability. Returns a short text."""
    found = []
    for pattern, label in [(r"BLAS_INFO=(\w+)", "BLAS {}"),
                           (r"Math Kernel Library Version ([\d.]+)", "MKL {}"),
                           (r"OpenBLAS ?([\d.]*)", "OpenBLAS {}"),
                           (r"MKL-DNN v([\d.]+)", "oneDNN {}"),
                           (r"OpenMP (\d+)", "OpenMP {}"),
                           (r"CPU capability usage: (\w+)", "CPU capability {}")]:
        match = re.search(pattern, config)
        if match:
            found.append(label.format(match.group(1)).strip())
    return ", ".join(found)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_features():
    """The vector extensions that decide the matrix-product rates (bfloat16 above all)."""
    wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return [w for w in wanted if w in flags]
    except OSError:
        pass
    return []


def platform_info(args):
    """The versions on both sides: Pathline's LibTorch (`pathline --version`, its build summary) and
    the Python torch the peers run on (tools/bench/peak.py --info)."""
    version = subprocess.run([args.pathline, "--version"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
    libtorch = re.search(r"LibTorch ([^\s)]+)", version)
    ours = run_json([args.pathline, "bench", "peak", "--size", "64", "--repeats", "1", "--threads",
                     str(args.threads)])[0]
    theirs = run_json([args.python, "tools/bench/peak.py", "--info", "--threads", str(args.threads)])[0]
    info = {"pathline": version, "libtorch": libtorch.group(1) if libtorch else None,
            "torch": theirs["torch"], "python": args.python, "python_version": python_version(args.python),
            "cpu_capability": theirs["cpu_capability"], "blas": build_summary(theirs["torch_config"]),
            "pathline_blas": build_summary(ours["torch_config"]), "openblas_kernels": ours["blas"],
            "threads": {"pathline": ours["threads"], "python": theirs["threads"]}, "peers": theirs["peers"]}
    # Same build: the same library computes on both sides (the pip wheel's LibTorch and its Python).
    info["same_build"] = ours["torch_config"] == theirs["torch_config"]
    return info


def python_version(python):
    proc = subprocess.run([python, "--version"], capture_output=True, text=True)
    return (proc.stdout or proc.stderr).strip()


def benchmarks(args, info):
    """Every row: Pathline's command, each peer's, and the targets."""
    quick = args.quick
    threads = str(args.threads)
    pl = [args.pathline, "bench"]
    py = [args.python]
    rows = []

    size, repeats = ("256", "2") if quick else ("2048", "10")
    for precision, dtype in PRECISIONS.items():
        rows.append({
            "name": f"peak-{precision}", "what": f"Matrix product, {size}x{size}, {dtype}", "unit": "GFLOP/s",
            "key": "gflops", "precision": precision, "target": None,
            "pathline": pl + ["peak", "--dtype", dtype, "--size", size, "--repeats", repeats, "--threads", threads],
            "peers": {"torch.mm": py + ["tools/bench/peak.py", "--dtype", dtype, "--size", size,
                                        "--repeats", repeats, "--threads", threads]}})

    # 2D: the quickstart's pipeline with the peers' settings (constant learning rate 1e-3, no warm-up).
    def flow2d(width, batch):
        return ["--set", f"model.width={width}", "--set", "model.depth=4", "--set", f"train.batch_size={batch}",
                "--set", "train.lr=1e-3", "--set", 'train.lr_schedule="constant"', "--set", "train.warmup_steps=0",
                "--set", f"run.threads={threads}"]

    def peers2d(job, width, batch, steps, warmup, names):
        return {name: py + ["tools/bench/flow2d.py", job, "--peer", name, "--width", str(width), "--batch", str(batch),
                            "--steps", steps, "--warmup", warmup, "--threads", threads] for name in names}

    quickstart = os.path.join(ROOT, "configs", "quickstart.toml")
    loops = ["pytorch", "flow_matching", "torchcfm"]
    per_tensor = {"LibTorch's per-tensor optimizer": (["--set", "train.fused_optimizer=false"], {})}
    recipe_variants = dict(per_tensor)
    if info["openblas_kernels"]:  # only a LibTorch on OpenBLAS has a kernel choice to show
        recipe_variants["OpenBLAS's own kernel choice"] = ([], {"PATHLINE_BLAS_CHECK": "0"})
    small_steps, recipe_steps, ot_steps = ("20", "4", "10") if quick else ("400", "60", "200")
    warmup = "2" if quick else "20"
    rows += [
        {"name": "2d-small", "what": "2D training, MLP 4x256, batch 256", "unit": "steps/s",
         "key": "steps_per_s", "precision": "fp32", "target": 1.5,
         "pathline": pl + ["train", quickstart, "--steps", small_steps, "--warmup", warmup] + flow2d(256, 256),
         "peers": peers2d("train", 256, 256, small_steps, warmup, loops), "variants": per_tensor},
        {"name": "2d-recipe", "what": "2D training, MLP 4x512, batch 1024", "unit": "steps/s",
         "key": "steps_per_s", "precision": "fp32", "target": 1.2, "peak_target": 0.75,
         "pathline": pl + ["train", quickstart, "--steps", recipe_steps, "--warmup", "5"] + flow2d(512, 1024),
         "peers": peers2d("train", 512, 1024, recipe_steps, "5", loops), "variants": recipe_variants},
        {"name": "2d-ot", "what": "2D training, minibatch OT, MLP 4x256, batch 256", "unit": "steps/s",
         "key": "steps_per_s", "precision": "fp32", "target": 1.5,
         "pathline": pl + ["train", quickstart, "--steps", ot_steps, "--warmup", warmup] + flow2d(256, 256) +
         ["--set", 'coupling.type="minibatch_ot"'],
         "peers": peers2d("train", 256, 256, ot_steps, warmup, ["torchcfm_ot"])},
    ]
    n, draws = ("1000", "1") if quick else ("10000", "3")
    rows.append({
        "name": "2d-sample", "what": "2D sampling, 10,000 samples, midpoint, NFE 40", "unit": "samples/s",
        "key": "samples_per_s", "precision": "fp32", "target": 1.2,
        "pathline": pl + ["sample", quickstart, "--warmup", "1", "--repeats", draws, "--set", "sample.trajectories=0",
                          "--set", f"sample.n={n}", "--set", "solver.steps=20", "--set", f"run.threads={threads}"],
        "peers": {name: py + ["tools/bench/flow2d.py", "sample", "--peer", name, "--n", n, "--solver-steps", "20",
                              "--warmup", "1", "--repeats", draws, "--threads", threads]
                  for name in ["pytorch", "flow_matching"]}})
    if quick:
        rows[-1]["what"] = "2D sampling, 1,000 samples, midpoint, NFE 40"

    image_steps, image_batch, image_warmup = ("2", "16", "1") if quick else ("8", "128", "2")
    for model, config, extra, peak_target in [("unet", "fmnist-unet.toml", [], None),
                                              ("dit", "fmnist-dit.toml", ["--set", "model.patch_size=2"], 0.4)]:
        for precision in PRECISIONS:
            rows.append({
                "name": f"{model}-{precision}", "what": f"{'DiT' if model == 'dit' else 'U-Net'} training, "
                f"28x28, batch {image_batch}, {precision}", "unit": "images/s", "key": "samples_per_s",
                "peer_key": "images_per_s", "precision": precision, "target": 1.1, "peak_target": peak_target,
                "pathline": pl + ["train", os.path.join(ROOT, "configs", config), "--steps", image_steps,
                                  "--warmup", image_warmup, "--set", f"train.batch_size={image_batch}",
                                  "--set", f'train.precision="{precision}"', "--set", "train.ema_decay=0",
                                  "--set", f"run.threads={threads}"] + extra,
                "peers": {"pytorch": py + ["tools/bench/image_models.py", "--json", "--model", model,
                                           "--precision", precision, "--batch", image_batch, "--steps", image_steps,
                                           "--warmup", image_warmup, "--threads", threads, "--patch", "2"]}})
    return rows


def select(rows, only):
    """The rows --only names, and the peaks their GFLOP/s are shares of."""
    if not only:
        return rows
    wanted = only.split(",")
    unknown = [w for w in wanted if w not in [r["name"] for r in rows]]
    if unknown:
        sys.exit(f"bench: --only: no benchmark {', '.join(unknown)}; the benchmarks are "
                 f"{', '.join(r['name'] for r in rows)}")
    needed = {f"peak-{r['precision']}" for r in rows if r["name"] in wanted}
    return [r for r in rows if r["name"] in wanted or r["name"] in needed]


def same_job(row, ours, theirs, peer):
    """Stops when a peer did another job than Pathline: another network, NFE or thread count."""
    for key in ["parameters", "nfe", "threads"]:
        if key in ours and key in theirs and ours[key] != theirs[key]:
            sys.exit(f"bench: {row['name']}: {PEERS[peer]} ran with {key} = {theirs[key]}, Pathline with "
                     f"{ours[key]}: not the same job, so no ratio")


def measure(row, rounds, peer_env):
    """Runs Pathline, its variants and every peer `rounds` times, interleaved; returns the row's result."""
    sides = [("pathline", row["pathline"], None)]
    sides += [(peer, cmd, peer_env) for peer, cmd in row["peers"].items()]
    sides += [(f"variant:{name}", row["pathline"] + extra, dict(os.environ, **env))
              for name, (extra, env) in row.get("variants", {}).items()]
    runs = {side: [] for side, _, _ in sides}
    for k in range(rounds):
        # A rotating order: no side always runs first, after a cold start, or last.
        for side, cmd, env in sides[k % len(sides):] + sides[:k % len(sides)]:
            runs[side].append(run_json(cmd, env)[0])

    key, peer_key = row["key"], row.get("peer_key", row["key"])
    ours = runs["pathline"]
    for peer in row["peers"]:
        for a, b in zip(ours, runs[peer]):
            same_job(row, a, b, peer)
    pathline = median([r[key] for r in ours])
    peers = {peer: median([r[peer_key] for r in runs[peer]]) for peer in row["peers"]}
    fastest = max(peers, key=peers.get)
    result = {
        "name": row["name"], "what": row["what"], "unit": row["unit"], "precision": row["precision"],
        "pathline": pathline, "pathline_runs": [r[key] for r in ours],
        "peers": peers, "peer_runs": {peer: [r[peer_key] for r in runs[peer]] for peer in row["peers"]},
        "fastest_peer": fastest, "ratio": pathline / peers[fastest],
        "ratios": {peer: pathline / value for peer, value in peers.items()},
        "target": row["target"], "peak_target": row.get("peak_target"),
        "peak_mb": max(r["peak_mb"] for r in ours),
        "peer_peak_mb": {peer: max(r.get("peak_mb", 0.0) for r in runs[peer]) for peer in row["peers"]},
        "variants": {name[len("variant:"):]: median([r[key] for r in rs])
                     for name, rs in runs.items() if name.startswith("variant:")}}
    last = ours[-1]
    if "gflops" in last and key != "gflops":
        # The same network on every side: the same floating-point work per step, sample or image.
        per_unit = last["gflops"] / last[key]
        result["gflops"] = pathline * per_unit
        result["peer_gflops"] = {peer: value * per_unit for peer, value in peers.items()}
    elif key == "gflops":
        result["gflops"] = pathline
    if "last_loss" in last:
        result["loss"] = {"pathline": last["last_loss"],
                          **{peer: runs[peer][-1].get("last_loss") for peer in row["peers"]}}
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that every benchmark runs")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every side per benchmark")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--pathline", default=os.path.join(ROOT, "build", "bin", "pathline"))
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter of the peers: the project's .venv (default: this one)")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "bench"))
    ap.add_argument("--only", default="",
                    help="comma-separated benchmark names (default: all); the peaks they need are added")
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds
    os.makedirs(args.out, exist_ok=True)

    info = platform_info(args)
    print(f"bench: Pathline on LibTorch {info['libtorch']}, peers on torch {info['torch']} ({info['python']}), "
          f"{args.threads} threads; {info['blas']}", flush=True)
    if not info["same_build"]:
        print(f"bench: warning: Pathline's LibTorch is another build than the peers' torch ({info['pathline_blas']} "
              f"against {info['blas']}): the ratios compare the libraries as well as the code", flush=True)
    peer_env = dict(os.environ)
    if info["openblas_kernels"] and "BLAS open" in info["blas"]:
        # A LibTorch on OpenBLAS: Pathline starts on the kernels the processor supports
        # (OPENBLAS_CORETYPE, tools/pathline/main.cpp); the peers get the same ones.
        peer_env["OPENBLAS_CORETYPE"] = info["openblas_kernels"].upper()

    results, peaks = [], {}
    for row in select(benchmarks(args, info), args.only):
        result = measure(row, rounds, peer_env)
        if row["name"].startswith("peak-"):
            # The machine's rate: the better of the two sides (the same library, normally a tie).
            peaks[row["precision"]] = {"gflops": max(result["pathline"], *result["peers"].values()),
                                       "size": int(row["pathline"][row["pathline"].index("--size") + 1])}
        if "gflops" in result and row["precision"] in peaks:
            result["peak_fraction"] = result["gflops"] / peaks[row["precision"]]["gflops"]
        results.append(result)
        print("bench: " + summary_line(result), flush=True)
        save(args, info, rounds, peaks, None, results)  # so far, in case the run is stopped

    # Start-up: the fastest of several `pathline plugins`.
    startup = []
    for _ in range(2 if args.quick else 5):
        start = time.perf_counter()
        subprocess.run([args.pathline, "plugins"], cwd=ROOT, capture_output=True, check=True)
        startup.append(time.perf_counter() - start)

    print(save(args, info, rounds, peaks, min(startup), results))


def summary_line(r):
    peers = ", ".join(f"{PEERS[p]} {v:,.1f}" for p, v in r["peers"].items())
    target = f" (target {r['target']}x)" if r["target"] else ""
    return (f"{r['name']}: Pathline {r['pathline']:,.1f} {r['unit']}; {peers}; "
            f"ratio to the fastest {r['ratio']:.2f}{target}")


def save(args, info, rounds, peaks, startup, results):
    """Writes results.json and results.md; returns the Markdown."""
    report = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": {"cpu": cpu_name(), "cpu_features": cpu_features(), "cores": os.cpu_count(),
                          "threads": args.threads, "platform": platform.platform()},
              "torch": info, "command": " ".join(["bash tools/bench/run.sh"] + shown_arguments()),
              "quick": args.quick, "rounds": rounds, "peaks": peaks, "startup_s": startup, "results": results}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    table = markdown(report)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    return table


def shown_arguments():
    """The command-line arguments without --pathline PATH and --python PATH (which run.sh adds)."""
    shown, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a in ("--pathline", "--python"):
            skip = True
        elif not a.startswith(("--pathline=", "--python=")):
            shown.append(a)
    return shown


def markdown(report):
    machine, torch_info = report["machine"], report["torch"]
    peaks = "; ".join(f"{PRECISIONS[p]} {v['gflops']:,.0f} GFLOP/s ({v['size']}x{v['size']})"
                      for p, v in report["peaks"].items()) or "not measured"
    build = ("the same build on both sides" if torch_info["same_build"]
             else f"ANOTHER BUILD on Pathline's side: {torch_info['pathline_blas']}")
    lines = [f"Measured {report['date']} on {machine['cpu']} ({machine['cores']} cores, {machine['threads']} threads; "
             f"{', '.join(machine['cpu_features']) or 'no AVX2'}), {report['rounds']} interleaved "
             f"round{'' if report['rounds'] == 1 else 's'}, medians.",
             "",
             f"Torch: Pathline's LibTorch {torch_info['libtorch']}, the peers' torch {torch_info['torch']} "
             f"({torch_info['python_version']}, {torch_info['python']}); {torch_info['blas']} ({build}). "
             f"Peers: " + ", ".join(f"{k} {v}" for k, v in torch_info["peers"].items() if v) + ".",
             "",
             f"Matrix-product peaks (torch.mm, the better of both sides): {peaks}. Each row's GFLOP/s is a share of "
             "the peak of its own precision. Ratios are Pathline's median over each peer's; the target is for the "
             f"ratio to the fastest peer. Command: `{report['command']}`.", "",
             "| benchmark | Pathline | peers (Pathline's ratio to each) | ratio to the fastest (target) "
             "| GFLOP/s (% of peak, target) | peak memory |",
             "|---|---|---|---|---|---|"]
    for r in report["results"]:
        peers = "; ".join(f"{PEERS[p]} {v:,.1f} ({r['ratios'][p]:.2f}x)" for p, v in r["peers"].items())
        met = r["target"] and r["ratio"] >= r["target"]
        ratio = f"**{r['ratio']:.2f}x**" if met else f"{r['ratio']:.2f}x"
        # The peak rows have no target: both sides call the same library, so about 1x is expected.
        ratio += f" ({r['target']}x)" if r["target"] else (" (about 1x)" if r["name"].startswith("peak-") else "")
        flops = "-"
        if "gflops" in r:
            flops = f"{r['gflops']:,.0f}"
            if "peak_fraction" in r:
                share = f"{r['peak_fraction']:.0%}"
                if r.get("peak_target"):
                    target = f"{r['peak_target']:.0%}"
                    share = f"{share}, **{target}**" if r["peak_fraction"] >= r["peak_target"] else f"{share}, {target}"
                flops += f" ({share})"
        memory = f"{r['peak_mb']:.0f} MB"
        peer_memory = [v for v in r["peer_peak_mb"].values() if v]
        if peer_memory:
            memory += f" (peers {min(peer_memory):.0f}-{max(peer_memory):.0f} MB)" if len(peer_memory) > 1 \
                else f" (peer {peer_memory[0]:.0f} MB)"
        lines.append(f"| {r['what']} | {r['pathline']:,.1f} {r['unit']} | {peers} | {ratio} | {flops} | {memory} |")
        fastest = r["peers"][r["fastest_peer"]]
        for name, value in r["variants"].items():
            lines.append(f"| &nbsp;&nbsp;the same with {name} | {value:,.1f} {r['unit']} | | "
                         f"{value / fastest:.2f}x | | |")
    if report["startup_s"] is not None:
        lines += ["", f"Start-up (`pathline plugins`, fastest of several): {report['startup_s']:.2f} s "
                  "(target under 1 s)."]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
