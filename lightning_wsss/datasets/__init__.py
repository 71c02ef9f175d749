"""Data set readers: PASCAL VOC layout, COCO instances, and the synthetic generator.

Readers return raw samples (see :mod:`lightning_wsss.datasets.base`); datamodules add augmentation.
"""

from .base import SegmentationDataset, labels_from_classes
from .classes import IGNORE_INDEX, VOC_CLASSES, read_class_names
from .coco import COCOSegmentation
from .voc import VOCSegmentation


def open_split(root, split: str, **kwargs) -> SegmentationDataset:
    """The reader of a split: a COCO instances JSON when ``split`` ends in ``.json`` (``root`` = image folder),
    else the VOC-layout split ``root/ImageSets/Segmentation/<split>.txt``."""
    if str(split).endswith(".json"):
        return COCOSegmentation(root, split, ids=kwargs.get("ids"))
    return VOCSegmentation(root, split, **kwargs)


__all__ = [
    "open_split",
    "SegmentationDataset",
    "VOCSegmentation",
    "COCOSegmentation",
    "VOC_CLASSES",
    "IGNORE_INDEX",
    "read_class_names",
    "labels_from_classes",
]
