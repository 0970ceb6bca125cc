"""Tests of the Python module `pathline` (tools/python), run by ctest through pytest
(tests/CMakeLists.txt: the test `python_module`; PYTHONPATH names the build's python/ folder).

They compare the module with the `pathline` command line of the same build (PATHLINE_CLI): the
same plugins, the same validation problems, the same samples for the same seed; and Run.model with
the PyTorch port of the MLP written from docs/weights.md (tests/python/pathline_ports.py).
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pathline

SOURCE = Path(os.environ.get("PATHLINE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
CLI = os.environ.get("PATHLINE_CLI", str(SOURCE / "build" / "bin" / "pathline"))
FIXTURES = os.environ.get("PATHLINE_FIXTURE_DIR", str(SOURCE / "build" / "tests" / "fixtures"))
QUICKSTART = SOURCE / "configs" / "quickstart.toml"
sys.path.insert(0, str(Path(__file__).resolve().parent))

# A short quickstart: 300 steps, 2,000 samples, the likelihood of 200 points.
SHORT = {"train.steps": 300, "train.checkpoint_every": 100, "sample.n": 2000, "metric[1].n": 200}


def cli(*args, check=True):
    result = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"pathline {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A quickstart run of 300 steps, with the Progress values the callable received."""
    seen = []
    run = pathline.Pipeline.from_file(QUICKSTART, SHORT).run(
        run_dir=tmp_path_factory.mktemp("runs") / "quick", progress=seen.append, log=False)
    return run, seen


# ------------------------------------------------------------------------------------------------
# Plugins and inspect


def test_version_and_module_layout():
    assert pathline.__version__.count(".") == 2
    assert pathline._pathline.sdk_abi >= 6
    assert Path(pathline._pathline.pathline_executable()).is_file()
    assert "--version" not in pathline.__version__


def test_plugins_lists_what_the_command_line_lists():
    listed = pathline.plugins()
    names = {kind: {c["name"] for c in entries} for kind, entries in listed["components"].items()}
    assert {"euler", "midpoint", "heun", "dopri5"} <= names["solver"]
    assert {"mlp", "unet", "dit"} <= names["model"]
    assert all(p["origin"] == "built-in" for p in listed["plugins"])
    text = cli("plugins").stdout
    for kind, entries in names.items():
        for name in entries:
            assert f"  {name} " in text, (kind, name)
    assert listed["failures"] == []


def test_plugins_report_failures_and_load_extra_folders():
    listed = pathline.plugins([FIXTURES])
    failures = {Path(f["file"]).name: f for f in listed["failures"]}
    assert "libfixture_wrong_abi.so" in failures
    assert "abi" in failures["libfixture_wrong_abi.so"]["stage"]
    assert failures["libfixture_wrong_abi.so"]["line"].startswith("plugin ")
    assert any(p["origin"] == "--plugin-dir" for p in listed["plugins"])


def test_inspect_components_and_engine_tables():
    heun = pathline.inspect("solver", "heun")
    assert heun["kind"] == "solver" and heun["name"] == "heun"
    steps = {p["name"]: p for p in heun["params"]}["steps"]
    assert steps["type"] == "integer" and not steps["required"] and isinstance(steps["default"], int)
    assert heun["plugin"]["origin"] == "built-in"
    assert pathline.inspect("solver.heun") == heun
    assert pathline.inspect("source", "gaussian")["kind"] == "dataset"  # a slot names its kind
    train = pathline.inspect("train")
    assert {"steps", "lr", "batch_size"} <= {p["name"] for p in train["params"]}
    mlp = {p["name"]: p for p in pathline.inspect("model", "mlp")["params"]}
    assert mlp["width"]["default"] == 256 and mlp["width"]["lower"] == 1


