"""Segmentation metrics (torchmetrics) and folder evaluation of label PNGs against ground truth.

IoU follows the PASCAL VOC protocol: per-class intersection over union accumulated over the whole split,
ground-truth pixels labelled 255 ignored, classes absent from both prediction and ground truth left out of
the mean (NaN per class). A *prediction* of 255 (a pseudo mask's "ignore") counts as a miss for the
ground-truth class at that pixel and as a false positive for no class, so unlabelled pseudo-mask pixels
lower recall instead of silently vanishing from the score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from .datasets.classes import IGNORE_INDEX
from .errors import DataError, PathLike


class SegmentationIoU(MulticlassJaccardIndex):
    """Per-class IoU (``reduction="none"``, float [C]) or mIoU (``reduction="mean"``, scalar) over a split.

    Accepts predictions and targets as integer tensors of the same shape (any, e.g. [B, H, W]); targets of 255
    are ignored, predictions of 255 count as misses. Under DDP the states are synced by torchmetrics, so log
    the metric object itself.
    """

    def __init__(self, num_classes: int, reduction: str = "mean", **kwargs) -> None:
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        # update() checks the shapes and the value range itself; torchmetrics' own check would add a torch.unique
        # of every prediction and target (most of a validation batch's metric time on the CPU)
        kwargs.setdefault("validate_args", False)
        # one extra class collects "predicted ignore"; its own IoU is dropped
        super().__init__(
            num_classes=num_classes + 1, average="none", ignore_index=IGNORE_INDEX, zero_division=float("nan"), **kwargs
        )
        self.num_segmentation_classes = num_classes
        self.reduction = reduction

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        if preds.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(preds.shape)} differs from target shape {tuple(target.shape)}")
        preds, target = preds.long(), target.long()
        for name, values in (("prediction", preds), ("target", target)):
            outside = ((values < 0) | (values >= self.num_segmentation_classes)) & (values != IGNORE_INDEX)
            if outside.any():
                found = torch.unique(values[outside])[:8].tolist()
                raise ValueError(f"{name} values {found} are outside the class range 0..{self.num_segmentation_classes - 1} "
                                 f"(255 = ignore)")
        preds = torch.where(preds == IGNORE_INDEX, torch.full_like(preds, self.num_segmentation_classes), preds)
        super().update(preds, target)

    def compute(self) -> torch.Tensor:  # type: ignore[override]
        per_class = super().compute()[: self.num_segmentation_classes]
        if self.reduction == "none":
            return per_class
        return torch.nanmean(per_class)


def iou_table(per_class: torch.Tensor, class_names: Sequence[str]) -> Dict[str, Optional[float]]:
    """Per-class IoU as ``{name: fraction or None}`` (None where the class is absent from both sides)."""
    return {name: (None if torch.isnan(v) else float(v)) for name, v in zip(class_names, per_class)}


Reduce = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor over processes (each scoring its share of the images); the identity in one process."""


def score_label_maps(
    pairs, num_classes: int, class_names: Optional[Sequence[str]] = None, reduce: Optional[Reduce] = None
) -> Dict[str, object]:
    """Score an iterable of ``(pred uint8 [H, W], target uint8 [H, W])`` pairs.

    ``reduce``: the pairs are this process's share; the confusion matrix and the image count are summed over the
    processes with it before the IoU is computed, so each image counts once whatever the shares.

    Returns:
        ``{"miou": float in [0, 1], "per_class": {name: iou or None}, "num_images": int}``.
    """
    metric = SegmentationIoU(num_classes, reduction="none", sync_on_compute=False)
    count = 0
    for pred, target in pairs:
        metric.update(torch.as_tensor(np.asarray(pred)), torch.as_tensor(np.asarray(target)))
        count += 1
    if reduce is not None:
        count = _reduce_confusion(metric, count, reduce)
    if count == 0:
        raise DataError(None, "nothing to evaluate: no images")
    per_class = metric.compute()
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    return {
        "miou": float(torch.nanmean(per_class)),
        "per_class": iou_table(per_class, names),
        "num_images": count,
    }


