"""Evaluates the PyTorch ports on the cases tests/test_model_ports.cpp writes.

    python eval_ports.py CASE_DIR...

Each CASE_DIR holds a run-like config.toml ([model] table), model.safetensors, shape.json (one
sample's shape), x.npy, t.npy and, for labelled cases, labels.npy. The port is loaded with
pathline_ports.load_run (strict) and its output on (x, t, labels) is written to port.npy.
"""

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pathline_ports  # noqa: E402


def main(case_dirs):
    torch.set_num_threads(1)
    for case in case_dirs:
        with open(os.path.join(case, "shape.json")) as f:
            shape = json.load(f)
        model = pathline_ports.load_run(case, data_shape=shape)
        x = torch.from_numpy(np.load(os.path.join(case, "x.npy")))
        t = torch.from_numpy(np.load(os.path.join(case, "t.npy")))
        labels_file = os.path.join(case, "labels.npy")
        labels = torch.from_numpy(np.load(labels_file)) if os.path.exists(labels_file) else None
        with torch.no_grad():
            out = model(x, t, labels)
        np.save(os.path.join(case, "port.npy"), out.numpy().astype(np.float32))


if __name__ == "__main__":
    main(sys.argv[1:])
