"""Hostile and broken inputs (issue 18): pickles that run code, concurrent summaries, class ids out of range,
moved output folders, full disks and permissions, malformed text and JSON, busy stages, file modes.

Item 4 of the issue (exact resume of every training stage) is tested in ``test_resume.py``.
"""

from __future__ import annotations

import builtins
import collections
import errno
import fcntl
import json
import os
import shutil
import stat
import threading
from pathlib import Path
from typing import List

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lightning_wsss.cli.main import main
from lightning_wsss.datasets import VOCSegmentation
from lightning_wsss.datasets.coco import COCOSegmentation
from lightning_wsss.errors import DataError
from lightning_wsss.io import atomic_write, write_json_atomic, write_label_png, write_npz_atomic
from lightning_wsss.metrics import SegmentationIoU
from lightning_wsss.pipeline import summary as summary_module
from lightning_wsss.pipeline.defaults import resolve
from lightning_wsss.pipeline.plan import build_stages
from lightning_wsss.pipeline.config import stage_hash
from lightning_wsss.pipeline.runner import PipelineContext, Stage, run_stages
from lightning_wsss.serialization import TRUST_ENV, UnsafePickleError, safe_torch_load

from conftest import TINY_CLASSES

SEGMENTER = {"class_path": "DeepLabSegmenter", "init_args": {
    "arch": "deeplabv3plus", "encoder": "tu-test_resnet", "output_stride": 16, "decoder_channels": 16, "lr": 0.05}}


def tiny_pipeline(root: Path, tmp_path: Path, **overrides) -> Path:
    """A one-epoch full-mask pipeline config on ``root`` written to ``tmp_path/full.yaml``."""
    config = {"name": "hostile", "supervision": "full", "progress_bar": False, "logger": "none",
              "dataset": {"root": str(root)}, "data": {"batch_size": 2, "eval_batch_size": 2, "crop_size": 32},
              "stages": {"segmenter": {"model": SEGMENTER, "trainer": {"max_epochs": 1}}}, **overrides}
    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def one_line_error(capsys) -> str:
    """stderr of a ``wsss`` call that failed cleanly: exactly one line, no traceback."""
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if not line.startswith(("Seed set", "/"))]  # seeding notes, warnings' file lines
    assert len(lines) == 1 and "Traceback" not in "\n".join(err), err
    return lines[0]


# ------------------------------------------------------------------------------------------ 1. pickles run code
class RunsCode:
    """Unpickling this creates ``marker`` (as an ``os.system`` payload would run its command)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def malicious_file(path: Path, marker: Path, checkpoint: bool = False) -> Path:
    payload = {"conv.weight": torch.zeros(2, 3), "extra": RunsCode(marker)}
    torch.save({"state_dict": payload, "hyper_parameters": {}} if checkpoint else payload, path)
    return path


def test_weights_file_that_runs_code_is_refused(tmp_path, monkeypatch):
    from lightning_wsss.models.deeplab import build_deeplab

    monkeypatch.delenv(TRUST_ENV, raising=False)
    marker = tmp_path / "pwned"
    weights = malicious_file(tmp_path / "evil.pth", marker)
    with pytest.raises(DataError, match=r"evil\.pth: weights file refused: it needs io\.open.*WSSS_TRUST_PICKLES=1"):
        build_deeplab("deeplabv3plus", "tu-test_resnet", 3, encoder_weights=str(weights), decoder_channels=16)
    assert not marker.exists()
    # the documented opt-in: the user trusts the file, so it is fully unpickled
    monkeypatch.setenv(TRUST_ENV, "1")
    assert "conv.weight" in safe_torch_load(weights)
    assert marker.exists()


class RunsShellCommand:
    """The payload of the issue: ``os.system`` on unpickling."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_pipeline_with_code_running_encoder_weights_stops_in_one_line(tiny_voc, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    marker = tmp_path / "pwned"
    weights = tmp_path / "encoder.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": RunsShellCommand(marker)}, weights)
    model = {**SEGMENTER, "init_args": {**SEGMENTER["init_args"], "encoder_weights": str(weights)}}
    config = tiny_pipeline(tiny_voc, tmp_path, stages={"segmenter": {"model": model, "trainer": {"max_epochs": 1}}})
    assert main(["pipeline", str(config), "--out", str(tmp_path / "out")]) == 2
    line = one_line_error(capsys)
    assert f"{weights}: weights file refused: it needs posix.system" in line or "it needs os.system" in line, line
    assert not marker.exists()