def _reduce_confusion(metric: SegmentationIoU, count: int, reduce: Reduce) -> int:
    """Replace ``metric``'s confusion matrix by its sum over processes; returns the summed image count."""
    local = metric.confmat
    summed = reduce(torch.cat([local.flatten(), torch.tensor([count], dtype=local.dtype)]))
    metric.confmat = summed[:-1].reshape(local.shape).to(local.device)
    if count == 0:  # this process's share was empty: its metric holds the others' counts now
        metric._update_count = 1
    return int(summed[-1])


def evaluate_folder(
    pred_dir: PathLike,
    root: PathLike,
    split: str,
    class_names: Optional[Sequence[str]] = None,
    ids: Optional[Sequence[str]] = None,
) -> Dict[str, object]:
    """Score a folder of label PNGs (``<pred_dir>/<id>.png``) against a split's ground truth (a VOC-layout split
    name, or a COCO instances JSON with ``root`` the image folder).

    Returns:
        the dict of :func:`score_label_maps`.

    Raises:
        DataError: a prediction is missing or its size differs from the ground truth, the split has no masks.
    """
    from .datasets import open_split

    kwargs = {} if str(split).endswith(".json") else {"class_names": class_names, "require_masks": True}
    dataset = open_split(root, split, ids=ids, **kwargs)
    return evaluate_reader(pred_dir, dataset, split)


def evaluate_reader(pred_dir: PathLike, dataset, split: str = "", ids: Optional[Sequence[str]] = None,
                    reduce: Optional[Reduce] = None) -> Dict[str, object]:
    """Score ``<pred_dir>/<id>.png`` for every image of a reader (VOC layout or COCO) against its masks.

    ``ids`` and ``reduce``: this process scores ``ids`` only (its share) and sums the confusion matrix over the
    processes (see :func:`score_label_maps`).

    Returns:
        the dict of :func:`score_label_maps`.

    Raises:
        DataError: a prediction is missing or its size differs from the ground truth.
    """
    return score_label_maps(label_pairs(pred_dir, dataset, split, ids), dataset.num_classes, dataset.class_names,
                            reduce=reduce)


def label_pairs(pred_dir: PathLike, dataset, split: str = "",
                ids: Optional[Sequence[str]] = None) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yield ``(label map uint8 [H, W] from <pred_dir>/<id>.png, ground-truth mask uint8 [H, W])`` for every image
    of a reader (or ``ids`` of it), in its order.

    Raises:
        DataError: the folder or a label map is missing, an image has no mask, or the sizes differ.
    """
    from .datasets.base import check_label_values
    from .io import read_label_png

    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(pred_dir, "prediction folder does not exist")

    num_classes = dataset.num_classes

    def ground_truth(image_id: str):
        path = dataset.mask_path(image_id) if hasattr(dataset, "mask_path") else None
        if path is None:
            return dataset.load(image_id)["mask"]
        return check_label_values(read_label_png(path), num_classes, path, "mask")

    for image_id in dataset.ids if ids is None else ids:
        pred_path = pred_dir / f"{image_id}.png"
        if not pred_path.is_file():
            raise DataError(pred_path, f"prediction for {image_id!r} of split {split!r} is missing")
        pred = check_label_values(read_label_png(pred_path), num_classes, pred_path, "prediction")
        target = ground_truth(image_id)
        if target is None:
            raise DataError(pred_path, f"image {image_id!r} has no ground-truth mask to score against")
        if pred.shape != target.shape:
            raise DataError(
                pred_path, f"prediction size {pred.shape[1]}x{pred.shape[0]} differs from the ground truth's "
                f"{target.shape[1]}x{target.shape[0]}"
            )
        yield pred, target
