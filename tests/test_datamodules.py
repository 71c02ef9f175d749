"""DataModules: per-supervision views, synced augmentation, batching, plotting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_wsss.datamodules import (BoxDataModule, ImageLabelDataModule, MaskDataModule, PseudoMaskDataModule,
                                        collate_samples)
from lightning_wsss.datamodules.transforms import apply_transform, train_transform
from lightning_wsss.io import write_label_png


def _batch(dm, loader="train"):
    return next(iter(getattr(dm, f"{loader}_dataloader")()))


def test_image_label_module_hides_masks_in_training(tiny_voc):
    dm = ImageLabelDataModule(root=str(tiny_voc), batch_size=2, crop_size=32)
    assert dm.num_classes == 4
    dm.setup("fit")
    batch = _batch(dm)
    assert "mask" not in batch and batch["image"].shape == (2, 3, 32, 32)
    assert batch["labels"].shape == (2, 3) and len(batch["id"]) == 2
    assert all(b.numel() == 0 for b in batch["boxes"])
    val = _batch(dm, "val")  # ground truth stays available for evaluation
    assert val["mask"].shape == (1, 48, 48) and val["id"] == ["img_4"]


def test_mask_module_returns_masks(tiny_voc):
    dm = MaskDataModule(root=str(tiny_voc), batch_size=4, crop_size=40)
    dm.setup("fit")
    batch = _batch(dm)
    assert batch["mask"].shape == (4, 40, 40) and batch["mask"].dtype == torch.long
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2, 255}


def test_boxes_follow_geometric_augmentation():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    mask = np.zeros((60, 80), np.uint8)
    mask[10:30, 20:50] = 1
    sample = {"id": "x", "image": image, "mask": mask, "boxes": np.array([[20, 10, 50, 30]], np.float32),
              "box_labels": np.array([1]), "difficult": np.array([False]), "labels": np.array([1.0], np.float32)}
    transform = train_transform(48, scale_range=(0.8, 1.2), hflip=True)
    for _ in range(20):
        out = apply_transform(transform, sample)
        fg = out["mask"] == 1
        if fg.sum() < 20 or len(out["boxes"]) == 0:
            continue
        ys, xs = torch.nonzero(fg, as_tuple=True)
        expected = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert torch.allclose(out["boxes"][0], expected, atol=1.5), (out["boxes"], expected)


def test_collate_pads_images_masks_and_keeps_box_lists():
    a = {"id": "a", "image": torch.ones(3, 4, 5), "mask": torch.zeros(4, 5, dtype=torch.long),
         "labels": torch.tensor([1.0]), "boxes": torch.zeros(2, 4), "box_labels": torch.ones(2, dtype=torch.long),
         "size": torch.tensor([4, 5])}
    b = {"id": "b", "image": torch.ones(3, 6, 3), "labels": torch.tensor([0.0]), "boxes": torch.zeros(0, 4),
         "box_labels": torch.zeros(0, dtype=torch.long), "size": torch.tensor([6, 3])}
    batch = collate_samples([a, b], size_divisor=4)
    assert batch["image"].shape == (2, 3, 8, 8) and batch["image"][0, :, 4:].abs().sum() == 0
    assert batch["mask"].shape == (2, 8, 8) and (batch["mask"][0, 4:] == 255).all() and (batch["mask"][1] == 255).all()
    assert [len(x) for x in batch["boxes"]] == [2, 0] and batch["size"].tolist() == [[4, 5], [6, 3]]


def test_box_module_and_plot(tiny_voc, tmp_path):
    dm = BoxDataModule(root=str(tiny_voc), batch_size=2, crop_size=48, scale_range=(1.0, 1.0), hflip=False)
    dm.setup("fit")
    batch = _batch(dm)
    assert all(len(b) == len(l) >= 1 for b, l in zip(batch["boxes"], batch["box_labels"]))
    sample = {k: v[0] for k, v in batch.items()}
    fig = dm.plot(sample)
    fig.savefig(tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_eval_has_no_randomness(tiny_voc):
    dm = BoxDataModule(root=str(tiny_voc), crop_size=32, color_jitter=0.4)
    dm.setup("validate")
    first, second = dm.datasets["validate"][0], dm.datasets["validate"][0]
    assert torch.equal(first["image"], second["image"]) and first["image"].shape == (3, 48, 48)


def test_pseudo_mask_module(tiny_voc, tmp_path):
    pseudo = tmp_path / "pseudo"
    for i in range(4):
        write_label_png(pseudo / f"img_{i}.png", np.full((48, 48), 2, np.uint8))
    dm = PseudoMaskDataModule(pseudo_mask_dir=str(pseudo), root=str(tiny_voc), batch_size=2, crop_size=48,
                              scale_range=(1.0, 1.0))
    dm.setup("fit")
    batch = _batch(dm)
    assert set(batch["mask"].unique().tolist()) <= {2, 255}  # the pseudo mask trains
    assert 1 in batch["gt_mask"].unique().tolist()  # the ground truth is kept for scoring
    assert _batch(dm, "val")["mask"].max() <= 255


def test_grid_shuffle_permutes_the_cells_of_the_crop_and_keeps_the_labels(tiny_voc):
    """Four quadrants of distinct colours come out as the same four quadrants in another order (the mask alike);
    0 leaves the crop in place; a bad value is a clear error."""
    from lightning_wsss.datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize
    from lightning_wsss.errors import DataError

    image = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]
    cells = [(slice(0, 16), slice(0, 16)), (slice(0, 16), slice(16, 32)), (slice(16, 32), slice(0, 16)),
             (slice(16, 32), slice(16, 32))]
    for index, (rows, cols) in enumerate(cells):
        image[rows, cols] = colours[index]
        mask[rows, cols] = index
    sample = {"image": image, "mask": mask, "boxes": np.zeros((0, 4)), "box_labels": np.zeros(0, np.int64),
              "difficult": np.zeros(0, bool), "labels": np.array([1.0, 0.0]), "id": "x"}
    seen = set()
    for seed in range(8):
        transform = train_transform(32, (1.0, 1.0), hflip=False, grid_shuffle=2)
        transform.set_random_seed(seed)
        out = apply_transform(transform, sample)
        picture = denormalize(out["image"], IMAGENET_MEAN, IMAGENET_STD)
        order = []
        for rows, cols in cells:
            values = np.unique(out["mask"][rows, cols].numpy())
            assert len(values) == 1  # every output cell is one whole input cell
            order.append(int(values[0]))
            assert np.abs(picture[rows, cols].astype(int) - colours[order[-1]]).max() <= 1
        assert sorted(order) == [0, 1, 2, 3] and out["labels"].tolist() == [1.0, 0.0]
        seen.add(tuple(order))
    assert len(seen) > 1  # the order changes with the seed
    still = apply_transform(train_transform(32, (1.0, 1.0), hflip=False, grid_shuffle=0), sample)
    assert np.array_equal(still["mask"].numpy(), mask)
    with pytest.raises(DataError, match="grid_shuffle must be an integer >= 0"):
        ImageLabelDataModule(str(tiny_voc), grid_shuffle=-1)
    assert ImageLabelDataModule(str(tiny_voc), grid_shuffle=2).train_transform().transforms[-2].__class__.__name__ \
        == "RandomGridShuffle"


def test_normalize_is_the_inverse_of_denormalize_and_matches_the_eval_transform():
    from lightning_wsss.datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, eval_transform, normalize

    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    array = normalize(image)
    assert array.shape == (3, 7, 5) and array.dtype == np.float32 and array.flags["C_CONTIGUOUS"]
    assert np.array_equal(denormalize(array, IMAGENET_MEAN, IMAGENET_STD), image)
    expected = eval_transform()(image=image)["image"].transpose(2, 0, 1)
    assert np.allclose(array, expected, atol=1e-5)