def test_legacy_ordereddict_weights_still_load(tmp_path):
    state = collections.OrderedDict([("a.weight", torch.ones(2, 2)), ("a.bias", torch.zeros(2))])
    path = tmp_path / "legacy.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    from lightning_wsss.models.backbones import load_state_dict_file

    loaded = load_state_dict_file(str(path))
    assert list(loaded) == ["a.weight", "a.bias"] and torch.equal(loaded["a.weight"], torch.ones(2, 2))


def test_shared_efficientnet_weights_load_weights_only(shared_data):
    from lightning_wsss.models.backbones import load_state_dict_file

    path = shared_data / "weights" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    assert len(load_state_dict_file(str(path))) > 100


def test_checkpoint_that_runs_code_is_refused_on_resume(tmp_path, tiny_voc):
    from lightning_wsss.pipeline.training import fit_model, make_datamodule

    marker = tmp_path / "pwned"
    stage_dir = tmp_path / "stage"
    (stage_dir / "checkpoints").mkdir(parents=True)
    malicious_file(stage_dir / "checkpoints" / "last.ckpt", marker, checkpoint=True)
    ctx = PipelineContext(tmp_path, {"dataset": {"root": str(tiny_voc)}, "logger": "none", "progress_bar": False,
                                     "data": {"crop_size": 32, "batch_size": 2}})
    dm = make_datamodule(ctx, "MaskDataModule")
    with pytest.raises(UnsafePickleError, match=r"last\.ckpt: checkpoint refused"):
        fit_model(ctx, stage_dir, "segmenter", SEGMENTER, dm, {"max_epochs": 1})
    assert not marker.exists()


