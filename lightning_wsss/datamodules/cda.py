"""Context decoupling augmentation (CDA: Su et al., "Context Decoupling Augmentation for Weakly Supervised
Semantic Segmentation", ICCV 2021) for the image-label (CAM classifier) stage.

Object instances are cut out of training images along the masks of an earlier stage (``object_mask_dir/<id>.png``:
pseudo labels, one connected component of one class = one instance) and pasted into other training images at
random positions and scales, so a class is seen out of its usual context. The image-level labels follow the
paste: the pasted class is added, and a class of the target whose pixels (in the target's own mask from the same
folder) are all covered by pasted objects is removed. With ``return_mask=True`` the training sample also carries
that mask, updated (pasted pixels take the pasted class; covered pixels lose theirs).

Pasting happens on the raw sample (original resolution), before the datamodule's augmentation; its randomness is
drawn from torch's RNG like the rest of the pipeline, so it is reproducible under ``seed_everything`` and in
DataLoader workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from ..datasets.base import check_label_values
from ..datasets.classes import IGNORE_INDEX
from ..errors import DataError
from ..io import read_label_png
from .supervision import ImageLabelDataModule

__all__ = ["CDADataModule", "ObjectRecord", "find_objects", "cut_object", "resize_object", "paste_object",
           "labels_after_paste", "paste_random_objects"]


@dataclass(frozen=True)
class ObjectRecord:
    """One instance: component ``component`` of class ``class_id`` in ``image_id``'s mask, bounding box
    ``(x, y, w, h)`` in pixels, ``area`` pixels."""

    image_id: str
    class_id: int
    component: int
    x: int
    y: int
    w: int
    h: int
    area: int


# ----------------------------------------------------------------------------------------------- functional core
def _components(mask: np.ndarray, class_id: int) -> Tuple[int, np.ndarray, np.ndarray]:
    return cv2.connectedComponentsWithStats((mask == class_id).astype(np.uint8), connectivity=8)[:3]


def find_objects(image_id: str, mask: np.ndarray, num_classes: int, min_area: int = 1) -> List[ObjectRecord]:
    """Connected components (8-connectivity) of every foreground class of a label map.

    Args:
        mask: uint8 [H, W], 0 background, 255 ignore.
        min_area: smaller components are left out.

    Returns:
        the instances, by class then component label.
    """
    out: List[ObjectRecord] = []
    for class_id in np.unique(mask).tolist():
        if class_id == 0 or class_id == IGNORE_INDEX or class_id >= num_classes:
            continue
        count, _, stats = _components(mask, class_id)
        for component in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[component])
            if area >= min_area:
                out.append(ObjectRecord(image_id, int(class_id), component, x, y, w, h, area))
    return out


def cut_object(image: np.ndarray, mask: np.ndarray, record: ObjectRecord) -> Tuple[np.ndarray, np.ndarray]:
    """The instance's pixels: ``(patch uint8 [h, w, 3], shape bool [h, w])`` over its bounding box."""
    _, labels, _ = _components(mask, record.class_id)
    window = (slice(record.y, record.y + record.h), slice(record.x, record.x + record.w))
    return image[window].copy(), labels[window] == record.component


