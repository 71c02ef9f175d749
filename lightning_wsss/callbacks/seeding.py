"""Per-epoch reseeding, so that a run resumed from an epoch checkpoint reproduces the uninterrupted run."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback


class EpochSeed(Callback):
    """Seed every RNG with ``seed + epoch`` at the start of each training epoch.

    Lightning restores model, optimiser and schedule from a checkpoint but not the RNG streams; with this
    callback data order, augmentation and dropout of epoch ``e`` depend only on ``(seed, e)``, so a run killed
    mid-epoch and resumed from its last epoch checkpoint ends with the same weights as an uninterrupted one.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        L.seed_everything(self.seed + trainer.current_epoch, workers=True, verbose=False)