def test_inspect_unknown_names_suggest():
    with pytest.raises(pathline.InputError, match="did you mean 'solver'"):
        pathline.inspect("solvr", "heun")
    with pytest.raises(pathline.InputError, match="did you mean 'heun'"):
        pathline.inspect("solver", "hen")
    with pytest.raises(ValueError, match="unknown engine table"):
        pathline.inspect("trian")


# ------------------------------------------------------------------------------------------------
# Validation


def test_validate_resolves_defaults_and_overrides():
    p = pathline.Pipeline.from_file(QUICKSTART, {"train.steps": 50, "solver.type": "heun", "model.width": 64})
    assert p.validate() is p
    config = p.config
    assert config["train"]["steps"] == 50 and config["solver"]["type"] == "heun"
    assert config["model"]["width"] == 64 and config["model"]["depth"] == 4
    assert "[time_grid]" in p.toml
    assert pathline.Pipeline.from_file(QUICKSTART, ["train.steps=7"]).config["train"]["steps"] == 7


BAD = """[dataset]
type = "toy2d"

[model]
type = "mlp"
width = -3
depht = 4

[solver]
type = "heun"
steps = "many"
"""


def test_validation_errors_carry_file_line_column_as_the_command_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    with pytest.raises(pathline.ConfigError) as caught:
        pathline.Pipeline.from_file(bad).validate()
    problems = caught.value.problems
    where = {(p.line, p.message.split()[0]) for p in problems}
    assert len(problems) == 3, problems
    assert all(p.file == str(bad) for p in problems)
    lines = sorted(p.line for p in problems)
    assert lines == [6, 7, 11]
    by_line = {p.line: p for p in problems}
    assert "width" in by_line[6].message and by_line[6].column >= 1
    assert "depht" in by_line[7].message and "depth" in by_line[7].message  # the suggestion
    assert "steps" in by_line[11].message
    # The command line reports the same lines.
    result = cli("validate", bad, check=False)
    assert result.returncode == 2
    assert sorted(result.stderr.strip().splitlines()) == sorted(str(p) for p in problems), where
    assert isinstance(caught.value, ValueError)


def test_override_problems_name_the_override():
    with pytest.raises(pathline.ConfigError) as caught:
        pathline.Pipeline.from_file(QUICKSTART, {"model.width": "wide"}).validate()
    (problem,) = caught.value.problems
    assert problem.file.startswith("--set model.width=") and problem.line is None
    assert "width" in problem.message


def test_bad_arguments_raise_python_errors():
    with pytest.raises(FileNotFoundError):
        pathline.Pipeline.from_file("no/such/file.toml")
    with pytest.raises(TypeError):
        pathline.Pipeline.from_file(QUICKSTART, "train.steps=5")
    with pytest.raises(TypeError):
        pathline.Pipeline.from_file(QUICKSTART, {"train.steps": object()})
    with pytest.raises(pathline.InputError, match="not a run directory"):
        pathline.Run("no/such/run")


def test_cuda_without_a_gpu_is_a_config_error_not_a_crash():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(pathline.ConfigError) as caught:
        pathline.Pipeline.from_file(QUICKSTART, {"run.device": "cuda"}).validate()
    assert "cuda" in str(caught.value).lower()


def test_failing_plugins_raise_and_the_interpreter_lives_on(tmp_path):
    throwing = os.path.join(FIXTURES, "throwing")
    for throws in ("runtime_error", "c10", "int"):
        with pytest.raises(pathline.PluginError) as caught:
            pathline.Pipeline.from_file(
                QUICKSTART, {**SHORT, "train.steps": 5, "model.type": "fixture_throwing", "model.throws": throws},
                plugin_dirs=[throwing]).run(run_dir=tmp_path / throws, progress=False, log=False)
        message = str(caught.value)
        assert "fixture_throwing" in message and "[model]" in message, message
    with pytest.raises(pathline.PluginError, match="fixture runtime failure in the model's factory"):
        pathline.Pipeline.from_file(QUICKSTART, {"model.type": "fixture_throwing", "model.at": "build"},
                                    plugin_dirs=[throwing]).validate()
    assert pathline.inspect("solver", "euler")["name"] == "euler"  # still alive


