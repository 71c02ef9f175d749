"""Logs on a cluster: no progress-bar redraws where stdout is a file, one line per epoch with its metrics."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_wsss.callbacks.epoch_log import EpochLog, format_epoch_line, scalar_metrics
from lightning_wsss.callbacks.progress import progress_callbacks, stdout_is_terminal
from lightning_wsss.datamodules import ImageLabelDataModule
from lightning_wsss.tasks import CAMClassifier
from tests.conftest import tiny_trainer

REPO = Path(__file__).resolve().parents[1]


def test_format_and_scalar_metrics():
    metrics = scalar_metrics({"val/miou": torch.tensor(0.52311), "train/loss_step": torch.tensor(3.0),
                              "train/loss": torch.tensor(0.4), "per_class": torch.ones(3)})
    assert metrics == pytest.approx({"train/loss": 0.4, "val/miou": 0.52311})
    line = format_epoch_line(2, 20, 41.23, 160, metrics)
    assert line == "epoch 3/20  41.2 s  step 160  train/loss 0.4  val/miou 0.5231"


def test_one_line_per_epoch_with_the_epochs_metrics(tiny_voc):
    stream = io.StringIO()
    torch.manual_seed(0)
    model = CAMClassifier(4, backbone="test_resnet", lr=0.05)
    trainer = tiny_trainer(max_epochs=2, callbacks=[EpochLog(stream)])
    trainer.fit(model, ImageLabelDataModule(str(tiny_voc), batch_size=2, crop_size=32, num_workers=0))
    lines = stream.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all("train/loss " in line and "val/" in line and "\r" not in line for line in lines)
    assert lines[-1].split("  ")[2] == f"step {trainer.global_step}"


def test_progress_choice(monkeypatch):
    monkeypatch.delenv("WSSS_PROGRESS", raising=False)
    assert progress_callbacks(True) == []
    assert [type(c) for c in progress_callbacks(False)] == [EpochLog]
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # a file, not a terminal
    assert not stdout_is_terminal()
    monkeypatch.setenv("WSSS_PROGRESS", "bar")
    assert stdout_is_terminal()
    monkeypatch.setenv("WSSS_PROGRESS", "lines")
    assert not stdout_is_terminal()
    monkeypatch.setenv("WSSS_PROGRESS", "sometimes")
    with pytest.raises(ValueError, match="WSSS_PROGRESS"):
        stdout_is_terminal()


def test_wsss_fit_log_file_holds_no_redraws(tiny_voc, tmp_path):
    """``wsss fit > log 2>&1``: no carriage return in the file, one line per epoch."""
    log = tmp_path / "fit.log"
    argv = [sys.executable, "-m", "lightning_wsss", "fit", "--config", "experiments/synthetic/cam.yaml",
            f"--data.init_args.root={tiny_voc}", "--data.init_args.batch_size=2", "--data.init_args.crop_size=32",
            "--trainer.max_epochs=2", f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.logger=false",
            "--trainer.callbacks=null", "--model.init_args.cam_scales=[1.0]"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("WSSS_PROGRESS", None)
    with open(log, "w") as out:
        subprocess.run(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env, check=True, timeout=300)
    text = log.read_text()
    assert "\r" not in text, text[-2000:]
    epochs = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert [line.split("  ")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"], text[-2000:]
    assert "train/loss" in epochs[-1]
