"""Hybrid supervision: every training image carries either boxes or image-level labels.

Which images carry boxes is chosen by :func:`select_box_images` (a seeded fraction, an explicit id list, or a
list file). :class:`HybridDataModule` trains a segmenter on the union of two pseudo-mask sets: box-derived
masks for the box images, image-label masks (CAM + random walk) for the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..datasets.base import SegmentationDataset
from ..errors import DataError, PathLike
from ..io import read_text_file
from .supervision import PseudoMaskDataModule


def read_id_list(path: PathLike) -> List[str]:
    """Image ids from a text file, one per line (blank lines and ``#`` comments skipped).

    Raises:
        DataError: the file is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "box image list file is missing")
    lines = read_text_file(path, "box image list").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def check_box_choice(box_fraction: Optional[float], box_list: Optional[PathLike], box_ids: Optional[Sequence[str]]) -> None:
    """Raise ValueError unless exactly one of the three is given and a fraction lies in [0, 1]."""
    given = [name for name, value in (("box_fraction", box_fraction), ("box_list", box_list), ("box_ids", box_ids))
             if value is not None]
    if len(given) != 1:
        raise ValueError(f"choose the box images with exactly one of box_fraction, box_list, box_ids (got {given or 'none'})")
    if box_fraction is not None and not 0.0 <= float(box_fraction) <= 1.0:
        raise ValueError(f"box_fraction must be in [0, 1], got {box_fraction}")


def select_box_images(ids: Sequence[str], box_fraction: Optional[float] = None, seed: int = 0,
                      box_list: Optional[PathLike] = None, box_ids: Optional[Sequence[str]] = None) -> List[str]:
    """The training images annotated with boxes, in the order of ``ids``.

    Exactly one of ``box_fraction``, ``box_list`` and ``box_ids`` chooses them:

    - ``box_fraction`` in [0, 1]: ``round(box_fraction * len(ids))`` images drawn with ``seed``. The draw is
      a prefix of one seeded permutation of the sorted ids, so with the same seed a smaller fraction's box
      images are a subset of a larger fraction's (the points of a cost/quality curve are nested).
    - ``box_list``: a text file of ids (see :func:`read_id_list`).
    - ``box_ids``: the ids themselves.

    Raises:
        ValueError: none or several of the three given, or a fraction outside [0, 1].
        DataError: a listed id is not in ``ids`` (names the list file when there is one).
    """
    check_box_choice(box_fraction, box_list, box_ids)
    if box_fraction is not None:
        count = int(round(float(box_fraction) * len(ids)))
        order = np.random.default_rng(int(seed)).permutation(len(ids))
        chosen = {sorted(ids)[k] for k in order[:count]}
        return [i for i in ids if i in chosen]
    listed = read_id_list(box_list) if box_list is not None else [str(i) for i in box_ids]  # type: ignore[union-attr]
    known = set(ids)
    unknown = [i for i in listed if i not in known]
    if unknown:
        raise DataError(box_list, f"{len(unknown)} listed box image(s) are not in the training split, e.g. {unknown[0]!r}")
    wanted = set(listed)
    return [i for i in ids if i in wanted]


class HybridDataModule(PseudoMaskDataModule):
    """Training images with boxes get box-derived pseudo masks, the others image-label pseudo masks.

    A training sample of a box image carries its boxes and ``box_mask_dir/<id>.png``; one of an image-label
    image carries no boxes (it has none: its annotator only named the classes) and ``image_mask_dir/<id>.png``.
    Both carry the image-level labels; ``gt_mask`` holds the ground truth when the split has it (for scoring,
    never for the loss). Validation uses the ground truth.

    Args:
        box_mask_dir: pseudo masks of the box images (e.g. GrabCut or BoxSup masks).
        image_mask_dir: pseudo masks of the image-label images (e.g. the random walk's labels).
        box_fraction, box_list, box_ids, split_seed: which training images carry boxes; exactly one of the
            first three (see :func:`select_box_images`; ``split_seed`` seeds the fraction's draw).
        **kwargs: see :class:`WSSSDataModule`.
    """

    def __init__(self, box_mask_dir: str, image_mask_dir: str, box_fraction: Optional[float] = None,
                 box_list: Optional[str] = None, box_ids: Optional[List[str]] = None, split_seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(pseudo_mask_dir=image_mask_dir, **kwargs)
        self.box_mask_dir = Path(box_mask_dir)
        self.image_mask_dir = Path(image_mask_dir)
        self.box_fraction, self.box_list, self._box_ids_arg, self.split_seed = box_fraction, box_list, box_ids, split_seed
        check_box_choice(box_fraction, box_list, box_ids)
        self._box_ids: Optional[set] = None

    def box_ids(self) -> List[str]:
        """The training images that carry boxes, in split order."""
        ids = self.build_reader("fit").ids  # also (re)selects the box images
        return [i for i in ids if i in self._box_set()]

    def _box_set(self) -> set:
        if self._box_ids is None:
            self.build_reader("fit")
        return self._box_ids  # type: ignore[return-value]

    def is_box_image(self, image_id: str) -> bool:
        """Whether a training image is annotated with boxes."""
        return image_id in self._box_set()

    def pseudo_mask_path(self, image_id: str) -> Path:
        return (self.box_mask_dir if self.is_box_image(image_id) else self.image_mask_dir) / f"{image_id}.png"

    def check_pseudo_masks(self, reader: SegmentationDataset) -> None:
        self._box_ids = set(select_box_images(reader.ids, self.box_fraction, self.split_seed, self.box_list,
                                              self._box_ids_arg))
        super().check_pseudo_masks(reader)

    def prepare_train(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        out = super().prepare_train(sample)
        if not self.is_box_image(sample["id"]):
            out.update(boxes=sample["boxes"][:0], box_labels=sample["box_labels"][:0], difficult=sample["difficult"][:0])
        return out
