"""The configs under ``experiments/``: every LightningCLI config parses, instantiates and trains one batch on a tiny
stand-in of its data set (laid out where the config expects it), the documented synthetic commands run as written,
every pipeline YAML loads and resolves to stages whose settings the classes accept, and the cluster scripts parse.

GPU / multi-GPU settings (``accelerator: gpu``, ``strategy: ddp``, ``bf16-mixed``, ImageNet downloads) are replaced by
CPU overrides for the runs; the parse test sees the configs unchanged.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import SHARED_DATA, write_tiny_voc
from lightning_wsss.datasets.classes import VOC_CLASSES
from lightning_wsss.io import read_label_png, write_label_png

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
FAMILY = ["cam", "affinity", "segmenter_full", "segmenter_pseudo", "boxsup"]
PIPELINES = ["pipeline_image", "pipeline_box", "pipeline_full"]
SYNTHETIC = {"num_train": 8, "num_val": 4, "size": 64}


def lightning_configs() -> List[Path]:
    """Every ``wsss fit`` config: YAML under experiments/<set>/ except pipeline_*.yaml and the sweeps."""
    return sorted(p for p in EXPERIMENTS.glob("*/*.yaml") if p.parent.name != "sweeps" and not p.name.startswith("pipeline_"))


def pipeline_configs() -> List[Path]:
    return sorted(EXPERIMENTS.glob("*/pipeline_*.yaml"))


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------------- inventory, headers
def test_expected_configs_exist():
    names = {rel(p) for p in lightning_configs() + pipeline_configs()}
    for data_set in ("synthetic", "horses", "voc2012"):
        for name in FAMILY + PIPELINES:
            assert f"experiments/{data_set}/{name}.yaml" in names
    for name in FAMILY:
        assert f"experiments/coco2014/{name}.yaml" in names
    for name in ("cam", "affinity", "boxsup"):
        assert (EXPERIMENTS / "sweeps" / f"{name}.yaml").is_file()
    for name in ("slurm_fit.sh", "slurm_pipeline.sh", "torchrun_fit.sh", "README.md"):
        assert (EXPERIMENTS / "cluster" / name).is_file()


def header_lines(path: Path) -> List[str]:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


@pytest.mark.parametrize("path", lightning_configs() + pipeline_configs(), ids=rel)
def test_config_starts_with_its_run_commands(path):
    header = header_lines(path)
    assert header, f"{rel(path)} must start with a comment block"
    commands = [line[2:] for line in header if line.startswith("# wsss ") or line.startswith("# sbatch ")]
    if path.name.startswith("pipeline_"):
        assert f"wsss pipeline {rel(path)}" in "\n".join(commands)
    else:
        assert any(c.startswith(f"wsss fit --config {rel(path)}") for c in commands), "no `wsss fit` line for this file"


@pytest.mark.parametrize("path", [p for p in lightning_configs() if p.parent.name in ("voc2012", "coco2014")], ids=rel)
def test_cluster_configs_use_gpu_ddp_settings(path):
    trainer = load_yaml(path)["trainer"]
    assert trainer["accelerator"] == "gpu" and trainer["devices"] == -1 and trainer["strategy"] == "ddp"
    assert trainer["precision"] == "bf16-mixed" and trainer["sync_batchnorm"] is True
    init = load_yaml(path)["model"]["init_args"]
    assert init.get("weights", init.get("encoder_weights")) == "imagenet"
    assert init["output_stride"] == 16
    assert "/path/to/resnet50.pth" in path.read_text()  # the offline form is shown


@pytest.mark.parametrize("path", [p for p in pipeline_configs() if p.parent.name in ("voc2012", "coco2014")], ids=rel)
def test_cluster_pipelines_are_sized_for_8_gpus(path):
    """8 processes x the per-process batch = the recipes' global batch (16; psa's affinity 8, irn's 32), with the
    rule for other GPU counts beside them (in the file or its base)."""
    from lightning_wsss.pipeline.checks import load_config

    config = load_config(path)
    trainer = config["trainer"]
    assert (trainer["devices"], trainer["strategy"], trainer["sync_batchnorm"]) == (8, "ddp", True)
    assert 8 * config["data"]["batch_size"] == 16
    affinity = ((config.get("stages") or {}).get("affinity") or {}).get("data", {}).get("batch_size")
    if affinity is not None:
        assert 8 * affinity == (32 if path.stem.endswith("irn") else 8)
    sized = (path.with_name("pipeline_image.yaml") if path.stem.endswith("irn") else path).read_text()
    assert "On G GPUs set batch_size to 16 / G" in sized.replace("\n# ", " ")
    assert "torchrun --nproc_per_node 8 -m lightning_wsss pipeline" in "\n".join(header_lines(path))


# ---------------------------------------------------------------------------------------------- parsing
def print_config(argv: Sequence[str]) -> tuple:
    """Run ``wsss fit ... --print_config`` in-process; returns (exit code, printed text)."""
    from lightning_wsss.cli.lightning import run_lightning_cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            run_lightning_cli(["fit", *argv, "--print_config"])
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
    return code, out.getvalue()


@pytest.mark.parametrize("path", lightning_configs(), ids=rel)
def test_config_parses_unchanged(path, monkeypatch):
    monkeypatch.chdir(REPO)
    code, text = print_config(["--config", rel(path)])
    assert code == 0, text[-2000:]
    printed = yaml.safe_load(text)
    assert printed["model"]["class_path"] == load_yaml(path)["model"]["class_path"]
    assert printed["data"]["class_path"] == load_yaml(path)["data"]["class_path"]


def test_parse_rejects_an_unknown_init_arg(monkeypatch):
    """The parse test can fail: a key the task does not take is an error."""
    monkeypatch.chdir(REPO)
    code, _ = print_config(["--config", "experiments/synthetic/affinity.yaml", "--model.init_args.not_a_parameter=1"])
    assert code != 0


# ---------------------------------------------------------------------------------------------- tiny workspaces
def make_synthetic_root(root: Path) -> Path:
    from lightning_wsss.datasets.synthetic import make_synthetic

    return make_synthetic(root, **SYNTHETIC)


def write_tiny_coco(workspace: Path) -> None:
    """data/coco/images + annotations/instances_{train,val}2014.json as the COCO configs expect (3 categories)."""
    images = workspace / "data" / "coco" / "images"
    annotations = workspace / "data" / "coco" / "annotations"
    images.mkdir(parents=True)
    annotations.mkdir(parents=True)
    rng = np.random.default_rng(0)
    categories = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
    for split, count in (("train2014", 4), ("val2014", 2)):
        entries, anns = [], []
        for i in range(count):
            name = f"COCO_{split}_{i:012d}.jpg"
            Image.fromarray(rng.integers(0, 255, (48, 56, 3), dtype=np.uint8)).save(images / name)
            entries.append({"id": i + 1, "file_name": name, "height": 48, "width": 56})
            x, y = 4 + 2 * i, 6
            anns.append({"id": i + 1, "image_id": i + 1, "category_id": categories[i % 3]["id"], "iscrowd": 0,
                         "area": 400.0, "bbox": [x, y, 20, 20],
                         "segmentation": [[x, y, x + 20, y, x + 20, y + 20, x, y + 20]]})
        data = {"images": entries, "categories": categories, "annotations": anns}
        (annotations / f"instances_{split}.json").write_text(json.dumps(data))


def make_workspace(tmp_path: Path, data_set: str) -> Path:
    """A working folder laid out as the repository root is for ``data_set`` (data where the configs look)."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    if data_set == "synthetic":
        make_synthetic_root(workspace / "data" / "synthetic")
    elif data_set == "voc2012":
        root = write_tiny_voc(workspace / "data" / "VOCdevkit" / "VOC2012", num_images=6, size=48,
                              splits={"train_aug": [0, 1, 2, 3], "train": [0, 1], "val": [4, 5]},
                              class_names=VOC_CLASSES)
        (root / "class_names.txt").unlink()  # as in the real VOC: the 21 names come from the code
    elif data_set == "coco2014":
        write_tiny_coco(workspace)
    elif data_set == "horses":
        (tmp_path / "shared").mkdir()  # ../shared/data from the workspace, as from the repository root
        (tmp_path / "shared" / "data").symlink_to(SHARED_DATA, target_is_directory=True)
    return workspace


