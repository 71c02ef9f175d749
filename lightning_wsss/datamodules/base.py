"""The shared base of the per-supervision DataModules."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..datasets.base import SegmentationDataset
from ..datasets.classes import VOC_CLASSES, read_class_names
from ..datasets.coco import COCOSegmentation
from ..datasets.voc import VOCSegmentation
from ..errors import DataError
from ..threads import worker_init
from .collate import collate_samples
from .sampling import EpochShuffleSampler
from .transforms import IMAGENET_MEAN, IMAGENET_STD, apply_transform, eval_transform, train_transform


def check_sizes(scale_range: Sequence[float] = (1.0, 1.0), num_workers: int = 0, grid_shuffle: int = 0,
                **positive: Any) -> None:
    """Check a DataModule's sizes: each of ``positive`` (batch and crop sizes...) an integer >= 1, ``num_workers``
    and ``grid_shuffle`` integers >= 0, ``scale_range`` two positive numbers, low first.

    Raises:
        DataError: naming the setting and its value (a config or command-line mistake, not a file's).
    """
    for name, value in positive.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise DataError(None, f"{name} must be a positive integer, got {value!r}")
    for name, value in (("num_workers", num_workers), ("grid_shuffle", grid_shuffle)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise DataError(None, f"{name} must be an integer >= 0, got {value!r}")
    scales = tuple(scale_range)
    if len(scales) != 2 or not all(isinstance(v, (int, float)) and v > 0 for v in scales) or scales[0] > scales[1]:
        raise DataError(None, f"scale_range must be two positive numbers (low, high), got {list(scales)}")


class TransformedDataset(Dataset):
    """A reader plus a transform plus a per-supervision view of each sample (``prepare`` picks the keys).

    With ``reseed=True`` (training) the albumentations pipeline is reseeded for every sample from torch's RNG,
    so augmentation is reproducible under ``seed_everything`` in the main process and in DataLoader workers
    (torch seeds each worker differently and deterministically; albumentations alone would repeat one
    sequence in every worker, or draw from OS entropy).
    """

    def __init__(self, reader: SegmentationDataset, transform, prepare, reseed: bool = False) -> None:
        self.reader = reader
        self.transform = transform
        self.prepare = prepare
        self.reseed = reseed

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, item) -> Dict[str, Any]:
        """``item`` is an index, or ``(index, augmentation_seed)`` from :class:`EpochShuffleSampler`.

        With ``reseed``, ``prepare`` also runs under torch's RNG seeded with the sample's seed (restored after), so
        randomness drawn there (CDA's pasting) depends on the sample and epoch only, not on when the DataLoader
        happens to fetch the sample (the first batches of an epoch are fetched before its first training step).
        """
        index, seed = item if isinstance(item, tuple) else (item, None)
        if not self.reseed:
            return apply_transform(self.transform, self.prepare(self.reader[index]))
        seed = int(torch.randint(0, 2**31 - 1, (1,))) if seed is None else int(seed)
        self.transform.set_random_seed(seed)
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only, as fork_rng forks only it: torch.manual_seed also queues a seed for every
            # accelerator, formatting the call stack each time (about 1 ms a sample inside Lightning's loops)
            torch.default_generator.manual_seed(seed)
            sample = self.prepare(self.reader[index])
        return apply_transform(self.transform, sample)


class WSSSDataModule(L.LightningDataModule):
    """Base DataModule: builds readers for each split, augments, batches.

    Subclasses choose what a training sample carries by overriding :meth:`prepare_train` (and optionally
    :meth:`prepare_eval`), e.g. image-level labels only, boxes, or a mask.

    Args:
        root: data set root (VOC layout), or the image folder for COCO.
        dataset: ``"voc"`` (VOC layout: VOC, SBD train_aug, the synthetic set, the horse set) or ``"coco"``.
        train_split, val_split, test_split, predict_split: split names (VOC) or annotation JSON paths (COCO).
            ``predict_split`` defaults to the training split (pseudo labels are predicted on training images).
        class_names: override the class names (background first).
        batch_size: training batch size per process (under DDP each process loads this many).
        eval_batch_size: batch size at validation, test and prediction time (images keep their sizes and are
            padded within a batch, so 1 is exact for data sets of mixed sizes).
        num_workers: DataLoader workers.
        crop_size: training crop side in pixels.
        scale_range: random rescale range in training.
        hflip: random horizontal flip in training.
        color_jitter: colour jitter strength in training (0 = off).
        grid_shuffle: in training, cut each crop into ``grid_shuffle`` x ``grid_shuffle`` cells and shuffle them
            (0 or 1 = off): image labels stay true while the scene's layout stops predicting them. Masks follow the
            cells; a box cut by a cell border does not, so it is meant for image labels.
        size_divisor: pad batched images to a multiple of this (e.g. the network's output stride).
        train_ids, val_ids: optional subsets of ids (lists of strings).
    """

    requires_train_masks: bool = False

    def __init__(
        self,
        root: str,
        dataset: str = "voc",
        train_split: str = "train",
        val_split: Optional[str] = "val",
        test_split: Optional[str] = None,
        predict_split: Optional[str] = None,
        class_names: Optional[List[str]] = None,
        batch_size: int = 8,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        crop_size: int = 320,
        scale_range: Tuple[float, float] = (0.7, 1.3),
        hflip: bool = True,
        color_jitter: float = 0.0,
        grid_shuffle: int = 0,
        size_divisor: int = 1,
        mean: Tuple[float, float, float] = IMAGENET_MEAN,
        std: Tuple[float, float, float] = IMAGENET_STD,
        train_ids: Optional[List[str]] = None,
        val_ids: Optional[List[str]] = None,
    ) -> None:
        super().__init__()
        if dataset not in ("voc", "coco"):
            raise ValueError(f"dataset must be 'voc' or 'coco', got {dataset!r}")
        check_sizes(batch_size=batch_size, eval_batch_size=eval_batch_size, crop_size=crop_size,
                    size_divisor=size_divisor, num_workers=num_workers, grid_shuffle=grid_shuffle,
                    scale_range=scale_range)
        self.root = root
        self.dataset = dataset
        self.splits = {"fit": train_split, "validate": val_split, "test": test_split, "predict": predict_split or train_split}
        self._class_names = list(class_names) if class_names is not None else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.crop_size = crop_size
        self.scale_range = tuple(scale_range)
        self.hflip = hflip
        self.color_jitter = color_jitter
        self.grid_shuffle = int(grid_shuffle)
        self.size_divisor = size_divisor
        self.mean, self.std = tuple(mean), tuple(std)
        self.ids = {"fit": train_ids, "validate": val_ids}
        self.datasets: Dict[str, TransformedDataset] = {}
        self.shuffle_seed: Optional[int] = None
        self.save_hyperparameters()

    # ------------------------------------------------------------------ classes
    @property
    def class_names(self) -> List[str]:
        """Class names, background first (from the override, ``class_names.txt``, the COCO JSON, or VOC's 21)."""
        if self._class_names is None:
            if self.dataset == "coco":
                self._class_names = self.build_reader("fit").class_names
            elif (Path(self.root) / "class_names.txt").is_file():
                self._class_names = read_class_names(Path(self.root) / "class_names.txt")
            else:
                self._class_names = list(VOC_CLASSES)
        return self._class_names

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_names)

    def with_ids(self, stage: str, ids: Sequence[str]) -> "WSSSDataModule":
        """A copy that reads only ``ids`` of a stage's split (``validate``, ``predict``...), its datasets built
        afresh: a process of a multi-process pipeline predicts or validates its own share of the images."""
        other = copy.copy(self)
        other.ids = {**self.ids, stage: list(ids)}
        other.datasets = {}
        return other

    # ------------------------------------------------------------------ hooks
    def build_reader(self, stage: str, require_masks: bool = False) -> SegmentationDataset:
        """Build the raw reader of a stage's split (``fit``, ``validate``, ``test`` or ``predict``)."""
        split = self.splits[stage]
        if split is None:
            raise DataError(None, f"no split configured for stage {stage!r}")
        ids = self.ids.get(stage)
        if self.dataset == "coco":
            return COCOSegmentation(self.root, split, ids=ids)
        return VOCSegmentation(self.root, split, class_names=self._class_names, require_masks=require_masks, ids=ids)

    def prepare_train(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        """What a training sample carries; the base drops the mask (weak supervision must not see it)."""
        return {**sample, "mask": None}

    def prepare_eval(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        """What a validation/test/prediction sample carries: everything, so predictions can be scored."""
        return sample

    def train_transform(self):
        """The albumentations pipeline for training."""
        return train_transform(self.crop_size, self.scale_range, self.hflip, self.color_jitter, self.mean, self.std,
                               self.grid_shuffle)

    def eval_transform(self):
        """The albumentations pipeline for validation, test and prediction (deterministic)."""
        return eval_transform(self.mean, self.std)

    # ------------------------------------------------------------------ Lightning
    def setup(self, stage: Optional[str] = None) -> None:
        wanted = {"fit": ["fit", "validate"], "validate": ["validate"], "test": ["test"], "predict": ["predict"]}
        for key in wanted.get(stage, ["fit", "validate", "test", "predict"]) if stage else ["fit", "validate", "test", "predict"]:
            if key in self.datasets or self.splits.get(key) is None:
                continue
            if key == "fit":
                reader = self.build_reader("fit", require_masks=self.requires_train_masks)
                self.datasets[key] = TransformedDataset(reader, self.train_transform(), self.prepare_train, reseed=True)
                # drawn once, before any on_fit_start hook: a reloaded training DataLoader (tasks that change their
                # masks between epochs) keeps it, so its order is the same in a resumed run and an uninterrupted one
                self.shuffle_seed = int(torch.randint(0, 2**31 - 1, (1,)))
            else:
                reader = self.build_reader(key, require_masks=False)
                self.datasets[key] = TransformedDataset(reader, self.eval_transform(), self.prepare_eval)
            if len(reader) == 0:
                raise DataError(None, f"split {self.splits[key]!r} is empty")

    def _loader(self, key: str, shuffle: bool, batch_size: int, drop_last: bool = False) -> DataLoader:
        if key not in self.datasets:
            self.setup({"fit": "fit", "validate": "validate", "test": "test", "predict": "predict"}[key])
        # shuffling from (seed, epoch) only: a resumed run sees the same order and augmentation as an uninterrupted one
        sampler = EpochShuffleSampler(len(self.datasets[key]), self.shuffle_seed) if shuffle else None
        return DataLoader(
            self.datasets[key],
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=functools.partial(collate_samples, size_divisor=self.size_divisor),
            drop_last=drop_last,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=worker_init if self.num_workers > 0 else None,  # one OpenCV / torch thread per worker
        )

    def train_dataloader(self) -> DataLoader:
        drop_last = len(self.datasets.get("fit", [])) > self.batch_size if "fit" in self.datasets else False
        return self._loader("fit", shuffle=True, batch_size=self.batch_size, drop_last=drop_last)

    def val_dataloader(self):
        if self.splits.get("validate") is None:  # no validation split: Lightning skips validation
            return []
        return self._loader("validate", shuffle=False, batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False, batch_size=self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False, batch_size=self.eval_batch_size)

    # ------------------------------------------------------------------ plotting
    def plot(self, sample: Dict[str, Any], ax=None, title: Optional[str] = None):
        """Draw a transformed sample: image, mask overlay in the VOC palette, boxes and labels.

        Returns:
            the matplotlib Figure.
        """
        from .plotting import plot_sample

        return plot_sample(sample, self.class_names, self.mean, self.std, ax=ax, title=title)
