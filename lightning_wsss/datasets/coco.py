"""COCO instances reader: semantic masks, boxes and image-level labels from an instances JSON."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..errors import DataError, PathLike
from ..io import read_image, read_text_file
from .boxes import validate_boxes
from .base import Sample, SegmentationDataset, labels_from_classes


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_list(path: Path, data: Dict[str, Any], key: str) -> List[Dict[str, Any]]:
    """``data[key]``: a list of JSON objects."""
    if key not in data:
        raise DataError(path, f"COCO annotation file has no {key!r} list")
    items = data[key]
    if not isinstance(items, list):
        raise DataError(path, f"{key!r} must be a list, got {type(items).__name__}")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(path, f"{key}[{index}] must be a JSON object, got {type(item).__name__}")
    return items


def _check_annotation(path: Path, index: int, ann: Dict[str, Any]) -> None:
    """Keys and types of one instance annotation (the reader paints ``segmentation`` and reads ``bbox``)."""
    where = f"annotation {ann.get('id', f'at index {index}')!r}"
    for key in ("id", "image_id", "category_id", "bbox", "segmentation"):
        if key not in ann:
            raise DataError(path, f"{where} has no {key!r}")
    for key in ("image_id", "category_id"):
        if not isinstance(ann[key], int) or isinstance(ann[key], bool):
            raise DataError(path, f"{where}: {key!r} must be an integer, got {ann[key]!r}")
    bbox = ann["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise DataError(path, f"{where}: 'bbox' must be 4 numbers [x, y, width, height], got {bbox!r}")
    if not isinstance(ann["segmentation"], (list, dict)):
        raise DataError(path, f"{where}: 'segmentation' must be polygons (a list) or an RLE (an object), got "
                              f"{type(ann['segmentation']).__name__}")


def read_coco_json(path: PathLike) -> Dict[str, Any]:
    """Read and check a COCO instances JSON before pycocotools sees it.

    Returns:
        the parsed JSON object (``images``, ``annotations``, ``categories``).

    Raises:
        DataError: naming the file: not UTF-8 JSON, not an object, a missing list, an image without ``id`` /
            ``file_name``, a category without ``id`` / ``name``, an annotation without ``bbox`` /
            ``segmentation`` or with a malformed one.
    """
    path = Path(path)
    try:
        data = json.loads(read_text_file(path, "COCO annotation file"))
    except json.JSONDecodeError as exc:
        raise DataError(path, f"COCO annotation file is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(path, f"COCO annotation file must be a JSON object with 'images', 'annotations' and "
                              f"'categories', got a {type(data).__name__}")
    for index, category in enumerate(_check_list(path, data, "categories")):
        if not isinstance(category.get("id"), int) or not isinstance(category.get("name"), str):
            raise DataError(path, f"categories[{index}] needs an integer 'id' and a string 'name', got {category!r}")
    for index, image in enumerate(_check_list(path, data, "images")):
        if not isinstance(image.get("id"), int) or not isinstance(image.get("file_name"), str):
            raise DataError(path, f"images[{index}] needs an integer 'id' and a string 'file_name'")
    for index, ann in enumerate(_check_list(path, data, "annotations")):
        _check_annotation(path, index, ann)
    return data


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
        dataset = read_coco_json(self.annotation_file)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.coco = COCO()
                self.coco.dataset = dataset
                self.coco.createIndex()
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
        boxes_array = validate_boxes((height, width), np.asarray(boxes, dtype=np.float32), source=self.annotation_file,
                                     tolerance=1.0)[0].astype(np.float32)
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
