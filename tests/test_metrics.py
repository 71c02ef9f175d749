"""mIoU against a hand computation, and `wsss evaluate` on a folder of PNGs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lightning_wsss.cli.main import main
from lightning_wsss.errors import DataError
from lightning_wsss.io import read_label_png, write_label_png
from lightning_wsss.metrics import SegmentationIoU, evaluate_folder


def test_iou_against_hand_computation():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 255]])
    per_class = SegmentationIoU(4, reduction="none")
    per_class.update(pred, target)
    values = per_class.compute()
    # class 0: tp 1, fp 1 (pixel (1,1)), fn 1 (pixel (0,1)) -> 1/3; class 1: tp 2, fp 1, fn 1 (pred 255) -> 2/4
    # class 2: tp 1, fn 1 -> 1/2 (its pred on the 255 pixel is ignored); class 3 absent -> nan
    assert values[:3].tolist() == pytest.approx([1 / 3, 0.5, 0.5])
    assert math.isnan(values[3])
    mean = SegmentationIoU(4)
    mean.update(pred, target)
    assert float(mean.compute()) == pytest.approx((1 / 3 + 0.5 + 0.5) / 3)


def test_evaluate_folder_and_cli(tiny_voc, tmp_path, capsys):
    pred_dir = tmp_path / "pred"
    for image_id in ("img_4", "img_5"):
        gt = read_label_png(tiny_voc / "SegmentationClass" / f"{image_id}.png").copy()
        gt[gt == 255] = 0
        write_label_png(pred_dir / f"{image_id}.png", gt)
    result = evaluate_folder(pred_dir, tiny_voc, "val")
    assert result["miou"] == pytest.approx(1.0) and result["num_images"] == 2
    assert result["per_class"]["tv/monitor"] is None
    wrong = np.zeros((48, 48), np.uint8)
    write_label_png(pred_dir / "img_5.png", wrong)
    assert main(["evaluate", "--pred", str(pred_dir), "--root", str(tiny_voc), "--split", "val", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.0 < out["miou"] < 1.0 and set(out["per_class"]) == {"background", "red", "green", "tv/monitor"}
    assert out["per_class"]["green"] == 0.0
    assert main(["evaluate", "--pred", str(pred_dir), "--root", str(tiny_voc), "--split", "val"]) == 0
    assert "mIoU" in capsys.readouterr().out


def test_evaluate_missing_and_mismatched_predictions(tiny_voc, tmp_path, capsys):
    pred_dir = tmp_path / "pred"
    write_label_png(pred_dir / "img_4.png", np.zeros((48, 48), np.uint8))
    with pytest.raises(DataError, match=r"img_5\.png: prediction for 'img_5' of split 'val' is missing"):
        evaluate_folder(pred_dir, tiny_voc, "val")
    write_label_png(pred_dir / "img_5.png", np.zeros((40, 48), np.uint8))
    assert main(["evaluate", "--pred", str(pred_dir), "--root", str(tiny_voc), "--split", "val"]) == 2
    assert "img_5.png: prediction size 48x40 differs" in capsys.readouterr().err
