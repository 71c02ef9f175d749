"""Bounding boxes from a segmentation mask (to derive box annotations from ground-truth masks)."""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["boxes_from_mask"]


def boxes_from_mask(mask, min_area: int = 1, ignore_index: int = 255) -> Tuple[np.ndarray, np.ndarray]:
    """Boxes of the connected components of every foreground class of a label map.

    Each class ``c > 0`` (except ``ignore_index``) is split into 8-connected components with
    ``cv2.connectedComponentsWithStats``; every component with at least ``min_area`` pixels gives one box
    in pixel-edge coordinates (a component spanning columns 3..7 gives ``x_min=3, x_max=8``).

    Args:
        mask: int [H, W] label map (numpy array or tensor).
        min_area: components with fewer pixels are dropped.
        ignore_index: label value that is not a class.

    Returns:
        ``(boxes float32 [N, 4], labels int64 [N])`` sorted by class, then ``y_min``, then ``x_min``
        (then ``x_max``, ``y_max``); ``N`` may be 0.
    """
    import cv2

    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {list(mask.shape)}")
    rows = []
    for cls in np.unique(mask):
        cls = int(cls)
        if cls <= 0 or cls == ignore_index:
            continue
        binary = (mask == cls).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        for comp in range(1, count):  # 0 is the background of the binary image
            x, y, w, h, area = (int(v) for v in stats[comp, :5])
            if area < min_area:
                continue
            rows.append((cls, y, x, x + w, y + h))
    rows.sort()
    boxes = np.array([[x0, y0, x1, y1] for _, y0, x0, x1, y1 in rows], dtype=np.float32).reshape(-1, 4)
    labels = np.array([r[0] for r in rows], dtype=np.int64)
    return boxes, labels
