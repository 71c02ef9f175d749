"""The image pipeline's refinement options: AffinityNet from the classifier's backbone, a step schedule,
validation with the separation metric, and the irn walk mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_wsss.datasets.synthetic import make_synthetic
from lightning_wsss.pipeline import run_pipeline
from lightning_wsss.pipeline.config import deep_merge
from lightning_wsss.pipeline.demo import QUICK_OVERRIDES
from lightning_wsss.pipeline.stages import affinity_init, scheduled_trainer, walk_settings


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("syn") / "data", num_train=8, num_val=4, size=64, seed=3)


def test_scheduled_trainer_scales_with_the_data_set():
    assert scheduled_trainer({"max_epochs": 6}, None, 400, 16) == {"max_epochs": 6}
    assert scheduled_trainer({"max_epochs": 6}, {"min_steps": 0}, 400, 16) == {"max_epochs": 6}
    assert scheduled_trainer({"max_epochs": 6}, {"min_steps": 500}, 400, 16) == {"max_steps": 500, "max_epochs": -1}
    # a large set keeps its epochs: 6 x ceil(10582 / 8) steps, capped by max_steps
    assert scheduled_trainer({"max_epochs": 6}, {"min_steps": 500}, 10582, 8)["max_steps"] == 6 * 1323
    assert scheduled_trainer({}, {"epochs": 8, "min_steps": 1, "max_steps": 10000}, 10582, 8)["max_steps"] == 10000
    with pytest.raises(ValueError, match="schedule"):
        scheduled_trainer({}, {"steps": 3}, 10, 2)


def test_affinity_init_and_walk_settings():
    class Result:
        outputs = {"checkpoint": "c.ckpt"}

    assert affinity_init({}, {}) == {}
    assert affinity_init({"init_from": "classifier"}, {"classifier": Result()}) == {"backbone_init": "c.ckpt"}
    assert affinity_init({"init_from": "imagenet"}, {}) == {"weights": "imagenet"}
    assert affinity_init({"init_from": "none"}, {}) == {"weights": None}
    with pytest.raises(ValueError):
        affinity_init({"init_from": "coco"}, {})
    assert walk_settings({"walk": {"mode": "irn", "t": 4}}) == {"walk_mode": "irn", "t": 4}


def test_image_pipeline_inits_affinity_from_the_classifier_and_walks_irn(tiny_synthetic, tmp_path):
    config = deep_merge(QUICK_OVERRIDES, {
        "name": "t-refine", "supervision": "image", "progress_bar": False, "logger": "csv",
        "dataset": {"root": str(tiny_synthetic), "name": "synthetic"},
        "stages": {"affinity": {"schedule": {"min_steps": 3}},
                   "random_walk": {"walk": {"mode": "irn", "bg_threshold": 0.3, "t": 4}}}})
    out = run_pipeline(config, tmp_path, log=lambda _m: None, until="random_walk")["stages"]
    affinity_dir = Path(out["affinity"]["dir"])
    stage_config = json.loads((affinity_dir / "config.json").read_text())
    assert "classifier" in stage_config["upstream"]
    ckpt = torch.load(affinity_dir / "checkpoints" / "final.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["backbone_init"].endswith("final.ckpt")
    assert ckpt["global_step"] == 3  # min_steps: 3 steps although one epoch of 8 images at batch 4 is 2
    metrics = next(affinity_dir.rglob("metrics.csv")).read_text()
    assert "val/aff_same" in metrics and "val/aff_cross" in metrics
    walk = json.loads((Path(out["random_walk"]["dir"]) / "config.json").read_text())["config"]["stage"]["walk"]
    assert walk["mode"] == "irn"
    assert 0.0 <= out["random_walk"]["metrics"]["pseudo_miou"] <= 1.0
