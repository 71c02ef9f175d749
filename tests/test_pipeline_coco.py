"""`wsss pipeline` on a COCO-format data set (instances JSON), written by the test from a tiny synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_wsss.datasets.synthetic import make_synthetic
from lightning_wsss.io import read_label_png
from lightning_wsss.pipeline import run_pipeline
from lightning_wsss.pipeline.config import deep_merge
from lightning_wsss.pipeline.demo import QUICK_OVERRIDES

mask_utils = pytest.importorskip("pycocotools.mask")


def voc_to_coco(root: Path, split: str, out: Path) -> Path:
    """Instances JSON of a VOC-layout split (one annotation per instance of SegmentationObject, RLE masks)."""
    names = (root / "class_names.txt").read_text().split()
    images, annotations = [], []
    for number, image_id in enumerate((root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split(), start=1):
        classes = read_label_png(root / "SegmentationClass" / f"{image_id}.png")
        instances = read_label_png(root / "SegmentationObject" / f"{image_id}.png")
        height, width = classes.shape
        images.append({"id": number, "file_name": f"{image_id}.jpg", "height": height, "width": width})
        for instance in np.unique(instances[(instances > 0) & (instances < 255)]):
            region = np.asfortranarray((instances == instance).astype(np.uint8))
            rle = mask_utils.encode(region)
            rle["counts"] = rle["counts"].decode()
            x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
            annotations.append({"id": len(annotations) + 1, "image_id": number, "iscrowd": 0, "segmentation": rle,
                                "category_id": int(np.bincount(classes[instances == instance]).argmax()) * 10,
                                "bbox": [x, y, w, h], "area": float(region.sum())})
    categories = [{"id": 10 * i, "name": n} for i, n in enumerate(names) if i > 0]
    out.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return out


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    root = make_synthetic(tmp_path_factory.mktemp("syn") / "voc", num_train=8, num_val=4, size=64, seed=5)
    coco = root.parent / "coco"
    coco.mkdir()
    return {"images": str(root / "JPEGImages"), "train": str(voc_to_coco(root, "train", coco / "train.json")),
            "val": str(voc_to_coco(root, "val", coco / "val.json"))}


@pytest.mark.parametrize("supervision", ["full", "box"])
def test_pipeline_runs_on_coco(tiny_coco, tmp_path, supervision):
    config = deep_merge(QUICK_OVERRIDES, {
        "name": f"coco-{supervision}", "supervision": supervision, "progress_bar": False, "logger": "none",
        "dataset": {"root": tiny_coco["images"], "name": "coco-tiny"},
        "data": {"dataset": "coco", "train_split": tiny_coco["train"], "val_split": tiny_coco["val"]},
        "stages": {"box_init": {"initializers": ["filled"]}, "boxsup": {"model": {"init_args": {"initializer": "filled"}}}},
    })
    summary = run_pipeline(config, tmp_path, log=lambda _: None)
    assert summary["dataset"] == "coco-tiny" and summary["num_train"] == 8 and summary["num_val"] == 4
    entry = summary["supervision"][supervision]
    assert 0.0 <= entry["val_miou"] <= 1.0
    if supervision == "box":
        # filled boxes of a COCO set score like those of the VOC copy: well above chance, below perfect
        assert 0.3 < entry["pseudo_miou"]["filled"] < 1.0
        assert entry["pseudo_miou"]["boxsup_round_0"] == pytest.approx(entry["pseudo_miou"]["filled"])


def test_evaluate_cli_reads_coco_json(tiny_coco, tmp_path, capsys):
    from lightning_wsss.cli.main import main
    from lightning_wsss.datasets import COCOSegmentation
    from lightning_wsss.io import write_label_png

    reader = COCOSegmentation(tiny_coco["images"], tiny_coco["val"])
    for image_id in reader.ids:
        write_label_png(tmp_path / f"{image_id}.png", reader.load(image_id)["mask"])
    assert main(["evaluate", "--pred", str(tmp_path), "--root", tiny_coco["images"], "--split", tiny_coco["val"], "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["miou"] == pytest.approx(1.0) and result["num_images"] == 4
