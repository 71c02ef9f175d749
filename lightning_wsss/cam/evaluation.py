"""Scoring saved CAMs as pseudo labels over a sweep of background thresholds (the psa/irn protocol)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..errors import DataError, PathLike
from ..datasets.classes import IGNORE_INDEX
from ..metrics import SegmentationIoU, iou_table


def load_cams(path: PathLike) -> Dict[str, np.ndarray]:
    """Read ``<id>.npz`` written by the CAM stage.

    Returns:
        ``{"cams": float32 [K, H, W] in [0, 1], "keys": int64 [K] class indices}``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "CAM file is missing")
    try:
        with np.load(path, allow_pickle=False) as data:  # a CAM file holds arrays; never unpickle objects
            cams, keys = data["cams"].astype(np.float32), data["keys"].astype(np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(path, f"unreadable CAM file ({exc})") from exc
    if cams.ndim != 3 or len(keys) != cams.shape[0]:
        raise DataError(path, f"CAM file holds cams {cams.shape} with {len(keys)} keys")
    return {"cams": cams, "keys": keys}


def cams_to_label_map(cams: np.ndarray, keys: np.ndarray, bg_threshold: float, bg_mode: str = "constant") -> np.ndarray:
    """Argmax of [background, cams...] mapped to class indices; uint8 [H, W].

    ``bg_mode="constant"``: the background scores ``bg_threshold`` everywhere (irn); ``"power"``: it scores
    ``(1 - max_k cams_k) ** bg_threshold`` (psa's alpha).
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


DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))


def evaluate_cam_thresholds(
    cam_dir: PathLike,
    root: PathLike,
    split: str,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    class_names: Optional[Sequence[str]] = None,
    bg_mode: str = "constant",
) -> Dict[str, object]:
    """mIoU of CAM pseudo labels for every background threshold (or psa alpha, ``bg_mode="power"``).

    Returns:
        ``{"thresholds": [...], "miou": [...], "best_threshold": t, "best_miou": m, "num_images": n,
        "bg_mode": mode, "per_class": {name: IoU or None} at the best threshold, "foreground_share": [...]
        (fraction of labelled pixels the pseudo labels call foreground, per threshold),
        "foreground_share_gt": the ground truth's}``.
    """
    from ..datasets import open_split
    from ..io import read_label_png

    kwargs = {} if str(split).endswith(".json") else {"class_names": class_names, "require_masks": True}
    dataset = open_split(root, split, **kwargs)
    metrics = [SegmentationIoU(dataset.num_classes, reduction="none", validate_args=False) for _ in thresholds]
    foreground = np.zeros(len(thresholds), np.int64)
    counts = {"labelled": 0, "gt_foreground": 0}
    cam_dir = Path(cam_dir)
    preds: List[List[np.ndarray]] = [[] for _ in thresholds]
    targets: List[np.ndarray] = []

    def flush() -> None:
        if not targets:
            return
        target = np.concatenate(targets)
        labelled = target != IGNORE_INDEX
        counts["labelled"] += int(labelled.sum())
        counts["gt_foreground"] += int((labelled & (target != 0)).sum())
        target_t = torch.from_numpy(target.astype(np.int64))
        for index, (metric, chunk) in enumerate(zip(metrics, preds)):
            pred = np.concatenate(chunk)
            foreground[index] += int((labelled & (pred != 0)).sum())
            metric.update(torch.from_numpy(pred.astype(np.int64)), target_t)
            chunk.clear()
        targets.clear()

    for image_id in dataset.ids:
        data = load_cams(cam_dir / f"{image_id}.npz")
        target = read_label_png(dataset.mask_path(image_id)) if hasattr(dataset, "mask_path") else dataset.load(image_id)["mask"]
        if data["cams"].shape[1:] != target.shape:
            raise DataError(cam_dir / f"{image_id}.npz", f"CAM size {data['cams'].shape[1:]} differs from the mask's {target.shape}")
        targets.append(target.reshape(-1))
        for threshold, chunk in zip(thresholds, preds):
            chunk.append(cams_to_label_map(data["cams"], data["keys"], threshold, bg_mode).reshape(-1))
        if len(targets) >= 64:  # score in chunks: one metric update per threshold per 64 images
            flush()
    flush()
    per_class = [m.compute() for m in metrics]
    mious = [float(torch.nanmean(values)) for values in per_class]
    best = int(np.nanargmax(mious))
    names = getattr(dataset, "class_names", None) or [str(i) for i in range(dataset.num_classes)]
    labelled = max(1, counts["labelled"])
    return {
        "bg_mode": bg_mode,
        "thresholds": [float(t) for t in thresholds],
        "miou": mious,
        "best_threshold": float(thresholds[best]),
        "best_miou": mious[best],
        "per_class": iou_table(per_class[best], names),
        "foreground_share": [float(v) / labelled for v in foreground],
        "foreground_share_gt": counts["gt_foreground"] / labelled,
        "num_images": len(dataset.ids),
    }
