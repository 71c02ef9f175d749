"""The sample format shared by every data set reader, and the base class of the readers.

A reader returns *raw* samples (numpy, original resolution); datamodules apply augmentation and turn them
into tensors. A raw sample is a dict with:

- ``id``: str, the image id (file stem), used to write predictions back by name;
- ``image``: uint8 [H, W, 3] RGB;
- ``mask``: uint8 [H, W] class indices with 255 = ignore, or ``None`` when the split has no mask for the image;
- ``boxes``: float32 [N, 4] (x_min, y_min, x_max, y_max), 0-based pixel-edge coordinates;
- ``box_labels``: int64 [N] class indices in 1..num_classes-1;
- ``difficult``: bool [N];
- ``labels``: float32 [num_classes - 1] multi-hot image-level labels over the foreground classes.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from ..errors import DataError, PathLike

Sample = Dict[str, Any]


def labels_from_classes(class_indices: Sequence[int], num_classes: int) -> np.ndarray:
    """Multi-hot vector float32 [num_classes - 1] of the foreground classes in ``class_indices`` (0 and 255 skipped)."""
    labels = np.zeros(num_classes - 1, dtype=np.float32)
    for index in np.unique(np.asarray(class_indices, dtype=np.int64)):
        if 0 < index < num_classes:
            labels[index - 1] = 1.0
    return labels


def check_label_values(label: np.ndarray, num_classes: int, path: PathLike, what: str = "mask") -> np.ndarray:
    """The one rule for the values of a label map (ground-truth mask, pseudo mask, prediction), in every command:
    class ids ``0 .. num_classes - 1``, and 255 for "ignore".

    Returns:
        ``label``, unchanged.

    Raises:
        DataError: naming ``path`` and the offending values (at most eight of them).
    """
    values = np.unique(np.asarray(label))
    bad = values[((values < 0) | (values >= num_classes)) & (values != 255)]
    if bad.size:
        shown = bad[:8].tolist()
        more = f" and {bad.size - 8} more" if bad.size > 8 else ""
        raise DataError(path, f"{what} values {shown}{more} are outside the class range 0..{num_classes - 1} "
                              "(255 = ignore)")
    return label


def check_mask(mask: np.ndarray, image_shape: Sequence[int], num_classes: int, path: PathLike) -> np.ndarray:
    """Check a mask against its image: same height and width, values below ``num_classes`` or 255.

    Returns:
        the mask, unchanged (uint8 [H, W]).

    Raises:
        DataError: size mismatch or out-of-range class value, naming the mask file.
    """
    if tuple(mask.shape[:2]) != tuple(image_shape[:2]):
        raise DataError(
            path, f"mask size {mask.shape[1]}x{mask.shape[0]} differs from its image's {image_shape[1]}x{image_shape[0]}"
        )
    return check_label_values(mask, num_classes, path, "mask")


class SegmentationDataset(Dataset):
    """Base of the readers: an indexable list of image ids with class names.

    Subclasses set ``ids`` and ``class_names`` and implement :meth:`load`.
    """

    ids: List[str]
    class_names: List[str]

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        return self.load(self.ids[index])

    def load(self, image_id: str) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def has_masks(self) -> bool:  # pragma: no cover - abstract
        """Whether every image of the split has a ground-truth mask."""
        raise NotImplementedError

    def index_of(self, image_id: str) -> int:
        """Position of ``image_id`` in the split."""
        if not hasattr(self, "_positions"):
            self._positions = {image_id: i for i, image_id in enumerate(self.ids)}
        return self._positions[image_id]

    def subset_ids(self, ids: Optional[Sequence[str]]) -> None:
        """Restrict the split to ``ids`` (in the given order); unknown ids raise DataError."""
        if ids is None:
            return
        known = set(self.ids)
        missing = [i for i in ids if i not in known]
        if missing:
            raise DataError(None, f"ids not in the split: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        self.ids = list(ids)
        self.__dict__.pop("_positions", None)
