"""COCO instances reader: semantic masks, boxes and image-level labels from an instances JSON."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import DataError, PathLike
from ..io import read_image
from .annotations import validate_boxes
from .base import Sample, SegmentationDataset, labels_from_classes


class COCOSegmentation(SegmentationDataset):
    """A COCO-format data set read through pycocotools.

    Category ids (sparse in COCO, e.g. 1..90) map to contiguous class indices 1..K in the order of increasing
    id; background is 0. Semantic masks are painted from the instance polygons/RLEs, larger instances first
    so that smaller ones stay visible; crowd regions become 255 (ignore) and give no boxes.

    Args:
        root: folder holding the images (``file_name`` of each image entry is relative to it).
        annotation_file: the instances JSON.
        ids: optional subset of image ids (as strings, the COCO integer ids) to use.
        require_annotations: drop images with no (non-crowd) annotation (default), as WSSS on COCO does.
    """

    def __init__(
        self,
        root: PathLike,
        annotation_file: PathLike,
        ids: Optional[Sequence[str]] = None,
        require_annotations: bool = True,
    ) -> None:
        from pycocotools.coco import COCO

        self.root = Path(root)
        self.annotation_file = Path(annotation_file)
        if not self.annotation_file.is_file():
            raise DataError(self.annotation_file, "COCO annotation file is missing")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.coco = COCO(str(self.annotation_file))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(self.annotation_file, f"unreadable COCO annotation file ({exc!r})") from exc
        category_ids = sorted(self.coco.getCatIds())
        if not category_ids:
            raise DataError(self.annotation_file, "no categories")
        self.category_to_index: Dict[int, int] = {cat: i + 1 for i, cat in enumerate(category_ids)}
        self.class_names = ["background"] + [self.coco.cats[c]["name"] for c in category_ids]
        image_ids = sorted(self.coco.getImgIds())
        if require_annotations:
            image_ids = [i for i in image_ids if any(not a.get("iscrowd", 0) for a in self.coco.imgToAnns[i])]
        self.ids = [str(i) for i in image_ids]
        self.subset_ids(ids)
        if not self.ids:
            raise DataError(self.annotation_file, "no images with annotations")
        for image_id in self.ids:
            for ann in self.coco.imgToAnns[int(image_id)]:
                if ann["category_id"] not in self.category_to_index:
                    raise DataError(self.annotation_file, f"annotation {ann['id']} has unknown category id {ann['category_id']}")

    def image_path(self, image_id: str) -> Path:
        """Path of the image file of ``image_id``."""
        return self.root / self.coco.imgs[int(image_id)]["file_name"]

    def has_masks(self) -> bool:
        return True

    def image_labels(self, image_id: str) -> np.ndarray:
        """Multi-hot labels float32 [num_classes - 1] of the image's non-crowd annotations."""
        anns = [a for a in self.coco.imgToAnns[int(image_id)] if not a.get("iscrowd", 0)]
        return labels_from_classes([self.category_to_index[a["category_id"]] for a in anns], self.num_classes)

    def load(self, image_id: str) -> Sample:
        info = self.coco.imgs[int(image_id)]
        image = read_image(self.image_path(image_id))
        height, width = image.shape[:2]
        if (info.get("height"), info.get("width")) != (height, width):
            raise DataError(
                self.image_path(image_id),
                f"image is {width}x{height} but {self.annotation_file.name} declares {info.get('width')}x{info.get('height')}",
            )
        anns: List[dict] = sorted(self.coco.imgToAnns[int(image_id)], key=lambda a: -float(a.get("area", 0.0)))
        mask = np.zeros((height, width), dtype=np.uint8)
        boxes, box_labels = [], []
        for ann in anns:
            index = self.category_to_index[ann["category_id"]]
            region = self.coco.annToMask(ann).astype(bool)
            if ann.get("iscrowd", 0):
                mask[region] = 255
                continue
            mask[region] = index
            x, y, w, h = (float(v) for v in ann["bbox"])
            boxes.append((x, y, x + w, y + h))
            box_labels.append(index)
        boxes_array = validate_boxes(np.asarray(boxes, dtype=np.float32), height, width, self.annotation_file)
        box_labels_array = np.asarray(box_labels, dtype=np.int64)
        return {
            "id": image_id,
            "image": image,
            "mask": mask,
            "boxes": boxes_array,
            "box_labels": box_labels_array,
            "difficult": np.zeros(len(box_labels_array), dtype=bool),
            "labels": labels_from_classes(box_labels_array, self.num_classes),
        }
