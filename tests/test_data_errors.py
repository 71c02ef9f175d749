"""Every kind of bad input raises DataError naming the file and the problem."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_wsss.datamodules import PseudoMaskDataModule
from lightning_wsss.datasets import VOCSegmentation
from lightning_wsss.errors import DataError
from lightning_wsss.io import write_label_png

from conftest import xml_for


def test_truncated_image(tiny_voc):
    path = tiny_voc / "JPEGImages" / "img_0.jpg"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"img_0\.jpg.*(unreadable|truncated)"):
        VOCSegmentation(tiny_voc, "train")[0]


def test_not_an_image(tiny_voc):
    (tiny_voc / "JPEGImages" / "img_0.jpg").write_text("hello")
    with pytest.raises(DataError, match=r"img_0\.jpg: unreadable"):
        VOCSegmentation(tiny_voc, "train")[0]


def test_missing_image(tiny_voc):
    (tiny_voc / "JPEGImages" / "img_2.jpg").unlink()
    with pytest.raises(DataError, match=r"img_2\.jpg: image file is missing"):
        VOCSegmentation(tiny_voc, "train").load("img_2")


def test_missing_mask_when_required(tiny_voc):
    (tiny_voc / "SegmentationClass" / "img_1.png").unlink()
    (tiny_voc / "Annotations" / "img_1.xml").unlink()
    with pytest.raises(DataError, match=r"img_1\.png: mask file is missing"):
        VOCSegmentation(tiny_voc, "train", require_masks=True)


def test_mask_size_mismatch(tiny_voc):
    write_label_png(tiny_voc / "SegmentationClass" / "img_0.png", np.zeros((40, 48), np.uint8))
    with pytest.raises(DataError, match=r"img_0\.png: mask size 48x40 differs from its image's 48x48"):
        VOCSegmentation(tiny_voc, "train")[0]


def test_mask_value_out_of_range(tiny_voc):
    mask = np.zeros((48, 48), np.uint8)
    mask[3, 3] = 7
    write_label_png(tiny_voc / "SegmentationClass" / "img_0.png", mask)
    with pytest.raises(DataError, match=r"img_0\.png: mask values \[7\] are outside the class range 0\.\.3"):
        VOCSegmentation(tiny_voc, "train")[0]


def test_rgb_mask_rejected(tiny_voc):
    from PIL import Image

    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(tiny_voc / "SegmentationClass" / "img_0.png")
    with pytest.raises(DataError, match=r"img_0\.png: mask must be a palette or single-channel PNG"):
        VOCSegmentation(tiny_voc, "train")[0]


def test_zero_area_box(tiny_voc):
    (tiny_voc / "Annotations" / "img_0.xml").write_text(xml_for("img_0", (48, 48), [("red", (10, 10, 9, 20), 0)]))
    with pytest.raises(DataError, match=r"img_0\.xml: box of 'red' has zero or negative area"):
        VOCSegmentation(tiny_voc, "train")


def test_box_outside_image(tiny_voc):
    (tiny_voc / "Annotations" / "img_0.xml").write_text(xml_for("img_0", (48, 48), [("red", (10, 10, 70, 20), 0)]))
    ds = VOCSegmentation(tiny_voc, "train")
    with pytest.raises(DataError, match=r"img_0\.xml: box .* lies outside the 48x48 image"):
        ds[0]


def test_unknown_class_name(tiny_voc):
    (tiny_voc / "Annotations" / "img_3.xml").write_text(xml_for("img_3", (48, 48), [("zebra", (1, 1, 5, 5), 0)]))
    with pytest.raises(DataError, match=r"img_3\.xml: unknown class name 'zebra'"):
        VOCSegmentation(tiny_voc, "train")


def test_empty_split(tiny_voc):
    (tiny_voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n")
    with pytest.raises(DataError, match=r"train\.txt: split file is empty"):
        VOCSegmentation(tiny_voc, "train")


def test_missing_split(tiny_voc):
    with pytest.raises(DataError, match=r"nope\.txt: split file is missing"):
        VOCSegmentation(tiny_voc, "nope")


def test_duplicate_ids(tiny_voc):
    (tiny_voc / "ImageSets" / "Segmentation" / "train.txt").write_text("img_0\nimg_1\nimg_0\n")
    with pytest.raises(DataError, match=r"train\.txt: duplicate id 'img_0' on lines 1 and 3"):
        VOCSegmentation(tiny_voc, "train")


def test_missing_pseudo_mask(tiny_voc, tmp_path):
    pseudo = tmp_path / "pseudo"
    for i in range(3):
        write_label_png(pseudo / f"img_{i}.png", np.zeros((48, 48), np.uint8))
    dm = PseudoMaskDataModule(pseudo_mask_dir=str(pseudo), root=str(tiny_voc), crop_size=32)
    with pytest.raises(DataError, match=r"img_3\.png: pseudo mask is missing \(1 of 4"):
        dm.setup("fit")


def test_error_is_picklable():
    import pickle

    err = pickle.loads(pickle.dumps(DataError("/x/y.png", "broken")))
    assert str(err) == "/x/y.png: broken" and err.path == "/x/y.png"
