"""Exact resume of every training stage: a fit killed after its first ``last.ckpt`` and rerun ends with the same
weights and numbers as an uninterrupted fit (issue 18, item 4).

The kill is an exception raised at a chosen training batch (what ``kill -9`` leaves behind is the same: the
``last.ckpt`` of the last finished epoch, plus whatever rounds were written); the rerun goes through the
pipeline's own ``fit_model`` and resumes from that checkpoint. Each case kills in the epoch right after the
checkpoint, the one a resume used to get wrong (other dropout masks than the uninterrupted run's, for the
tasks that reload their DataLoader every epoch another data order, and for CDA other pasted objects).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import lightning as L
import pytest
import torch

from lightning_wsss.datasets.synthetic import make_synthetic
from lightning_wsss.pipeline import stages as S
from lightning_wsss.pipeline import training
from lightning_wsss.pipeline.config import deep_merge
from lightning_wsss.pipeline.defaults import resolve
from lightning_wsss.pipeline.runner import PipelineContext
from lightning_wsss.serialization import safe_torch_load

ENCODER = {"arch": "deeplabv3plus", "encoder": "tu-test_resnet", "output_stride": 16, "decoder_channels": 16, "lr": 0.05}
BACKBONE = {"backbone": "test_resnet", "output_stride": 16, "lr": 0.05}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """8 training and 2 validation images of 64 px: two batches of 4 per epoch."""
    return make_synthetic(tmp_path_factory.mktemp("resume") / "data", num_train=8, num_val=2, size=64, seed=3)


class Killed(Exception):
    """Stands for the process being killed."""


class KillAt(L.Callback):
    """Raise :class:`Killed` before training batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            raise Killed(f"killed at epoch {self.epoch}, batch {batch_idx}")


def pipeline_context(root: Path, out: Path, log: List[str]) -> PipelineContext:
    config = resolve({"supervision": "full", "progress_bar": False, "logger": "none",
                      "dataset": {"root": str(root), "name": "synthetic"},
                      "data": {"batch_size": 4, "eval_batch_size": 2, "crop_size": 48}})
    return PipelineContext(out, config, log.append)


def run_stage(monkeypatch, root: Path, out: Path, stage: Callable[[PipelineContext, Path], Dict[str, Any]],
              kill: Tuple[int, int] = None) -> Tuple[Dict[str, Any], List[str]]:
    """Run ``stage(ctx, stage_dir)`` in ``out/stage``; with ``kill`` the fit dies at that (epoch, batch)."""
    original = training.make_trainer
    killer = [KillAt(*kill)] if kill else []

    def make_trainer(ctx, stage_dir, stage_name, trainer_cfg, callbacks, logger=True, **kwargs):
        return original(ctx, stage_dir, stage_name, trainer_cfg, list(callbacks) + killer, logger, **kwargs)

    monkeypatch.setattr(training, "make_trainer", make_trainer)
    log: List[str] = []
    ctx = pipeline_context(root, out, log)
    try:
        return stage(ctx, out / "stage"), log
    finally:
        monkeypatch.setattr(training, "make_trainer", original)


def assert_resume_is_exact(monkeypatch, tmp_path: Path, root: Path, stage, kill: Tuple[int, int]) -> Dict[str, Any]:
    """Uninterrupted run vs killed-then-resumed run: same final weights (bit for bit) and metrics."""
    reference, _ = run_stage(monkeypatch, root, tmp_path / "reference", stage)
    with pytest.raises(Killed):
        run_stage(monkeypatch, root, tmp_path / "interrupted", stage, kill)
    assert (tmp_path / "interrupted" / "stage" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "interrupted" / "stage" / "checkpoints" / "final.ckpt").exists()
    resumed, log = run_stage(monkeypatch, root, tmp_path / "interrupted", stage)
    assert any("resuming from" in line for line in log), log
    want = safe_torch_load(reference["outputs"]["checkpoint"], "checkpoint")["state_dict"]
    got = safe_torch_load(resumed["outputs"]["checkpoint"], "checkpoint")["state_dict"]
    assert list(got) == list(want)
    different = [key for key in want if not torch.equal(want[key], got[key])]
    assert not different, f"{len(different)} tensors differ after the resume, e.g. {different[:3]}"
    assert resumed.get("metrics") == reference.get("metrics")
    return reference


def segmenter_stage(ctx: PipelineContext, stage_dir: Path) -> Dict[str, Any]:
    cfg = {"model": {"class_path": "DeepLabSegmenter", "init_args": ENCODER}, "trainer": {"max_epochs": 2}}
    return S.segmenter_stage(ctx, stage_dir, {}, cfg)


