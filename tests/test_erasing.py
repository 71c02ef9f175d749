"""ErasingCAMClassifier (AE-PSL): erasing really erases, rounds accumulate, snapshots are frozen, prediction
replays the rounds, checkpoints keep the snapshots."""

from __future__ import annotations

from typing import Dict, List

import lightning as L
import numpy as np
import pytest

from conftest import tiny_trainer
import torch
import torch.nn.functional as F

from lightning_wsss.callbacks.writers import ArtifactWriter
from lightning_wsss.datamodules import ImageLabelDataModule
from lightning_wsss.io import read_label_png
from lightning_wsss.tasks.classifier import CAMClassifier
from lightning_wsss.tasks.erasing import ErasingCAMClassifier

TINY = dict(num_classes=4, backbone="resnet18", cam_scales=(1.0,), cam_flip=False)
THRESHOLD = 0.5



def _trainer(**kwargs) -> L.Trainer:
    return tiny_trainer(**{"limit_val_batches": 0, **kwargs})


def _reference(state: Dict[str, torch.Tensor]) -> CAMClassifier:
    """A plain CAMClassifier holding ``state`` (the weights of one round), in eval mode."""
    ref = CAMClassifier(**TINY)
    ref.load_state_dict({k: v for k, v in state.items() if not k.startswith("round_snapshots.")})
    return ref.eval()


def _weights(model: CAMClassifier) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("round_snapshots.")}


