"""WSSSTask: the template every task follows, a task written against it with hooks only, checkpoints written before
the networks moved under ``net.``, and the deprecated BoxSupTrainer name."""

from __future__ import annotations

import copy
from typing import Dict, List

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import lightning_wsss.tasks as tasks
from conftest import tiny_trainer
from lightning_wsss.callbacks.writers import Artifact, ArtifactWriter
from lightning_wsss.models import AffinityNet, BoundaryNet, CAMNet, ReCAMNet
from lightning_wsss.tasks import (AffinityRefiner, BoundaryRefiner, BoxSupSegmenter, BoxSupTrainer, CAMClassifier,
                                  DeepLabSegmenter, ErasingCAMClassifier, ReCAMClassifier, WSSSTask)

CAM = dict(num_classes=4, backbone="test_resnet", output_stride=16)
AFFINITY = dict(num_classes=4, backbone="test_resnet", output_stride=8, feature_levels=(1, 2, 3), embed_dim=16)
SEGMENTER = dict(num_classes=4, encoder="tu-test_resnet", decoder_channels=16)


def test_every_task_is_a_wsss_task_holding_its_net():
    for name in tasks.__all__:
        assert issubclass(getattr(tasks, name), WSSSTask), name
    nets = {CAMClassifier: CAMNet, ReCAMClassifier: ReCAMNet, AffinityRefiner: AffinityNet,
            BoundaryRefiner: BoundaryNet}
    for cls, net_type in nets.items():
        model = cls(**(CAM if issubclass(cls, CAMClassifier) else AFFINITY))
        assert type(model.net) is net_type
        net = model.net
        model.configure_model()  # Lightning calls the hook again: the network stays
        assert model.net is net


def test_base_arguments_and_param_groups():
    model = CAMClassifier(**CAM, lr=0.05, optimizer="adamw")
    assert model.hparams.lr == 0.05 and model.hparams.head_lr_mult == 10.0 and model.hparams.poly_power == 0.9
    optimizer = model.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.05, 0.5])
    assert optimizer.param_groups[1]["params"] == [model.net.head.weight]


def test_a_snapshot_is_a_deep_copy_of_the_net():
    model = ErasingCAMClassifier(**CAM)
    snapshot = model.take_snapshot()
    assert type(snapshot) is CAMNet and snapshot is not model.net
    images = torch.randn(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(snapshot(images), model(images))
    reference = copy.deepcopy(model.net).eval()
    torch.testing.assert_close(snapshot.raw_cams(snapshot.features(images)),
                               reference.raw_cams(reference.features(images)))


class Constant(WSSSTask):
    """A task from outside the suite, hooks only: one 1x1 convolution, predicts an all-zero label map."""

    artifact_patterns = ("labels/{id}.png",)

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(num_classes, **kwargs)
        self.predicted: List[str] = []

    def build_net(self) -> nn.Module:
        return nn.Conv2d(3, self.num_classes, 1)

    def param_groups(self):
        return [], list(self.net.parameters())

    def predict_artifacts(self, batch: Dict, rows: List[int]) -> List[List[Artifact]]:
        self.predicted += [batch["id"][i] for i in rows]
        return [[Artifact(f"labels/{batch['id'][i]}.png", "png", np.zeros((4, 4), np.uint8))] for i in rows]


def _loader(ids: List[str]) -> DataLoader:
    samples = [{"id": image_id, "image": torch.zeros(3, 4, 4)} for image_id in ids]
    return DataLoader(samples, batch_size=2, collate_fn=lambda items: {
        "id": [s["id"] for s in items], "image": torch.stack([s["image"] for s in items])})


def test_predict_step_skips_images_already_written(tmp_path):
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "b.png").write_bytes(b"")  # written by an earlier, interrupted run
    model = Constant(3, lr=0.1)
    writer = ArtifactWriter(str(tmp_path))
    tiny_trainer(callbacks=[writer]).predict(model, _loader(["a", "b", "c"]), return_predictions=False)
    assert model.predicted == ["a", "c"] and writer.skipped == 1 and writer.written == 2
    assert model.configure_optimizers()["optimizer"].param_groups[1]["lr"] == pytest.approx(1.0)  # lr 0.1 x 10


def _old_layout(state: Dict[str, torch.Tensor], legacy: str) -> Dict[str, torch.Tensor]:
    """``state`` with the keys tasks wrote before they held ``self.net``."""
    return {(legacy + key[len("net."):] if key.startswith("net.") else key): value for key, value in state.items()}


@pytest.mark.parametrize("cls, kwargs, legacy", [
    (CAMClassifier, CAM, ""), (ReCAMClassifier, CAM, ""), (AffinityRefiner, AFFINITY, ""),
    (BoundaryRefiner, AFFINITY, ""), (DeepLabSegmenter, SEGMENTER, "model."),
])
def test_checkpoints_from_before_the_net_moved_load(cls, kwargs, legacy, tmp_path):
    torch.manual_seed(0)
    source = cls(**kwargs)
    old = _old_layout(source.state_dict(), legacy)
    assert not any(key.startswith("net.") for key in old)
    torch.manual_seed(1)
    target = cls(**kwargs)
    target.load_state_dict(old)  # strict
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_an_old_erasing_checkpoint_loads_with_its_snapshots(tmp_path):
    torch.manual_seed(0)
    source = ErasingCAMClassifier(**CAM)
    source.take_snapshot()
    old = _old_layout(source.state_dict(), "")
    assert any(key.startswith("round_snapshots.0.features.") for key in old)  # the snapshots' keys did not change
    target = ErasingCAMClassifier(**CAM)
    target.on_load_checkpoint({"state_dict": old})
    target.load_state_dict(old)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_backbone_init_from_an_old_classifier_checkpoint(tmp_path):
    classifier = CAMClassifier(**CAM)
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": _old_layout(classifier.state_dict(), "")}, path)
    model = AffinityRefiner(**AFFINITY)
    assert model.init_backbone(str(path))
    for key, value in classifier.net.features.backbone.state_dict().items():
        assert torch.equal(model.net.backbone.state_dict()[key], value)


def test_boxsup_trainer_is_a_deprecated_alias(tmp_path):
    with pytest.warns(FutureWarning, match="use BoxSupSegmenter"):
        model = BoxSupTrainer(**SEGMENTER, out_dir=str(tmp_path), crf_candidate=False)
    assert isinstance(model, BoxSupSegmenter) and model.hparams.crf_candidate is False