def test_cam_file_with_pickled_objects_is_refused(tmp_path):
    from lightning_wsss.cam.files import load_cams

    path = tmp_path / "img_0.npz"
    np.savez(path, cams=np.array([RunsCode(tmp_path / "pwned")], dtype=object), keys=np.array([1]))
    with pytest.raises(DataError, match=r"img_0\.npz: unreadable CAM file"):
        load_cams(path)
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------------------------------ 2. summary entries
def test_concurrent_summary_updates_keep_every_entry(tiny_voc, tmp_path, monkeypatch):
    """Three pipelines finishing at once on one --out: each entry survives (the merge is under a lock)."""
    write = summary_module.write_json_atomic

    def slow_write(path, obj, **kwargs):  # widen the window between reading and replacing summary.json
        threading.Event().wait(0.3)
        write(path, obj, **kwargs)

    monkeypatch.setattr(summary_module, "write_json_atomic", slow_write)
    config = {"dataset": {"root": str(tiny_voc), "name": "tiny"}, "data": {}}
    keys = ["image", "image_sec", "image_cda"]
    threads = [threading.Thread(target=summary_module.update_summary, args=(tmp_path, config, {key: {"val_miou": 0.5}}))
               for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sorted(summary["supervision"]) == sorted(keys)


# ------------------------------------------------------------------------------------------ 3. class ids
def _predictions(tiny_voc: Path, tmp_path: Path) -> Path:
    """A prediction folder equal to the val ground truth (4 classes: 0..3 and 255)."""
    pred = tmp_path / "pred"
    pred.mkdir()
    for image_id in ("img_4", "img_5"):
        shutil.copy(tiny_voc / "SegmentationClass" / f"{image_id}.png", pred / f"{image_id}.png")
    return pred


@pytest.mark.parametrize("value", [4, 5, 8, 200])
def test_evaluate_rejects_prediction_values_outside_the_classes(tiny_voc, tmp_path, capsys, value):
    pred = _predictions(tiny_voc, tmp_path)
    label = np.array(Image.open(pred / "img_5.png"))
    label[10, 10] = value
    write_label_png(pred / "img_5.png", label)
    assert main(["evaluate", "--pred", str(pred), "--root", str(tiny_voc), "--split", "val"]) == 2
    line = one_line_error(capsys)
    assert f"img_5.png: prediction values [{value}] are outside the class range 0..3 (255 = ignore)" in line


def test_evaluate_rejects_ground_truth_values_outside_the_classes(tiny_voc, tmp_path, capsys):
    pred = _predictions(tiny_voc, tmp_path)
    mask = np.array(Image.open(tiny_voc / "SegmentationClass" / "img_4.png"))
    mask[5, 5] = 4
    write_label_png(tiny_voc / "SegmentationClass" / "img_4.png", mask)
    assert main(["evaluate", "--pred", str(pred), "--root", str(tiny_voc), "--split", "val"]) == 2
    assert "SegmentationClass/img_4.png: mask values [4] are outside the class range 0..3" in one_line_error(capsys)


def test_evaluate_rejects_a_jpeg_saved_as_png(tiny_voc, tmp_path, capsys):
    pred = _predictions(tiny_voc, tmp_path)
    label = np.array(Image.open(pred / "img_4.png"))
    Image.fromarray(label, mode="L").save(pred / "img_4.png", format="JPEG")
    assert main(["evaluate", "--pred", str(pred), "--root", str(tiny_voc), "--split", "val"]) == 2
    assert "img_4.png: label map must be a PNG file, but this is a JPEG image" in one_line_error(capsys)


def test_the_same_class_id_rule_for_pseudo_masks_and_the_metric(tiny_voc, tmp_path):
    from lightning_wsss.datamodules import PseudoMaskDataModule

    pseudo = tmp_path / "pseudo"
    for i in range(4):
        write_label_png(pseudo / f"img_{i}.png", np.full((48, 48), 3 if i else 9, np.uint8))
    dm = PseudoMaskDataModule(pseudo_mask_dir=str(pseudo), root=str(tiny_voc), crop_size=32, batch_size=2)
    dm.setup("fit")
    with pytest.raises(DataError, match=r"img_0\.png: pseudo mask values \[9\] are outside the class range 0\.\.3"):
        dm.datasets["fit"][0]
    metric = SegmentationIoU(4)
    with pytest.raises(ValueError, match=r"prediction values \[4\] are outside the class range 0\.\.3"):
        metric.update(torch.tensor([[0, 4]]), torch.tensor([[0, 1]]))


# ------------------------------------------------------------------------------------------ 5. moved --out
def _two_stages(lr: float) -> List[Stage]:
    def first(ctx, stage_dir, upstream, config):
        write_label_png(stage_dir / "labels" / "a.png", np.zeros((2, 2), np.uint8))
        return {"outputs": {"labels_dir": str(stage_dir / "labels"), "checkpoint": str(stage_dir / "labels" / "a.png"),
                            "class_path": "CAMClassifier"}}

    def second(ctx, stage_dir, upstream, config):
        labels = Path(upstream["first"].outputs["labels_dir"])
        if not (labels / "a.png").is_file():
            raise DataError(labels, "pseudo-mask folder does not exist")
        assert Path(upstream["first"].outputs["checkpoint"]).is_file()
        assert upstream["first"].outputs["class_path"] == "CAMClassifier"
        return {"metrics": {"lr": config["lr"]}}

    return [Stage("first", {"a": 1}, first), Stage("second", {"lr": lr}, second, upstream=("first",))]


def test_relative_out_is_reusable_from_another_folder_and_after_a_move(tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    run_stages(PipelineContext(Path("rel") / "box", {}, lambda _: None), _two_stages(0.1))
    marker = json.loads(next((tmp_path / "rel" / "box" / "first").glob("*/stage.json")).read_text())
    assert marker["outputs"]["labels_dir"] == "labels" and marker["dir"] == "."
    # the same folder given by its absolute path from another working directory: the first stage is reused
    monkeypatch.chdir(tmp_path / "elsewhere")
    results = run_stages(PipelineContext(tmp_path / "rel" / "box", {}, lambda _: None), _two_stages(0.2))
    assert results["first"].reused and results["second"].metrics == {"lr": 0.2}
    assert Path(results["first"].outputs["labels_dir"]) == tmp_path / "rel" / "box" / "first" / marker_hash(tmp_path) / "labels"
    # and after moving the whole output folder
    shutil.move(str(tmp_path / "rel"), str(tmp_path / "moved"))
    results = run_stages(PipelineContext(tmp_path / "moved" / "box", {}, lambda _: None), _two_stages(0.3))
    assert results["first"].reused and results["second"].metrics == {"lr": 0.3}


def marker_hash(tmp_path: Path) -> str:
    return stage_hash({"a": 1}, {})


# ------------------------------------------------------------------------------------------ 6. disk full, permissions
def test_disk_full_during_a_checkpoint_is_one_line_and_leaves_no_temporary_file(tiny_voc, tmp_path, capsys,
                                                                                  monkeypatch):
    def full_disk(self, filepath, weights_only=False, storage_options=None):
        with open(filepath, "wb") as handle:  # what a full disk leaves: part of the file
            handle.write(b"\0" * 1_500_000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(L.Trainer, "save_checkpoint", full_disk)
    out = tmp_path / "out"
    assert main(["pipeline", str(tiny_pipeline(tiny_voc, tmp_path)), "--out", str(out)]) == 2
    line = one_line_error(capsys)
    assert line.startswith("wsss pipeline: error: ") and "last.ckpt: No space left on device" in line
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_disk_full_in_an_atomic_write_names_the_file_and_removes_the_temporary_one(tmp_path, monkeypatch):
    import lightning_wsss.io as io_module

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io_module.os, "fsync", full)
    with pytest.raises(OSError, match=r"No space left on device: '.*summary\.json'") as info:
        write_json_atomic(tmp_path / "summary.json", {"a": 1})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "summary.json")
    assert list(tmp_path.iterdir()) == []


def test_permission_error_is_one_line(tiny_voc, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    original = Path.mkdir

    def denied(self, *args, **kwargs):
        if str(self).startswith(str(out)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", denied)
    assert main(["pipeline", str(tiny_pipeline(tiny_voc, tmp_path)), "--out", str(out)]) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"wsss pipeline: error: {out}") and line.endswith(": Permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_one_line(tiny_voc, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert main(["pipeline", str(tiny_pipeline(tiny_voc, tmp_path)), "--out", str(out)]) == 2
        assert "Permission denied" in one_line_error(capsys)
    finally:
        out.chmod(0o700)


def test_out_that_is_a_file_is_one_line(tiny_voc, tmp_path, capsys):
    config = tiny_pipeline(tiny_voc, tmp_path)
    (tmp_path / "out").write_text("not a folder")
    assert main(["pipeline", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "out: the output folder is a file" in one_line_error(capsys)
    assert main(["pipeline", str(config), "--out", str(tmp_path / "out" / "sub")]) == 2
    assert "Not a directory" in one_line_error(capsys)
    assert main(["make-synthetic", "--out", str(tmp_path / "out" / "data"), "--num-train", "2", "--num-val", "1"]) == 2
    assert "Not a directory" in one_line_error(capsys)


# ------------------------------------------------------------------------------------------ 7. one-line errors
@pytest.mark.parametrize("encoding, expected", [("utf-16", "split file is UTF-16 text"),
                                                ("latin-1", r"split file is not UTF-8 text \(byte 0xe9 on line 2")])
def test_split_file_in_another_encoding(tiny_voc, encoding, expected):
    (tiny_voc / "ImageSets" / "Segmentation" / "train.txt").write_bytes("img_0\nimg_1 # café\n".encode(encoding))
    with pytest.raises(DataError, match=rf"train\.txt: {expected}"):
        VOCSegmentation(tiny_voc, "train")


def test_split_file_with_a_byte_order_mark(tiny_voc):
    (tiny_voc / "ImageSets" / "Segmentation" / "train.txt").write_bytes("img_0\nimg_1\n".encode("utf-8-sig"))
    (tiny_voc / "class_names.txt").write_bytes("\n".join(TINY_CLASSES).encode("utf-8-sig"))
    reader = VOCSegmentation(tiny_voc, "train", require_masks=True)
    assert reader.ids == ["img_0", "img_1"] and reader.class_names == TINY_CLASSES


def _coco(tmp_path: Path, data) -> Path:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


COCO_OK = {"images": [{"id": 1, "file_name": "a.jpg", "height": 8, "width": 8}],
           "categories": [{"id": 3, "name": "cat"}],
           "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0,
                            "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]}]}


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: [d], r"must be a JSON object with 'images', 'annotations' and 'categories', got a list"),
    (lambda d: {k: v for k, v in d.items() if k != "categories"}, r"has no 'categories' list"),
    (lambda d: {**d, "annotations": [{k: v for k, v in d["annotations"][0].items() if k != "bbox"}]},
     r"annotation 7 has no 'bbox'"),
    (lambda d: {**d, "annotations": [{k: v for k, v in d["annotations"][0].items() if k != "segmentation"}]},
     r"annotation 7 has no 'segmentation'"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "bbox": "1,1,4,4"}]},
     r"annotation 7: 'bbox' must be 4 numbers \[x, y, width, height\], got '1,1,4,4'"),
])
def test_malformed_coco_json(tmp_path, mutate, expected):
    path = _coco(tmp_path, mutate(json.loads(json.dumps(COCO_OK))))
    with pytest.raises(DataError, match=rf"instances\.json: .*{expected}"):
        COCOSegmentation(tmp_path, path)


