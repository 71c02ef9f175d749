"""LightningDataModules, one per supervision type, sharing :class:`WSSSDataModule`."""

from .base import TransformedDataset, WSSSDataModule
from .cda import CDADataModule
from .collate import collate_samples
from .hybrid import HybridDataModule, select_box_images
from .supervision import BoxDataModule, ImageLabelDataModule, MaskDataModule, PseudoMaskDataModule

__all__ = [
    "WSSSDataModule",
    "TransformedDataset",
    "ImageLabelDataModule",
    "BoxDataModule",
    "MaskDataModule",
    "PseudoMaskDataModule",
    "CDADataModule",
    "HybridDataModule",
    "select_box_images",
    "collate_samples",
]
