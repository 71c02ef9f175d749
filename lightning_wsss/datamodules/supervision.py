"""One DataModule per supervision type: image labels, boxes, full masks, pseudo masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from ..datasets.base import SegmentationDataset, check_label_values
from ..errors import DataError
from ..io import read_label_png
from .base import WSSSDataModule


class ImageLabelDataModule(WSSSDataModule):
    """Image + multi-hot image-level labels (the CAM classifier's supervision). Masks only at eval time."""

    def prepare_train(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        return {**sample, "mask": None, "boxes": sample["boxes"][:0], "box_labels": sample["box_labels"][:0],
                "difficult": sample["difficult"][:0]}


class BoxDataModule(WSSSDataModule):
    """Image + boxes + box classes (+ image labels). Boxes follow every geometric augmentation."""

    def build_reader(self, stage: str, require_masks: bool = False) -> SegmentationDataset:
        reader = super().build_reader(stage, require_masks)
        if stage == "fit" and hasattr(reader, "has_boxes") and not reader.has_boxes():
            missing = next(i for i in reader.ids if reader._annotations[i] is None)  # type: ignore[attr-defined]
            raise DataError(Path(self.root) / "Annotations" / f"{missing}.xml", "box supervision needs an annotation XML for every training image")
        return reader


class MaskDataModule(WSSSDataModule):
    """Image + ground-truth mask: full supervision, the upper bound."""

    requires_train_masks = True

    def prepare_train(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        return sample


class PseudoMaskDataModule(WSSSDataModule):
    """Image + a pseudo mask read from ``pseudo_mask_dir/<id>.png`` (written by an earlier stage).

    In training, ``mask`` is the pseudo mask and ``gt_mask`` the ground truth when the split has it (for
    scoring the pseudo labels, never for the loss). Validation uses the ground truth.

    Args:
        pseudo_mask_dir: folder of label PNGs named by image id.
        **kwargs: see :class:`WSSSDataModule`.
    """

    def __init__(self, pseudo_mask_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pseudo_mask_dir = Path(pseudo_mask_dir)

    def pseudo_mask_path(self, image_id: str) -> Path:
        """Where the pseudo mask of a training image is read from (a hook: :class:`HybridDataModule` picks
        between two folders)."""
        return self.pseudo_mask_dir / f"{image_id}.png"

    def build_reader(self, stage: str, require_masks: bool = False) -> SegmentationDataset:
        reader = super().build_reader(stage, require_masks)
        if stage == "fit":
            self.check_pseudo_masks(reader)
        return reader

    def check_pseudo_masks(self, reader: SegmentationDataset) -> None:
        """Fail early, naming the file, when a training image's pseudo mask (or its folder) is missing."""
        paths = [self.pseudo_mask_path(i) for i in reader.ids]
        for folder in sorted({p.parent for p in paths}):
            if not folder.is_dir():
                raise DataError(folder, "pseudo-mask folder does not exist")
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataError(missing[0], f"pseudo mask is missing ({len(missing)} of {len(reader.ids)} training "
                                        "images have none)")

    def prepare_train(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        return {**sample, "gt_mask": sample["mask"],
                "mask": read_pseudo_mask(self.pseudo_mask_path(sample["id"]), sample, len(self.class_names))}


def read_pseudo_mask(path: Path, sample: Dict[str, Any], num_classes: int):
    """The label PNG at ``path`` as uint8 [H, W], checked against its sample's image size and the class range.

    Raises:
        DataError: unreadable file, size mismatch, or values outside ``0..num_classes - 1`` other than 255.
    """
    pseudo = read_label_png(path)
    if pseudo.shape != sample["image"].shape[:2]:
        raise DataError(path, f"pseudo mask size {pseudo.shape[1]}x{pseudo.shape[0]} differs from its image's "
                              f"{sample['image'].shape[1]}x{sample['image'].shape[0]}")
    return check_label_values(pseudo, num_classes, path, "pseudo mask")
