"""Segmenter checkpoints loaded for prediction (the demo report's galleries, tools): subclasses included."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_wsss.pipeline.predictions import load_segmenter
from lightning_wsss.serialization import load_model_checkpoint
from lightning_wsss.tasks import DeepLabSegmenter, SECSegmenter


def saved(model: L.LightningModule, path: Path) -> Path:
    """``model`` saved as a Lightning checkpoint holds it: its weights and the arguments it was made with."""
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "hparams_name": "kwargs",
                "pytorch-lightning_version": L.__version__}, path)
    return path


@pytest.fixture(scope="module")
def sec_checkpoint(tmp_path_factory) -> tuple:
    torch.manual_seed(0)
    model = SECSegmenter(3, seed_weight=0.5, encoder="tu-test_resnet", encoder_weights=None).eval()
    return model, saved(model, tmp_path_factory.mktemp("sec") / "sec.ckpt")


def test_a_subclass_checkpoint_loads_as_its_class_or_as_the_network_alone(sec_checkpoint):
    """The demo's report crashed on ``wsss demo --methods image_sec``: SEC's checkpoint holds SEC's arguments, which
    ``DeepLabSegmenter`` does not take. As its recorded class it loads whole; with no class recorded (stages made
    before the segmenter stage recorded it) its network loads as a ``DeepLabSegmenter`` with the same predictions."""
    model, checkpoint = sec_checkpoint
    with pytest.raises(TypeError, match="seed_weight"):
        load_model_checkpoint(DeepLabSegmenter, checkpoint)
    as_class = load_segmenter(checkpoint, "SECSegmenter")
    assert type(as_class) is SECSegmenter and as_class.hparams.seed_weight == 0.5
    network = load_segmenter(checkpoint).eval()
    assert type(network) is DeepLabSegmenter
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(network.predict_logits(images), model.predict_logits(images))


def test_a_plain_checkpoint_loads_as_deeplab(tmp_path):
    torch.manual_seed(0)
    model = DeepLabSegmenter(3, encoder="tu-test_resnet", encoder_weights=None).eval()
    loaded = load_segmenter(saved(model, tmp_path / "plain.ckpt"))
    assert type(loaded) is DeepLabSegmenter
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.eval().predict_logits(images), model.predict_logits(images))