@torch.no_grad()
def _reference_region(ref: CAMClassifier, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pixels where a present class's single-scale CAM (bilinear to image size, / max) exceeds the threshold."""
    maps = ref.raw_cams(ref.net.features(images))
    region = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool)
    for b in range(images.shape[0]):
        for c in torch.nonzero(labels[b] > 0.5).flatten().tolist():
            cam = F.interpolate(maps[b : b + 1, c : c + 1], size=images.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
            region[b] |= cam / (cam.max() + 1e-5) > THRESHOLD
    return region


def _perturb(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(model.net.features.parameters()) + list(model.net.head.parameters()):
            p.add_(0.2 * p.abs().mean() * torch.randn(p.shape, generator=generator))


def test_erasing_really_erases_and_rounds_accumulate():
    torch.manual_seed(0)
    model = ErasingCAMClassifier(**TINY, erase_threshold=THRESHOLD, erase_value=0.0)
    model.train()
    images = torch.randn(3, 3, 32, 32)
    labels = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    batch = {"image": images, "labels": labels, "id": ["a", "b", "c"]}

    # before any round nothing is erased
    out = model.erase_batch(batch)
    assert torch.equal(out["image"], images) and not out["erased"].any()

    # round 1: the snapshot holds the weights of the end of round 0, whatever training does afterwards
    w0 = _weights(model)
    model.take_snapshot()
    _perturb(model, 1)
    region0 = _reference_region(_reference(w0), images, labels)
    assert 0 < region0.float().mean() < 0.9
    out = model.erase_batch(batch)
    assert torch.equal(out["erased"], region0)
    assert (out["image"].permute(1, 0, 2, 3)[:, region0] == 0).all()
    assert torch.equal(out["image"].permute(1, 0, 2, 3)[:, ~region0], images.permute(1, 0, 2, 3)[:, ~region0])
    assert torch.equal(images, batch["image"])  # the input batch is not modified in place

    # round 2: snapshot 1 mines on the images erased by snapshot 0; the erased area is the union
    w1 = _weights(model)
    model.take_snapshot()
    _perturb(model, 2)
    erased0 = images.masked_fill(region0[:, None], 0.0)
    region1 = _reference_region(_reference(w1), erased0, labels)
    union = region0 | region1
    out2 = model.erase_batch(batch)
    assert torch.equal(out2["erased"], union)
    assert (region1 & ~region0).any(), "round 2 mined nothing new: the test would not see accumulation"
    assert (out2["image"].permute(1, 0, 2, 3)[:, union] == 0).all()
    assert torch.equal(out2["image"].permute(1, 0, 2, 3)[:, ~union], images.permute(1, 0, 2, 3)[:, ~union])
    _, per_round = model.mined_regions(images, labels)
    assert per_round.shape == (3, 2, 32, 32) and torch.equal(per_round[:, 0], region0) and torch.equal(per_round[:, 1], region1)
    assert torch.equal(model.mined_union(images, labels), union)

    # a non-zero erase value is written as such
    model.hparams.erase_value = 1.5
    out3 = model.erase_batch(batch)
    erased3 = out3["erased"]
    assert erased3.any() and (out3["image"].permute(1, 0, 2, 3)[:, erased3] == 1.5).all()

    # snapshots are frozen and stay in eval mode under model.train()
    model.train()
    assert all(not s.training and not any(p.requires_grad for p in s.parameters()) for s in model.round_snapshots)


class _Recorder(ErasingCAMClassifier):
    """Records each training batch before and after erasing."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records: List[Dict] = []
        self.epoch_weights: Dict[int, Dict[str, torch.Tensor]] = {}

    def on_train_epoch_start(self) -> None:
        self.epoch_weights[self.current_epoch] = _weights(self)
        super().on_train_epoch_start()

    def training_step(self, batch, batch_idx):
        self.records.append({"epoch": self.current_epoch, "image": batch["image"].clone(), "labels": batch["labels"].clone()})
        return super().training_step(batch, batch_idx)

    def loss(self, logits, labels, batch=None):
        self.records[-1]["seen"] = batch["image"].clone()
        return super().loss(logits, labels, batch)


def test_fit_erases_with_previous_rounds_weights_then_predict_and_checkpoint(tiny_voc, tmp_path):
    torch.manual_seed(0)
    dm = ImageLabelDataModule(root=str(tiny_voc), crop_size=32, batch_size=2, eval_batch_size=2)
    model = _Recorder(**TINY, erase_rounds=2, round_epochs=1, erase_threshold=THRESHOLD, lr=0.05)
    trainer = _trainer(max_epochs=3)
    trainer.fit(model, datamodule=dm)
    assert len(model.round_snapshots) == 2
    for record in model.records:
        image, labels, seen = record["image"], record["labels"], record["seen"]
        if record["epoch"] == 0:
            assert torch.equal(seen, image)  # before any round nothing is erased
            continue
        current, union = image, torch.zeros(image.shape[0], *image.shape[-2:], dtype=torch.bool)
        for k in range(record["epoch"]):  # snapshot k = the weights at the start of epoch k + 1
            region = _reference_region(_reference(model.epoch_weights[k + 1]), current, labels)
            current = current.masked_fill(region[:, None], 0.0)
            union |= region
        assert union.any()
        torch.testing.assert_close(seen, current, rtol=0, atol=0)

    # prediction: max over the rounds' maps, each round on the image erased by the earlier ones
    ckpt = tmp_path / "ae.ckpt"
    trainer.save_checkpoint(ckpt)
    restored = ErasingCAMClassifier.load_from_checkpoint(ckpt)
    assert len(restored.round_snapshots) == 2
    restored.eval()
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    from lightning_wsss.tasks.classifier import present_class_ids

    class_ids = present_class_ids(batch["labels"])
    sources = [model.epoch_weights[1], model.epoch_weights[2], _weights(model)]

    def peak(ref, images):  # raw single-scale CAM peak of each present class, [B, K]
        with torch.no_grad():
            maps = ref.raw_cams(ref.net.features(images))
        return torch.stack([torch.stack([maps[b, c - 1].max() if c >= 1 else torch.tensor(0.0) for c in row])
                            for b, row in enumerate(class_ids.tolist())])

    for relative in (True, False):
        restored.hparams.relative_to_unerased = relative
        with torch.no_grad():
            got = restored.compute_cams(batch["image"], class_ids)
        expected, current = None, batch["image"]
        for state in sources:
            ref = _reference(state)
            cams = ref.compute_cams(current, class_ids)
            region = ((cams > THRESHOLD) & (class_ids >= 1)[..., None, None]).any(1)
            if expected is not None and relative:  # later rounds: scaled by their activation left after erasing
                ratio = (peak(ref, current) / peak(ref, batch["image"]).clamp(min=1e-6)).clamp(0, 1) * (class_ids >= 1)
                cams = cams * ratio[..., None, None]
            current = current.masked_fill(region[:, None], 0.0)
            expected = cams if expected is None else torch.maximum(expected, cams)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    writer = ArtifactWriter(str(tmp_path / "pred"))
    _trainer(callbacks=[writer]).predict(restored, datamodule=dm, return_predictions=False)
    for image_id in dm.datasets["predict"].reader.ids:
        mined = read_label_png(tmp_path / "pred" / "mined" / f"{image_id}.png")
        assert mined.shape == (48, 48)
        assert set(np.unique(mined).tolist()) <= {1, 2, 3, 255} and (mined != 255).any()
        assert (tmp_path / "pred" / "cams" / f"{image_id}.npz").is_file()


def test_bad_options():
    with pytest.raises(ValueError):
        ErasingCAMClassifier(**TINY, erase_threshold=1.0)
    with pytest.raises(ValueError):
        ErasingCAMClassifier(**TINY, round_epochs=0)


def test_first_round_epochs_delays_the_first_snapshot():
    model = ErasingCAMClassifier(**TINY, erase_rounds=2, round_epochs=2, first_round_epochs=5)
    assert [model.expected_rounds(e) for e in range(10)] == [0, 0, 0, 0, 0, 1, 1, 2, 2, 2]
    plain = ErasingCAMClassifier(**TINY, erase_rounds=2, round_epochs=2)
    assert [plain.expected_rounds(e) for e in range(7)] == [0, 0, 1, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="first_round_epochs"):
        ErasingCAMClassifier(**TINY, first_round_epochs=0)


def test_peak_ratio_by_hand():
    from lightning_wsss.tasks.erasing import peak_ratio

    class Toy(torch.nn.Module):  # raw CAM of class c = image channel c - 1
        def features(self, images):
            return images

        def raw_cams(self, features):
            return features.clamp(min=0)

    original = torch.zeros(1, 3, 4, 4)
    original[0, 0, 1, 1], original[0, 1, 2, 2] = 2.0, 4.0
    erased = original.clone()
    erased[0, 0, 1, 1] = 0.5  # class 1 keeps a quarter of its peak, class 2 all of it
    ratio = peak_ratio(Toy(), erased, original, torch.tensor([[1, 2, -1]]))
    torch.testing.assert_close(ratio, torch.tensor([[0.25, 1.0, 0.0]]))