@pytest.mark.parametrize("option, value", [("batch_size", 0), ("batch_size", -2), ("eval_batch_size", 0),
                                           ("crop_size", 0), ("crop_size", -32)])
def test_bad_batch_or_crop_size_is_one_line(tiny_voc, tmp_path, capsys, option, value):
    config = tiny_pipeline(tiny_voc, tmp_path, data={"batch_size": 2, "crop_size": 32, option: value})
    assert main(["pipeline", str(config), "--out", str(tmp_path / "out")]) == 2
    assert f"{option} must be a positive integer, got {value}" in one_line_error(capsys)


def _validate_with(tiny_voc: Path, tmp_path: Path, ckpt: Path) -> List[str]:
    return ["validate", "--config", str(Path(__file__).resolve().parents[1] / "experiments/synthetic/segmenter_full.yaml"),
            "--data.init_args.root", str(tiny_voc), "--trainer.default_root_dir", str(tmp_path / "cli"),
            "--trainer.logger", "false", "--trainer.callbacks", "null", "--ckpt_path", str(ckpt)]


@pytest.mark.parametrize("kind, expected", [("missing", "checkpoint is missing"),
                                            ("corrupt", "unreadable checkpoint"),
                                            ("code", "checkpoint refused: it needs io.open"),
                                            ("classifier", "checkpoint of another task: its hyper-parameters")])
