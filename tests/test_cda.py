"""Context decoupling augmentation: instances, pasting, label updates by hand; the DataModule keeps masks and
labels consistent, pastes the source pixels, and is deterministic under a seed."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from lightning_wsss.datamodules.cda import (
    CDADataModule,
    cut_object,
    find_objects,
    labels_after_paste,
    paste_object,
    paste_random_objects,
)
from lightning_wsss.errors import DataError


def test_find_and_cut_objects_by_hand():
    mask = np.zeros((8, 10), np.uint8)
    mask[1:3, 1:4] = 1  # class 1, 6 px
    mask[5:8, 6:10] = 1  # class 1, 12 px
    mask[4, 0] = 2  # class 2, 1 px
    mask[0, 9] = 255
    objects = find_objects("s", mask, num_classes=3, min_area=2)
    assert [(o.class_id, o.x, o.y, o.w, o.h, o.area) for o in objects] == [(1, 1, 1, 3, 2, 6), (1, 6, 5, 4, 3, 12)]
    image = np.arange(8 * 10 * 3, dtype=np.uint8).reshape(8, 10, 3)
    patch, shape = cut_object(image, mask, objects[1])
    assert shape.all() and np.array_equal(patch, image[5:8, 6:10])
    assert len(find_objects("s", mask, 3, min_area=1)) == 3


def test_paste_object_and_labels_by_hand():
    image = np.zeros((6, 6, 3), np.uint8)
    mask = np.zeros((6, 6), np.uint8)
    mask[0:2, 0:2] = 1  # a small class-1 object
    mask[4:6, 4:6] = 3  # a class-3 object
    patch = np.full((3, 3, 3), 200, np.uint8)
    shape = np.ones((3, 3), bool)
    shape[2, 2] = False
    new_image, new_mask = paste_object(image, mask, patch, shape, 2, 0, 0)
    assert (new_image[0:3, 0:3][shape] == 200).all() and (new_image[2, 2] == 0).all()
    assert (new_mask[0:3, 0:3][shape] == 2).all() and new_mask[2, 2] == 0 and (mask[0:2, 0:2] == 1).all()
    labels = np.array([1.0, 0.0, 1.0], np.float32)
    # class 1 covered completely: removed; class 2 pasted: added; class 3 untouched
    assert labels_after_paste(labels, mask, new_mask, [2]).tolist() == [0.0, 1.0, 1.0]
    # a partly covered class stays
    _, partial = paste_object(image, mask, patch[:1, :1], shape[:1, :1], 2, 0, 0)
    assert labels_after_paste(labels, mask, partial, [2]).tolist() == [1.0, 1.0, 1.0]
    # a pasted object covered by a later paste is not labelled
    _, hidden = paste_object(image, new_mask, np.zeros((3, 3, 3), np.uint8), np.ones((3, 3), bool), 3, 0, 0)
    assert labels_after_paste(labels, mask, hidden, [2, 3]).tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError):
        paste_object(image, mask, patch, shape, 2, 4, 4)


def test_random_paste_fits_large_objects():
    rng = np.random.default_rng(0)
    image, mask = np.zeros((10, 12, 3), np.uint8), np.zeros((10, 12), np.uint8)
    big = (np.full((30, 8, 3), 9, np.uint8), np.ones((30, 8), bool), 1)
    out, out_mask, (placement,) = paste_random_objects(image, mask, [big], rng, (1.0, 1.0))
    assert placement["height"] <= 10 and placement["width"] <= 12 and (out_mask == 1).sum() > 0


@pytest.fixture
def cda(tiny_voc):
    dm = CDADataModule(object_mask_dir=str(tiny_voc / "SegmentationClass"), root=str(tiny_voc), crop_size=32,
                       batch_size=2, paste_prob=1.0, max_objects=2, object_scale=(1.0, 1.0), return_mask=True)
    dm.setup("fit")
    return dm


def test_cda_keeps_masks_and_labels_consistent(cda, tiny_voc):
    reader = cda.datasets["fit"].reader
    assert {o.image_id for o in cda.objects} == set(reader.ids) and {o.class_id for o in cda.objects} == {1, 2}
    pasted_any = changed_labels = 0
    for index in range(len(reader)):
        raw = reader[index]
        original_mask = raw["mask"]
        for seed in range(4):
            torch.manual_seed(seed)
            out = cda.prepare_train(raw)
            mask = out["mask"]
            present = sorted(int(c) for c in np.unique(mask) if 0 < c < 255)
            assert sorted((np.nonzero(out["labels"])[0] + 1).tolist()) == present
            changed_labels += not np.array_equal(out["labels"], raw["labels"])
            covered = np.zeros(mask.shape, bool)
            for placement in reversed(out["cda"]):  # later pastes cover earlier ones
                assert placement["source"] != raw["id"]
                record, = [o for o in cda.objects if o.image_id == placement["source"] and o.class_id == placement["class_id"]]
                source = reader.load(record.image_id)
                patch, shape = cut_object(source["image"], source["mask"], record)
                top, left = placement["top"], placement["left"]
                window = (slice(top, top + record.h), slice(left, left + record.w))
                visible = shape & ~covered[window]
                assert np.array_equal(out["image"][window][visible], patch[visible])
                assert (mask[window][visible] == record.class_id).all()
                covered[window] |= shape
                pasted_any += 1
            assert np.array_equal(out["image"][~covered], raw["image"][~covered])
            assert np.array_equal(mask[~covered], original_mask[~covered])
    assert pasted_any > 0 and changed_labels > 0


def test_cda_is_deterministic_under_a_seed(cda):
    raw = cda.datasets["fit"].reader[1]
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        runs.append(cda.prepare_train(raw))
    assert np.array_equal(runs[0]["image"], runs[1]["image"]) and np.array_equal(runs[0]["mask"], runs[1]["mask"])
    assert runs[0]["cda"] == runs[1]["cda"] and np.array_equal(runs[0]["labels"], runs[1]["labels"])
    torch.manual_seed(0)
    first = [b["image"] for b in [next(iter(cda.train_dataloader()))]]
    torch.manual_seed(0)
    second = [b["image"] for b in [next(iter(cda.train_dataloader()))]]
    assert torch.equal(first[0], second[0])


def test_batches_and_options(tiny_voc):
    dm = CDADataModule(object_mask_dir=str(tiny_voc / "SegmentationClass"), root=str(tiny_voc), crop_size=32,
                       batch_size=2, paste_prob=0.0)
    dm.setup("fit")
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    assert "mask" not in batch and batch["image"].shape == (2, 3, 32, 32) and batch["labels"].shape == (2, 3)
    raw = dm.datasets["fit"].reader[0]
    out = dm.prepare_train(raw)
    assert out["cda"] == [] and np.array_equal(out["image"], raw["image"])  # paste_prob 0: unchanged

    with_mask = CDADataModule(object_mask_dir=str(tiny_voc / "SegmentationClass"), root=str(tiny_voc), crop_size=32,
                              batch_size=2, paste_prob=1.0, return_mask=True)
    with_mask.setup("fit")
    batch = next(iter(with_mask.train_dataloader()))
    assert batch["mask"].shape == (2, 32, 32)

    with pytest.raises(ValueError):
        CDADataModule(object_mask_dir="x", root=str(tiny_voc), paste_prob=1.5)
    os.remove(tiny_voc / "SegmentationClass" / "img_0.png")
    broken = CDADataModule(object_mask_dir=str(tiny_voc / "SegmentationClass"), root=str(tiny_voc))
    with pytest.raises(DataError, match="img_0"):
        broken.setup("fit")
