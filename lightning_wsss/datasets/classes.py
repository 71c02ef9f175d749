"""Class name lists.

Convention used across the suite: a data set has ``num_classes`` classes *including* background at index 0
(21 for PASCAL VOC). Label maps hold indices ``0..num_classes-1`` and 255 for "ignore". Image-level labels
are multi-hot vectors over the *foreground* classes only, of length ``num_classes - 1``: entry ``i`` is
class index ``i + 1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

from ..errors import DataError, PathLike

VOC_CLASSES: tuple = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

IGNORE_INDEX: int = 255


def read_class_names(path: PathLike) -> List[str]:
    """Read ``class_names.txt``: one class name per line, background first, index = label value.

    Raises:
        DataError: the file is empty, has duplicate names, or more than 255 classes.
    """
    path = Path(path)
    from ..io import read_text_file

    names = [line.strip() for line in read_text_file(path, "class names file").splitlines() if line.strip()]
    validate_class_names(names, path)
    return names


def validate_class_names(names: Sequence[str], path: PathLike = None) -> None:
    """Check a class list: at least background + one class, unique names, at most 255 entries."""
    if len(names) < 2:
        raise DataError(path, f"need background and at least one object class, got {list(names)}")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if list(names).count(n) > 1})
        raise DataError(path, f"duplicate class names {dupes}")
    if len(names) > IGNORE_INDEX:
        raise DataError(path, f"at most {IGNORE_INDEX} classes fit a label PNG, got {len(names)}")
