"""Scoring saved CAMs as pseudo labels over a sweep of background thresholds (the psa/irn protocol)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..errors import DataError, PathLike
from ..metrics import SegmentationIoU


def load_cams(path: PathLike) -> Dict[str, np.ndarray]:
    """Read ``<id>.npz`` written by the CAM stage.

    Returns:
        ``{"cams": float32 [K, H, W] in [0, 1], "keys": int64 [K] class indices}``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "CAM file is missing")
    try:
        with np.load(path) as data:
            cams, keys = data["cams"].astype(np.float32), data["keys"].astype(np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(path, f"unreadable CAM file ({exc})") from exc
    if cams.ndim != 3 or len(keys) != cams.shape[0]:
        raise DataError(path, f"CAM file holds cams {cams.shape} with {len(keys)} keys")
    return {"cams": cams, "keys": keys}


def cams_to_label_map(cams: np.ndarray, keys: np.ndarray, bg_threshold: float) -> np.ndarray:
    """Argmax of [background = ``bg_threshold``, cams...] mapped to class indices; uint8 [H, W]."""
    if cams.shape[0] == 0:
        return np.zeros(cams.shape[1:], dtype=np.uint8)
    scores = np.concatenate([np.full((1,) + cams.shape[1:], bg_threshold, np.float32), cams])
    lookup = np.concatenate([[0], keys]).astype(np.uint8)
    return lookup[scores.argmax(0)]


def evaluate_cam_thresholds(
    cam_dir: PathLike,
    root: PathLike,
    split: str,
    thresholds: Sequence[float] = tuple(np.round(np.arange(0.05, 0.61, 0.05), 2)),
    class_names: Optional[Sequence[str]] = None,
) -> Dict[str, object]:
    """mIoU of CAM pseudo labels for every background threshold.

    Returns:
        ``{"thresholds": [...], "miou": [...], "best_threshold": t, "best_miou": m, "num_images": n}``.
    """
    from ..datasets import open_split
    from ..io import read_label_png

    kwargs = {} if str(split).endswith(".json") else {"class_names": class_names, "require_masks": True}
    dataset = open_split(root, split, **kwargs)
    metrics = [SegmentationIoU(dataset.num_classes, validate_args=False) for _ in thresholds]
    cam_dir = Path(cam_dir)
    preds: List[List[np.ndarray]] = [[] for _ in thresholds]
    targets: List[np.ndarray] = []

    def flush() -> None:
        if not targets:
            return
        target_t = torch.from_numpy(np.concatenate(targets).astype(np.int64))
        for metric, chunk in zip(metrics, preds):
            metric.update(torch.from_numpy(np.concatenate(chunk).astype(np.int64)), target_t)
            chunk.clear()
        targets.clear()

    for image_id in dataset.ids:
        data = load_cams(cam_dir / f"{image_id}.npz")
        target = read_label_png(dataset.mask_path(image_id)) if hasattr(dataset, "mask_path") else dataset.load(image_id)["mask"]
        if data["cams"].shape[1:] != target.shape:
            raise DataError(cam_dir / f"{image_id}.npz", f"CAM size {data['cams'].shape[1:]} differs from the mask's {target.shape}")
        targets.append(target.reshape(-1))
        for threshold, chunk in zip(thresholds, preds):
            chunk.append(cams_to_label_map(data["cams"], data["keys"], threshold).reshape(-1))
        if len(targets) >= 64:  # score in chunks: one metric update per threshold per 64 images
            flush()
    flush()
    mious = [float(m.compute()) for m in metrics]
    best = int(np.nanargmax(mious))
    return {
        "thresholds": [float(t) for t in thresholds],
        "miou": mious,
        "best_threshold": float(thresholds[best]),
        "best_miou": mious[best],
        "num_images": len(dataset.ids),
    }
