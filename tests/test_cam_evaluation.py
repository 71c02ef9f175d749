"""`evaluate_cam_thresholds` / `wsss evaluate-cams` on known answers: per-class IoU at the best threshold, the
foreground share next to the ground truth's, and the psa power mode."""

import json

import numpy as np
import pytest

from conftest import write_tiny_voc
from lightning_wsss.cam.threshold_sweep import cams_to_label_map, evaluate_cam_thresholds
from lightning_wsss.cli.main import main
from lightning_wsss.io import read_label_png, write_npz_atomic


@pytest.fixture
def perfect_cams(tmp_path):
    """CAMs equal to the ground truth's class masks, except that class 1 also covers the whole top-left quarter at
    0.5 (over-coverage that a background threshold above 0.5 removes)."""
    root = write_tiny_voc(tmp_path / "voc")
    cam_dir = tmp_path / "cams"
    for image_id in [line for line in (root / "ImageSets/Segmentation/train.txt").read_text().split()]:
        mask = read_label_png(root / "SegmentationClass" / f"{image_id}.png")
        keys = np.array(sorted(set(np.unique(mask).tolist()) - {0, 255}))
        cams = np.stack([(mask == k).astype(np.float32) for k in keys])
        cams[0, :24, :24] = np.maximum(cams[0, :24, :24], 0.5)
        write_npz_atomic(cam_dir / f"{image_id}.npz", cams=cams.astype(np.float16), keys=keys)
    return root, cam_dir


def test_per_class_iou_and_foreground_share(perfect_cams):
    root, cam_dir = perfect_cams
    result = evaluate_cam_thresholds(cam_dir, root, "train", thresholds=[0.3, 0.7])
    assert result["best_threshold"] == 0.7 and result["best_miou"] == pytest.approx(1.0)
    assert result["per_class"]["red"] == pytest.approx(1.0) and result["per_class"]["green"] == pytest.approx(1.0)
    assert result["per_class"]["tv/monitor"] is None  # absent from both sides
    masks = [read_label_png(root / "SegmentationClass" / f"img_{i}.png") for i in range(4)]
    labelled = sum(int((m != 255).sum()) for m in masks)
    truth = sum(int(((m != 255) & (m != 0)).sum()) for m in masks)
    assert result["foreground_share_gt"] == pytest.approx(truth / labelled)
    assert result["foreground_share"][1] == pytest.approx(truth / labelled)
    # at 0.3 the quarter's 0.5 wins over the background: more foreground than the truth, and a lower red IoU
    over = sum(int(((m != 255) & ((m != 0) | (np.arange(48)[:, None] < 24) & (np.arange(48)[None] < 24))).sum()) for m in masks)
    assert result["foreground_share"][0] == pytest.approx(over / labelled)
    assert result["miou"][0] < result["miou"][1]


def test_power_mode_scores_one_minus_max_to_alpha():
    cams = np.array([[[0.9, 0.2]]], np.float32)  # one class, two pixels
    keys = np.array([3])
    # background (1 - 0.9) ** 1 = 0.1 < 0.9: class; (1 - 0.2) ** 1 = 0.8 > 0.2: background
    assert cams_to_label_map(cams, keys, 1.0, "power").tolist() == [[3, 0]]
    # alpha 16: (0.8) ** 16 = 0.028 < 0.2: class everywhere
    assert cams_to_label_map(cams, keys, 16.0, "power").tolist() == [[3, 3]]
    with pytest.raises(ValueError):
        cams_to_label_map(cams, keys, 1.0, "bogus")


def test_cli_prints_per_class_iou_and_foreground(perfect_cams, capsys):
    root, cam_dir = perfect_cams
    assert main(["evaluate-cams", "--cams", str(cam_dir), "--root", str(root), "--split", "train",
                 "--thresholds", "0.3,0.7"]) == 0
    out = capsys.readouterr().out
    assert "per-class IoU (%) at the best setting: background 100.0, red 100.0, green 100.0, tv/monitor n/a" in out
    assert "ground truth foreground" in out and "<- best" in out
    assert main(["evaluate-cams", "--cams", str(cam_dir), "--root", str(root), "--bg-mode", "power", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bg_mode"] == "power" and result["thresholds"] == [1, 2, 4, 8, 16, 32]
