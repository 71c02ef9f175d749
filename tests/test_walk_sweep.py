"""`wsss sweep-walk`: a grid of walk settings scored on the training masks agrees with the random-walk stage."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch

from lightning_wsss.callbacks import ArtifactWriter
from lightning_wsss.cli.main import main
from lightning_wsss.datamodules import ImageLabelDataModule, PseudoMaskDataModule
from lightning_wsss.datasets import open_split
from lightning_wsss.io import read_label_png, write_label_png, write_npz_atomic
from lightning_wsss.metrics import evaluate_reader
from lightning_wsss.refine.walk_sweep import confusion_miou, walk_grid
from lightning_wsss.serialization import load_model_checkpoint
from lightning_wsss.tasks import AffinityRefiner


def test_walk_grid_and_confusion_miou():
    grid = walk_grid(["psa", "irn"], [8], [4, 16], [16], [0.2, 0.3])
    assert len(grid) == 2 + 4 and grid[0] == {"mode": "psa", "beta": 8.0, "t": 4, "bg_alpha": 16.0}
    assert grid[-1] == {"mode": "irn", "beta": 8.0, "t": 16, "bg_threshold": 0.3}
    with pytest.raises(ValueError):
        walk_grid(["dense"], [8], [4], [16], [0.2])
    miou, iou = confusion_miou(np.array([[3, 1, 0], [1, 1, 0], [0, 0, 0]]))
    assert iou[0] == pytest.approx(3 / 5) and iou[1] == pytest.approx(1 / 3) and np.isnan(iou[2])
    assert miou == pytest.approx((3 / 5 + 1 / 3) / 2)


def foreground_share_of(label_png, mask) -> tuple:
    """(pixels labelled foreground, pixels scored) of one label map where its mask is not 255."""
    label = read_label_png(label_png)
    valid = np.asarray(mask) != 255
    return int((label[valid] > 0).sum()), int(valid.sum())


def test_sweep_scores_the_settings_the_walk_stage_would_write(tiny_voc, tmp_path, capsys):
    labels_dir, cams_dir = tmp_path / "aff", tmp_path / "cams"
    for i in range(6):
        gt = read_label_png(tiny_voc / "SegmentationClass" / f"img_{i}.png")
        write_label_png(labels_dir / f"img_{i}.png", gt)
        keys = np.unique(gt[(gt > 0) & (gt < 255)])
        rng = np.random.default_rng(i)
        cams = np.stack([np.clip((gt == k) * 0.7 + rng.random(gt.shape) * 0.3, 0, 1) for k in keys])
        write_npz_atomic(cams_dir / f"img_{i}.npz", cams=cams.astype(np.float16), keys=keys)
    L.seed_everything(0, verbose=False)
    dm = PseudoMaskDataModule(pseudo_mask_dir=str(labels_dir), root=str(tiny_voc), batch_size=2, crop_size=48,
                              scale_range=(1.0, 1.0))
    model = AffinityRefiner(dm.num_classes, backbone="test_resnet", feature_levels=(1, 2, 3), embed_dim=16, lr=0.05)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, dm)
    ckpt = tmp_path / "aff.ckpt"
    trainer.save_checkpoint(ckpt)
    args = ["sweep-walk", "--checkpoint", str(ckpt), "--cams", str(cams_dir), "--root", str(tiny_voc),
            "--betas", "8", "--steps", "0,3", "--bg-alphas", "16", "--bg-thresholds", "0.2,0.4"]
    assert main(args + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_images"] == 4 and len(result["settings"]) == 2 + 4
    assert result["best"]["miou"] == max(s["miou"] for s in result["settings"])
    # each setting's score is the mIoU of the labels the random-walk stage writes with it
    reader = open_split(tiny_voc, "train")

    def stage_miou(setting, crf=False):
        walk = {"walk_mode": setting["mode"], "beta": setting["beta"], "t": setting["t"], "crf": crf}
        walk.update({"bg_alpha": setting["bg_alpha"]} if setting["mode"] == "psa" else
                    {"bg_threshold": setting["bg_threshold"]})
        walker = load_model_checkpoint(AffinityRefiner, ckpt, cams_dir=str(cams_dir), **walk)
        out = tmp_path / f"rw_{setting['mode']}_{setting['t']}_{bool(crf)}"
        L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[ArtifactWriter(str(out))]).predict(
            walker, ImageLabelDataModule(root=str(tiny_voc), predict_split="train", eval_batch_size=1),
            return_predictions=False)
        shares = [foreground_share_of(out / "labels" / f"{i}.png", reader.load(i)["mask"]) for i in reader.ids[:4]]
        assert setting["fg_share"] == pytest.approx(sum(a for a, _ in shares) / sum(n for _, n in shares))
        return evaluate_reader(out / "labels", reader, "train")["miou"]

    truth = [reader.load(i)["mask"] for i in reader.ids[:4]]
    assert result["gt_fg_share"] == pytest.approx(sum(((m > 0) & (m < 255)).sum() for m in truth)
                                                  / sum((m < 255).sum() for m in truth))
    for setting in (result["settings"][1], result["settings"][5]):
        assert stage_miou(setting) == pytest.approx(setting["miou"], abs=1e-6)
    # --crf: every setting also scored after the CRF the stage's walk.crf runs, the plain scores unchanged
    crf = {"scale_params": True, "bilateral_srgb": 5}
    assert main(args + ["--json", "--crf", "{scale_params: true, bilateral_srgb: 5}"]) == 0
    with_crf = json.loads(capsys.readouterr().out)
    assert len(with_crf["settings"]) == 2 * len(result["settings"])
    assert [s["miou"] for s in with_crf["settings"] if not s["crf"]] == [s["miou"] for s in result["settings"]]
    refined = [s for s in with_crf["settings"] if s["crf"]]
    assert any(s["miou"] != p["miou"] for s, p in zip(refined, result["settings"]))
    for setting in (refined[1], refined[5]):
        assert stage_miou(setting, crf) == pytest.approx(setting["miou"], abs=1e-6)
    with pytest.raises(SystemExit):
        main(args + ["--crf", "{bilateral: 5}"])
    assert main(args + ["--limit", "2"]) == 0
    text = capsys.readouterr().out
    assert "best: stages.random_walk.walk: {mode:" in text and "on 2 images" in text


def test_sweep_walk_set_passes_refiner_arguments(monkeypatch, tmp_path):
    """--set KEY=VALUE reaches the refiner as the random-walk stage's walk keys do (values read as YAML); a
    malformed item is a usage error."""
    from lightning_wsss import serialization

    seen = {}

    def fake_load(cls, path, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop after loading")

    monkeypatch.setattr(serialization, "load_model_checkpoint", fake_load)
    args = ["sweep-walk", "--checkpoint", str(tmp_path / "x.ckpt"), "--cams", str(tmp_path), "--root", str(tmp_path)]
    monkeypatch.setattr("lightning_wsss.tasks.irn.refiner_class", lambda path: object)
    with pytest.raises(RuntimeError, match="stop after loading"):
        main(args + ["--set", "boundary_cams=false", "irn_normalize=global"])
    assert seen == {"boundary_cams": False, "irn_normalize": "global"}
    with pytest.raises(SystemExit):
        main(args + ["--set", "boundary_cams"])
