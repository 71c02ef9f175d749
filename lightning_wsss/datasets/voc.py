"""PASCAL VOC-layout reader (also reads the synthetic set, the horse set and SBD's ``train_aug`` lists)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import DataError, PathLike
from ..io import read_image, read_label_png
from .annotations import ObjectAnnotations, SplitEntry, class_index_map, parse_voc_xml, read_split
from .boxes import validate_boxes
from .base import Sample, SegmentationDataset, check_mask, labels_from_classes
from .classes import VOC_CLASSES, read_class_names, validate_class_names

MASK_DIRS = ("SegmentationClass", "SegmentationClassAug")


class VOCSegmentation(SegmentationDataset):
    """A PASCAL VOC-layout segmentation data set.

    Layout under ``root``: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` or
    ``SegmentationClassAug/<id>.png`` (palette or index PNG, 255 = void), ``Annotations/<id>.xml`` (optional),
    ``ImageSets/Segmentation/<split>.txt`` (ids, or the ``train_aug`` form with explicit paths) and an optional
    ``class_names.txt`` (else the 21 VOC names).

    Split-level problems (missing or empty split file, duplicate ids, unknown class names and malformed boxes
    in the XML, missing masks when ``require_masks``) raise :class:`DataError` at construction; image-level
    problems (corrupt image, mask size or value errors, boxes outside the image) when the sample is loaded, or
    all at once through :meth:`validate`.

    Args:
        root: data set root folder.
        split: split name, read from ``ImageSets/Segmentation/<split>.txt``.
        class_names: class names, background first; default ``class_names.txt`` in the root, else VOC's 21.
        require_masks: raise if an image of the split has no mask (full supervision); otherwise such a sample's
            ``mask`` is ``None``.
        skip_difficult_boxes: drop boxes flagged ``difficult`` (image-level labels still count them).
        ids: optional subset of the split's ids.
    """

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        class_names: Optional[Sequence[str]] = None,
        require_masks: bool = False,
        skip_difficult_boxes: bool = False,
        ids: Optional[Sequence[str]] = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, "data set root folder does not exist")
        self.split = split
        if class_names is not None:
            self.class_names = list(class_names)
            validate_class_names(self.class_names)
        elif (self.root / "class_names.txt").is_file():
            self.class_names = read_class_names(self.root / "class_names.txt")
        else:
            self.class_names = list(VOC_CLASSES)
        self._class_to_index = class_index_map(self.class_names)
        self.skip_difficult_boxes = skip_difficult_boxes
        entries = read_split(self.root / "ImageSets" / "Segmentation" / f"{split}.txt")
        self._entries: Dict[str, SplitEntry] = {entry.image_id: entry for entry in entries}
        self.ids = [entry.image_id for entry in entries]
        self.subset_ids(ids)
        self._annotations: Dict[str, Optional[ObjectAnnotations]] = {i: self._parse_xml(i) for i in self.ids}
        self._mask_paths: Dict[str, Optional[Path]] = {i: self._find_mask(i) for i in self.ids}
        if require_masks:
            missing = [i for i in self.ids if self._mask_paths[i] is None]
            if missing:
                raise DataError(
                    self.root / MASK_DIRS[0] / f"{missing[0]}.png",
                    f"mask file is missing ({len(missing)} of {len(self.ids)} images of split {split!r} have no mask)",
                )
        for image_id in self.ids:
            if self._annotations[image_id] is None and self._mask_paths[image_id] is None:
                raise DataError(
                    self.root / "Annotations" / f"{image_id}.xml",
                    "image has neither an annotation XML nor a mask, so it has no labels",
                )

    # ------------------------------------------------------------------ paths
    def image_path(self, image_id: str) -> Path:
        """Path of the image file of ``image_id``."""
        entry = self._entries[image_id]
        if entry.image_path:
            return self.root / entry.image_path
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Optional[Path]:
        """Path of the ground-truth mask of ``image_id``, or ``None`` when it has none."""
        return self._mask_paths[image_id]

    def _find_mask(self, image_id: str) -> Optional[Path]:
        entry = self._entries[image_id]
        if entry.mask_path:
            path = self.root / entry.mask_path
            if not path.is_file():
                raise DataError(path, f"mask file listed in split {self.split!r} is missing")
            return path
        for folder in MASK_DIRS:
            path = self.root / folder / f"{image_id}.png"
            if path.is_file():
                return path
        return None

    def _parse_xml(self, image_id: str) -> Optional[ObjectAnnotations]:
        path = self.root / "Annotations" / f"{image_id}.xml"
        if not path.is_file():
            return None
        return parse_voc_xml(path, self._class_to_index)

    def annotations(self, image_id: str) -> Optional[ObjectAnnotations]:
        """The parsed XML objects of ``image_id`` (boxes, classes, difficult flags), or ``None`` without XML."""
        return self._annotations[image_id]

    def has_masks(self) -> bool:
        return all(self._mask_paths[i] is not None for i in self.ids)

    def has_boxes(self) -> bool:
        """Whether every image of the split has an annotation XML (and so boxes)."""
        return all(self._annotations[i] is not None for i in self.ids)

    # ------------------------------------------------------------------ loading
    def image_labels(self, image_id: str) -> np.ndarray:
        """Multi-hot labels float32 [num_classes - 1], from the XML, else from the mask. Reads no image."""
        annotations = self._annotations[image_id]
        if annotations is not None:
            return labels_from_classes(annotations.labels, self.num_classes)
        mask = read_label_png(self._mask_paths[image_id])
        return labels_from_classes(np.unique(mask), self.num_classes)

    def load(self, image_id: str) -> Sample:
        image = read_image(self.image_path(image_id))
        mask_path = self._mask_paths[image_id]
        mask = None
        if mask_path is not None:
            mask = check_mask(read_label_png(mask_path), image.shape, self.num_classes, mask_path)
        annotations = self._annotations[image_id]
        xml_path = self.root / "Annotations" / f"{image_id}.xml"
        if annotations is not None:
            if annotations.size is not None and annotations.size != tuple(image.shape[:2]):
                raise DataError(
                    xml_path,
                    f"declared size {annotations.size[1]}x{annotations.size[0]} differs from the image's "
                    f"{image.shape[1]}x{image.shape[0]}",
                )
            boxes = validate_boxes(image.shape[:2], annotations.boxes, source=xml_path, tolerance=1.0)[0].astype(np.float32)
            keep = ~annotations.difficult if self.skip_difficult_boxes else np.ones(len(boxes), dtype=bool)
            labels = labels_from_classes(annotations.labels, self.num_classes)
            box_labels, difficult = annotations.labels[keep], annotations.difficult[keep]
            boxes = boxes[keep]
        else:
            boxes = np.zeros((0, 4), dtype=np.float32)
            box_labels = np.zeros(0, dtype=np.int64)
            difficult = np.zeros(0, dtype=bool)
            labels = labels_from_classes(np.unique(mask), self.num_classes)
        return {
            "id": image_id,
            "image": image,
            "mask": mask,
            "boxes": boxes,
            "box_labels": box_labels,
            "difficult": difficult,
            "labels": labels,
        }

    def validate(self) -> List[str]:
        """Load every sample once, raising the first :class:`DataError`.

        Returns:
            the ids checked.
        """
        for image_id in self.ids:
            self.load(image_id)
        return list(self.ids)