# ------------------------------------------------------------------------------------------------
# Running, interrupting, resuming


def test_run_writes_the_run_directory_and_reports_progress(trained):
    run, seen = trained
    assert run.complete
    for name in ("config.toml", "model.safetensors", "samples.npy", "summary.json", "metrics.csv"):
        assert (run.dir / name).is_file(), name
    assert run.config["train"]["steps"] == 300
    assert 0 < run.metrics["energy_distance"] < 1.0 and "nll" in run.metrics
    assert [row["step"] for row in run.losses][-1] == 300
    assert seen[-1].step == seen[-1].steps == 300
    assert all(a.step < b.step for a, b in zip(seen, seen[1:]))
    assert all(isinstance(p, pathline.Progress) for p in seen)
    assert np.load(run.dir / "samples.npy").shape == (2000, 2)


def test_ctrl_c_checkpoints_raises_keyboard_interrupt_and_resume_finishes(tmp_path):
    def interrupt_at_120(p):
        if p.step >= 120:
            os.kill(os.getpid(), signal.SIGINT)

    run_dir = tmp_path / "stopped"
    pipeline = pathline.Pipeline.from_file(QUICKSTART, {**SHORT, "train.steps": 400})
    with pytest.raises(KeyboardInterrupt, match="checkpoint"):
        pipeline.run(run_dir=run_dir, progress=interrupt_at_120, log=False)
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*.ckpt"))
    assert checkpoints, "no checkpoint after the interrupt"
    stopped_at = int(checkpoints[-1].stem.split("-")[1])
    assert 120 <= stopped_at < 400
    assert not (run_dir / "summary.json").exists()
    resumed = []
    run = pathline.resume(run_dir, progress=resumed.append, log=False)
    assert run.complete and run.summary["train"]["resumed_from"] == stopped_at
    assert resumed[0].step > stopped_at and resumed[-1].step == 400


def test_an_error_in_the_progress_callable_stops_after_a_checkpoint(tmp_path):
    def fails(p):
        if p.step >= 50:
            raise ValueError("my progress bar broke")

    with pytest.raises(ValueError, match="my progress bar broke"):
        pathline.Pipeline.from_file(QUICKSTART, SHORT).run(run_dir=tmp_path / "r", progress=fails, log=False)
    assert list((tmp_path / "r" / "checkpoints").glob("step-*.ckpt"))


def test_log_lines_go_to_a_callable(tmp_path):
    lines = []
    pathline.Pipeline.from_file(QUICKSTART, {**SHORT, "train.steps": 20, "sample.n": 200}).run(
        run_dir=tmp_path / "r", progress=False, log=lines.append, train_only=True)
    assert any(line.startswith("run directory: ") for line in lines)
    assert not (tmp_path / "r" / "samples.npy").exists()  # train_only


# ------------------------------------------------------------------------------------------------
# The trained model


def test_model_equals_the_pytorch_port_from_weights_md(trained):
    import pathline_ports

    run, _ = trained
    port = pathline_ports.load_run(str(run.dir))
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    t = torch.rand(64)
    with torch.no_grad():
        ours = run.model(x, t)
        theirs = port(x, t)
    assert ours.shape == (64, 2) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(run.model(x, t, raw=True), ours)  # a velocity model's raw output
    torch.testing.assert_close(run.model(x, 0.25), port(x, torch.full((64,), 0.25)), rtol=1e-5, atol=1e-5)
    assert run.model.shape == [2] and run.model.predicts == "velocity" and run.model.num_classes == 0


def test_model_takes_other_dtypes_and_keeps_gradients(trained):
    run, _ = trained
    x = torch.randn(8, 2, dtype=torch.float64, requires_grad=True)
    v = run.model(x, torch.tensor(0.5))
    assert v.dtype == torch.float32
    v.sum().backward()
    assert x.grad is not None and x.grad.shape == (8, 2)


