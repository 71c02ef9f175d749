"""Training in rounds of pseudo masks inside one ``fit``: the machinery BoxSup and self-training share.

A task that re-estimates its training masks every few epochs writes each round to ``out_dir/round_{k}/<id>.png``
and its pseudo-label mIoU to ``out_dir/rounds.json``. The masks reach the batches through
:class:`PseudoMaskInjector`, which wraps the ``prepare`` function of the datamodule's training dataset and adds
the current round's mask to each raw sample *before* augmentation (so it follows every crop and flip). Because
persistent DataLoader workers hold a copy of the dataset, the task needs a fresh training loader every epoch
(``reload_dataloaders_every_n_epochs = 1``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from ..io import read_label_png, write_json_atomic

__all__ = ["PseudoMaskInjector", "RoundsMixin", "round_dir", "resume_epoch"]


def round_dir(out_dir, round_index: int) -> Path:
    """The folder of round ``round_index``'s masks: ``out_dir/round_{k}``."""
    return Path(out_dir) / f"round_{round_index}"


def resume_epoch(checkpoint: Dict[str, Any]) -> Optional[int]:
    """The first epoch a fit resumed from ``checkpoint`` runs (Lightning's processed-epoch count)."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        epoch = checkpoint.get("epoch")
        return None if epoch is None else int(epoch) + 1


class PseudoMaskInjector:
    """A dataset ``prepare`` function that adds the pseudo mask ``mask_dir/<id>.png`` to a raw sample.

    Wraps the datamodule's own ``prepare`` (which may drop the ground-truth mask); picklable, so it works in
    DataLoader worker processes. The mask must have the image's size.
    """

    def __init__(self, prepare: Callable[[Dict[str, Any]], Dict[str, Any]], mask_dir) -> None:
        self.prepare = prepare
        self.mask_dir = Path(mask_dir)

    def __call__(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        out = dict(self.prepare(sample))
        path = self.mask_dir / f"{sample['id']}.png"
        mask = read_label_png(path)
        if mask.shape != sample["image"].shape[:2]:
            raise DataError(path, f"pseudo mask size {mask.shape[1]}x{mask.shape[0]} differs from its image's "
                                  f"{sample['image'].shape[1]}x{sample['image'].shape[0]}")
        out["mask"] = mask
        return out


class RoundsMixin:
    """Round bookkeeping for a :class:`~lightning_wsss.tasks.segmenter.DeepLabSegmenter` subclass.

    The subclass sets ``self.out_dir`` and calls :meth:`init_rounds` in ``__init__``; it decides when rounds change
    and how masks are made. Provided: the ``rounds.json`` record, the training reader, the mask injector, the
    DataLoader-reload requirement, this rank's share of the images, whole-image network probabilities, and the
    resume epoch (from ``on_load_checkpoint``).
    """

    out_dir: Path
    round_log_prefix: str = "rounds"

    def init_rounds(self) -> None:
        self.round_index: Optional[int] = None
        self.round_miou: Dict[str, Optional[float]] = {}
        self._resume_from: Optional[int] = None
        self._injector: Optional[PseudoMaskInjector] = None

    # ------------------------------------------------------------------ rounds.json
    @property
    def rounds_file(self) -> Path:
        return self.out_dir / "rounds.json"

    def read_rounds(self) -> Dict[str, Optional[float]]:
        """``rounds.json`` as a dict (empty when absent)."""
        return read_json(self.rounds_file)

    def record_round(self, key: str, miou: Optional[float], write: bool = True,
                     extra_metrics: Optional[Dict[str, float]] = None) -> None:
        """Keep a round's mIoU; rank 0 writes it to ``rounds.json`` (when ``write``, sorted by round) and logs
        ``<round_log_prefix>/round_miou`` and ``.../round``."""
        self.round_miou[key] = miou
        if not self.trainer.is_global_zero:
            return
        if write:
            rounds = self.read_rounds()
            rounds[key] = miou
            write_json_atomic(self.rounds_file, dict(sorted(rounds.items(), key=lambda kv: int(kv[0].split("_")[1]))))
        metrics = {f"{self.round_log_prefix}/round_miou": float("nan") if miou is None else miou,
                   f"{self.round_log_prefix}/round": float(key.split("_")[1]), **(extra_metrics or {})}
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)

    # ------------------------------------------------------------------ pipeline hooks
    @classmethod
    def stage_init_args(cls, stage_dir) -> Dict[str, Any]:
        """The arguments a pipeline stage adds to the configured ones: the rounds live in ``stage_dir/rounds``."""
        return {"out_dir": str(Path(stage_dir) / "rounds")}

    def summary_metrics(self) -> Dict[str, float]:
        """Each round's pseudo-label mIoU for the pipeline summary: ``<round_log_prefix>_round_<k>`` (NaN
        without ground truth), from ``rounds.json``."""
        return {f"{self.round_log_prefix}_{key}": float("nan") if value is None else float(value)
                for key, value in self.read_rounds().items()}

    # ------------------------------------------------------------------ data
    def training_reader(self):
        """The raw reader of the datamodule's training split (ValueError without one)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        datasets = getattr(datamodule, "datasets", None)
        if not datasets or "fit" not in datasets:
            raise ValueError(f"{type(self).__name__} needs a WSSSDataModule with a training split")
        return datasets["fit"].reader

    def rank_share(self, reader) -> List[int]:
        """Indices of the training images this rank handles: ``rank::world_size``."""
        return list(range(self.global_rank, len(reader), max(1, self.trainer.world_size)))

    def count_missing(self, folder: Path, reader, share: List[int]) -> int:
        """Masks of ``folder`` still missing, summed over ranks."""
        missing = sum(not (folder / f"{reader.ids[i]}.png").is_file() for i in share)
        return int(self.trainer.strategy.reduce(torch.tensor(float(missing), device=self.device), reduce_op="sum"))

    def round_files(self, round_index: int):
        """Where round ``round_index`` stands on disk for this rank.

        Returns:
            ``(reader, folder, key, share, missing_all)``: the training reader, ``round_dir``, ``"round_k"``,
            this rank's image indices and the number of masks still missing over all ranks.
        """
        reader = self.training_reader()
        folder = round_dir(self.out_dir, round_index)
        share = self.rank_share(reader)
        return reader, folder, f"round_{round_index}", share, self.count_missing(folder, reader, share)

    def reduced_miou(self, metric, scored: int) -> Optional[float]:
        """``metric.compute()`` (synced over ranks) when any rank scored an image, else None."""
        total = int(self.trainer.strategy.reduce(torch.tensor(float(scored), device=self.device), reduce_op="sum"))
        return float(metric.compute()) if total > 0 else None

    def require_fresh_dataloaders(self) -> None:
        """Set ``reload_dataloaders_every_n_epochs`` to 1 (from 0); any other value is refused."""
        reload_every = self.trainer.reload_dataloaders_every_n_epochs
        if reload_every == 0:
            self.trainer.reload_dataloaders_every_n_epochs = 1
        elif reload_every != 1:
            raise ValueError(f"{type(self).__name__} changes the training masks between epochs and needs a fresh "
                             "train DataLoader every epoch: leave reload_dataloaders_every_n_epochs at 0 or 1, got "
                             f"{reload_every}")

    def install_injector(self, folder: Path) -> None:
        """Make the training dataset read its masks from ``folder``."""
        dataset = self.trainer.datamodule.datasets["fit"]
        if isinstance(dataset.prepare, PseudoMaskInjector):
            dataset.prepare.mask_dir = Path(folder)
            self._injector = dataset.prepare
        else:
            self._injector = PseudoMaskInjector(dataset.prepare, folder)
            dataset.prepare = self._injector

    def remove_injector(self) -> None:
        """Give the training dataset its own ``prepare`` back."""
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = (getattr(datamodule, "datasets", {}) or {}).get("fit")
        if dataset is not None and isinstance(dataset.prepare, PseudoMaskInjector):
            dataset.prepare = dataset.prepare.prepare
        self._injector = None

    def start_epoch(self) -> int:
        """The epoch this fit starts at (the resumed one after ``on_load_checkpoint``); consumed once."""
        start = self._resume_from if self._resume_from is not None else self.trainer.current_epoch
        self._resume_from = None
        return start

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self._resume_from = resume_epoch(checkpoint)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def whole_image_probs(self, image: np.ndarray) -> Tensor:
        """Softmax float [C, H, W] (``predict_logits``, eval mode) of one raw uint8 image [H, W, 3]."""
        from ..datamodules.transforms import normalize

        tensor = torch.from_numpy(normalize(image, *self.normalization()))[None].to(self.device)
        was_training = self.training
        self.eval()
        try:
            return self.predict_logits(tensor).float().softmax(dim=1)[0]
        finally:
            self.train(was_training)


def read_json(path: Path) -> Dict[str, Any]:
    """A JSON file as a dict (empty when absent; DataError naming the file when unreadable)."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(path, f"unreadable JSON ({exc})") from exc
