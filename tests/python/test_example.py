"""The notebook-style example examples/quickstart_notebook.py, run as a script (a short training)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pathline

SOURCE = Path(os.environ.get("PATHLINE_SOURCE_DIR", Path(__file__).resolve().parents[2]))


def test_the_quickstart_notebook_runs_and_draws(tmp_path):
    pytest.importorskip("matplotlib")
    env = dict(os.environ, PATHLINE_EXAMPLE_STEPS="400", PATHLINE_EXAMPLE_QUICK="1",
               PATHLINE_EXAMPLE_OUT=str(tmp_path), MPLBACKEND="Agg")
    env.pop("DISPLAY", None)
    result = subprocess.run([sys.executable, str(SOURCE / "examples" / "quickstart_notebook.py")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    for figure in ("field.png", "trajectories.png", "solvers.png"):
        assert (tmp_path / figure).stat().st_size > 10_000, figure
    run = pathline.Run(tmp_path / "quickstart")
    assert run.complete and run.config["train"]["steps"] == 400
    assert "metrics:" in result.stdout and "mean distance between the two solvers" in result.stdout
    assert "400/400" in result.stderr  # the progress bar reached the end