def fill_pseudo_dir(workspace: Path, config: dict) -> None:
    """Write the pseudo-mask folder a PseudoMaskDataModule config reads (ground truth, or zeros for COCO)."""
    init = config["data"]["init_args"]
    if "pseudo_mask_dir" not in init:
        return
    target = workspace / init["pseudo_mask_dir"]
    if init.get("dataset") == "coco":
        meta = json.loads((workspace / init["train_split"]).read_text())
        for image in meta["images"]:
            write_label_png(target / f"{image['id']}.png", np.zeros((image["height"], image["width"]), np.uint8))
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to((workspace / init["root"] / "SegmentationClass").resolve(), target_is_directory=True)


def cpu_overrides(config: dict, crop: int) -> List[str]:
    """Replace GPU / DDP / download settings by a one-batch CPU run (fast_dev_run also mutes the loggers)."""
    args = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=1", "--trainer.strategy=auto",
            "--trainer.precision=32-true", "--trainer.sync_batchnorm=false",
            "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--data.init_args.batch_size=2", "--data.init_args.eval_batch_size=2", f"--data.init_args.crop_size={crop}",
            "--data.init_args.num_workers=0"]
    from lightning_wsss.models.pretrained import resolve_weights

    init = config["model"]["init_args"]
    for key, name in (("weights", "backbone"), ("encoder_weights", "encoder")):
        if resolve_weights(str(init.get(name)), init.get(key)) == "imagenet":  # a hub download: not offline
            args.append(f"--model.init_args.{key}=null")
    return args


