"""Self-training (CBST thresholds, CRST label regulariser): thresholds and relabelling on hand-built tensors,
the regulariser by hand, rounds on tiny_voc (files, scores, batches, restart)."""

from __future__ import annotations

import json
import math
from typing import Dict, List

import lightning as L
import numpy as np
import pytest

from conftest import tiny_trainer
import torch

from lightning_wsss.datamodules import PseudoMaskDataModule
from lightning_wsss.io import read_label_png
from lightning_wsss.tasks import self_training as st
from lightning_wsss.tasks.rounds import PseudoMaskInjector
from lightning_wsss.tasks.self_training import (
    ConfidenceHistogram,
    SelfTrainingSegmenter,
    class_thresholds,
    confident_labels,
    label_regulariser,
    portion_for_round,
    relabel_split,
    restrict_to_image_labels,
)

TINY = dict(num_classes=4, encoder="tu-resnet18", decoder_channels=16)



# 3 classes on a 2x4 map. Max-probabilities and argmax per pixel (row-major):
#   class 0 at conf 0.9, 0.6, 0.7, 0.5, 0.8 (median 0.7); class 1 at 0.55, 0.65, 0.45 (median 0.55); class 2 never
PROBS = torch.tensor([
    [[0.90, 0.60, 0.20, 0.70], [0.50, 0.30, 0.80, 0.35]],
    [[0.05, 0.30, 0.55, 0.20], [0.30, 0.65, 0.10, 0.45]],
    [[0.05, 0.10, 0.25, 0.10], [0.20, 0.05, 0.10, 0.20]],
])


def test_class_thresholds_are_per_class_quantiles():
    confidence, predicted = PROBS.max(dim=0)
    assert predicted.tolist() == [[0, 0, 1, 0], [0, 1, 0, 1]]
    assert class_thresholds(confidence, predicted, 3, 0.5).tolist() == pytest.approx([0.7, 0.55, 1.0])
    assert class_thresholds(confidence, predicted, 3, 1.0).tolist() == pytest.approx([0.5, 0.45, 1.0])  # keep all
    assert class_thresholds(confidence, predicted, 3, 0.2).tolist() == pytest.approx([0.9, 0.65, 1.0])  # top 1
    with pytest.raises(ValueError):
        class_thresholds(confidence, predicted, 3, 0.0)


def test_low_confidence_pixels_become_255():
    labels = confident_labels(PROBS, torch.tensor([0.7, 0.55, 1.0]))
    assert labels.tolist() == [[0, 255, 1, 0], [255, 1, 0, 255]]
    batched = confident_labels(PROBS[None].repeat(2, 1, 1, 1), torch.tensor([0.7, 0.55, 1.0]))
    assert batched.shape == (2, 2, 4) and torch.equal(batched[1], labels)


def test_histogram_thresholds_bracket_the_exact_ones():
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(4, 30, 40, generator=generator), dim=0)
    confidence, predicted = probs.max(0)
    for bins in (10, 1000):
        histogram = ConfidenceHistogram(4, bins)
        histogram.update(confidence[:15], predicted[:15])  # in two parts: counts accumulate
        histogram.update(confidence[15:], predicted[15:])
        for portion in (0.2, 0.5, 0.9):
            exact = class_thresholds(confidence, predicted, 4, portion)
            approx = histogram.thresholds(portion)
            assert (approx <= exact + 1e-6).all() and (exact - approx < 1.0 / bins + 1e-6).all()
            for c in range(4):
                values = confidence[predicted == c]
                assert (values >= approx[c]).sum() >= math.ceil(portion * values.numel())


def test_restrict_to_image_labels_by_hand():
    probs = torch.tensor([[[0.2]], [[0.5]], [[0.3]]])  # background, class 1, class 2 at one pixel
    out = restrict_to_image_labels(probs, torch.tensor([0.0, 1.0]))
    assert out.flatten().tolist() == pytest.approx([0.4, 0.0, 0.6])


def test_label_regulariser_by_hand():
    logits = torch.tensor([[[[0.0, 1.0]], [[0.0, 2.0]], [[0.0, 0.0]]]])  # [1, 3, 1, 2]
    mask = torch.tensor([[[0, 255]]])
    # pixel 0 is uniform: KL(uniform || uniform) = 0
    assert label_regulariser(logits, mask).item() == pytest.approx(0.0, abs=1e-7)
    # pixel 1: p = softmax(1, 2, 0); KL(u || p) = -log 3 - mean log p
    z = math.log(math.e + math.e ** 2 + 1)
    expected = -math.log(3) - ((1 - z) + (2 - z) + (0 - z)) / 3
    assert label_regulariser(logits, torch.tensor([[[255, 2]]])).item() == pytest.approx(expected, rel=1e-6)
    both = label_regulariser(logits, torch.tensor([[[1, 0]]])).item()
    assert both == pytest.approx(expected / 2, rel=1e-6)
    assert label_regulariser(logits, torch.full((1, 1, 2), 255)).item() == 0.0


def test_loss_adds_the_weighted_regulariser():
    model = SelfTrainingSegmenter(**TINY, out_dir="unused", mrkld_weight=0.3)
    logits = torch.randn(2, 4, 5, 5)
    mask = torch.randint(0, 4, (2, 5, 5))
    mask[0, 0] = 255
    ce = torch.nn.functional.cross_entropy(logits, mask, ignore_index=255)
    log_p = logits.log_softmax(1)
    valid = mask != 255
    reg = (-log_p.mean(1) - math.log(4))[valid].mean()
    assert model.loss(logits, {"mask": mask}).item() == pytest.approx((ce + 0.3 * reg).item(), rel=1e-5)


