"""``wsss boxes-from-masks`` and ``wsss predict-box-crops``: boxes_from_mask and box_crop_inference as commands."""

from __future__ import annotations

from pathlib import Path

import lightning
import numpy as np
import torch

from lightning_wsss.boxes import box_crop_inference
from lightning_wsss.cli.main import main
from lightning_wsss.datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD
from lightning_wsss.datasets.annotations import class_index_map, parse_voc_xml
from lightning_wsss.io import read_image, read_label_png
from lightning_wsss.tasks.segmenter import DeepLabSegmenter
from tests.conftest import TINY_CLASSES


def test_boxes_from_masks_reproduces_the_annotations(tiny_voc, tmp_path, capsys):
    out = tmp_path / "boxes"
    assert main(["boxes-from-masks", "--root", str(tiny_voc), "--split", "train", "--out", str(out)]) == 0
    assert "6 boxes of 4 images" in capsys.readouterr().out
    classes = class_index_map(TINY_CLASSES)
    for image_id in ("img_0", "img_1", "img_2", "img_3"):
        made = parse_voc_xml(out / f"{image_id}.xml", classes)
        given = parse_voc_xml(tiny_voc / "Annotations" / f"{image_id}.xml", classes)
        np.testing.assert_array_equal(made.boxes, given.boxes)
        np.testing.assert_array_equal(made.labels, given.labels)
        assert made.size == (48, 48)
    assert not (out / "img_4.xml").exists()  # a val image


def test_boxes_from_masks_keeps_existing_files_unless_told(tiny_voc, capsys):
    argv = ["boxes-from-masks", "--root", str(tiny_voc), "--out", str(tiny_voc / "Annotations")]
    before = (tiny_voc / "Annotations" / "img_0.xml").read_bytes()
    assert main(argv) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (tiny_voc / "Annotations" / "img_0.xml").read_bytes() == before
    assert main(argv + ["--overwrite", "--min-area", "1000"]) == 0  # every rectangle is smaller: no box is left
    assert parse_voc_xml(tiny_voc / "Annotations" / "img_0.xml", class_index_map(TINY_CLASSES)).boxes.shape == (0, 4)


def _segmenter_checkpoint(path: Path) -> DeepLabSegmenter:
    torch.manual_seed(0)
    model = DeepLabSegmenter(num_classes=4, encoder="tu-resnet18", decoder_channels=16).eval()
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return model


def test_predict_box_crops_writes_the_crop_inference_argmax(tiny_voc, tmp_path, capsys):
    model = _segmenter_checkpoint(tmp_path / "seg.ckpt")
    out = tmp_path / "crops"
    argv = ["predict-box-crops", "--checkpoint", str(tmp_path / "seg.ckpt"), "--root", str(tiny_voc),
            "--split", "val", "--out", str(out), "--crop-size", "32", "--context", "0.2"]
    assert main(argv) == 0
    assert "2 label maps written" in capsys.readouterr().out
    image = read_image(tiny_voc / "JPEGImages" / "img_5.jpg").astype(np.float32) / 255.0
    normalised = torch.from_numpy(((image - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).astype(np.float32))
    boxes = parse_voc_xml(tiny_voc / "Annotations" / "img_5.xml", class_index_map(TINY_CLASSES)).boxes
    expected = box_crop_inference(model, normalised, boxes, crop_size=32, context=0.2).argmax(0).numpy()
    np.testing.assert_array_equal(read_label_png(out / "img_5.png"), expected)
    assert main(argv) == 0 and "0 label maps written to" in capsys.readouterr().out  # complete: nothing redone
    assert main(["evaluate", "--pred", str(out), "--root", str(tiny_voc), "--split", "val"]) == 0