EXPECTED_CLASSES = {"synthetic": None, "voc2012": 21, "coco2014": 4, "horses": 2}

# CAMClassifier builds torchmetrics multi-label metrics, which need >= 2 labels: with one foreground class (the
# horse set) it cannot be constructed. A bug in lightning_wsss/tasks/classifier.py, reported; strict, so the
# marker must go when it is fixed.
KNOWN_FAILURES: dict = {}


def run_params(slow_sets=("voc2012", "coco2014")):
    """Configs as parameters; the ResNet-50 ones (voc2012, coco2014) train one batch only with ``-m slow``."""
    params = []
    for path in lightning_configs():
        marks = []
        if path.parent.name == "horses":
            marks.append(pytest.mark.shared_data)
        if path.parent.name in slow_sets:
            marks.append(pytest.mark.slow)
        if rel(path) in KNOWN_FAILURES:
            marks.append(pytest.mark.xfail(reason=KNOWN_FAILURES[rel(path)], strict=True))
        params.append(pytest.param(path, marks=marks, id=rel(path)))
    return params


def prepare(path: Path, tmp_path: Path, monkeypatch, request) -> tuple:
    """Workspace with the config's data (and pseudo masks) in place, cwd set to it; returns (config, argv)."""
    data_set = path.parent.name
    if data_set == "horses":
        request.getfixturevalue("shared_data")
    config = load_yaml(path)
    workspace = make_workspace(tmp_path, data_set)
    fill_pseudo_dir(workspace, config)
    monkeypatch.chdir(workspace)
    argv = ["--config", str(path)] + cpu_overrides(config, 32 if data_set != "horses" else 64)
    if data_set == "horses":  # four training images: BoxSup builds its round-0 masks for the whole split
        ids = (SHARED_DATA / "weizmann-horse-voc" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[:4]
        argv.append(f"--data.init_args.train_ids=[{','.join(ids)}]")
    return config, argv


def expected_classes(path: Path) -> int:
    expected = EXPECTED_CLASSES[path.parent.name]
    if expected is None:
        expected = len(Path("data/synthetic/class_names.txt").read_text().split())
    return expected


@pytest.mark.parametrize("path", [p for p in run_params(slow_sets=()) if p.values[0].parent.name in ("voc2012", "coco2014")])
def test_config_instantiates_on_a_stand_in_data_set(path, tmp_path, monkeypatch, request):
    """Build the config's model, DataModule and Trainer (no run) on a tiny data set laid out where the config
    expects its data; the model's num_classes comes from the data set through the CLI link. (For the GPU configs,
    whose one-batch run is marked slow; the others run below.)"""
    import lightning as L

    from lightning_wsss.cli.lightning import WSSSLightningCLI, _register_classes

    config, argv = prepare(path, tmp_path, monkeypatch, request)
    _register_classes()
    cli = WSSSLightningCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                           save_config_kwargs={"overwrite": True}, args=argv, run=False, auto_configure_optimizers=False)
    assert type(cli.model).__name__ == config["model"]["class_path"].rsplit(".", 1)[-1]
    assert type(cli.datamodule).__name__ == config["data"]["class_path"].rsplit(".", 1)[-1]
    assert cli.datamodule.num_classes == expected_classes(path) and cli.model.num_classes == expected_classes(path)


