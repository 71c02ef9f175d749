"""AffinityRefiner: the AffinityNet loss by hand, training on confident labels, random-walk prediction."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch

from lightning_wsss.callbacks import ArtifactWriter
from lightning_wsss.datamodules import ImageLabelDataModule, PseudoMaskDataModule
from lightning_wsss.io import read_label_png, write_label_png, write_npz_atomic
from lightning_wsss.tasks import AffinityRefiner
from lightning_wsss.tasks.affinity import affinity_loss, downsample_labels


def test_affinity_loss_by_hand():
    aff = torch.tensor([0.9, 0.5, 0.2, 0.6]).view(1, 4, 1, 1)
    bg = torch.tensor([True, False, False, False]).view(1, 4, 1, 1)
    fg = torch.tensor([False, True, False, False]).view(1, 4, 1, 1)
    neg = torch.tensor([False, False, True, True]).view(1, 4, 1, 1)
    out = affinity_loss(aff, bg, fg, neg)
    expected_neg = (-math.log(0.8) - math.log(0.4)) / 2
    assert float(out["bg"]) == pytest.approx(-math.log(0.9))
    assert float(out["fg"]) == pytest.approx(-math.log(0.5))
    assert float(out["neg"]) == pytest.approx(expected_neg)
    assert float(out["loss"]) == pytest.approx(0.25 * -math.log(0.9) + 0.25 * -math.log(0.5) + 0.5 * expected_neg)


def test_downsample_labels_takes_cell_centres_and_pads_with_ignore():
    mask = torch.arange(64).view(1, 8, 8)
    out = downsample_labels(mask, 4, (3, 2))
    assert out.tolist() == [[[18, 22], [50, 54], [255, 255]]]


def test_walk_steps_scale_with_the_map():
    model = AffinityRefiner(3, backbone="test_resnet", feature_levels=(1, 2, 3), embed_dim=16)
    assert model.walk_steps((56, 70)) == 256 and model.walk_steps((28, 28)) == 64
    model.hparams.log_t = 3
    assert model.walk_steps((56, 56)) == 8


def test_refiner_trains_and_walks(tiny_voc, tmp_path):
    torch.set_num_threads(1)
    labels_dir, cams_dir = tmp_path / "aff", tmp_path / "cams"
    for i in range(6):
        gt = read_label_png(tiny_voc / "SegmentationClass" / f"img_{i}.png")
        confident = gt.copy()
        write_label_png(labels_dir / f"img_{i}.png", confident)
        keys = np.unique(gt[(gt > 0) & (gt < 255)])
        cams = np.stack([(gt == k).astype(np.float32) * 0.9 for k in keys]).astype(np.float16)
        write_npz_atomic(cams_dir / f"img_{i}.npz", cams=cams, keys=keys)
    L.seed_everything(0, verbose=False)
    dm = PseudoMaskDataModule(pseudo_mask_dir=str(labels_dir), root=str(tiny_voc), batch_size=2, crop_size=48,
                              scale_range=(1.0, 1.0))
    model = AffinityRefiner(dm.num_classes, backbone="test_resnet", feature_levels=(1, 2, 3), embed_dim=16,
                            lr=0.05, cams_dir=str(cams_dir))
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    predict = ImageLabelDataModule(root=str(tiny_voc), predict_split="train", eval_batch_size=2)
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
              callbacks=[ArtifactWriter(str(tmp_path / "rw"))]).predict(model, predict, return_predictions=False)
    written = sorted(p.stem for p in (tmp_path / "rw" / "labels").glob("*.png"))
    assert written == [f"img_{i}" for i in range(4)]
    label = read_label_png(tmp_path / "rw" / "labels" / "img_1.png")
    gt = read_label_png(tiny_voc / "SegmentationClass" / "img_1.png")
    assert label.shape == gt.shape and set(np.unique(label)) <= {0, 1, 2}
    # CAMs that cover the objects exactly stay on them after the walk
    valid = gt != 255
    assert (label[valid] == gt[valid]).mean() > 0.8


def _write_confident_labels_and_cams(tiny_voc, tmp_path, ids=range(6)):
    labels_dir, cams_dir = tmp_path / "aff", tmp_path / "cams"
    for i in ids:
        gt = read_label_png(tiny_voc / "SegmentationClass" / f"img_{i}.png")
        write_label_png(labels_dir / f"img_{i}.png", gt.copy())
        keys = np.unique(gt[(gt > 0) & (gt < 255)])
        cams = np.stack([(gt == k).astype(np.float32) * 0.9 for k in keys]).astype(np.float16)
        write_npz_atomic(cams_dir / f"img_{i}.npz", cams=cams, keys=keys)
    return labels_dir, cams_dir


def test_walk_modes_and_steps_options():
    with pytest.raises(ValueError):
        AffinityRefiner(3, backbone="test_resnet", feature_levels=(1, 2, 3), embed_dim=16, walk_mode="dense")
    model = AffinityRefiner(3, backbone="test_resnet", feature_levels=(1, 2, 3), embed_dim=16, t=5, log_t=3)
    assert model.walk_steps((56, 56)) == 5  # t wins over log_t
    offsets = model.offsets
    cams = torch.rand(1, 2, 6, 6, dtype=torch.float64)
    aff = torch.rand(1, offsets.shape[0], 6, 6, dtype=torch.float64)
    psa = model.walk_scores(cams, aff)
    model.hparams.walk_mode, model.hparams.bg_threshold = "irn", 0.3
    irn = model.walk_scores(cams, aff)
    assert psa.shape == irn.shape == (1, 3, 6, 6)
    assert torch.all(irn[:, 0] == 0.3)
    torch.testing.assert_close(irn[:, 1:].amax(dim=(2, 3)), torch.ones(1, 2, dtype=torch.float64))
    assert model.walk_scores(cams[:, :0], aff).shape == (1, 1, 6, 6)


def test_validation_logs_affinity_separation_and_irn_walk_predicts(tiny_voc, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    labels_dir, cams_dir = _write_confident_labels_and_cams(tiny_voc, tmp_path)
    L.seed_everything(0, verbose=False)
    dm = PseudoMaskDataModule(pseudo_mask_dir=str(labels_dir), root=str(tiny_voc), batch_size=2, crop_size=48,
                              scale_range=(1.0, 1.0), eval_batch_size=2)
    model = AffinityRefiner(dm.num_classes, backbone="test_resnet", feature_levels=(1, 2, 3), embed_dim=16,
                            lr=0.05, cams_dir=str(cams_dir), walk_mode="irn", bg_threshold=0.3, t=4)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=CSVLogger(str(tmp_path), name="logs"),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(model, dm)
    for key in ("val/aff_same", "val/aff_cross", "val/aff_bg", "val/aff_fg", "val/aff_ratio"):
        assert key in trainer.callback_metrics, key
    assert 0 < float(trainer.callback_metrics["val/aff_cross"]) <= 1
    import csv

    rows = list(csv.DictReader(open(next((tmp_path / "logs").rglob("metrics.csv")))))
    assert sum(1 for r in rows if r.get("val/aff_same")) == 2  # one value per epoch
    predict = ImageLabelDataModule(root=str(tiny_voc), predict_split="train", eval_batch_size=2)
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
              callbacks=[ArtifactWriter(str(tmp_path / "rw"))]).predict(model, predict, return_predictions=False)
    label = read_label_png(tmp_path / "rw" / "labels" / "img_1.png")
    gt = read_label_png(tiny_voc / "SegmentationClass" / "img_1.png")
    valid = gt != 255
    assert (label[valid] == gt[valid]).mean() > 0.8


def test_backbone_init_from_a_classifier_checkpoint(tmp_path):
    from lightning_wsss.tasks import CAMClassifier

    classifier = CAMClassifier(4, backbone="test_resnet", output_stride=16)
    path = tmp_path / "classifier.ckpt"
    torch.save({"state_dict": classifier.state_dict()}, path)
    model = AffinityRefiner(4, backbone="test_resnet", output_stride=8, feature_levels=(1, 2, 3), embed_dim=16,
                            backbone_init=str(path))
    assert model.init_backbone(str(path))
    for key, value in classifier.net.features.backbone.state_dict().items():
        torch.testing.assert_close(model.net.backbone.state_dict()[key], value)
    other = AffinityRefiner(4, backbone="resnet10t", feature_levels=(1, 2, 3), embed_dim=16)
    with pytest.warns(UserWarning, match="does not match"):
        assert not other.init_backbone(str(path))
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"head.weight": torch.zeros(1)}}, bad)
    from lightning_wsss.errors import DataError

    with pytest.raises(DataError, match="bad.ckpt"):
        model.init_backbone(str(bad))


@pytest.mark.parametrize("levels, frozen", [([1, 2, 3], {"layer4"}), ([2, 3, 4], set())])
def test_every_trainable_parameter_reaches_the_embedding(levels, frozen):
    """The backbone levels after the last fused one are frozen (DDP refuses trainable parameters without
    gradients); all the others get one."""
    model = AffinityRefiner(num_classes=4, backbone="test_resnet", feature_levels=levels, embed_dim=16)
    model.embed(torch.rand(1, 3, 64, 64)).sum().backward()
    names = {n for n, p in model.net.backbone.named_parameters() if not p.requires_grad}
    assert {n.split(".")[0] for n in names} == frozen
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def _cell_max(images: torch.Tensor, stride: int) -> torch.Tensor:
    """A mirror-equivariant stand-in embedding: each stride x stride cell's max (images padded on the right)."""
    return torch.nn.functional.max_pool2d(torch.nn.functional.pad(images, (0, -images.shape[-1] % stride)), stride)