def test_portion_schedule():
    assert [portion_for_round(k, 0.5, 0.1, 0.8) for k in (1, 2, 3, 4, 5)] == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.8])


def test_relabel_split_writes_thresholded_maps(tmp_path):
    samples = [
        {"id": "a", "labels": np.array([1.0, 1.0], np.float32), "mask": np.array([[0, 0, 1, 0], [0, 1, 0, 1]], np.uint8)},
        {"id": "b", "labels": np.array([0.0, 1.0], np.float32), "mask": None},
    ]
    fake = {"a": PROBS, "b": PROBS.flip(-1)}
    thresholds, metric, scored = relabel_split(lambda s: fake[s["id"]], lambda: iter(samples), tmp_path, 3, 0.5,
                                               bins=100, use_image_labels=False)
    # both images together: class 0 conf {0.9, 0.6, 0.7, 0.5, 0.8} x 2 -> 5th largest 0.7; class 1 -> 0.55
    # (to the 0.01 bin resolution, rounded down)
    assert thresholds.tolist() == pytest.approx([0.7, 0.55, 1.0], abs=0.0101)
    assert (thresholds <= torch.tensor([0.7, 0.55, 1.0]) + 1e-6).all()
    a = read_label_png(tmp_path / "a.png")
    assert a.tolist() == [[0, 255, 1, 0], [255, 1, 0, 255]]
    assert np.array_equal(read_label_png(tmp_path / "b.png"), np.flip(a, -1))
    assert scored == 1
    # with image labels, "b" (labelled class 2 only) can no longer take class 1
    relabel_split(lambda s: fake[s["id"]], lambda: iter(samples), tmp_path / "r", 3, 1.0, use_image_labels=True)
    b = read_label_png(tmp_path / "r" / "b.png")
    assert 1 not in np.unique(b)


class _Recorder(SelfTrainingSegmenter):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: List[Dict] = []

    def training_step(self, batch, batch_idx):
        self.seen.append({"epoch": self.current_epoch, "ids": list(batch["id"]), "mask": batch["mask"].clone()})
        return super().training_step(batch, batch_idx)


def _trainer(**kwargs) -> L.Trainer:
    return tiny_trainer(**{"limit_val_batches": 0, **kwargs})


def test_rounds_on_tiny_voc_then_restart(tiny_voc, tmp_path, monkeypatch):
    torch.manual_seed(0)
    out = tmp_path / "selftrain"
    dm_args = dict(pseudo_mask_dir=str(tiny_voc / "SegmentationClass"), root=str(tiny_voc), crop_size=48,
                   scale_range=(1.0, 1.0), hflip=False, batch_size=2)
    model = _Recorder(**TINY, out_dir=str(out), rounds=2, round_epochs=1, portion=0.5, portion_step=0.2, lr=0.02)
    trainer = _trainer(max_epochs=3)
    trainer.fit(model, datamodule=PseudoMaskDataModule(**dm_args))

    rounds = json.loads((out / "rounds.json").read_text())
    assert list(rounds) == ["round_0", "round_1", "round_2"]
    assert rounds["round_0"] == pytest.approx(1.0)  # the "pseudo" masks are the ground truth here
    assert all(0.0 <= rounds[k] <= 1.0 for k in ("round_1", "round_2"))
    info = json.loads((out / "thresholds.json").read_text())
    assert info["round_1"]["portion"] == pytest.approx(0.5) and info["round_2"]["portion"] == pytest.approx(0.7)
    assert len(info["round_1"]["thresholds"]) == 4
    ids = ["img_0", "img_1", "img_2", "img_3"]
    for k in (1, 2):
        masks = [read_label_png(out / f"round_{k}" / f"{i}.png") for i in ids]
        assert all(m.shape == (48, 48) for m in masks)
        labelled = np.concatenate([m.ravel() for m in masks])
        assert 0.0 < (labelled == 255).mean() < 1.0  # thresholds drop some pixels, keep others
        assert set(np.unique(labelled).tolist()) <= {0, 1, 2, 255}  # class 3 is in no image label
    # each epoch trains on its round's masks: epoch 0 the datamodule's, epoch k the files of round k
    for record in model.seen:
        for row, image_id in enumerate(record["ids"]):
            if record["epoch"] == 0:
                expected = read_label_png(tiny_voc / "SegmentationClass" / f"{image_id}.png")
            else:
                expected = read_label_png(out / f"round_{record['epoch']}" / f"{image_id}.png")
            assert np.array_equal(record["mask"][row].numpy(), expected)
    assert not isinstance(trainer.datamodule.datasets["fit"].prepare, PseudoMaskInjector)  # removed at fit end

    # restart on the same folder: complete, recorded rounds are reused, not relabelled
    def no_relabel(*args, **kwargs):
        raise AssertionError("a complete round was relabelled")

    monkeypatch.setattr(st, "relabel_split", no_relabel)
    again = SelfTrainingSegmenter(**TINY, out_dir=str(out), rounds=2, round_epochs=1)
    _trainer(max_epochs=3).fit(again, datamodule=PseudoMaskDataModule(**dm_args))
    assert again.round_miou == pytest.approx(rounds)


def test_bad_options():
    with pytest.raises(ValueError):
        SelfTrainingSegmenter(**TINY, out_dir="x", portion=0.0)
    with pytest.raises(ValueError):
        SelfTrainingSegmenter(**TINY, out_dir="x", round_epochs=0)