@pytest.mark.parametrize("path", run_params())
def test_config_trains_one_batch_on_a_stand_in_data_set(path, tmp_path, monkeypatch, request):
    """``wsss fit`` of the config for one batch (fast_dev_run, CPU overrides) on the stand-in data set."""
    from lightning_wsss.cli.lightning import run_lightning_cli

    config, argv = prepare(path, tmp_path, monkeypatch, request)
    cli = run_lightning_cli(["fit"] + argv)
    assert cli.model.num_classes == expected_classes(path)
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"])
    if config["model"]["class_path"].endswith(("Segmenter", "Trainer")):
        assert 0.0 <= float(metrics["val/miou"]) <= 1.0
    if config["model"]["class_path"].endswith("BoxSupSegmenter"):
        rounds = Path(config["model"]["init_args"]["out_dir"]) / "round_0"
        assert len(list(rounds.glob("*.png"))) == len(cli.datamodule.datasets["fit"])


# ---------------------------------------------------------------------------------------------- documented commands
def header_commands(path: Path) -> List[str]:
    """The runnable lines of a config's header: ``wsss ...`` and ``python -c ...``."""
    return [line[2:] for line in header_lines(path) if line.startswith(("# wsss ", "# python -c "))]


SMALL_RUN = ["--trainer.max_epochs=1", "--data.init_args.batch_size=2", "--data.init_args.eval_batch_size=2",
             "--data.init_args.crop_size=32", "--trainer.enable_progress_bar=false",
             "--trainer.enable_model_summary=false"]
SMALL_OVERRIDES = {  # per config: keep each run short but leave what the next commands read
    "boxsup": ["--trainer.max_epochs=3", "--model.init_args.round_epochs=1", "--model.init_args.crf_candidate=false"],
    "cam": ["--model.init_args.cam_scales=[1.0]"],
}


def run_documented(command: str, name: str, capsys) -> None:
    from lightning_wsss.cli.lightning import run_lightning_cli
    from lightning_wsss.cli.main import main

    argv = shlex.split(command)
    if argv[:2] == ["python", "-c"]:
        exec(compile(argv[2], f"<{name} header>", "exec"), {})
        return
    assert argv[0] == "wsss"
    if argv[1] == "make-synthetic":
        return  # the tiny set is already there (a full-size one would take minutes)
    if argv[1] in ("fit", "validate", "test", "predict"):
        extra = SMALL_RUN + SMALL_OVERRIDES.get(name, [])
        if argv[1] != "fit":
            extra = [a for a in extra if not a.startswith(("--trainer.max_epochs", "--model.init_args.round"))]
        run_lightning_cli(argv[1:] + extra)
        return
    assert main(argv[1:]) == 0, capsys.readouterr().err