def test_model_rejects_bad_inputs_with_python_errors(trained):
    run, _ = trained
    model = run.model
    with pytest.raises(ValueError, match=r"shape \[n, 2\]"):
        model(torch.randn(4, 3), 0.5)
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(2), 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.ones(4, 2, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match=r"t must be"):
        model(torch.randn(4, 2), torch.rand(3))
    with pytest.raises(TypeError):
        model([[0.0, 0.0]], 0.5)
    with pytest.raises(TypeError):
        model(torch.randn(4, 2), "half")
    with pytest.raises(ValueError, match="no labels"):
        model(torch.randn(4, 2), 0.5, labels=torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="finite"):
        model(torch.randn(4, 2), float("nan"))
    assert model(torch.randn(4, 2), 0.5).shape == (4, 2)  # alive and well


# ------------------------------------------------------------------------------------------------
# Sampling


def test_sample_equals_the_command_lines_samples(trained, tmp_path):
    run, _ = trained
    ours = run.sample(500, solver="heun", steps=8, seed=3)
    out = tmp_path / "cli"
    cli("sample", run.dir, "--set", "sample.n=500", "--set", "solver.type=heun", "--set", "solver.steps=8",
        "--set", "run.seed=3", "--out", out)
    theirs = torch.from_numpy(np.load(out / "samples.npy"))
    assert ours.shape == (500, 2)
    assert torch.equal(ours, theirs)
    # The run's own samples: the config's settings and seed.
    assert torch.equal(run.sample(), torch.from_numpy(np.load(run.dir / "samples.npy")))


def test_sample_seeds_solvers_and_noise(trained):
    run, _ = trained
    a = run.sample(300, seed=1)
    assert torch.equal(a, run.sample(300, seed=1))
    assert not torch.equal(a, run.sample(300, seed=2))
    noise = torch.randn(100, 2)
    euler = run.sample(solver="euler", steps=50, noise=noise)
    midpoint = run.sample(solver="midpoint", steps=25, noise=noise)
    assert euler.shape == (100, 2)
    assert torch.equal(euler, run.sample(solver="euler", steps=50, noise=noise, seed=9))  # noise fixes x0
    assert 0 < (euler - midpoint).abs().max() < 0.5
    with pytest.raises(pathline.InputError, match="shape"):
        run.sample(noise=torch.randn(10, 3))
    with pytest.raises(pathline.ConfigError, match="solver"):
        run.sample(10, solver="no-such-solver")
    with pytest.raises(ValueError):
        run.sample(0)


def test_trajectories_start_at_the_noise_and_end_at_the_samples(trained):
    run, _ = trained
    noise = torch.randn(20, 2)
    traj = run.trajectories(count=5, solver="euler", steps=10, noise=noise)
    assert traj.states.shape == (11, 5, 2) and len(traj.times) == 11
    assert traj.times[0] == 0.0 and traj.times[-1] == 1.0
    torch.testing.assert_close(traj.states[0], noise[:5])
    torch.testing.assert_close(traj.states[-1], traj.samples[:5])
    assert traj.samples.shape == (20, 2) and traj.labels is None


def test_sample_to_dir_and_evaluate(trained, tmp_path):
    run, _ = trained
    out = run.sample_to_dir(tmp_path / "s", {"sample.n": 300}, log=False)
    assert (out / "samples.npy").is_file() and (out / "summary.json").is_file()
    result = run.evaluate(settings={"metric[1].n": 100}, out=tmp_path / "eval.json", log=False)
    assert "energy_distance" in result["metrics"]


# ------------------------------------------------------------------------------------------------
# Ablations


