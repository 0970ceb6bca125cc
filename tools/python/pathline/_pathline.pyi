# Type stub of the compiled module pathline._pathline (tools/python/module.cpp). The public API is
# pathline/__init__.py; these are the functions it calls.
from typing import Any, Callable

import torch

__all__ = [
    "ConfigError",
    "Engine",
    "Error",
    "InputError",
    "PluginError",
    "Problem",
    "TrainedRun",
    "Validated",
    "ablate",
    "builtin_plugin_dir",
    "engine_table",
    "eval_run",
    "pathline_executable",
    "resume",
    "run",
    "sample_run",
    "sdk_abi",
    "validate",
    "version",
]

sdk_abi: int

class Error(RuntimeError):
    """A job failed: the engine's one-line message."""

class InputError(Error, ValueError):
    """Bad input (a file, a run directory, an argument): the engine's one-line message."""

class ConfigError(InputError):
    """An invalid pipeline; `problems` lists every problem."""

    problems: list[Problem]

class PluginError(Error):
    """A plugin failed (to load, or inside one of its components); the message names it."""

class Problem:
    """One problem of an invalid pipeline."""

    @property
    def file(self) -> str: ...
    @property
    def line(self) -> int | None: ...
    @property
    def column(self) -> int | None: ...
    @property
    def message(self) -> str: ...

class Engine:
    def __init__(self, plugin_dirs: list[str]) -> None: ...
    def plugins(self) -> dict[str, Any]: ...
    def inspect(self, kind: str, name: str) -> dict[str, Any]: ...
    @property
    def plugin_dirs(self) -> list[str]: ...

class Validated:
    @property
    def toml(self) -> str: ...
    @property
    def notes(self) -> list[str]: ...

StepCallback = Callable[[int, int, float, float, float], bool]
LogCallback = Callable[[str], Any]

def engine_table(table: str) -> dict[str, Any]: ...
def validate(engine: Engine, file: str, overrides: list[str]) -> Validated: ...
def run(engine: Engine, file: str, overrides: list[str], run_dir: str | None, overwrite: bool, do_sample: bool,
        on_step: StepCallback | None, log: LogCallback | None) -> str: ...
def resume(engine: Engine, run_dir: str, overrides: list[str], on_step: StepCallback | None,
           log: LogCallback | None) -> str: ...
def sample_run(engine: Engine, run_dir: str, overrides: list[str], out: str | None, weights: str | None,
               noise: str | None, log: LogCallback | None) -> str: ...
def eval_run(engine: Engine, run_dir: str, overrides: list[str], fresh: bool, nll: bool, out: str | None,
             log: LogCallback | None) -> str: ...
def ablate(engine: Engine, file: str, overrides: list[str], jobs: int, out: str | None, dry_run: bool,
           log: LogCallback | None) -> dict[str, Any]: ...
def pathline_executable() -> str: ...
def builtin_plugin_dir() -> str: ...
def version() -> str: ...

class TrainedRun:
    def __init__(self, engine: Engine, run_dir: str, overrides: list[str], weights: str | None) -> None: ...
    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, raw: bool) -> torch.Tensor: ...
    def sample(
        self, noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, list[float], dict[str, Any]]: ...
    @property
    def toml(self) -> str: ...
    @property
    def weights(self) -> str: ...
    @property
    def shape(self) -> list[int]: ...
    @property
    def num_classes(self) -> int: ...
    @property
    def predicts(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def notes(self) -> list[str]: ...