@pytest.mark.slow
def test_synthetic_header_commands_run_as_written(tmp_path, monkeypatch, capsys):
    """Every ``wsss`` / ``python -c`` line of the synthetic configs' headers, in order, in a workspace holding a tiny
    synthetic set at data/synthetic: the documented chain cam -> CAMs -> affinity labels -> AffinityNet -> walk ->
    segmenter, and BoxSup, works with the paths the configs use."""
    workspace = tmp_path / "repo"
    make_synthetic_root(workspace / "data" / "synthetic")
    (workspace / "experiments").symlink_to(EXPERIMENTS, target_is_directory=True)
    monkeypatch.chdir(workspace)
    done = set()
    for name in ["cam", "affinity", "segmenter_full", "segmenter_pseudo", "boxsup"]:
        for command in header_commands(EXPERIMENTS / "synthetic" / f"{name}.yaml"):
            if command in done:
                continue
            run_documented(command, name, capsys)
            done.add(command)
    train_ids = (workspace / "data/synthetic/ImageSets/Segmentation/train.txt").read_text().split()
    for folder in ("runs/synthetic/cam/predict/labels", "runs/synthetic/affinity_labels",
                   "runs/synthetic/affinity/predict/labels", "runs/synthetic/boxsup/rounds/round_2"):
        assert sorted(p.stem for p in (workspace / folder).glob("*.png")) == sorted(train_ids), folder
    walked = read_label_png(workspace / "runs/synthetic/affinity/predict/labels" / f"{train_ids[0]}.png")
    assert walked.shape == (SYNTHETIC["size"], SYNTHETIC["size"])
    assert (workspace / "runs/synthetic/segmenter_full/checkpoints/last.ckpt").is_file()


# ---------------------------------------------------------------------------------------------- pipeline YAMLs
STAGE_HASHES = Path(__file__).with_name("experiment_stage_hashes.json")
"""Every pipeline config's stage folders (root/stage/hash), as computed before stages were declared in a registry
(a hybrid config's box images stubbed): a change here reruns the stages of earlier runs."""


@pytest.fixture
def stub_box_images(monkeypatch):
    """A hybrid config draws its box images from the data set, which a fresh clone does not have."""
    from lightning_wsss.pipeline import hybrid

    monkeypatch.setattr(hybrid, "box_ids", lambda config: ["stand_in_id"] if config.get("supervision") == "hybrid" else None)


def stage_folders(config: dict) -> Dict[str, str]:
    """``{stage: root/folder/hash}`` of a loaded config, as the runner places them."""
    from lightning_wsss.pipeline.config import stage_hash
    from lightning_wsss.pipeline.defaults import resolve
    from lightning_wsss.pipeline.plan import build_stages

    stages = build_stages(resolve(config))
    folders = {s.name: s.folder or s.name for s in stages}
    digests: Dict[str, str] = {}
    for stage in stages:
        digests[stage.name] = stage_hash(stage.hashed_config(), {folders[n]: digests[n] for n in stage.upstream})
    return {s.name: f"{s.root or '.'}/{folders[s.name]}/{digests[s.name]}" for s in stages}


@pytest.mark.parametrize("path", pipeline_configs(), ids=rel)
def test_pipeline_config_resolves_to_valid_stages(path, stub_box_images):
    """load_config checks every key and value against what the stages take (lightning_wsss.pipeline.checks:
    Trainer, model and DataModule signatures, stage options); the stages then build, in the preset's order or the
    config's own."""
    from lightning_wsss.pipeline.checks import load_config
    from lightning_wsss.pipeline.plan import presets

    config = load_config(path)
    assert config["supervision"] in path.stem or config.get("summary_key", "").split("_")[-1] in path.stem
    folders = stage_folders(config)
    order = config.get("order") or presets()[config["supervision"]]["order"]  # a config may reorder (cam_crf)
    assert [n for n in folders if not n.startswith("seed_")] == [n for n in order if not n.startswith("seed_")]
    if path.parent.name in SHARED_ROOTS:
        assert config["dataset"]["root"] == SHARED_ROOTS[path.parent.name]
        dumped = yaml.safe_dump(config)
        # ImageNet weights from the packaged file (any machine, offline), never a path into ../shared
        assert "weights: imagenet" in dumped and "shared/data/weights" not in dumped
        if (REPO / "../shared/data").is_dir():  # the paths resolve from the repository root, where commands run
            assert (REPO / config["dataset"]["root"] / "ImageSets" / "Segmentation" / "train.txt").is_file()