def test_ablate_returns_the_results_table(tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text(QUICKSTART.read_text() + f"""
[run]
dir = "{tmp_path / 'runs'}"

[ablation]
"solver.type" = ["euler", "heun"]
""")
    table = pathline.ablate(config, jobs=1, overrides={"train.steps": 60, "sample.n": 300, "metric[1].n": 50},
                            log=False)
    rows = table.to_dict("records") if hasattr(table, "to_dict") else table
    assert [row["solver.type"] for row in rows] == ["euler", "heun"]
    assert all(row["status"] == "ok" for row in rows)
    assert all(row["energy_distance"] > 0 for row in rows)
    plan = pathline.ablate(config, dry_run=True, overrides={"train.steps": 60}, log=False)
    assert len(plan) == 0
    with pytest.raises(pathline.ConfigError):
        pathline.ablate(config, overrides={"solver.steps": -1}, dry_run=True, log=False)


# ------------------------------------------------------------------------------------------------
# The stub and the docstrings


def test_stub_names_every_function_of_the_compiled_module():
    stub = (Path(pathline.__file__).parent / "_pathline.pyi").read_text()
    public = {name for name in dir(pathline._pathline) if not name.startswith("_")}
    for name in public:
        assert f"def {name}(" in stub or f"class {name}" in stub or f"{name}:" in stub, name
    assert (Path(pathline.__file__).parent / "py.typed").exists()


def test_every_public_name_is_documented():
    for name in pathline.__all__:
        obj = getattr(pathline, name)
        if isinstance(obj, str):
            continue
        assert obj.__doc__ and len(obj.__doc__.strip()) > 10, name
    for cls in (pathline.Pipeline, pathline.Run, pathline.Model):
        for attr, value in vars(cls).items():
            if not attr.startswith("_"):
                doc = value.__doc__ if not isinstance(value, property) else value.fget.__doc__
                assert doc, f"{cls.__name__}.{attr}"


# ------------------------------------------------------------------------------------------------
# Labels, guidance and other parameterizations


@pytest.fixture(scope="session")
def labelled(tmp_path_factory):
    """8 Gaussians labelled by mode (8 classes), 300 steps, with label dropout for guidance."""
    return pathline.Pipeline.from_file(QUICKSTART, {
        **SHORT, "dataset.shape": "8gaussians", "dataset.labelled": True, "train.label_dropout": 0.2,
        "sample.n": 400}).run(run_dir=tmp_path_factory.mktemp("runs") / "labelled", progress=False, log=False)


def test_labels_and_guidance_match_the_command_line(labelled, tmp_path):
    run = labelled
    assert run.model.num_classes == 8
    x = torch.randn(16, 2)
    labels = torch.arange(16) % 8
    conditional = run.model(x, 0.3, labels=labels)
    unconditional = run.model(x, 0.3, labels=torch.full((16,), -1))
    assert not torch.allclose(conditional, unconditional)
    torch.testing.assert_close(run.model(x[:1], 0.3, labels=3), run.model(x[:1], 0.3, labels=torch.tensor([3])))
    with pytest.raises(ValueError, match="labels must be 0 to 7"):
        run.model(x, 0.3, labels=torch.full((16,), 8))
    with pytest.raises(TypeError, match="integers"):
        run.model(x, 0.3, labels=torch.zeros(16))
    ours = run.sample(200, labels=3, guidance_scale=2.0, seed=5)
    out = tmp_path / "cli"
    cli("sample", run.dir, "--set", "sample.n=200", "--set", "sample.labels=[3]", "--set",
        "sample.guidance_scale=2.0", "--set", "run.seed=5", "--out", out)
    assert torch.equal(ours, torch.from_numpy(np.load(out / "samples.npy")))
    traj = run.trajectories(n=40, count=4, labels=[1, 2], seed=5)
    assert traj.labels.tolist() == [1, 2] * 20
    # Mode 3's samples sit around its centre, not around the others'.
    centre = ours.mean(dim=0)
    assert centre.norm() > 1.0


def test_the_velocity_of_a_noise_prediction_is_its_conversion(tmp_path):
    run = pathline.Pipeline.from_file(QUICKSTART, {**SHORT, "train.steps": 50, "parameterization.type": "noise",
                                                   "path.sigma_min": 0.0, "sample.n": 100}).run(
        run_dir=tmp_path / "noise", progress=False, log=False, train_only=True)
    assert run.model.predicts == "noise"
    x = torch.randn(32, 2)
    t = torch.rand(32) * 0.8 + 0.1
    eps = run.model(x, t, raw=True)
    # Linear path: x_t = t x1 + (1 - t) x0, so u = x1 - x0 = (x_t - x0) / t.
    torch.testing.assert_close(run.model(x, t), (x - eps) / t[:, None], rtol=1e-4, atol=1e-4)


def test_python_m_pathline_runs_the_command_line():
    result = subprocess.run([sys.executable, "-m", "pathline", "--version"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"pathline {pathline.__version__} (SDK ABI {pathline._pathline.sdk_abi}")


def test_other_weights_and_use_ema(trained):
    run, _ = trained
    x = torch.randn(8, 2)
    raw = run.load_model(weights=run.dir / "model-raw.safetensors")
    also_raw = run.load_model(overrides={"sample.use_ema": False})
    torch.testing.assert_close(raw(x, 0.5), also_raw(x, 0.5))
    assert not torch.allclose(raw(x, 0.5), run.model(x, 0.5))  # EMA weights differ from the raw ones
    with pytest.raises(pathline.InputError, match="no-such.safetensors"):
        run.load_model(weights=run.dir / "no-such.safetensors")


def test_the_interpreter_exits_cleanly_with_models_alive(trained):
    run, _ = trained
    code = (f"import pathline, torch; run = pathline.Run({str(run.dir)!r}); m = run.model; "
            "m(torch.randn(3, 2), 0.5); s = run.sample(10); pathline._engines.clear()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_latent_runs_train_an_autoencoder_and_sample_decoded_images(tmp_path):
    """A pipeline without [model] trains its autoencoder; a flow on its latents samples images."""
    data = '[run]\nthreads = 1\n[dataset]\ntype = "fashion_mnist"\nlimit = 64\n'
    (tmp_path / "vae.toml").write_text(data + '[autoencoder]\ntype = "conv_vae"\nchannels = 4\npadding = 2\n'
                                       '[train]\nsteps = 4\nbatch_size = 16\n[sample]\nn = 20\n')
    vae = pathline.Pipeline.from_file(tmp_path / "vae.toml").run(run_dir=tmp_path / "vae", log=False)
    assert vae.summary["autoencoder"]["latent_shape"] == [4, 8, 8]
    with pytest.raises(pathline.InputError, match="an autoencoder run"):
        vae.sample(4)
    (tmp_path / "flow.toml").write_text(
        data + f'[autoencoder]\ntype = "conv_vae"\nrun = "{vae.dir}"\n'
        '[model]\ntype = "dit"\npatch_size = 2\nhidden = 16\ndepth = 1\nheads = 2\n'
        '[train]\nsteps = 3\nbatch_size = 16\n[sample]\nn = 10\ntrajectories = 0\n')
    flow = pathline.Pipeline.from_file(tmp_path / "flow.toml")
    assert "channels = 4" in flow.toml  # the autoencoder's settings come from its run
    run = flow.run(run_dir=tmp_path / "flow", log=False)
    assert run.sample(6, seed=1).shape == (6, 1, 28, 28)
    # The model is the network on latents; noise is latent noise.
    assert run.model(torch.zeros(2, 4, 8, 8), torch.full((2,), 0.5), labels=torch.tensor([0, 1])).shape == (2, 4, 8, 8)
    assert run.sample(noise=torch.zeros(3, 4, 8, 8)).shape == (3, 1, 28, 28)
    with pytest.raises(ValueError):
        run.sample(noise=torch.zeros(3, 1, 28, 28))
