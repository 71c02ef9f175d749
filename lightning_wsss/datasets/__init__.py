"""Data set readers: PASCAL VOC layout, COCO instances, and the synthetic generator.

Readers return raw samples (see :mod:`lightning_wsss.datasets.base`); datamodules add augmentation.
"""

from .base import SegmentationDataset, labels_from_classes
from .classes import IGNORE_INDEX, VOC_CLASSES, read_class_names
from .coco import COCOSegmentation
from .voc import VOCSegmentation

__all__ = [
    "SegmentationDataset",
    "VOCSegmentation",
    "COCOSegmentation",
    "VOC_CLASSES",
    "IGNORE_INDEX",
    "read_class_names",
    "labels_from_classes",
]
