"""W&B logging, offline: run files, image panels with masks, grouping and tags by supervision and stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_wsss.datasets.synthetic import make_synthetic
from lightning_wsss.pipeline import run_pipeline
from lightning_wsss.pipeline.config import deep_merge
from lightning_wsss.pipeline.demo import QUICK_OVERRIDES

pytest.importorskip("wandb")


def test_pipeline_logs_to_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    root = make_synthetic(tmp_path / "data", num_train=6, num_val=2, size=64, seed=1)
    config = deep_merge(QUICK_OVERRIDES, {"name": "wb", "supervision": "full", "progress_bar": False, "logger": "wandb",
                                          "wandb": {"project": "wsss-test", "panel_images": 2},
                                          "dataset": {"root": str(root)}})
    summary = run_pipeline(config, tmp_path / "out", log=lambda _: None)
    stage_dir = Path(summary["supervision"]["full"]["stages"]["segmenter"]["dir"])
    runs = list(stage_dir.glob("wandb/offline-run-*"))
    assert len(runs) == 1, list(stage_dir.rglob("*"))[:20]
    run = runs[0]
    assert list(run.glob("run-*.wandb")), "no W&B run file"
    panels = list(run.glob("files/media/images/**/*.png"))
    masks = list(run.glob("files/media/images/mask/**/*.png"))
    assert panels and masks, sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))[:40]
    record = next(run.glob("run-*.wandb")).read_bytes()  # the offline run log: config, tags, group, metrics
    for needle in (b"supervision:full", b"stage:segmenter", b"wsss-test", b"val/miou", b"decoder_channels"):
        assert needle in record, needle
