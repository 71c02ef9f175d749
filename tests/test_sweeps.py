"""The W&B sweeps under ``experiments/sweeps/``: each file is a valid sweep spec, and a run it would launch works.

For each sweep, parameters are sampled from its search space with a fixed seed, the ``command`` is expanded as the
W&B agent expands it (``${env}`` -> ``/usr/bin/env``, ``${interpreter}`` -> ``python``, ``${program}`` -> the
``program`` value, ``${args}`` -> ``--name=value`` pairs with Python's ``str`` of each value; see
``wandb/wandb_agent.py`` and ``wandb/sdk/launch/sweeps/utils.py``), a ``sh -c SCRIPT sh ARGS...`` command is
resolved as the shell would (checked against the real ``sh``), and the resulting ``wsss fit`` runs in-process
through ``run_lightning_cli`` for one batch on a tiny synthetic set. The run must log the sweep's metric, and
each sampled value must reach the model / trainer config.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import string
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import yaml

from lightning_wsss.io import read_label_png, write_label_png, write_npz_atomic

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "experiments" / "sweeps").glob("*.yaml"))
RUN_ID = "testrun01"
TINY = ["--trainer.fast_dev_run=true", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--data.init_args.crop_size=32", "--data.init_args.batch_size=2",
        "--data.init_args.eval_batch_size=2"]
DISTRIBUTIONS = {"uniform", "int_uniform", "log_uniform_values", "q_uniform", "categorical", "constant"}


def load_sweep(path: Path) -> Dict[str, Any]:
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------------- W&B emulation
def sample_parameters(parameters: Dict[str, Any], seed: int) -> Dict[str, Any]:
    """One draw from a sweep's search space (the subset of W&B's spec these files use).

    ``value`` is fixed; ``values`` picks one (lists stay lists); ``min``/``max`` draw from ``distribution``
    (default ``int_uniform`` when both bounds are ints, else ``uniform``; ``log_uniform_values`` is uniform in
    log space between the two values). Returns name -> plain Python value.
    """
    rng = np.random.default_rng(seed)
    out: Dict[str, Any] = {}
    for name, spec in parameters.items():
        if "value" in spec:
            out[name] = spec["value"]
        elif "values" in spec:
            out[name] = spec["values"][int(rng.integers(len(spec["values"])))]
        else:
            low, high = spec["min"], spec["max"]
            dist = spec.get("distribution") or ("int_uniform" if isinstance(low, int) and isinstance(high, int) else "uniform")
            if dist == "uniform":
                out[name] = float(rng.uniform(low, high))
            elif dist == "int_uniform":
                out[name] = int(rng.integers(low, high + 1))
            elif dist == "log_uniform_values":
                out[name] = float(math.exp(rng.uniform(math.log(low), math.log(high))))
            elif dist == "q_uniform":
                q = spec.get("q", 1.0)
                out[name] = float(round(rng.uniform(low, high) / q) * q)
            else:
                raise ValueError(f"{name}: distribution {dist!r} is not emulated by this test")
    return out


def expand_command(sweep: Dict[str, Any], values: Dict[str, Any]) -> List[str]:
    """The argv the W&B agent runs: whole-item ``${macro}`` entries replaced, other items kept."""
    macros = {
        "env": ["/usr/bin/env"],
        "interpreter": ["python"],
        "program": [sweep["program"]],
        "args": [f"--{name}={value}" for name, value in values.items()],
        "args_no_hyphens": [f"{name}={value}" for name, value in values.items()],
    }
    argv: List[str] = []
    for item in sweep["command"]:
        item = str(item)
        if item.startswith("${") and item.endswith("}"):
            argv += macros[item[2:-1]]
        else:
            assert "${" not in item, f"macro inside an item is not expanded by W&B: {item!r}"
            argv.append(item)
    return argv


def resolve_shell(argv: List[str], env: Dict[str, str]) -> List[str]:
    """``/usr/bin/env sh -c SCRIPT NAME ARGS...`` -> the argv SCRIPT's command gets (``"$@"`` = ARGS, ``$VAR``
    from ``env``, a leading ``exec`` dropped). Other commands lose the ``/usr/bin/env`` prefix only."""
    assert argv[0] == "/usr/bin/env"
    argv = argv[1:]
    if argv[:2] != ["sh", "-c"]:
        return argv
    script, positional = argv[2], argv[4:]
    out: List[str] = []
    for token in shlex.split(script):
        out += positional if token == "$@" else [string.Template(token).substitute(env)]
    return out[1:] if out[0] == "exec" else out


def to_cli_argv(argv: List[str]) -> List[str]:
    """The arguments after ``wsss`` / ``python -m lightning_wsss``."""
    if argv[:3] == ["python", "-m", "lightning_wsss"]:
        return argv[3:]
    assert argv[0] == "wsss", f"the sweep does not run wsss: {argv}"
    return argv[1:]


# ---------------------------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    from lightning_wsss.datasets.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("syn") / "synthetic", num_train=8, num_val=4, size=64)


def write_affinity_inputs(workspace: Path, root: Path) -> None:
    """What experiments/synthetic/affinity.yaml reads, at its relative paths: confident labels (ground truth with
    a 255 band on object borders) and CAM files (``cams`` float16 [K, H, W] in [0, 1], ``keys`` int [K])."""
    labels_dir = workspace / "runs/synthetic/affinity_labels"
    cams_dir = workspace / "runs/synthetic/cam/predict/cams"
    rng = np.random.default_rng(0)
    for image_id in (root / "ImageSets/Segmentation/train.txt").read_text().split():
        mask = read_label_png(root / "SegmentationClass" / f"{image_id}.png")
        confident = mask.copy()
        border = np.zeros_like(mask, dtype=bool)
        border[:, 1:] |= mask[:, 1:] != mask[:, :-1]
        border[1:, :] |= mask[1:, :] != mask[:-1, :]
        confident[border] = 255
        write_label_png(labels_dir / f"{image_id}.png", confident)
        keys = np.array(sorted({int(k) for k in np.unique(mask)} - {0, 255}), dtype=np.int64)
        cams = np.stack([(mask == k).astype(np.float32) * 0.8 + rng.uniform(0, 0.2, mask.shape) for k in keys]) \
            if len(keys) else np.zeros((0,) + mask.shape, np.float32)
        write_npz_atomic(cams_dir / f"{image_id}.npz", cams=cams.astype(np.float16), keys=keys)


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_file_is_a_valid_spec(path):
    sweep = load_sweep(path)
    assert sweep["method"] in ("random", "bayes", "grid")
    assert sweep["metric"]["goal"] in ("maximize", "minimize") and sweep["metric"]["name"]
    assert sweep["program"] and "${args}" in sweep["command"]
    assert sweep["parameters"]
    for name, spec in sweep["parameters"].items():
        assert name.startswith(("model.init_args.", "data.init_args.", "trainer.")), name
        assert any(k in spec for k in ("value", "values", "min")), name
        if "min" in spec:
            assert spec["min"] < spec["max"] and spec.get("distribution", "uniform") in DISTRIBUTIONS
        if sweep["method"] == "grid":
            assert "min" not in spec, "grid search needs discrete values"
    header = path.read_text().splitlines()[0]
    assert header.startswith("#")
    assert "wandb sweep" in path.read_text() and "wandb agent" in path.read_text()


def test_sampler_is_seeded_and_within_bounds():
    spec = {"a": {"distribution": "log_uniform_values", "min": 0.001, "max": 0.1}, "b": {"min": 2, "max": 4},
            "c": {"values": [[1.0], [1.0, 0.5]]}, "d": {"value": 7}}
    draws = [sample_parameters(spec, seed) for seed in range(50)]
    assert sample_parameters(spec, 3) == sample_parameters(spec, 3)
    assert all(0.001 <= d["a"] <= 0.1 and d["b"] in (2, 3, 4) and d["c"] in ([1.0], [1.0, 0.5]) and d["d"] == 7 for d in draws)
    assert {d["b"] for d in draws} == {2, 3, 4}
    # W&B formats values with str(): a list reaches the CLI as its Python repr
    assert expand_command({"program": "p", "command": ["${env}", "x", "${args}"]}, {"k": [1.0, 0.5]}) == \
        ["/usr/bin/env", "x", "--k=[1.0, 0.5]"]


@pytest.mark.parametrize("path", [p for p in SWEEPS if "sh" in load_sweep(p)["command"]], ids=lambda p: p.name)
def test_shell_resolution_matches_real_sh(path, tmp_path):
    """The ``sh -c`` emulation gives the argv the real shell passes to ``wsss`` (a stub printing its arguments)."""
    if shutil.which("sh") is None or not Path("/usr/bin/env").exists():
        pytest.skip("needs sh and /usr/bin/env")
    sweep = load_sweep(path)
    argv = expand_command(sweep, sample_parameters(sweep["parameters"], seed=0))
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir()
    stub = stub_dir / "wsss"
    stub.write_text("#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done\n")
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub_dir}{os.pathsep}{os.environ['PATH']}", "WANDB_RUN_ID": RUN_ID}
    result = subprocess.run(argv, env=env, capture_output=True, check=True)
    real = result.stdout.decode().split("\0")[:-1]
    assert real == to_cli_argv(resolve_shell(argv, {"WANDB_RUN_ID": RUN_ID}))


def run_sweep_command(path: Path, workspace: Path, seed: int = 0):
    """Sample, expand, and run the sweep's command in-process for one batch; returns (cli, sampled values, argv)."""
    from lightning_wsss.cli.lightning import run_lightning_cli

    sweep = load_sweep(path)
    values = sample_parameters(sweep["parameters"], seed)
    argv = to_cli_argv(resolve_shell(expand_command(sweep, values), {"WANDB_RUN_ID": RUN_ID}))
    assert argv[0] == "fit"
    config = argv[argv.index("--config") + 1]
    assert (REPO / config).is_file(), f"{path.name} runs a config that does not exist: {config}"
    argv[argv.index("--config") + 1] = str(REPO / config)  # the run's cwd is the workspace, not the repo
    overridden = {a.split("=")[0][2:] for a in TINY}
    assert not overridden & set(values), "the test's overrides would hide a swept parameter"
    cli = run_lightning_cli(argv + ["--data.init_args.root=data/synthetic"] + TINY)
    return cli, values, argv