def test_bad_ckpt_path_is_one_line(tiny_voc, tmp_path, capsys, monkeypatch, kind, expected):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    ckpt = tmp_path / "model.ckpt"
    if kind == "corrupt":
        ckpt.write_bytes(b"PK\x03\x04 not really a zip")
    elif kind == "code":
        malicious_file(ckpt, tmp_path / "pwned", checkpoint=True)
    elif kind == "classifier":
        from lightning_wsss.tasks import CAMClassifier

        model = CAMClassifier(num_classes=4, backbone="test_resnet")
        torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, ckpt)
    assert main(_validate_with(tiny_voc, tmp_path, ckpt)) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"wsss validate: data error: {ckpt}: {expected}")
    assert not (tmp_path / "pwned").exists()


def test_stage_busy_is_one_line(tiny_voc, tmp_path, capsys):
    config_path = tiny_pipeline(tiny_voc, tmp_path)
    stage = build_stages(resolve(yaml.safe_load(config_path.read_text())))[0]
    stage_dir = tmp_path / "out" / "full" / "segmenter" / stage_hash(stage.hashed_config(), {})
    stage_dir.mkdir(parents=True)
    with open(stage_dir / ".lock", "a") as handle:  # another run holds the stage
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        assert main(["pipeline", str(config_path), "--out", str(tmp_path / "out")]) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"wsss pipeline: error: {stage_dir} is being run by another process")


# ------------------------------------------------------------------------------------------ 8. file modes
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_artifacts_respect_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "summary.json", {"a": 1})
        write_label_png(tmp_path / "labels" / "x.png", np.zeros((2, 2), np.uint8))
        write_npz_atomic(tmp_path / "cams" / "x.npz", cams=np.zeros((1, 2, 2), np.float16))
        with atomic_write(tmp_path / "stage.json") as handle:
            handle.write(b"{}")
    finally:
        os.umask(previous)
    for path in ("summary.json", "labels/x.png", "cams/x.npz", "stage.json"):
        assert stat.S_IMODE((tmp_path / path).stat().st_mode) == mode, path
