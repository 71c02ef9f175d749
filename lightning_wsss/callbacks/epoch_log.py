"""One plain line per training epoch, for logs that are files (SLURM, ``nohup``, CI) instead of a terminal.

A progress bar redraws itself with carriage returns; written to a file that is thousands of fragments. This
callback prints, on rank zero, one line per epoch instead::

    epoch 3/20  41.2 s  step 160  train/loss 0.4123  val/loss 0.5012  val/miou 0.5231

with every scalar the epoch logged (``*_step`` values left out: the epoch's own are there). The line is printed
once the epoch is complete, metrics logged in the task's own ``on_train_epoch_end`` included: when the next
epoch starts, or when training ends or fails.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Dict, Mapping, Optional, TextIO

import lightning as L
from lightning.pytorch.callbacks import Callback


def scalar_metrics(metrics: Mapping[str, Any]) -> Dict[str, float]:
    """The scalar entries of ``trainer.callback_metrics`` as floats, sorted by name, ``*_step`` entries dropped."""
    out: Dict[str, float] = {}
    for name in sorted(metrics):
        value = metrics[name]
        if name.endswith("_step") or getattr(value, "numel", lambda: 1)() != 1:
            continue
        try:
            out[name] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def format_epoch_line(epoch: int, max_epochs: Optional[int], seconds: float, step: int,
                      metrics: Mapping[str, float]) -> str:
    """``epoch E/N  S s  step K  name value ...`` (epochs counted from 1; values with 4 significant digits)."""
    total = f"/{max_epochs}" if max_epochs is not None and max_epochs > 0 else ""
    fields = [f"epoch {epoch + 1}{total}", f"{seconds:.1f} s", f"step {step}"]
    fields += [f"{name} {value:.4g}" for name, value in metrics.items()]
    return "  ".join(fields)


class EpochLog(Callback):
    """Print one line per training epoch with its wall time and metrics (rank zero only).

    Args:
        stream: where to write (default: ``sys.stdout`` at the time of writing); every line is flushed.
    """

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self.stream = stream
        self._started: Optional[float] = None
        self._pending: Optional[Dict[str, Any]] = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._started if self._started is not None else 0.0
        self._pending = {"epoch": trainer.current_epoch, "seconds": seconds}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._flush(trainer)

    def _flush(self, trainer: L.Trainer) -> None:
        """Print the pending epoch's line, with the metrics as they stand now."""
        pending, self._pending = self._pending, None
        if pending is None or not trainer.is_global_zero:
            return
        line = format_epoch_line(pending["epoch"], trainer.max_epochs, pending["seconds"], trainer.global_step,
                                 scalar_metrics(trainer.callback_metrics))
        stream = self.stream or sys.stdout
        stream.write(line + "\n")
        stream.flush()
