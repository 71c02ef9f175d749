"""SpeedOptions: channels-last parameters and batches; torch.compile of a named submodule (slow)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_wsss.callbacks import SpeedOptions
from lightning_wsss.datamodules import MaskDataModule
from lightning_wsss.tasks import DeepLabSegmenter

from conftest import tiny_trainer




def test_channels_last_model_and_batches(tiny_voc):
    seen = []

    class Probe(SpeedOptions):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
            seen.append(batch["image"].is_contiguous(memory_format=torch.channels_last))

    dm = MaskDataModule(root=str(tiny_voc), batch_size=2, crop_size=32)
    model = DeepLabSegmenter(dm.num_classes, encoder="tu-test_resnet", decoder_channels=16)
    trainer = tiny_trainer(max_epochs=1, limit_val_batches=0, callbacks=[Probe(channels_last=True)])
    trainer.fit(model, dm)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert seen and all(seen)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))


def test_unknown_compile_target_is_an_error(tiny_voc):
    dm = MaskDataModule(root=str(tiny_voc), batch_size=2, crop_size=32)
    model = DeepLabSegmenter(dm.num_classes, encoder="tu-test_resnet", decoder_channels=16)
    with pytest.raises(ValueError, match="has no submodule 'nope'"):
        tiny_trainer(max_epochs=1, callbacks=[SpeedOptions(compile_modules=["nope"])]).fit(model, dm)


@pytest.mark.slow
def test_compiled_segmenter_trains(tiny_voc):
    dm = MaskDataModule(root=str(tiny_voc), batch_size=2, crop_size=32)
    model = DeepLabSegmenter(dm.num_classes, encoder="tu-test_resnet", decoder_channels=16)
    trainer = tiny_trainer(max_epochs=1, limit_val_batches=0, callbacks=[SpeedOptions(compile_modules=["net"])])
    trainer.fit(model, dm)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
