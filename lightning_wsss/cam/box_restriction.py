"""Restricting CAMs to the boxes of their class (hybrid supervision: images that carry boxes)."""

from __future__ import annotations

import numpy as np


def box_union_mask(boxes: np.ndarray, box_labels: np.ndarray, class_id: int, shape) -> np.ndarray:
    """bool [H, W]: pixels inside any box of ``class_id`` (boxes float [N, 4] x0, y0, x1, y1 in pixels)."""
    height, width = shape
    mask = np.zeros((height, width), bool)
    for (x0, y0, x1, y1), label in zip(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(box_labels).reshape(-1)):
        if int(label) != int(class_id):
            continue
        top, left = max(0, int(np.floor(y0))), max(0, int(np.floor(x0)))
        bottom, right = min(height, int(np.ceil(y1))), min(width, int(np.ceil(x1)))
        mask[top:bottom, left:right] = True
    return mask


def restrict_cams_to_boxes(cams: np.ndarray, keys: np.ndarray, boxes: np.ndarray, box_labels: np.ndarray) -> np.ndarray:
    """Zero each class's CAM outside the boxes of that class and rescale it to a peak of 1 inside them.

    A CAM's peak can sit on context outside the object (water for boats); inside the box the object's own
    activation then looks weak after max-normalisation, so the map is rescaled by its in-box peak. A class
    without a box (image labels and boxes disagree) keeps its CAM unchanged.

    Args:
        cams: float [K, H, W] in [0, 1], one map per present class.
        keys: int [K], the class index of each map.
        boxes: float [N, 4] (x0, y0, x1, y1) in pixels; box_labels: int [N].

    Returns:
        float32 [K, H, W] in [0, 1].
    """
    out = np.asarray(cams, np.float32).copy()
    for k, class_id in enumerate(np.asarray(keys).reshape(-1)):
        inside = box_union_mask(boxes, box_labels, int(class_id), out.shape[1:])
        if not inside.any():
            continue
        out[k][~inside] = 0.0
        peak = float(out[k].max())
        if peak > 0:
            out[k] /= peak
    return out
