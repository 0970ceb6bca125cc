"""Pathline from Python: validate, train, sample, evaluate and ablate flow-matching pipelines.

The same engine, plugins, TOML pipelines and run directories as the ``pathline`` command line; a
run made here is a run made there and the other way round. Tensors cross as ``torch.Tensor``.

    import pathline

    pipeline = pathline.Pipeline.from_file("configs/quickstart.toml", {"train.steps": 2000})
    pipeline.validate()                      # raises pathline.ConfigError with .problems
    run = pipeline.run(progress=True)        # a pathline.Run over runs/quickstart
    v = run.model(x, t)                      # the learned velocity at (x, t)
    xs = run.sample(1000, solver="heun", steps=10, seed=1)

docs/python.md is the guide; every function's docstring says the rest.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
import tomllib
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence, Union

import torch  # first: it loads the LibTorch that the compiled module links

from . import _pathline
from ._pathline import ConfigError, Error, InputError, PluginError, Problem

__all__ = [
    "ConfigError",
    "Error",
    "InputError",
    "Model",
    "Pipeline",
    "PluginError",
    "Problem",
    "Progress",
    "Run",
    "Trajectories",
    "__version__",
    "ablate",
    "inspect",
    "plugins",
    "resume",
]

__version__: str = _pathline.version()

PathLike = Union[str, "os.PathLike[str]"]
Overrides = Union[Mapping[str, Any], Sequence[str], None]


class Progress(NamedTuple):
    """Where training stands, as a ``progress`` callable receives it."""

    step: int
    """Steps done."""
    steps: int
    """Steps in all ([train] steps)."""
    loss: float
    """Smoothed training loss (NaN before the first finite one)."""
    steps_per_second: float
    """Training speed in this session."""
    seconds: float
    """Training time so far (earlier sessions of a resumed run included)."""


class Trajectories(NamedTuple):
    """States along the sampling ODE, as ``Run.trajectories`` returns them."""

    times: list[float]
    """The time of each frame."""
    states: torch.Tensor
    """``[frames, count, *shape]``: the states at each time (frame 0: the source points)."""
    samples: torch.Tensor
    """``[n, *shape]``: where all n samples ended."""
    labels: torch.Tensor | None
    """``[n]`` int64, the class each sample was asked for; None for unlabelled data."""


# ------------------------------------------------------------------------------------------------
# Plugins


_engines: dict[tuple[str, ...], Any] = {}


def _engine(plugin_dirs: Iterable[PathLike] = ()) -> Any:
    """The registry with the built-in plugins, PATHLINE_PLUGIN_PATH and `plugin_dirs` loaded (cached)."""
    if isinstance(plugin_dirs, (str, os.PathLike)):
        plugin_dirs = [plugin_dirs]
    key = tuple(os.fspath(d) for d in plugin_dirs)
    engine = _engines.get(key)
    if engine is None:
        engine = _pathline.Engine(list(key))
        _engines[key] = engine
    return engine


def plugins(plugin_dirs: Iterable[PathLike] = ()) -> dict[str, Any]:
    """What ``pathline plugins`` lists, as Python data.

    Returns a dict with ``"plugins"`` (each loaded plugin: name, version, origin, file),
    ``"components"`` (per kind, e.g. ``"solver"``: a list of dicts with name, doc, plugin, version)
    and ``"failures"`` (plugins that could not be loaded: file, stage, message and the CLI's line).
    `plugin_dirs` are loaded after the built-in folder and PATHLINE_PLUGIN_PATH, as ``--plugin-dir``.
    """
    return _engine(plugin_dirs).plugins()


def inspect(kind: str, name: str | None = None, plugin_dirs: Iterable[PathLike] = ()) -> dict[str, Any]:
    """What ``pathline inspect`` says about a component or an engine table, as Python data.

    ``inspect("solver", "heun")`` (or ``inspect("solver.heun")``; a slot's name works for its kind:
    ``inspect("source", "gaussian")``), or an engine table: ``inspect("train")``. Returns a dict with
    kind, name, doc, plugin (name, version, origin, file; None for engine tables), suggests and
    params: one dict per parameter with name, type, doc, required, default, choices, lower, upper,
    range, list_size, multiple and allows_auto. An unknown kind or name raises InputError with the
    closest match.
    """
    if name is None and "." in kind:
        kind, name = kind.split(".", 1)
    if name is None:
        return _pathline.engine_table(kind)
    return _engine(plugin_dirs).inspect(kind, name)


# ------------------------------------------------------------------------------------------------
# Overrides, logging, progress


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (str, os.PathLike)):
        return json.dumps(os.fspath(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, torch.Tensor):
        return _toml_value(value.tolist())
    raise TypeError(f"an override's value must be a bool, number, string or list, got {type(value).__name__}")


def _override_list(overrides: Overrides) -> list[str]:
    """{"train.steps": 500} or ["train.steps=500"] as the engine's --set texts."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        raise TypeError("overrides must be a dict {'table.key': value} or a list of 'table.key=value' strings")
    if isinstance(overrides, Mapping):
        out = []
        for key, value in overrides.items():
            if not isinstance(key, str):
                raise TypeError(f"an override's key must be a string 'table.key', got {key!r}")
            out.append(f"{key}={_toml_value(value)}")
        return out
    out = []
    for item in overrides:
        if not isinstance(item, str):
            raise TypeError(f"an override must be a 'table.key=value' string, got {item!r}")
        out.append(item)
    return out


def _logger(log: bool | Callable[[str], Any] | None) -> Callable[[str], Any] | None:
    if log is True:
        return lambda line: print(line, file=sys.stderr, flush=True)
    if log is False or log is None:
        return None
    if callable(log):
        return log
    raise TypeError("log must be True, False or a callable taking one line of text")


class _TextBar:
    """A progress line rewritten in place on sys.stderr, where tqdm is not installed."""

    def __init__(self) -> None:
        self.width = 0

    def __call__(self, p: Progress) -> None:
        filled = int(30 * p.step / max(p.steps, 1))
        line = (f"train [{'#' * filled}{'.' * (30 - filled)}] {p.step}/{p.steps}  loss {p.loss:.5f}  "
                f"{p.steps_per_second:.1f} steps/s")
        sys.stderr.write("\r" + line.ljust(self.width))
        self.width = len(line)
        if p.step >= p.steps:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.width:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.width = 0


class _TqdmBar:
    def __init__(self) -> None:
        from tqdm.auto import tqdm

        self.bar = None
        self.tqdm = tqdm

    def __call__(self, p: Progress) -> None:
        if self.bar is None:
            self.bar = self.tqdm(total=p.steps, initial=p.step, desc="train", unit="step")
        self.bar.update(p.step - self.bar.n)
        self.bar.set_postfix(loss=f"{p.loss:.5f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress_hook(progress: bool | Callable[[Progress], Any] | None):
    """The callable the engine calls after every step, and what to close at the end."""
    if progress is None or progress is False:
        return None, None
    if progress is True:
        try:
            display: Any = _TqdmBar()
        except ImportError:
            display = _TextBar()
        closer = display
    elif callable(progress):
        display, closer = progress, None
    else:
        raise TypeError("progress must be True, False or a callable taking a pathline.Progress")
    last = [0.0]

    def on_step(step: int, steps: int, loss: float, rate: float, seconds: float) -> bool:
        now = time.monotonic()
        if step >= steps or now - last[0] >= 0.1:
            last[0] = now
            display(Progress(step, steps, loss, rate, seconds))
        return False

    return on_step, closer


# ------------------------------------------------------------------------------------------------
# Pipelines


class Pipeline:
    """A pipeline file with overrides: what ``pathline validate`` checks and ``pathline run`` runs."""

    def __init__(self, path: PathLike, overrides: Overrides = None, plugin_dirs: Iterable[PathLike] = ()) -> None:
        self.path = Path(path)
        self.overrides: list[str] = _override_list(overrides)
        self.plugin_dirs: list[str] = [os.fspath(d) for d in ([plugin_dirs] if isinstance(plugin_dirs, (str, os.PathLike)) else plugin_dirs)]
        self.notes: list[str] = []
        self._toml: str | None = None

    @classmethod
    def from_file(cls, path: PathLike, overrides: Overrides = None, plugin_dirs: Iterable[PathLike] = ()) -> "Pipeline":
        """The pipeline of a TOML file, with overrides as ``--set`` gives them: a dict
        ``{"train.steps": 500, "solver.type": "heun", "metric[0].samples": 2000}`` or a list of
        ``"table.key=value"`` strings. A file that is not there raises FileNotFoundError; nothing
        else is checked until validate() or run()."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such pipeline file")
        return cls(p, overrides, plugin_dirs)

    def with_overrides(self, overrides: Overrides) -> "Pipeline":
        """A copy with more overrides, applied after this pipeline's own."""
        copy = Pipeline(self.path, None, self.plugin_dirs)
        copy.overrides = self.overrides + _override_list(overrides)
        return copy

    def validate(self) -> "Pipeline":
        """Checks everything ``pathline validate`` checks (every key, every component built against
        the data, labels, the sampling interval) and returns the pipeline. Raises ConfigError, whose
        ``problems`` list each problem's file, line, column and message. ``notes`` holds what the
        engine noted (keys dropped by a type override, a solver set to few steps)."""
        validated = _pathline.validate(_engine(self.plugin_dirs), os.fspath(self.path), self.overrides)
        self.notes = list(validated.notes)
        self._toml = validated.toml
        return self

    @property
    def toml(self) -> str:
        """The resolved pipeline as TOML, every default written out (validates first)."""
        if self._toml is None:
            self.validate()
        assert self._toml is not None
        return self._toml

    @property
    def config(self) -> dict[str, Any]:
        """The resolved pipeline as a dict (validates first)."""
        return tomllib.loads(self.toml)

    def run(self, run_dir: PathLike | None = None, progress: bool | Callable[[Progress], Any] | None = True,
            overwrite: bool = False, train_only: bool = False,
            log: bool | Callable[[str], Any] | None = True) -> "Run":
        """Trains, samples and evaluates as ``pathline run`` does (``train_only``: as ``pathline
        train``), into `run_dir` or a new ``<run.dir>/<run.name>`` (``-2``, ``-3``, ... when it
        exists; `overwrite` replaces it), and returns the Run.

        `progress`: True shows a progress bar (tqdm when installed, else a line on stderr); a
        callable gets a Progress about ten times a second and after the last step; False shows
        none. `log`: the engine's lines (run directory, model, sampling, metrics) go to stderr
        (True), to a callable, or nowhere (False).

        Ctrl-C (a notebook's interrupt) stops training after the current step, writes a
        checkpoint and raises KeyboardInterrupt; ``pathline.resume(run_dir)`` continues. An
        exception raised by the progress callable stops training the same way and is raised again.
        """
        on_step, closer = _progress_hook(progress)
        try:
            out = _pathline.run(_engine(self.plugin_dirs), os.fspath(self.path), self.overrides,
                                None if run_dir is None else os.fspath(run_dir), bool(overwrite),
                                not train_only, on_step, _logger(log))
        finally:
            if closer is not None:
                closer.close()
        return Run(out, self.plugin_dirs)

    def __repr__(self) -> str:
        return f"Pipeline({os.fspath(self.path)!r}, overrides={self.overrides!r})"


def resume(run_dir: PathLike, overrides: Overrides = None, progress: bool | Callable[[Progress], Any] | None = True,
           log: bool | Callable[[str], Any] | None = True, plugin_dirs: Iterable[PathLike] = ()) -> "Run":
    """Continues a stopped or killed run from its latest good checkpoint, as ``pathline resume``
    does, and finishes it as the command that started it would have; a complete run is left as it
    is. Only keys that do not affect training may be overridden. Ctrl-C works as in Pipeline.run."""
    on_step, closer = _progress_hook(progress)
    try:
        out = _pathline.resume(_engine(plugin_dirs), os.fspath(run_dir), _override_list(overrides), on_step,
                               _logger(log))
    finally:
        if closer is not None:
            closer.close()
    return Run(out, plugin_dirs)


# ------------------------------------------------------------------------------------------------
# Runs


class Model:
    """A trained run's model as a function of (x, t): ``model(x, t, labels=None, raw=False)``.

    x is ``[n, *shape]`` (any floating dtype, any device: computed in float32 on the run's device,
    returned on x's device); t a number or a tensor of shape ``[]`` or ``[n]``; labels an int or an
    int64 tensor ``[n]`` for labelled data (-1: unconditional). Returns the velocity the model
    implies on the run's path, or with ``raw=True`` what its parameterization predicts (velocity,
    noise, data or score). Gradients flow when torch's grad mode is on and x requires them.
    """

    def __init__(self, trained: Any) -> None:
        self._trained = trained

    @property
    def shape(self) -> list[int]:
        """The shape of one point (``[2]``, ``[1, 28, 28]``)."""
        return list(self._trained.shape)

    @property
    def num_classes(self) -> int:
        """Classes of the data (0: unlabelled)."""
        return int(self._trained.num_classes)

    @property
    def predicts(self) -> str:
        """What the raw output is: "velocity", "noise", "data" or "score"."""
        return str(self._trained.predicts)

    @property
    def device(self) -> str:
        """Where the model computes."""
        return str(self._trained.device)

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor, labels: int | torch.Tensor | None = None,
                 raw: bool = False) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if isinstance(t, bool) or not isinstance(t, (int, float, torch.Tensor)):
            raise TypeError(f"t must be a number or a torch.Tensor, got {type(t).__name__}")
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(float(t))
        if labels is not None and not isinstance(labels, torch.Tensor):
            if isinstance(labels, bool) or not isinstance(labels, int):
                raise TypeError(f"labels must be an int or a torch.Tensor of integers, got {type(labels).__name__}")
            labels = torch.tensor(labels, dtype=torch.int64)
        return self._trained(x, t, labels, bool(raw))

    def __repr__(self) -> str:
        return f"Model(shape={self.shape}, predicts={self.predicts!r}, num_classes={self.num_classes})"


class Run:
    """A run directory made by ``pathline run`` / ``train`` or Pipeline.run: its config, metrics,
    model and sampling. Nothing is loaded until asked for."""

    def __init__(self, run_dir: PathLike, plugin_dirs: Iterable[PathLike] = ()) -> None:
        self.dir = Path(run_dir)
        if not (self.dir / "config.toml").is_file():
            raise InputError(f"{self.dir}: not a run directory (no config.toml)")
        self.plugin_dirs = [os.fspath(d) for d in ([plugin_dirs] if isinstance(plugin_dirs, (str, os.PathLike)) else plugin_dirs)]
        self._model: Model | None = None

    def __repr__(self) -> str:
        return f"Run({os.fspath(self.dir)!r})"

    def __fspath__(self) -> str:
        return os.fspath(self.dir)

    @property
    def config(self) -> dict[str, Any]:
        """The run's resolved pipeline (config.toml) as a dict."""
        with open(self.dir / "config.toml", "rb") as f:
            return tomllib.load(f)

    @property
    def complete(self) -> bool:
        """Whether the run finished (summary.json is written last)."""
        return (self.dir / "summary.json").is_file()

    @property
    def summary(self) -> dict[str, Any]:
        """summary.json (metrics, training, sampling, platform); {} while the run is not complete."""
        try:
            with open(self.dir / "summary.json") as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    @property
    def metrics(self) -> dict[str, float]:
        """The metrics of the run's samples by name ({"energy_distance": 0.0009, ...}); {} for a
        train-only or unfinished run."""
        return dict(self.summary.get("metrics", {}))

    @property
    def losses(self) -> list[dict[str, float]]:
        """metrics.csv: one dict per logging window with step, loss, lr and elapsed_s."""
        try:
            with open(self.dir / "metrics.csv", newline="") as f:
                return [{k: (int(v) if k == "step" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]
        except FileNotFoundError:
            return []

    @property
    def model(self) -> Model:
        """The trained model (the weights sampling uses: EMA ones when kept) as a function of (x, t)."""
        if self._model is None:
            self._model = Model(_pathline.TrainedRun(_engine(self.plugin_dirs), os.fspath(self.dir), [], None))
        return self._model

    def load_model(self, weights: PathLike | None = None, overrides: Overrides = None) -> Model:
        """The model with other weights (a .safetensors file with the model's names, e.g. the run's
        model-raw.safetensors) or with sampling overrides (``{"sample.use_ema": False}``)."""
        return Model(_pathline.TrainedRun(_engine(self.plugin_dirs), os.fspath(self.dir), _override_list(overrides),
                                          None if weights is None else os.fspath(weights)))

    def _sampling_overrides(self, n, solver, steps, labels, guidance_scale, seed, settings) -> list[str]:
        out: dict[str, Any] = {}
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"n must be a positive int, got {n!r}")
            out["sample.n"] = n
        if solver is not None:
            out["solver.type"] = solver
        if steps is not None:
            out["solver.steps"] = steps
        if labels is not None:
            if isinstance(labels, torch.Tensor):
                labels = labels.tolist()
            if isinstance(labels, int):
                labels = [labels]
            out["sample.labels"] = list(labels)
        if guidance_scale is not None:
            out["sample.guidance_scale"] = float(guidance_scale)
        if seed is not None:
            out["run.seed"] = seed
        return _override_list(settings) + _override_list(out)

    def _sample(self, overrides: list[str], noise: torch.Tensor | None):
        if noise is not None and not isinstance(noise, torch.Tensor):
            raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}")
        trained = _pathline.TrainedRun(_engine(self.plugin_dirs), os.fspath(self.dir), overrides, None)
        return trained.sample(noise)

    def sample(self, n: int | None = None, solver: str | None = None, steps: int | None = None,
               noise: torch.Tensor | None = None, labels: int | Sequence[int] | torch.Tensor | None = None,
               guidance_scale: float | None = None, seed: int | None = None, settings: Overrides = None) -> torch.Tensor:
        """Draws samples from the trained model, as ``pathline sample`` does with the same settings
        and seed (the same numbers as its samples.npy), and returns them as ``[n, *shape]``.

        Unset arguments keep the run's config: n ([sample] n), solver and steps ([solver] type and
        steps), labels (the classes asked for in turn; default every class), guidance_scale, seed
        ([run] seed). `noise` ``[n, *shape]``: start from these source points instead of drawing
        them (n is then theirs). `settings`: any other override, e.g. ``{"time_grid.type":
        "cosine", "sample.use_ema": False}``. Nothing is written to the run directory.
        """
        overrides = self._sampling_overrides(n, solver, steps, labels, guidance_scale, seed, settings)
        samples, _, _, _, _ = self._sample(overrides, noise)
        return samples

    def trajectories(self, n: int | None = None, count: int = 16, solver: str | None = None,
                     steps: int | None = None, noise: torch.Tensor | None = None,
                     labels: int | Sequence[int] | torch.Tensor | None = None, guidance_scale: float | None = None,
                     seed: int | None = None, settings: Overrides = None) -> Trajectories:
        """Samples as sample() does and returns the states of the first `count` samples at every
        solver step (an adaptive solver: at the times it stepped to), with their times."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive int, got {count!r}")
        overrides = self._sampling_overrides(n if n is not None else (None if noise is not None else count), solver,
                                             steps, labels, guidance_scale, seed, settings)
        overrides.append(f"sample.trajectories={count}")
        samples, labels_out, states, times, _ = self._sample(overrides, noise)
        return Trajectories(list(times), states, samples, labels_out)

    def sample_to_dir(self, out: PathLike | None = None, settings: Overrides = None, weights: PathLike | None = None,
                      noise: PathLike | None = None, log: bool | Callable[[str], Any] | None = True) -> Path:
        """``pathline sample RUN_DIR``: samples, scores and draws into `out` (default: a new
        RUN_DIR/sample-<solver>) and returns that directory; `noise` is a .npy file of source points."""
        return Path(_pathline.sample_run(_engine(self.plugin_dirs), os.fspath(self.dir), _override_list(settings),
                                         None if out is None else os.fspath(out),
                                         None if weights is None else os.fspath(weights),
                                         None if noise is None else os.fspath(noise), _logger(log)))

    def evaluate(self, fresh: bool = False, nll: bool = False, settings: Overrides = None,
                 out: PathLike | None = None, log: bool | Callable[[str], Any] | None = True) -> dict[str, Any]:
        """``pathline eval RUN_DIR``: the run's metrics on its samples (or fresh ones; `nll` adds the
        likelihood), written to RUN_DIR/eval.json (or `out`) and returned as a dict."""
        file = _pathline.eval_run(_engine(self.plugin_dirs), os.fspath(self.dir), _override_list(settings),
                                  bool(fresh), bool(nll), None if out is None else os.fspath(out), _logger(log))
        with open(file) as f:
            return json.load(f)


# ------------------------------------------------------------------------------------------------
# Ablations


def _cell(text: str) -> Any:
    if text == "":
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def ablate(path: PathLike, jobs: int = 1, overrides: Overrides = None, out: PathLike | None = None,
           dry_run: bool = False, log: bool | Callable[[str], Any] | None = True,
           plugin_dirs: Iterable[PathLike] = ()) -> Any:
    """Runs every variant of the file's [ablation] sweep as ``pathline ablate`` does (`jobs` at
    once; a re-run skips finished variants and resumes unfinished trainings) and returns the
    results table: a pandas DataFrame when pandas is installed, else a list of dicts, one per
    variant, with the swept keys, each metric, nfe, train_seconds, sample_seconds, status, error
    and dir (results.csv of the ablation directory, whose path is in the table's ``attrs["dir"]``
    for a DataFrame). Variants that failed are in the table with status "failed" and a warning says
    how many. ``dry_run``: validates and plans only and returns an empty table.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int):
        raise TypeError(f"jobs must be an int, got {type(jobs).__name__}")
    engine = _engine(plugin_dirs)
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    previous = os.environ.get("LD_LIBRARY_PATH")
    # The children are `pathline` processes: they find LibTorch where this torch keeps it.
    os.environ["LD_LIBRARY_PATH"] = lib + (os.pathsep + previous if previous else "")
    try:
        result = _pathline.ablate(engine, os.fspath(path), _override_list(overrides), jobs,
                                  None if out is None else os.fspath(out), bool(dry_run), _logger(log))
    finally:
        if previous is None:
            del os.environ["LD_LIBRARY_PATH"]
        else:
            os.environ["LD_LIBRARY_PATH"] = previous
    rows: list[dict[str, Any]] = []
    results = Path(result["dir"]) / "results.csv"
    if not dry_run and results.is_file():
        with open(results, newline="") as f:
            rows = [{k: _cell(v) for k, v in row.items()} for row in csv.DictReader(f)]
    if result["failed"]:
        warnings.warn(f"ablation {result['dir']}: {result['failed']} of {result['variants']} variants failed "
                      "(status 'failed'; their logs are in the ablation directory)", RuntimeWarning, stacklevel=2)
    try:
        import pandas
    except ImportError:
        return rows
    frame = pandas.DataFrame(rows)
    frame.attrs["dir"] = result["dir"]
    return frame