def check_values_reached_the_run(cli, values: Dict[str, Any]) -> None:
    for name, value in values.items():
        configured = cli.config["fit"][name]
        if isinstance(value, float):
            assert configured == pytest.approx(value), name
        else:
            assert configured == value, name
        if name.startswith("model.init_args."):
            assert cli.model.hparams[name.split(".", 2)[2]] == configured, name


@pytest.fixture
def workspace(tmp_path, synthetic_root, monkeypatch) -> Path:
    """A folder laid out like the repository root for the synthetic configs (data/synthetic), set as cwd."""
    ws = tmp_path / "repo"
    (ws / "data").mkdir(parents=True)
    shutil.copytree(synthetic_root, ws / "data" / "synthetic")
    monkeypatch.chdir(ws)
    return ws


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_run_logs_its_metric(path, workspace):
    if path.stem == "affinity":
        write_affinity_inputs(workspace, workspace / "data" / "synthetic")
    cli, values, argv = run_sweep_command(path, workspace, seed=0)
    metric = load_sweep(path)["metric"]["name"]
    logged = cli.trainer.callback_metrics
    assert metric in logged, f"{metric} is not logged; logged: {sorted(logged)}"
    assert math.isfinite(float(logged[metric]))
    check_values_reached_the_run(cli, values)
    if path.stem == "boxsup":  # every run gets its own round folder (BoxSup reuses masks found in out_dir)
        out_dir = Path(cli.model.hparams["out_dir"])
        assert out_dir == Path("runs/sweeps/boxsup") / RUN_ID
        assert len(list((workspace / out_dir / "round_0").glob("*.png"))) == 8