@pytest.mark.parametrize("width", [32, 37])
def test_mirror_embedding_covers_the_same_cells(width):
    model = AffinityRefiner(3, backbone="test_resnet", feature_levels=(1, 2, 3), embed_dim=16)
    images = torch.rand(2, 3, 24, width)
    model.embed = lambda x: _cell_max(x, model.stride)
    cells = _cell_max(images, model.stride)
    # an embedding that commutes with the mirror comes back unchanged
    torch.testing.assert_close(model.mirror_embedding(images, cells.shape[-1]), cells)

    def ramp(x: torch.Tensor) -> torch.Tensor:  # 0, 1, 2, ... along the cells of x
        return torch.arange(-(-x.shape[-1] // model.stride), dtype=x.dtype)

    model.embed = lambda x: _cell_max(x, model.stride) + ramp(x)
    # one that does not (a ramp in x) comes back with the ramp reversed
    torch.testing.assert_close(model.mirror_embedding(images, cells.shape[-1]) - cells,
                               ramp(images).flip(0).expand_as(cells))


@pytest.mark.parametrize("flip", [False, "embedding", "affinity"])
def test_walk_flip_averages_the_mirror_image(flip):
    model = AffinityRefiner(3, backbone="test_resnet", feature_levels=(1, 2, 3), embed_dim=16, walk_flip=flip)
    images = torch.rand(1, 3, 24, 40)
    model.embed = lambda x: _cell_max(x, model.stride) + torch.arange(x.shape[-1] // model.stride, dtype=x.dtype)
    embedding, aff = model.walk_affinity(images)
    plain, mirrored = model.embed(images), model.mirror_embedding(images, 40 // model.stride)
    expected = {False: (plain, model.affinity(plain)),
                "embedding": ((plain + mirrored) / 2, model.affinity((plain + mirrored) / 2)),
                "affinity": (plain, (model.affinity(plain) + model.affinity(mirrored)) / 2)}[flip]
    torch.testing.assert_close(embedding, expected[0])
    torch.testing.assert_close(aff, expected[1])
    with pytest.raises(ValueError, match="walk_flip"):
        AffinityRefiner(3, backbone="test_resnet", feature_levels=(1, 2, 3), embed_dim=16, walk_flip="both")


def test_the_walks_crf_changes_are_bounded(monkeypatch):
    model = AffinityRefiner(3, backbone="test_resnet", feature_levels=(1, 2, 3), embed_dim=16, crf=True,
                            crf_max_growth=1.0, crf_min_kept=0.5)
    keys = np.array([0, 2], np.uint8)
    walked_scores = torch.zeros(1, 2, 8, 8)
    walked_scores[0, 0] = 0.5
    walked_scores[0, 1, :2, :2] = 1.0  # the walk's labels: class 2 on 4 pixels
    walked = model.labels_of(walked_scores, keys)
    assert (walked == 2).sum() == 4
    flood, erase = torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8)
    flood[0, 1], erase[0, 0] = 1.0, 1.0  # the CRF's: class 2 everywhere, or nowhere
    for crf_scores in (flood, erase):
        monkeypatch.setattr(model, "crf_refine", lambda batch, index, probs, s=crf_scores: s)
        assert np.array_equal(model.crf_labels({}, 0, walked_scores, keys), walked)
    model.hparams.crf_max_growth = model.hparams.crf_min_kept = None  # unbounded: the CRF's labels
    monkeypatch.setattr(model, "crf_refine", lambda batch, index, probs: flood)
    assert (model.crf_labels({}, 0, walked_scores, keys) == 2).all()
