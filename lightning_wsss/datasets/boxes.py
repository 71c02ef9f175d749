"""The one check of bounding boxes (and their classes) against the image they belong to.

Boxes are float ``(x_min, y_min, x_max, y_max)`` in 0-based pixel-edge coordinates. The readers call
:func:`validate_boxes` with a tolerance of one pixel (annotation tools round); the box initializers and box crop
inference call it with none.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..errors import DataError, PathLike


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_labels(box_labels, n: int, source: Optional[PathLike]) -> np.ndarray:
    """int64 [n] box classes (all ones when ``box_labels`` is None), each in ``1..254``."""
    if box_labels is None:
        return np.ones(n, dtype=np.int64)
    labels = _to_numpy(box_labels).reshape(-1)
    if labels.shape[0] != n:
        raise DataError(source, f"{n} boxes but {labels.shape[0]} box labels")
    if labels.size and not np.all(np.equal(np.mod(labels, 1), 0)):
        raise DataError(source, f"box labels must be integers, got {labels.tolist()}")
    labels = labels.astype(np.int64)
    bad = np.flatnonzero((labels < 1) | (labels > 254))
    if bad.size:
        raise DataError(source, f"box {int(bad[0])} has class {int(labels[bad[0]])}; box classes must be in 1..254")
    return labels


def validate_boxes(
    image_hw: Tuple[int, int],
    boxes,
    box_labels=None,
    source: Optional[PathLike] = None,
    tolerance: float = 0.0,
) -> Tuple[np.ndarray, np.ndarray]:
    """Check boxes (and their classes) against an image size.

    Args:
        image_hw: ``(H, W)`` of the image the boxes belong to.
        boxes: array-like / tensor [N, 4] (``N`` may be 0).
        box_labels: array-like / tensor [N] of class indices in ``1..254``; ``None`` skips the check.
        source: file name / id named in error messages.
        tolerance: boxes overshooting the image border by at most this many pixels are clipped to it.

    Returns:
        ``(boxes float64 [N, 4], labels int64 [N])`` as numpy arrays (labels all ones when ``box_labels`` is None).

    Raises:
        DataError: naming ``source``: wrong shape, a non-finite or degenerate box, a box outside the image, a bad
            class.
    """
    height, width = int(image_hw[0]), int(image_hw[1])
    arr = _to_numpy(boxes).astype(np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise DataError(source, f"boxes must have shape [N, 4], got {list(arr.shape)}")
    labels = _check_labels(box_labels, arr.shape[0], source)
    for i, box in enumerate(arr):
        desc = f"box {i} ({', '.join(f'{v:g}' for v in box)})"
        if not np.all(np.isfinite(box)):
            raise DataError(source, f"{desc} has non-finite coordinates")
        x_min, y_min, x_max, y_max = box
        if x_max <= x_min or y_max <= y_min:
            raise DataError(source, f"{desc} has zero or negative area (need x_min < x_max and y_min < y_max)")
        if min(x_min, y_min) < -tolerance or x_max > width + tolerance or y_max > height + tolerance:
            raise DataError(source, f"{desc} lies outside the {width}x{height} image (0-based pixel edges "
                                    "x_min, y_min, x_max, y_max)")
    if tolerance > 0:
        arr[:, [0, 2]] = arr[:, [0, 2]].clip(0, width)
        arr[:, [1, 3]] = arr[:, [1, 3]].clip(0, height)
    return arr, labels
