"""IRN's inter-pixel relations: path affinities of a boundary map by hand, the boundary loss on a known answer,
BoundaryRefiner training on confident labels and walking, and its checkpoint loaded by class path."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from lightning_wsss.callbacks import ArtifactWriter
from lightning_wsss.datamodules import ImageLabelDataModule, PseudoMaskDataModule
from lightning_wsss.io import read_label_png, write_label_png, write_npz_atomic
from lightning_wsss.refine.affinity_labels import affinity_pairs, neighbor_offsets
from lightning_wsss.refine.path_affinity import boundary_loss, path_affinity, segment_pixels
from lightning_wsss.refine.random_walk import random_walk, walk_snapshots
from lightning_wsss.tasks import AffinityRefiner, BoundaryRefiner


def test_segment_pixels_include_both_ends_and_the_thick_line():
    assert segment_pixels(0, 3) == ((0, 0), (0, 1), (0, 2), (0, 3))
    assert segment_pixels(1, 1) == ((0, 0), (0, 1), (1, 0), (1, 1))  # a diagonal step passes its 2 x 2 box
    assert segment_pixels(2, 0) == ((0, 0), (1, 0), (2, 0))
    # (4, 2): the box corners far from the line are off the path
    path = segment_pixels(4, 2)
    assert (0, 0) in path and (4, 2) in path and (2, 1) in path
    assert (0, 2) not in path and (4, 0) not in path


def _vertical_boundary(b: float = 0.8) -> torch.Tensor:
    """5 x 5 map: 0.1 + 0.01 * (5y + x) off the boundary, ``b`` on column 2."""
    ys, xs = torch.meshgrid(torch.arange(5), torch.arange(5), indexing="ij")
    boundary = 0.1 + 0.01 * (5 * ys + xs).double()
    boundary[:, 2] = b
    return boundary[None]


def test_path_affinity_by_hand_on_a_vertical_boundary():
    offsets = neighbor_offsets(5)
    index = {tuple(o): p for p, o in enumerate(offsets.tolist())}
    boundary = _vertical_boundary(0.8)
    aff = path_affinity(boundary, offsets)
    assert aff.shape == (1, len(offsets), 5, 5)
    # pairs crossing the boundary: 1 - b
    assert float(aff[0, index[(0, 2)], 0, 1]) == pytest.approx(0.2)  # (0, 1) -> (0, 3)
    assert float(aff[0, index[(0, 4)], 2, 0]) == pytest.approx(0.2)  # (2, 0) -> (2, 4)
    assert float(aff[0, index[(1, 1)], 0, 1]) == pytest.approx(0.2)  # (0, 1) -> (1, 2): ends on it
    # pairs on one side: 1 - the largest value they pass
    assert float(aff[0, index[(1, 1)], 0, 0]) == pytest.approx(1 - 0.16)  # (0,0),(0,1),(1,0),(1,1)
    assert float(aff[0, index[(2, 1)], 1, 3]) == pytest.approx(1 - 0.29)  # all of rows 1-3, columns 3-4
    assert float(aff[0, index[(2, 0)], 0, 4]) == pytest.approx(1 - 0.24)  # (0,4),(1,4),(2,4)
    # partner outside the map
    assert float(aff[0, index[(0, 1)], 0, 4]) == 0.0
    assert float(aff[0, index[(3, 0)], 2, 0]) == 0.0
    # every in-map pair of the left half that stays left of column 2 is above 1 - b
    for (dy, dx), p in index.items():
        for y in range(5):
            for x in range(5):
                if 0 <= y + dy < 5 and 0 <= x + dx < 5:
                    values = [float(boundary[0, y + u, x + v]) for u, v in segment_pixels(dy, dx)]
                    assert float(aff[0, p, y, x]) == pytest.approx(1 - max(values))


def test_path_affinity_gradient_reaches_the_path_maximum():
    boundary = _vertical_boundary(0.8).requires_grad_(True)
    offsets = torch.tensor([[0, 2]])
    path_affinity(boundary, offsets)[0, 0, 0, 1].backward()
    grad = boundary.grad[0]
    assert float(grad[0, 2]) == -1.0 and float(grad.abs().sum()) == 1.0


def test_path_affinities_run_through_the_same_walk():
    offsets = neighbor_offsets(3)
    boundary = torch.zeros(1, 6, 6, dtype=torch.float64)
    boundary[:, :, 3] = 1.0  # a wall: nothing crosses
    aff = path_affinity(boundary, offsets)
    cams = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    cams[0, 0, :, 0] = 1.0
    walked = random_walk(cams, aff, offsets, beta=10.0, t=20)
    assert float(walked[0, 0, :, 4:].abs().max()) == 0.0 and float(walked[0, 0, :, :3].min()) > 0
    snaps = walk_snapshots(cams, aff, offsets, [20], beta=10.0)
    torch.testing.assert_close(snaps[20], walked)


def test_boundary_loss_known_answer():
    boundary = torch.tensor([[[0.1, 0.3, 0.6]], [[0.1, 0.3, 0.6]]], dtype=torch.float64)  # [2, 1, 3]
    labels = torch.tensor([[[0, 0, 1]], [[2, 2, 0]]])
    offsets = neighbor_offsets(3)  # on a 1 x 3 map only (0, 1) and (0, 2) stay inside
    bg_pos, fg_pos, neg = affinity_pairs(labels, 3)
    out = boundary_loss(boundary, bg_pos, fg_pos, neg, offsets)
    # a: (x0, +1) = 1 - 0.3 = 0.7, (x1, +1) = 1 - 0.6 = 0.4, (x0, +2) = 1 - 0.6 = 0.4
    assert float(out["bg"]) == pytest.approx(-math.log(0.7))
    assert float(out["fg"]) == pytest.approx(-math.log(0.7))
    assert float(out["neg"]) == pytest.approx(-math.log(0.6))
    assert float(out["loss"]) == pytest.approx(0.5 * -math.log(0.7) + 0.5 * -math.log(0.6))


def _confident_labels_and_cams(tiny_voc, tmp_path, ids=range(6)):
    labels_dir, cams_dir = tmp_path / "aff", tmp_path / "cams"
    for i in ids:
        gt = read_label_png(tiny_voc / "SegmentationClass" / f"img_{i}.png")
        write_label_png(labels_dir / f"img_{i}.png", gt.copy())
        keys = np.unique(gt[(gt > 0) & (gt < 255)])
        cams = np.stack([(gt == k).astype(np.float32) * 0.9 for k in keys]).astype(np.float16)
        write_npz_atomic(cams_dir / f"img_{i}.npz", cams=cams, keys=keys)
    return labels_dir, cams_dir


def test_boundary_refiner_head_hooks_and_options():
    model = BoundaryRefiner(3, backbone="test_resnet", feature_levels=(1, 2, 3), embed_dim=8, train_radius=4,
                            freeze_backbone=True)
    assert isinstance(model, AffinityRefiner) and model.stride == 4
    assert model.hparams.train_radius == 4 and model.hparams.embed_dim == 8 and model.hparams.beta == 10.0
    images = torch.randn(2, 3, 32, 32)
    boundary = model.embed(images)
    assert boundary.shape == (2, 1, 8, 8) and 0 < float(boundary.detach().min()) <= float(boundary.detach().max()) < 1
    assert model.affinity(boundary).shape == (2, len(neighbor_offsets(5)), 8, 8)
    backbone, head = model.param_groups()
    assert backbone == [] and len(head) == 3 * 3 + 2  # 3 side outputs (conv, GroupNorm weight and bias), 1x1 conv
    model.train()
    assert not model.net.backbone.training and model.net.side_outputs.training
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 2:6, 2:6] = 1
    losses = model.training_loss(boundary, labels)
    losses["loss"].backward()
    assert all(p.grad is None for p in model.net.backbone.parameters())
    assert model.net.boundary.weight.grad is not None
    cams = torch.ones(1, 2, 8, 8)
    torch.testing.assert_close(model.walk_cams(cams, boundary[:1]), cams * (1 - boundary[:1]))
    model.hparams.boundary_cams = False
    assert model.walk_cams(cams, boundary[:1]) is cams


def test_boundary_refiner_trains_walks_and_reloads_by_class_path(tiny_voc, tmp_path):
    torch.set_num_threads(1)
    labels_dir, cams_dir = _confident_labels_and_cams(tiny_voc, tmp_path)
    L.seed_everything(0, verbose=False)
    dm = PseudoMaskDataModule(pseudo_mask_dir=str(labels_dir), root=str(tiny_voc), batch_size=2, crop_size=48,
                              scale_range=(1.0, 1.0), eval_batch_size=2)
    model = BoundaryRefiner(dm.num_classes, backbone="test_resnet", feature_levels=(1, 2, 3), embed_dim=8, lr=0.05,
                            cams_dir=str(cams_dir), t=8)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    trainer.fit(model, dm)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert "val/aff_cross" in trainer.callback_metrics
    ckpt = tmp_path / "irn.ckpt"
    trainer.save_checkpoint(str(ckpt))
    from lightning_wsss.pipeline.config import resolve_class
    from lightning_wsss.serialization import load_model_checkpoint

    loaded = load_model_checkpoint(resolve_class("BoundaryRefiner", "model"), ckpt, cams_dir=str(cams_dir))
    assert type(loaded) is BoundaryRefiner and loaded.hparams.t == 8 and loaded.hparams.boundary_cams
    from lightning_wsss.tasks.irn import refiner_class

    assert refiner_class(str(ckpt)) is BoundaryRefiner  # wsss sweep-walk picks the class from the checkpoint
    torch.testing.assert_close(loaded.net.boundary.weight, model.net.boundary.weight)
    predict = ImageLabelDataModule(root=str(tiny_voc), predict_split="train", eval_batch_size=2)
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
              callbacks=[ArtifactWriter(str(tmp_path / "rw"))]).predict(loaded, predict, return_predictions=False)
    written = sorted(p.stem for p in (tmp_path / "rw" / "labels").glob("*.png"))
    assert written == [f"img_{i}" for i in range(4)]
    label = read_label_png(tmp_path / "rw" / "labels" / "img_1.png")
    gt = read_label_png(tiny_voc / "SegmentationClass" / "img_1.png")
    assert label.shape == gt.shape and set(np.unique(label)) <= {0, 1, 2}
    valid = gt != 255
    assert (label[valid] == gt[valid]).mean() > 0.8  # CAMs on the objects stay on them (psa walk)


def test_image_pipeline_trains_a_boundary_refiner_and_walks_it(tmp_path):
    import json

    from lightning_wsss.datasets.synthetic import make_synthetic
    from lightning_wsss.pipeline import run_pipeline
    from lightning_wsss.pipeline.config import deep_merge
    from lightning_wsss.pipeline.demo import QUICK_OVERRIDES

    data = make_synthetic(tmp_path / "data", num_train=8, num_val=4, size=64, seed=3)
    config = deep_merge(QUICK_OVERRIDES, {
        "name": "t-irn", "supervision": "image", "progress_bar": False, "logger": "none",
        "dataset": {"root": str(data), "name": "synthetic"},
        "stages": {"affinity": {"model": {"class_path": "BoundaryRefiner", "init_args": {"embed_dim": 8}}},
                   "random_walk": {"walk": {"mode": "irn", "beta": 10.0, "t": 4}}}})
    out = run_pipeline(config, tmp_path / "runs", log=lambda _m: None, until="random_walk")["stages"]
    affinity_dir = Path(out["affinity"]["dir"])
    ckpt = torch.load(affinity_dir / "checkpoints" / "final.ckpt", map_location="cpu", weights_only=False)
    assert any(k.startswith("net.boundary.") for k in ckpt["state_dict"])
    # the random-walk stage loads the checkpoint into the class the affinity stage records
    assert json.loads((affinity_dir / "stage.json").read_text())["outputs"]["class_path"] == "BoundaryRefiner"
    labels = sorted((Path(out["random_walk"]["dir"]) / "labels").glob("*.png"))
    assert len(labels) == 8
    assert 0.0 <= out["random_walk"]["metrics"]["pseudo_miou"] <= 1.0
