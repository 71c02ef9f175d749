"""A prediction writer that writes per-image artifacts atomically, rank by rank, and skips finished images.

A task's ``predict_step`` returns a list of :class:`Artifact` lists, one per image; this writer saves them
under ``out_dir``. Under DDP, Lightning's predict sampler gives each rank a disjoint share of the split, and
each rank writes only its own images, so the written set equals the split with no duplicates or gaps.
Files are written through a temporary file and a rename: an interrupted run leaves complete files only, and a
restarted run skips images whose files all exist (the task asks :meth:`ArtifactWriter.is_done`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from ..io import write_label_png, write_npz_atomic


@dataclass
class Artifact:
    """One file to write: ``relative_path`` under the writer's folder, ``kind`` ``"png"`` (label map uint8
    [H, W]) or ``"npz"`` (``data`` is a dict of arrays)."""

    relative_path: str
    kind: str
    data: Any


class ArtifactWriter(BasePredictionWriter):
    """Write the artifacts a task returns from ``predict_step``.

    Args:
        out_dir: destination folder.
        expected: relative path patterns with ``{id}`` that make an image "done", e.g.
            ``["labels/{id}.png", "cams/{id}.npz"]``; the default is the task's ``artifact_patterns``.
    """

    def __init__(self, out_dir: str, expected: Optional[Sequence[str]] = None) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.expected = list(expected) if expected is not None else None
        self.written = 0
        self.skipped = 0

    def patterns(self, pl_module: Optional[L.LightningModule] = None) -> List[str]:
        """The ``{id}`` patterns that make an image done."""
        if self.expected is not None:
            return self.expected
        return list(getattr(pl_module, "artifact_patterns", []))

    def is_done(self, image_id: str, pl_module: Optional[L.LightningModule] = None) -> bool:
        """Whether every expected artifact of ``image_id`` exists (atomic writes: existing means complete)."""
        patterns = self.patterns(pl_module)
        return bool(patterns) and all((self.out_dir / p.format(id=image_id)).is_file() for p in patterns)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        if not prediction:
            return
        for artifacts in prediction:
            if artifacts is None:
                self.skipped += 1
                continue
            for artifact in artifacts:
                self.write(artifact)
            self.written += 1

    def write(self, artifact: Artifact) -> None:
        """Write one artifact atomically."""
        path = self.out_dir / artifact.relative_path
        if artifact.kind == "png":
            write_label_png(path, np.asarray(artifact.data))
        elif artifact.kind == "npz":
            write_npz_atomic(path, **artifact.data)
        else:
            raise ValueError(f"unknown artifact kind {artifact.kind!r}")


def find_writer(trainer: Optional[L.Trainer]) -> Optional[ArtifactWriter]:
    """The trainer's :class:`ArtifactWriter`, if it has one."""
    if trainer is None:
        return None
    for callback in trainer.callbacks:
        if isinstance(callback, ArtifactWriter):
            return callback
    return None
