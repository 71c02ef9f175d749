"""An atomic ``last.ckpt`` written at the end of every training epoch."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from ..io import with_path


def save_checkpoint_atomic(trainer: L.Trainer, path: Path) -> None:
    """``trainer.save_checkpoint`` to a temporary file beside ``path`` (``.<name>.tmp``), renamed over ``path``.

    Rank zero writes. If the write fails (a full disk), the temporary file is removed and the ``OSError`` names
    ``path``; ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        trainer.save_checkpoint(str(tmp), weights_only=False)  # rank zero writes; the full state, to resume from
        if trainer.is_global_zero:
            os.replace(tmp, path)
    except BaseException as exc:
        if trainer.is_global_zero:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            raise with_path(exc, path)
        raise


class LastCheckpoint(Callback):
    """Save ``dirpath/last.ckpt`` at the end of every training epoch, through a temporary file and a rename.

    Lightning's ``ModelCheckpoint(save_top_k=0, save_last=True)`` writes ``last.ckpt`` only when a top-k
    checkpoint was saved in the same step, i.e. never during training; and it writes in place, so a kill during
    the write leaves a broken file. This callback always writes, atomically, so a killed run resumes from its
    last finished epoch (with :class:`~lightning_wsss.callbacks.EpochSeed`, to the same numbers).
    """

    def __init__(self, dirpath: str, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or getattr(trainer, "fast_dev_run", False):
            return
        save_checkpoint_atomic(trainer, self.path)
        trainer.strategy.barrier("last_checkpoint")
