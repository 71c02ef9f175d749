"""Scoring CAMs as pseudo labels over a sweep of background thresholds (the psa / irn protocol).

:class:`ThresholdSweep` scores CAMs held in memory (``tools/cam_variants.py`` feeds it maps a model has just
computed); :func:`evaluate_cam_thresholds` feeds it the CAM files of a split (``wsss evaluate-cams``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..datasets.classes import IGNORE_INDEX
from ..errors import DataError, PathLike
from ..metrics import SegmentationIoU, iou_table
from .files import load_cams

DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))


def cams_to_label_map(cams: np.ndarray, keys: np.ndarray, bg_threshold: float, bg_mode: str = "constant") -> np.ndarray:
    """Argmax of [background, cams...] mapped to class indices; uint8 [H, W] (ties go to the background).

    ``bg_mode="constant"``: the background scores ``bg_threshold`` everywhere (irn); ``"power"``: it scores
    ``(1 - max_k cams_k) ** bg_threshold`` (psa's alpha). The numpy counterpart, for one image, of
    :func:`lightning_wsss.cam.add_background` followed by :func:`lightning_wsss.cam.cams_to_label`.
    """
    if cams.shape[0] == 0:
        return np.zeros(cams.shape[1:], dtype=np.uint8)
    if bg_mode == "constant":
        background = np.full((1,) + cams.shape[1:], bg_threshold, np.float32)
    elif bg_mode == "power":
        background = (1.0 - cams.max(0, keepdims=True)).clip(0.0) ** bg_threshold
    else:
        raise ValueError(f"bg_mode must be 'constant' or 'power', got {bg_mode!r}")
    scores = np.concatenate([background.astype(np.float32), cams])
    lookup = np.concatenate([[0], keys]).astype(np.uint8)
    return lookup[scores.argmax(0)]


class ThresholdSweep:
    """Per-threshold IoU and foreground share of CAM pseudo labels, accumulated image by image.

    Args:
        num_classes: classes of the data set, background included.
        thresholds: background thresholds (``bg_mode="constant"``) or psa alphas (``"power"``).
        bg_mode: see :func:`cams_to_label_map`.
        chunk: images per metric update (one update per threshold per chunk keeps the sweep fast).
    """

    def __init__(self, num_classes: int, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                 bg_mode: str = "constant", chunk: int = 64) -> None:
        self.num_classes, self.thresholds, self.bg_mode, self.chunk = num_classes, list(thresholds), bg_mode, chunk
        self.metrics = [SegmentationIoU(num_classes, reduction="none") for _ in self.thresholds]
        self.foreground = np.zeros(len(self.thresholds), np.int64)
        self.labelled = self.gt_foreground = self.num_images = 0
        self._preds: List[List[np.ndarray]] = [[] for _ in self.thresholds]
        self._targets: List[np.ndarray] = []

    def add(self, cams: np.ndarray, keys: np.ndarray, target: np.ndarray) -> None:
        """Score one image: ``cams`` float [K, H, W], ``keys`` int [K] their class indices, ``target`` [H, W]."""
        self._targets.append(np.asarray(target).reshape(-1))
        for threshold, chunk in zip(self.thresholds, self._preds):
            chunk.append(cams_to_label_map(cams, keys, threshold, self.bg_mode).reshape(-1))
        self.num_images += 1
        if len(self._targets) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        if not self._targets:
            return
        target = np.concatenate(self._targets)
        labelled = target != IGNORE_INDEX
        self.labelled += int(labelled.sum())
        self.gt_foreground += int((labelled & (target != 0)).sum())
        target_t = torch.from_numpy(target.astype(np.int64))
        for index, (metric, chunk) in enumerate(zip(self.metrics, self._preds)):
            pred = np.concatenate(chunk)
            self.foreground[index] += int((labelled & (pred != 0)).sum())
            metric.update(torch.from_numpy(pred.astype(np.int64)), target_t)
            chunk.clear()
        self._targets.clear()

    def result(self, class_names: Optional[Sequence[str]] = None) -> Dict[str, object]:
        """``{"thresholds", "miou" (per threshold), "best_threshold", "best_miou", "bg_mode", "per_class" {name: IoU
        or None} at the best threshold, "foreground_share" (per threshold: share of the labelled pixels the pseudo
        labels call foreground), "foreground_share_gt" (the ground truth's), "num_images"}``."""
        self._flush()
        per_class = [m.compute() for m in self.metrics]
        mious = [float(torch.nanmean(values)) for values in per_class]
        best = int(np.nanargmax(mious))
        names = list(class_names) if class_names else [str(i) for i in range(self.num_classes)]
        labelled = max(1, self.labelled)
        return {
            "bg_mode": self.bg_mode,
            "thresholds": [float(t) for t in self.thresholds],
            "miou": mious,
            "best_threshold": float(self.thresholds[best]),
            "best_miou": mious[best],
            "per_class": iou_table(per_class[best], names),
            "foreground_share": [float(v) / labelled for v in self.foreground],
            "foreground_share_gt": self.gt_foreground / labelled,
            "num_images": self.num_images,
        }


def evaluate_cam_thresholds(
    cam_dir: PathLike,
    root: PathLike,
    split: str,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    class_names: Optional[Sequence[str]] = None,
    bg_mode: str = "constant",
) -> Dict[str, object]:
    """mIoU of the CAM files ``<cam_dir>/<id>.npz`` of a split as pseudo labels, for every background threshold
    (or psa alpha, ``bg_mode="power"``).

    Returns:
        :meth:`ThresholdSweep.result`.

    Raises:
        DataError: a CAM file is missing or unreadable, or its size differs from the mask's.
    """
    from ..datasets import open_split
    from ..io import read_label_png

    kwargs = {} if str(split).endswith(".json") else {"class_names": class_names, "require_masks": True}
    dataset = open_split(root, split, **kwargs)
    sweep = ThresholdSweep(dataset.num_classes, thresholds, bg_mode)
    cam_dir = Path(cam_dir)
    for image_id in dataset.ids:
        data = load_cams(cam_dir / f"{image_id}.npz")
        target = read_label_png(dataset.mask_path(image_id)) if hasattr(dataset, "mask_path") else dataset.load(image_id)["mask"]
        if data["cams"].shape[1:] != target.shape:
            raise DataError(cam_dir / f"{image_id}.npz", f"CAM size {data['cams'].shape[1:]} differs from the mask's {target.shape}")
        sweep.add(data["cams"], data["keys"], target)
    return sweep.result(getattr(dataset, "class_names", None))
