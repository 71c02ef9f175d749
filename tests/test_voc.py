"""The VOC-layout reader: layout variants, labels, boxes, and the real data in ../shared/data."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lightning_wsss.datasets import VOC_CLASSES, VOCSegmentation
from lightning_wsss.datasets.annotations import parse_voc_xml, class_index_map, read_split
from lightning_wsss.io import read_label_png, write_label_png

from conftest import xml_for


def test_reads_sample_fields(tiny_voc):
    ds = VOCSegmentation(tiny_voc, "train", require_masks=True)
    assert ds.class_names[3] == "tv/monitor" and ds.num_classes == 4 and len(ds) == 4
    sample = ds[1]
    assert sample["id"] == "img_1"
    assert sample["image"].shape == (48, 48, 3) and sample["image"].dtype == np.uint8
    assert sample["mask"].shape == (48, 48) and set(np.unique(sample["mask"])) == {0, 1, 2, 255}
    # 1-based inclusive XML (6..21, 7..26) -> 0-based pixel edges (5, 6, 21, 26)
    np.testing.assert_allclose(sample["boxes"][0], [5, 6, 21, 26])
    assert sample["box_labels"].tolist() == [1, 2]
    assert sample["labels"].tolist() == [1.0, 1.0, 0.0]
    # the box is the tight bound of the mask's class-1 region
    ys, xs = np.nonzero(sample["mask"] == 1)
    np.testing.assert_allclose(sample["boxes"][0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_labels_from_mask_without_xml(tiny_voc):
    (tiny_voc / "Annotations" / "img_1.xml").unlink()
    ds = VOCSegmentation(tiny_voc, "train")
    sample = ds.load("img_1")
    assert sample["labels"].tolist() == [1.0, 1.0, 0.0]
    assert sample["boxes"].shape == (0, 4)
    assert ds.image_labels("img_1").tolist() == [1.0, 1.0, 0.0]


def test_masks_may_be_absent_for_a_split(tiny_voc):
    for i in range(4):
        (tiny_voc / "SegmentationClass" / f"img_{i}.png").unlink()
    ds = VOCSegmentation(tiny_voc, "train")
    assert ds[0]["mask"] is None and not ds.has_masks() and ds[0]["labels"].sum() == 1


def test_segmentation_class_aug_and_train_aug_lines(tiny_voc):
    aug = tiny_voc / "SegmentationClassAug"
    aug.mkdir()
    (tiny_voc / "SegmentationClass" / "img_0.png").rename(aug / "img_0.png")
    (tiny_voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text(
        "/JPEGImages/img_0.jpg /SegmentationClassAug/img_0.png\n/JPEGImages/img_1.jpg /SegmentationClass/img_1.png\n")
    ds = VOCSegmentation(tiny_voc, "train_aug", require_masks=True)
    assert ds.ids == ["img_0", "img_1"]
    assert ds.mask_path("img_0").parent.name == "SegmentationClassAug"
    assert ds[0]["mask"].shape == (48, 48)
    plain = VOCSegmentation(tiny_voc, "train", require_masks=True)  # falls back to SegmentationClassAug by id
    assert plain.mask_path("img_0").parent.name == "SegmentationClassAug"


def test_index_png_mask_and_float_and_difficult_boxes(tiny_voc):
    mask = read_label_png(tiny_voc / "SegmentationClass" / "img_0.png")
    Image.fromarray(mask, mode="L").save(tiny_voc / "SegmentationClass" / "img_0.png")  # index ("L") PNG
    (tiny_voc / "Annotations" / "img_0.xml").write_text(
        xml_for("img_0", (48, 48), [("red", (5.5, 7.25, 20.5, 26.0), 0), ("green", (30, 30, 40, 40), 1)]))
    ds = VOCSegmentation(tiny_voc, "train")
    sample = ds.load("img_0")
    assert np.array_equal(sample["mask"], mask)
    np.testing.assert_allclose(sample["boxes"][0], [4.5, 6.25, 20.5, 26.0])
    assert sample["difficult"].tolist() == [False, True] and sample["labels"].tolist() == [1, 1, 0]
    skipping = VOCSegmentation(tiny_voc, "train", skip_difficult_boxes=True).load("img_0")
    assert skipping["box_labels"].tolist() == [1] and skipping["labels"].tolist() == [1, 1, 0]


def test_default_voc_class_names_and_name_matching(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text(xml_for("a", (10, 10), [("tvmonitor", (1, 1, 5, 5), 0), ("pottedplant", (2, 2, 6, 6), 0)]))
    parsed = parse_voc_xml(xml, class_index_map(["background", "tv/monitor", "potted plant"]))
    assert parsed.labels.tolist() == [1, 2]
    assert parse_voc_xml(xml, class_index_map(VOC_CLASSES)).labels.tolist() == [20, 16]


def test_split_reader_skips_blank_lines(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("a\n\nb\n")
    assert [e.image_id for e in read_split(path)] == ["a", "b"]


def test_voc_fixture_loads_unchanged(shared_data):
    ds = VOCSegmentation(shared_data / "voc-fixture", "train", require_masks=True)
    assert ds.num_classes == 21 and len(ds) == 3
    for image_id in ds.ids:
        sample = ds.load(image_id)
        h, w = sample["image"].shape[:2]
        assert sample["mask"].shape == (h, w)
        assert len(sample["boxes"]) == len(sample["box_labels"]) > 0
        assert (sample["boxes"][:, 2] <= w).all() and (sample["boxes"][:, 3] <= h).all()
        mask_classes = set(np.unique(sample["mask"]).tolist()) - {0, 255}
        assert mask_classes == set(sample["box_labels"].tolist())
        assert set((np.flatnonzero(sample["labels"]) + 1).tolist()) == mask_classes


def test_horse_set_loads_unchanged(shared_data):
    for split, expected in (("train", 228), ("val", 100)):
        ds = VOCSegmentation(shared_data / "weizmann-horse-voc", split, require_masks=True)
        assert len(ds) == expected and ds.class_names == ["background", "horse"]
    sample = ds[0]
    assert sample["labels"].tolist() == [1.0] and set(np.unique(sample["mask"])) <= {0, 1}
    ys, xs = np.nonzero(sample["mask"] == 1)
    np.testing.assert_allclose(sample["boxes"][0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1)


def test_camvid_set_loads_unchanged(shared_data):
    """The CamVid street tiles: 7 object classes on background, image labels that vary from tile to tile."""
    names = ["background", "pole", "tree", "sign", "fence", "car", "pedestrian", "bicyclist"]
    sizes = {}
    for split, expected in (("train", 500), ("val", 120)):
        ds = VOCSegmentation(shared_data / "camvid-seq05vd", split, require_masks=True)
        assert len(ds) == expected and ds.class_names == names
        sizes[split] = ds
    train = sizes["train"]
    labels = np.stack([train[i]["labels"] for i in range(0, 500, 10)])
    assert labels.shape == (50, 7)
    assert 0.0 < labels.mean() < 1.0 and len({tuple(row) for row in labels.tolist()}) > 5  # labels vary
    sample = train[0]
    assert sample["image"].shape[:2] == sample["mask"].shape and sample["image"].shape[2] == 3
    assert set(np.unique(sample["mask"])) <= set(range(8)) | {255}
    # image labels are the classes with a box (a connected component of at least 25 px)
    assert sorted(set(sample["box_labels"].tolist())) == sorted((np.nonzero(sample["labels"])[0] + 1).tolist())