def affinity_stage(ctx: PipelineContext, stage_dir: Path) -> Dict[str, Any]:
    """AffinityNet training as the affinity stage runs it (the ground truth stands in for the affinity labels)."""
    labels = Path(ctx.config["dataset"]["root"]) / "SegmentationClass"
    dm = training.make_datamodule(ctx, "PseudoMaskDataModule", {"pseudo_mask_dir": str(labels)})
    model = {"class_path": "AffinityRefiner", "init_args": {**BACKBONE, "feature_levels": [1, 2, 3], "embed_dim": 8,
                                                            "radius": 3}}
    _, ckpt = training.fit_model(ctx, stage_dir, "affinity", model, dm, {"max_epochs": 2, "limit_val_batches": 0})
    return {"outputs": {"checkpoint": str(ckpt)}}


def boxsup_stage(ctx: PipelineContext, stage_dir: Path) -> Dict[str, Any]:
    cfg = {"model": {"class_path": "BoxSupSegmenter", "init_args": {
        **ENCODER, "initializer": "filled", "proposals": [], "crf_candidate": False, "round_epochs": 1}},
        "trainer": {"max_epochs": 3}}
    return S.boxsup_stage(ctx, stage_dir, {}, cfg)


def self_training_stage(ctx: PipelineContext, stage_dir: Path) -> Dict[str, Any]:
    cfg = {"model": {"class_path": "SelfTrainingSegmenter", "init_args": {**ENCODER, "rounds": 2, "round_epochs": 1}},
           "trainer": {"max_epochs": 3}}
    return S.segmenter_stage(ctx, stage_dir, {}, cfg)


def erasing_stage(ctx: PipelineContext, stage_dir: Path) -> Dict[str, Any]:
    cfg = {"model": {"class_path": "ErasingCAMClassifier", "init_args": {
        **BACKBONE, "erase_rounds": 2, "first_round_epochs": 1, "round_epochs": 1}}, "trainer": {"max_epochs": 3}}
    return S.classifier_stage(ctx, stage_dir, {}, cfg)


def test_segmenter_resumes_exactly(monkeypatch, tmp_path, tiny_data):
    result = assert_resume_is_exact(monkeypatch, tmp_path, tiny_data, segmenter_stage, kill=(1, 1))
    assert 0.0 <= result["metrics"]["val_miou"] <= 1.0


def test_affinity_resumes_exactly(monkeypatch, tmp_path, tiny_data):
    assert_resume_is_exact(monkeypatch, tmp_path, tiny_data, affinity_stage, kill=(1, 0))


def test_boxsup_resumes_exactly(monkeypatch, tmp_path, tiny_data):
    """Killed in round 2 (masks of round 2 already written at the end of epoch 1): same weights, same rounds."""
    assert_resume_is_exact(monkeypatch, tmp_path, tiny_data, boxsup_stage, kill=(2, 1))
    for name in ("rounds.json",):
        assert (json.loads((tmp_path / "reference" / "stage" / "rounds" / name).read_text())
                == json.loads((tmp_path / "interrupted" / "stage" / "rounds" / name).read_text()))


def test_self_training_resumes_exactly(monkeypatch, tmp_path, tiny_data):
    assert_resume_is_exact(monkeypatch, tmp_path, tiny_data, self_training_stage, kill=(2, 0))


def test_erasing_resumes_exactly(monkeypatch, tmp_path, tiny_data):
    assert_resume_is_exact(monkeypatch, tmp_path, tiny_data, erasing_stage, kill=(2, 1))


def cda_classifier_stage(ctx: PipelineContext, stage_dir: Path) -> Dict[str, Any]:
    """A classifier trained with context decoupling (pasting draws from the RNG; the ground truth stands in for the
    seed classifier's CAM labels)."""
    cfg = {"model": {"class_path": "CAMClassifier", "init_args": BACKBONE}, "trainer": {"max_epochs": 2},
           "datamodule": "CDADataModule", "data": {"paste_prob": 0.7, "min_object_area": 16}}
    upstream = {"labels": _Outputs({"labels_dir": str(Path(ctx.config["dataset"]["root"]) / "SegmentationClass")})}
    return S.classifier_stage(ctx, stage_dir, upstream, cfg)


class _Outputs:
    def __init__(self, outputs: Dict[str, Any]) -> None:
        self.outputs = outputs


def test_cda_classifier_resumes_exactly(monkeypatch, tmp_path, tiny_data):
    assert_resume_is_exact(monkeypatch, tmp_path, tiny_data, cda_classifier_stage, kill=(1, 1))