def test_pipeline_configs_keep_their_stage_hashes(stub_box_images):
    """The stage folders of every pipeline config are those of earlier runs (complete stages are reused)."""
    from lightning_wsss.pipeline.checks import load_config

    expected = json.loads(STAGE_HASHES.read_text())
    assert {rel(p): stage_folders(load_config(p)) for p in pipeline_configs()} == expected


@pytest.mark.parametrize("name", ["voc2012", "coco2014"])
def test_psa_baselines_walk_psa(name, stub_box_images):
    """The VOC / COCO image pipelines are psa's recipe: their walk states mode psa, so the defaults' irn walk (and
    its background threshold) never leaks in through the merge."""
    from lightning_wsss.pipeline.checks import load_config
    from lightning_wsss.pipeline.defaults import resolve

    walk = resolve(load_config(REPO / "experiments" / name / "pipeline_image.yaml"))["stages"]["random_walk"]["walk"]
    assert (walk["mode"], walk["beta"], walk["log_t"], walk["bg_alpha"]) == ("psa", 8.0, 8, 16.0)


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*/study/*.yaml")), ids=rel)
def test_study_configs_load(path, stub_box_images):
    """The study configs (variants of a pipeline config, each measured in the README) pass the same key and value
    checks as the pipelines and build their stages."""
    from lightning_wsss.pipeline.checks import load_config

    assert stage_folders(load_config(path))


SHARED_ROOTS = {"horses": "../shared/data/weizmann-horse-voc", "camvid": "../shared/data/camvid-seq05vd"}


def test_pipeline_check_can_fail(tmp_path):
    """A pipeline YAML without dataset.root, or with a key no stage takes, is refused by load_config."""
    from lightning_wsss.errors import DataError
    from lightning_wsss.pipeline.checks import load_config

    bad = tmp_path / "pipeline_image.yaml"
    bad.write_text("supervision: image\ndataset: {name: x}\n")
    with pytest.raises(DataError, match="dataset.root"):
        load_config(bad)
    bad.write_text("supervision: image\ndataset: {root: x}\nstages: {cams: {cam: {not_a_parameter: 1}}}\n")
    with pytest.raises(DataError, match="stages.cams.cam.not_a_parameter: unknown key"):
        load_config(bad)


# ---------------------------------------------------------------------------------------------- cluster scripts
@pytest.mark.parametrize("script", sorted((EXPERIMENTS / "cluster").glob("*.sh")), ids=lambda p: p.name)
def test_cluster_script_is_valid_bash(script):
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    assert text.startswith("#!/bin/bash")
    if script.name.startswith("slurm_"):
        assert "#SBATCH --nodes" in text and "#SBATCH --ntasks-per-node" in text
        assert re.search(r"^srun( --[\w=-]+)* wsss ", text, re.MULTILINE)
    if script.name == "slurm_pipeline.sh":  # one task per GPU; a task dying silently stops the others
        assert "srun --kill-on-bad-exit=1 wsss pipeline" in text


def test_torchrun_script_launches_the_module_entry_point():
    text = (EXPERIMENTS / "cluster" / "torchrun_fit.sh").read_text()
    assert '-m lightning_wsss "$COMMAND"' in text and "WSSS_COMMAND:-fit" in text
    assert (REPO / "lightning_wsss" / "__main__.py").is_file()
