"""Per-epoch and per-batch reseeding, so that a run resumed from an epoch checkpoint reproduces the uninterrupted run."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


def batch_seed(seed: int, epoch: int, batch_idx: int) -> int:
    """The seed of training batch ``batch_idx`` of epoch ``epoch`` (a 32-bit value, distinct per batch)."""
    return (seed * 1_000_003 + epoch * 7_919 + batch_idx * 104_729 + 1) % (2**32)


class EpochSeed(Callback):
    """Seed every RNG with ``seed + epoch`` at the start of each training epoch, and with
    :func:`batch_seed` before every training batch.

    Lightning restores model, optimiser and schedule from a checkpoint but not the RNG streams. With this
    callback the data order and augmentation of epoch ``e`` (drawn by the epoch-seeded sampler), the work of
    ``on_train_epoch_start`` hooks (a new round of masks) and the dropout of each batch depend only on
    ``(seed, e, batch)``, so a run killed anywhere and resumed from its last epoch checkpoint ends with the same
    weights as an uninterrupted one. The per-batch seed matters: Lightning creates the first epoch's DataLoader
    iterator before ``on_train_epoch_start`` and later ones after it, and creating an iterator draws from the
    global RNG, so without it the first epoch after a resume saw other dropout masks than the same epoch of an
    uninterrupted run.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        L.seed_everything(self.seed + trainer.current_epoch, workers=True, verbose=False)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        L.seed_everything(batch_seed(self.seed, trainer.current_epoch, batch_idx), workers=True, verbose=False)
