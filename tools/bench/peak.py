#!/usr/bin/env python3
r"""The machine's matrix-product rate as PyTorch sees it, and what that PyTorch is.

The peers' side of the peak rows of tools/bench/run.py: the best of `--repeats` torch.mm products of
two size x size matrices of one dtype, on `--threads` threads, in GFLOP/s (2 size^3 per product).
`pathline bench peak` measures the same with Pathline's LibTorch; both run the project's pinned torch,
so the two rates should agree, and the larger is the peak every benchmark's GFLOP/s is a share of.

    .venv/bin/python tools/bench/peak.py --dtype bfloat16 --size 2048 --threads 2
    .venv/bin/python tools/bench/peak.py --info     # only the versions and the build summary

One JSON object on stdout: gflops, size, dtype, threads, and the torch version, its CPU capability and
build summary (torch.__config__.show(): BLAS, oneDNN, OpenMP).
"""
import argparse
import importlib.metadata
import json
import resource
import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# The peers the 2D benchmarks run, by their package names (tools/python-requirements.txt).
PEERS = ["flow-matching", "torchcfm", "torchdiffeq", "POT", "numpy"]


def version_of(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def info():
    """What this torch is (the version, the CPU kernels it picked, how it was built) and which
    versions of the peers sit beside it."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_config": torch.__config__.show(), "threads": torch.get_num_threads(),
            "peers": {p: version_of(p) for p in PEERS}}


def peak(size, dtype, repeats, warmup):
    """The best rate of `repeats` products (after `warmup` untimed ones), in GFLOP/s."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    out = torch.empty(size, size, dtype=dtype)
    with torch.no_grad():
        for _ in range(max(warmup, 1)):
            torch.mm(a, b, out=out)
        best = 0.0
        for _ in range(max(repeats, 1)):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            best = max(best, 2.0 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ap.add_argument("--repeats", type=int, default=10, help="timed products; the best counts")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--info", action="store_true", help="print the versions only, time nothing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = info()
    if not args.info:
        result.update({"gflops": peak(args.size, DTYPES[args.dtype], args.repeats, args.warmup),
                       "size": args.size, "dtype": args.dtype,
                       "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
