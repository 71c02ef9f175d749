"""Bounding boxes from a segmentation mask, and VOC box annotations derived from a split's masks
(``wsss boxes-from-masks``: box supervision for a data set that has masks only)."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np

from ..errors import DataError, PathLike

__all__ = ["boxes_from_mask", "write_box_annotations"]


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


def write_box_annotations(reader, out_dir: PathLike, min_area: int = 1, overwrite: bool = False) -> Tuple[int, int]:
    """Write ``<out_dir>/<id>.xml``, the VOC annotation of :func:`boxes_from_mask` of every mask of a VOC-layout
    reader (one box per connected component of a class, ``difficult`` 0).

    Returns:
        ``(files written, boxes written)``.

    Raises:
        DataError: an image has no mask, a mask is unreadable or holds values outside the classes, or an XML
            exists already and ``overwrite`` is False (checked before anything is written).
    """
    from ..datasets.annotations import voc_xml
    from ..datasets.base import check_label_values
    from ..io import read_label_png, write_bytes_atomic

    out_dir = Path(out_dir)
    existing = [out_dir / f"{i}.xml" for i in reader.ids if (out_dir / f"{i}.xml").exists()]
    if existing and not overwrite:
        raise DataError(existing[0], f"annotation exists ({len(existing)} of {len(reader.ids)} do); "
                                     "pass --overwrite to replace them")
    total = 0
    for image_id in reader.ids:
        path = reader.mask_path(image_id)
        if path is None:
            raise DataError(out_dir / f"{image_id}.xml", f"image {image_id!r} has no mask to take boxes from")
        mask = check_label_values(read_label_png(path), reader.num_classes, path, "mask")
        boxes, labels = boxes_from_mask(mask, min_area=min_area)
        names = [reader.class_names[int(c)] for c in labels]
        write_bytes_atomic(out_dir / f"{image_id}.xml", voc_xml(image_id, mask.shape, names, boxes))
        total += len(boxes)
    return len(reader.ids), total