def test_affinity_sweep_values_drive_the_random_walk(workspace):
    """beta / log_t act at prediction: the same sampled arguments run ``wsss predict`` (one batch) over the CAM
    files and write walked labels with the CAMs' classes."""
    from lightning_wsss.callbacks import ArtifactWriter
    from lightning_wsss.cli.lightning import run_lightning_cli

    path = REPO / "experiments" / "sweeps" / "affinity.yaml"
    root = workspace / "data" / "synthetic"
    write_affinity_inputs(workspace, root)
    _, values, argv = run_sweep_command(path, workspace, seed=1)
    cli = run_lightning_cli(["predict"] + argv[1:] + ["--data.init_args.root=data/synthetic"] + TINY)
    assert cli.model.hparams["beta"] == pytest.approx(values["model.init_args.beta"])
    assert cli.model.walk_steps((8, 8)) == 2 ** values["model.init_args.log_t"]
    writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ArtifactWriter))
    written = sorted((writer.out_dir / "labels").glob("*.png"))
    assert len(written) == 2  # one batch of eval_batch_size 2
    for file in written:
        label = read_label_png(file)
        with np.load(workspace / "runs/synthetic/cam/predict/cams" / f"{file.stem}.npz") as cams:
            allowed = {0} | {int(k) for k in cams["keys"]}
        assert set(np.unique(label).tolist()) <= allowed
        assert label.shape == read_label_png(root / "SegmentationClass" / f"{file.stem}.png").shape