def resize_object(patch: np.ndarray, shape: np.ndarray, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Resize an instance to ``size = (h, w)``: the image bilinearly, the shape by nearest neighbour."""
    height, width = size
    if (height, width) == shape.shape:
        return patch, shape
    patch = cv2.resize(patch, (width, height), interpolation=cv2.INTER_LINEAR)
    shape = cv2.resize(shape.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    return patch, shape


def paste_object(image: np.ndarray, mask: Optional[np.ndarray], patch: np.ndarray, shape: np.ndarray, class_id: int,
                 top: int, left: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Paste an instance with its top-left corner at ``(top, left)``; it must lie inside the image.

    Args:
        image: uint8 [H, W, 3]; mask: uint8 [H, W] or None.
        patch: uint8 [h, w, 3]; shape: bool [h, w] (the instance's pixels).

    Returns:
        new ``(image, mask)``: the instance's pixels copied, the mask set to ``class_id`` there.
    """
    height, width = shape.shape
    if top < 0 or left < 0 or top + height > image.shape[0] or left + width > image.shape[1]:
        raise ValueError(f"object {height}x{width} at ({top}, {left}) does not fit in image {image.shape[:2]}")
    image = image.copy()
    image[top:top + height, left:left + width][shape] = patch[shape]
    if mask is not None:
        mask = mask.copy()
        mask[top:top + height, left:left + width][shape] = class_id
    return image, mask


def labels_after_paste(labels: np.ndarray, mask_before: np.ndarray, mask_after: np.ndarray,
                       pasted_classes: Sequence[int]) -> np.ndarray:
    """Image-level labels after pasting.

    A pasted class still visible in ``mask_after`` is added; a class present in ``mask_before`` but absent from
    ``mask_after`` (covered by pasted objects) is removed; other labels are kept (e.g. a labelled class the earlier
    stage's mask missed).

    Args:
        labels: multi-hot float [C-1] before pasting.
        mask_before, mask_after: uint8 [H, W] label maps of the target before / after pasting.
        pasted_classes: class indices (1..C-1) pasted.

    Returns:
        float32 [C-1].
    """
    out = np.asarray(labels, dtype=np.float32).copy()
    before = {int(c) for c in np.unique(mask_before) if 0 < c <= len(out)}
    after = {int(c) for c in np.unique(mask_after) if 0 < c <= len(out)}
    for class_id in set(int(c) for c in pasted_classes) & after:
        out[class_id - 1] = 1.0
    for class_id in before - after:
        out[class_id - 1] = 0.0
    return out


def paste_random_objects(
    image: np.ndarray,
    mask: np.ndarray,
    objects: Sequence[Tuple[np.ndarray, np.ndarray, int]],
    rng: np.random.Generator,
    scale_range: Tuple[float, float] = (1.0, 1.0),
) -> Tuple[np.ndarray, np.ndarray, List[Dict[str, int]]]:
    """Paste instances at random scales (shrunk further to fit when needed) and positions, in order.

    Args:
        image: uint8 [H, W, 3]; mask: uint8 [H, W] the target's label map.
        objects: ``(patch uint8 [h, w, 3], shape bool [h, w], class_id)`` per instance.
        rng: the random generator.
        scale_range: uniform scale factor range.

    Returns:
        ``(image, mask, placements)``; each placement ``{"class_id", "top", "left", "height", "width"}``.
    """
    placements: List[Dict[str, int]] = []
    for patch, shape, class_id in objects:
        scale = float(rng.uniform(scale_range[0], scale_range[1]))
        scale = min(scale, image.shape[0] / shape.shape[0], image.shape[1] / shape.shape[1])
        size = (max(1, min(image.shape[0], int(round(shape.shape[0] * scale)))),
                max(1, min(image.shape[1], int(round(shape.shape[1] * scale)))))
        patch_s, shape_s = resize_object(patch, shape, size)
        top = int(rng.integers(0, image.shape[0] - size[0] + 1))
        left = int(rng.integers(0, image.shape[1] - size[1] + 1))
        image, mask = paste_object(image, mask, patch_s, shape_s, class_id, top, left)
        placements.append({"class_id": int(class_id), "top": top, "left": left, "height": size[0], "width": size[1]})
    return image, mask, placements


# ----------------------------------------------------------------------------------------------- the module
class CDADataModule(ImageLabelDataModule):
    """Image-label DataModule with context decoupling augmentation on the training split.

    Args:
        object_mask_dir: folder of label PNGs (``<id>.png``, every training image) from an earlier stage.
        paste_prob: probability that a training sample receives pasted objects.
        max_objects: a receiving sample gets 1..``max_objects`` objects (uniform).
        object_scale: range of the random scale of a pasted object (shrunk further to fit the target).
        min_object_area: components smaller than this (pixels) are not cut out.
        return_mask: also return the target's updated mask (from ``object_mask_dir``) as the sample's ``mask``.
        **kwargs: :class:`~lightning_wsss.datamodules.base.WSSSDataModule` arguments.
    """

    def __init__(
        self,
        object_mask_dir: str,
        paste_prob: float = 0.5,
        max_objects: int = 1,
        object_scale: Tuple[float, float] = (0.7, 1.3),
        min_object_area: int = 64,
        return_mask: bool = False,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= paste_prob <= 1.0:
            raise ValueError(f"paste_prob must be in [0, 1], got {paste_prob}")
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        if not 0 < object_scale[0] <= object_scale[1]:
            raise ValueError(f"object_scale must be (low, high) with 0 < low <= high, got {object_scale}")
        super().__init__(**kwargs)
        self.object_mask_dir = Path(object_mask_dir)
        self.paste_prob = float(paste_prob)
        self.max_objects = int(max_objects)
        self.object_scale = (float(object_scale[0]), float(object_scale[1]))
        self.min_object_area = int(min_object_area)
        self.return_mask = bool(return_mask)
        self.objects: List[ObjectRecord] = []
        self._reader = None

    # ------------------------------------------------------------------ object bank
    def object_mask(self, image_id: str, image_shape: Sequence[int]) -> np.ndarray:
        """``object_mask_dir/<id>.png`` checked against the image size and the class range. Returns uint8 [H, W]."""
        path = self.object_mask_dir / f"{image_id}.png"
        if not path.is_file():
            raise DataError(path, "CDA object mask is missing")
        mask = read_label_png(path)
        if mask.shape != tuple(image_shape[:2]):
            raise DataError(path, f"mask size {mask.shape[1]}x{mask.shape[0]} differs from its image's "
                                  f"{image_shape[1]}x{image_shape[0]}")
        return check_label_values(mask, self.num_classes, path, "CDA object mask")

    def build_object_bank(self, reader) -> List[ObjectRecord]:
        """Every instance of the training split's masks (at least ``min_object_area`` pixels)."""
        if not self.object_mask_dir.is_dir():
            raise DataError(self.object_mask_dir, "CDA object-mask folder does not exist")
        missing = [i for i in reader.ids if not (self.object_mask_dir / f"{i}.png").is_file()]
        if missing:
            raise DataError(self.object_mask_dir / f"{missing[0]}.png",
                            f"CDA object mask is missing ({len(missing)} of {len(reader.ids)} training images have none)")
        bank: List[ObjectRecord] = []
        for image_id in reader.ids:
            bank.extend(find_objects(image_id, read_label_png(self.object_mask_dir / f"{image_id}.png"),
                                     self.num_classes, self.min_object_area))
        return bank

    def setup(self, stage: Optional[str] = None) -> None:
        super().setup(stage)
        if "fit" in self.datasets and self._reader is None:
            self._reader = self.datasets["fit"].reader
            self.objects = self.build_object_bank(self._reader)

    # ------------------------------------------------------------------ hook
    def prepare_train(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        """The image-label sample, with objects of other images pasted in (probability ``paste_prob``).

        Adds ``cda`` (list of placements with ``source`` ids, empty when nothing was pasted) and, with
        ``return_mask``, ``mask`` (the target's updated mask).
        """
        out = super().prepare_train(sample)
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,))))
        candidates = [i for i, record in enumerate(self.objects) if record.image_id != sample["id"]]
        paste = bool(candidates) and rng.random() < self.paste_prob
        if not paste and not self.return_mask:
            return {**out, "cda": []}
        mask = self.object_mask(sample["id"], sample["image"].shape)
        if not paste:
            return {**out, "mask": mask, "cda": []}
        count = int(rng.integers(1, self.max_objects + 1))
        chosen = [self.objects[candidates[int(k)]] for k in rng.integers(0, len(candidates), size=count)]
        pieces = []
        for record in chosen:
            source = self._reader.load(record.image_id)
            source_mask = self.object_mask(record.image_id, source["image"].shape)
            patch, shape = cut_object(source["image"], source_mask, record)
            pieces.append((patch, shape, record.class_id))
        image, new_mask, placements = paste_random_objects(sample["image"], mask, pieces, rng, self.object_scale)
        for placement, record in zip(placements, chosen):
            placement["source"] = record.image_id  # type: ignore[assignment]
        labels = labels_after_paste(out["labels"], mask, new_mask, [r.class_id for r in chosen])
        result = {**out, "image": image, "labels": labels, "cda": placements}
        if self.return_mask:
            result["mask"] = new_mask
        return result
