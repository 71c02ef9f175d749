"""GPU speed options for any task: channels-last memory format and ``torch.compile`` of chosen submodules."""

from __future__ import annotations

from typing import Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class SpeedOptions(Callback):
    """Switch a task to channels-last tensors and/or compile its networks, from a config.

    Args:
        channels_last: move the module's parameters and every batch's ``image`` to ``torch.channels_last``
            (faster convolutions with tensor cores under ``bf16-mixed``/``16-mixed`` precision).
        compile_modules: attribute names of submodules to wrap with ``torch.compile`` at setup (``["net"]``: a
            task's network, :mod:`lightning_wsss.models`);
            ``None`` compiles nothing.
        compile_mode: ``torch.compile`` mode (``default``, ``reduce-overhead``, ``max-autotune``).
    """

    def __init__(self, channels_last: bool = True, compile_modules: Optional[Sequence[str]] = None,
                 compile_mode: str = "default") -> None:
        self.channels_last = channels_last
        self.compile_modules = list(compile_modules or [])
        self.compile_mode = compile_mode
        self._compiled = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.channels_last:
            pl_module.to(memory_format=torch.channels_last)
        if self.compile_modules and not self._compiled:
            for name in self.compile_modules:
                module = getattr(pl_module, name, None)
                if not isinstance(module, torch.nn.Module):
                    raise ValueError(f"{type(pl_module).__name__} has no submodule {name!r} to compile")
                setattr(pl_module, name, torch.compile(module, mode=self.compile_mode))
            self._compiled = True

    def _to_channels_last(self, batch) -> None:
        if self.channels_last and isinstance(batch, dict) and torch.is_tensor(batch.get("image")):
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._to_channels_last(batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._to_channels_last(batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._to_channels_last(batch)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._to_channels_last(batch)
