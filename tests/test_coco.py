"""The COCO reader on a tiny instances JSON written by the test."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lightning_wsss.datasets import COCOSegmentation
from lightning_wsss.errors import DataError


def _write_coco(tmp_path, extra_ann=None):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(images_dir / name)
    anns = [
        # a large dog polygon and a small cat box-polygon on top of it in image 1
        {"id": 1, "image_id": 1, "category_id": 18, "iscrowd": 0, "area": 600.0, "bbox": [5, 5, 30, 20],
         "segmentation": [[5, 5, 35, 5, 35, 25, 5, 25]]},
        {"id": 2, "image_id": 1, "category_id": 17, "iscrowd": 0, "area": 40.0, "bbox": [10, 10, 8, 5],
         "segmentation": [[10, 10, 18, 10, 18, 15, 10, 15]]},
        {"id": 3, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 100.0, "bbox": [0, 0, 10, 10],
         "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
        # a crowd region in image 2
        {"id": 4, "image_id": 2, "category_id": 1, "iscrowd": 1, "area": 100.0, "bbox": [30, 20, 10, 10],
         "segmentation": {"counts": [0], "size": [40, 50]}},
    ]
    if extra_ann:
        anns.append(extra_ann)
    crowd = np.zeros((40, 50), np.uint8, order="F")
    crowd[20:30, 30:40] = 1
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(crowd))
    rle["counts"] = rle["counts"].decode()
    anns[3]["segmentation"] = rle
    data = {
        "images": [{"id": i + 1, "file_name": n, "height": 40, "width": 50} for i, n in enumerate(("a.jpg", "b.jpg", "c.jpg"))],
        "categories": [{"id": 1, "name": "person"}, {"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}],
        "annotations": anns,
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return images_dir, path


def test_coco_semantic_mask_boxes_labels(tmp_path):
    images, ann = _write_coco(tmp_path)
    ds = COCOSegmentation(images, ann)
    assert ds.class_names == ["background", "person", "cat", "dog"]
    assert ds.category_to_index == {1: 1, 17: 2, 18: 3}
    assert ds.ids == ["1", "2"]  # image 3 has no annotation
    sample = ds.load("1")
    assert sample["mask"].shape == (40, 50)
    assert sample["mask"][12, 14] == 2  # the small cat stays on top of the dog
    assert sample["mask"][20, 30] == 3 and sample["mask"][35, 45] == 0
    np.testing.assert_allclose(sample["boxes"], [[5, 5, 35, 25], [10, 10, 18, 15]])
    assert sample["box_labels"].tolist() == [3, 2] and sample["labels"].tolist() == [0, 1, 1]
    crowd = ds.load("2")
    assert (crowd["mask"][20:30, 30:40] == 255).all() and crowd["box_labels"].tolist() == [1]


def test_coco_unknown_category(tmp_path):
    images, ann = _write_coco(tmp_path, {"id": 9, "image_id": 3, "category_id": 99, "iscrowd": 0, "area": 4.0,
                                         "bbox": [0, 0, 2, 2], "segmentation": [[0, 0, 2, 0, 2, 2]]})
    with pytest.raises(DataError, match="instances.json: annotation 9 has unknown category id 99"):
        COCOSegmentation(images, ann)


def test_coco_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.json: COCO annotation file is missing"):
        COCOSegmentation(tmp_path, tmp_path / "nope.json")
