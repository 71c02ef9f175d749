"""Self-training of the segmenter on its own confident predictions: class-balanced thresholds (CBST) and the
label-entropy regulariser of confidence-regularised self-training (CRST: Zou et al., "Confidence Regularized
Self-Training", ICCV 2019; CBST: Zou et al., ECCV 2018).

Design
------
Training runs in rounds of ``round_epochs`` epochs. Round 0 trains on the datamodule's own masks (e.g.
``PseudoMaskDataModule``: the CAM / random-walk pseudo labels). At the end of epoch ``k * round_epochs - 1``
(``k = 1 .. rounds``, when more epochs follow) the training split is relabelled with the current network
(:func:`relabel_split`):

1. pass 1: every training image's softmax (``predict_logits``: ``test_scales`` / ``test_flip``), restricted to
   the image's labelled classes plus background (``use_image_labels``, renormalised), fills a per-class histogram
   of the max-probability of the pixels predicted as that class (``bins`` bins, so the split never sits in
   memory; under DDP the histograms are summed over ranks);
2. each class ``c`` gets the threshold ``t_c`` that keeps the ``portion`` most confident fraction of its
   pixels (the ``(1 - portion)``-quantile, CBST's ``p``; rounded down to a bin edge, so at least that fraction
   is kept); ``portion`` is ``portion + (k - 1) * portion_step``, capped at ``max_portion``;
3. pass 2: pixels whose max-probability reaches the threshold of their argmax class take that class, the
   others 255; the maps are written to ``out_dir/round_{k}/<id>.png`` (original image size) and scored
   against the ground truth where the reader has it.

Round ``k``'s masks reach the batches through :class:`~lightning_wsss.tasks.boxsup.PseudoMaskInjector`
(before augmentation), with a fresh training DataLoader every epoch (``reload_dataloaders_every_n_epochs``
is set to 1). ``out_dir/rounds.json`` records each round's pseudo-label mIoU (``{"round_0": 0.52,
"round_1": 0.55}``, null without ground truth; round 0 is the datamodule's ``pseudo_mask_dir`` when it has one),
logged as ``selftrain/round_miou``; ``out_dir/thresholds.json`` the portion and per-class thresholds. A complete
round recorded in both files is reused on restart. Train for ``(rounds + 1) * round_epochs`` epochs: the last
round's folder holds the final pseudo labels.

Loss: pixel cross-entropy on the current round's labels plus ``mrkld_weight`` times CRST's label regulariser
(:func:`label_regulariser`: ``KL(uniform || p)`` averaged over the labelled pixels, which equals
``-mean_c log p_c - log C``: CRST's ``-mean_c log p_c`` up to a constant), which keeps the network from
growing over-confident on its own labels.

Simplifications: pseudo labels are the argmax with a per-class confidence threshold (CBST's class-normalised
argmax ``argmax_c p_c / t_c`` is not used), no CRF on the relabelled maps, and the network keeps training
across rounds (no re-initialisation).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from ..datasets.classes import IGNORE_INDEX
from ..io import read_label_png, write_json_atomic, write_label_png
from ..metrics import SegmentationIoU
from .rounds import RoundsMixin, read_json, round_dir
from .segmenter import DeepLabSegmenter

__all__ = [
    "SelfTrainingSegmenter",
    "ConfidenceHistogram",
    "class_thresholds",
    "confident_labels",
    "restrict_to_image_labels",
    "label_regulariser",
    "portion_for_round",
    "relabel_split",
]


# ----------------------------------------------------------------------------------------------- functional core
def class_thresholds(confidence: Tensor, predicted: Tensor, num_classes: int, portion: float) -> Tensor:
    """Exact per-class confidence thresholds that keep the ``portion`` most confident pixels of each class.

    For class ``c`` with ``n_c`` pixels predicted as ``c``, sorted by decreasing confidence ``v_1 >= v_2 >= ...``:
    ``t_c = v_k`` with ``k = max(1, ceil(n_c * portion))`` (``portion = 0.5`` gives the median for odd ``n_c``).

    Args:
        confidence: float [...] max-probability per pixel.
        predicted: long [...] argmax class per pixel (same shape).
        num_classes: C.
        portion: in (0, 1].

    Returns:
        float [C]; 1.0 for classes no pixel is predicted as.
    """
    _check_portion(portion)
    confidence, predicted = confidence.flatten().float(), predicted.flatten()
    out = torch.ones(num_classes, dtype=torch.float32, device=confidence.device)
    for c in range(num_classes):
        values = confidence[predicted == c]
        if values.numel():
            k = max(1, math.ceil(values.numel() * portion))
            out[c] = values.sort(descending=True).values[k - 1]
    return out


def _check_portion(portion: float) -> None:
    if not 0.0 < portion <= 1.0:
        raise ValueError(f"portion must be in (0, 1], got {portion}")


class ConfidenceHistogram:
    """Per-class histograms of max-probabilities, for thresholds over a whole split in bounded memory.

    Args:
        num_classes: C.
        bins: histogram bins over [0, 1] (the thresholds are bin edges: resolution ``1 / bins``).
    """

    def __init__(self, num_classes: int, bins: int = 1000, device: Optional[torch.device] = None) -> None:
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.num_classes = num_classes
        self.bins = bins
        self.counts = torch.zeros(num_classes, bins, dtype=torch.float64, device=device)

    def update(self, confidence: Tensor, predicted: Tensor) -> None:
        """Add pixels: ``confidence`` float [...] in [0, 1], ``predicted`` long [...] in 0..C-1."""
        index = (confidence.flatten().float() * self.bins).floor().long().clamp(0, self.bins - 1)
        flat = predicted.flatten().long().to(index.device) * self.bins + index
        counts = torch.bincount(flat, minlength=self.num_classes * self.bins)
        self.counts += counts.view(self.num_classes, self.bins).to(self.counts)

    def thresholds(self, portion: float) -> Tensor:
        """Per-class thresholds float [C]: the highest bin edge at or above which at least ``ceil(n_c * portion)``
        of class ``c``'s pixels lie (1.0 for classes without pixels). Never above the exact
        :func:`class_thresholds`, and less than ``1 / bins`` below it."""
        _check_portion(portion)
        totals = self.counts.sum(dim=1)
        from_top = self.counts.flip(1).cumsum(1).flip(1)  # [C, bins]: pixels in bins >= b
        need = torch.clamp(torch.ceil(totals * portion), min=1.0)
        edge = (from_top >= need[:, None]).sum(dim=1) - 1
        out = edge.clamp(min=0).to(torch.float32) / self.bins
        return torch.where(totals > 0, out, torch.ones_like(out))


def restrict_to_image_labels(probs: Tensor, labels: Tensor) -> Tensor:
    """Zero the foreground classes absent from the image-level labels and renormalise.

    Args:
        probs: float [C, H, W] (or [B, C, H, W] with ``labels`` [B, C-1]).
        labels: multi-hot float [C-1] (or [B, C-1]).

    Returns:
        float with the shape of ``probs``; background always kept.
    """
    keep = torch.cat([torch.ones_like(labels[..., :1]), (labels > 0.5).to(labels.dtype)], dim=-1).to(probs)
    restricted = probs * keep[..., None, None]
    return restricted / restricted.sum(dim=-3, keepdim=True).clamp_min(1e-12)


def confident_labels(probs: Tensor, thresholds: Tensor) -> Tensor:
    """Argmax labels with low-confidence pixels ignored.

    Args:
        probs: float [C, H, W] or [B, C, H, W].
        thresholds: float [C] per-class thresholds.

    Returns:
        long [H, W] / [B, H, W]: the argmax class where its probability is >= that class's threshold, else 255.
    """
    confidence, predicted = probs.max(dim=-3)
    keep = confidence >= thresholds.to(probs)[predicted]
    return torch.where(keep, predicted, torch.full_like(predicted, IGNORE_INDEX))


def label_regulariser(logits: Tensor, mask: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """CRST's label regulariser: ``KL(uniform || p) = -log C - (1/C) sum_c log p_c``, averaged over labelled pixels.

    Args:
        logits: float [B, C, H, W].
        mask: long [B, H, W] (``ignore_index`` pixels are left out).

    Returns:
        scalar (0 when no pixel is labelled).
    """
    valid = mask != ignore_index
    if not valid.any():
        return logits.sum() * 0.0
    log_probs = logits.float().log_softmax(dim=1)
    per_pixel = -log_probs.mean(dim=1) - math.log(logits.shape[1])
    return per_pixel[valid].mean()


def portion_for_round(round_index: int, portion: float, step: float, max_portion: float) -> float:
    """The kept fraction of relabelling round ``round_index >= 1``: ``min(portion + (k - 1) * step, max_portion)``."""
    return float(min(portion + (round_index - 1) * step, max_portion))


def relabel_split(
    predict_probs: Callable[[Dict[str, Any]], Tensor],
    samples: Callable[[], Iterable[Dict[str, Any]]],
    out_dir: Path,
    num_classes: int,
    portion: float,
    bins: int = 1000,
    use_image_labels: bool = True,
    reduce: Optional[Callable[[Tensor], Tensor]] = None,
    device: Optional[torch.device] = None,
) -> Tuple[Tensor, SegmentationIoU, int]:
    """Relabel a split with a network's confident predictions (two passes, see the module docstring).

    Args:
        predict_probs: raw sample -> float [C, H, W] probabilities at the image's size.
        samples: a callable returning an iterable of raw samples (called twice: one pass each).
        out_dir: folder written with ``<id>.png`` (uint8, 255 = below threshold).
        num_classes: C.
        portion: fraction of each class's pixels kept.
        bins: histogram resolution of the thresholds.
        use_image_labels: keep only the image's labelled classes (and background).
        reduce: sums the histogram over processes (DDP), identity when None.

    Returns:
        ``(thresholds float [C], the IoU metric updated with every sample that has a ground-truth mask, the
        number of such samples)``.
    """
    def probs_of(sample: Dict[str, Any]) -> Tensor:
        probs = predict_probs(sample)
        if use_image_labels:
            probs = restrict_to_image_labels(probs, torch.as_tensor(sample["labels"], device=probs.device))
        return probs

    histogram = ConfidenceHistogram(num_classes, bins, device=device)
    for sample in samples():
        confidence, predicted = probs_of(sample).max(dim=0)
        histogram.update(confidence, predicted)
    if reduce is not None:
        histogram.counts = reduce(histogram.counts)
    thresholds = histogram.thresholds(portion)
    metric = SegmentationIoU(num_classes).to(device or "cpu")
    scored = 0
    for sample in samples():
        labels = confident_labels(probs_of(sample), thresholds)
        write_label_png(Path(out_dir) / f"{sample['id']}.png", labels.cpu().numpy().astype(np.uint8))
        if sample.get("mask") is not None:
            target = torch.as_tensor(np.asarray(sample["mask"], dtype=np.int64), device=metric.device)
            metric.update(labels.to(metric.device), target)
            scored += 1
    return thresholds, metric, scored


# ----------------------------------------------------------------------------------------------- the task
class SelfTrainingSegmenter(RoundsMixin, DeepLabSegmenter):
    """DeepLab self-trained on its own class-balanced confident predictions, with CRST's label regulariser.

    See the module docstring for the rounds, the files and the loss.

    Args:
        num_classes: classes including background.
        out_dir: folder of ``round_{k}/<id>.png``, ``rounds.json`` and ``thresholds.json``.
        rounds: relabelling rounds (after round 0 on the datamodule's masks).
        round_epochs: epochs per round.
        portion, portion_step, max_portion: kept fraction per class in round 1, its increase per round, its cap.
        mrkld_weight: weight of the label regulariser (0 = plain self-training, CBST).
        use_image_labels: restrict relabelling to each image's labelled classes and background.
        bins: histogram bins of the thresholds.
        **kwargs: :class:`DeepLabSegmenter` arguments.
    """

    def __init__(
        self,
        num_classes: int,
        out_dir: str,
        rounds: int = 2,
        round_epochs: int = 1,
        portion: float = 0.5,
        portion_step: float = 0.1,
        max_portion: float = 0.8,
        mrkld_weight: float = 0.1,
        use_image_labels: bool = True,
        bins: int = 1000,
        **kwargs: Any,
    ) -> None:
        if rounds < 0 or round_epochs < 1:
            raise ValueError(f"need rounds >= 0 and round_epochs >= 1, got {rounds} and {round_epochs}")
        _check_portion(portion)
        _check_portion(max_portion)
        if portion_step < 0 or mrkld_weight < 0:
            raise ValueError("portion_step and mrkld_weight must be >= 0")
        super().__init__(num_classes, **kwargs)
        self.out_dir = Path(out_dir)
        self.init_rounds()

    round_log_prefix = "selftrain"

    # ------------------------------------------------------------------ files
    @property
    def thresholds_file(self) -> Path:
        return self.out_dir / "thresholds.json"

    def _record(self, key: str, miou: Optional[float], extra: Optional[Dict[str, Any]] = None) -> None:
        """Record a round in ``rounds.json`` (and its portion and thresholds in ``thresholds.json``)."""
        if self.trainer.is_global_zero and extra is not None:
            info = read_json(self.thresholds_file)
            info[key] = extra
            write_json_atomic(self.thresholds_file, info)
        portion = {"selftrain/portion": float(extra["portion"])} if extra is not None and "portion" in extra else {}
        self.record_round(key, miou, extra_metrics=portion)
        rank_zero_info(f"Self-training {key}: pseudo-label mIoU vs ground truth "
                       f"{'n/a' if miou is None else f'{100 * miou:.2f}'}")

    def sample_probs(self, sample: Dict[str, Any]) -> Tensor:
        """Softmax float [C, H, W] (``predict_logits``, eval mode) of a raw sample's uint8 image [H, W, 3]."""
        return self.whole_image_probs(sample["image"])

    # ------------------------------------------------------------------ rounds
    def portion_for(self, round_index: int) -> float:
        hp = self.hparams
        return portion_for_round(round_index, hp.portion, hp.portion_step, hp.max_portion)

    def score_initial(self) -> None:
        """Record ``round_0``: the datamodule's ``pseudo_mask_dir`` masks against the ground truth (once)."""
        recorded = self.read_rounds()
        if "round_0" in recorded:
            self.round_miou["round_0"] = recorded["round_0"]
            return
        folder = getattr(self.trainer.datamodule, "pseudo_mask_dir", None)
        if folder is None:
            return
        reader = self.training_reader()
        metric = SegmentationIoU(self.num_classes).to(self.device)
        scored = 0
        for index in self.rank_share(reader):
            sample = reader[index]
            path = Path(folder) / f"{sample['id']}.png"
            if sample["mask"] is not None and path.is_file():
                metric.update(torch.from_numpy(read_label_png(path).astype(np.int64)).to(self.device),
                              torch.from_numpy(sample["mask"].astype(np.int64)).to(self.device))
                scored += 1
        self._record("round_0", self.reduced_miou(metric, scored))

    def build_round(self, round_index: int) -> None:
        """Relabel the training split into ``round_{k}`` (or reuse it when complete and recorded)."""
        reader, folder, key, share, missing_all = self.round_files(round_index)
        strategy = self.trainer.strategy
        recorded = self.read_rounds()
        if missing_all == 0 and key in recorded and key in read_json(self.thresholds_file):
            self.round_miou[key] = recorded[key]
            rank_zero_info(f"Self-training {key}: reusing {folder}")
            return
        portion = self.portion_for(round_index)
        thresholds, metric, scored = relabel_split(
            self.sample_probs, lambda: (reader[i] for i in share), folder, self.num_classes, portion,
            bins=int(self.hparams.bins), use_image_labels=bool(self.hparams.use_image_labels),
            reduce=lambda counts: strategy.reduce(counts, reduce_op="sum"), device=self.device,
        )
        strategy.barrier("selftrain_round")
        miou = self.reduced_miou(metric, scored)
        self._record(key, miou, {"portion": portion, "thresholds": [round(float(t), 6) for t in thresholds]})
        strategy.barrier("selftrain_round_done")

    def activate_round(self, round_index: int) -> None:
        """Train on round ``round_index`` from now on (round 0: the datamodule's own masks)."""
        if round_index > 0:
            self.build_round(round_index)
            self.install_injector(round_dir(self.out_dir, round_index))
        else:
            self.remove_injector()
        self.round_index = round_index

    def round_of_epoch(self, epoch: int) -> int:
        return min(int(self.hparams.rounds), epoch // int(self.hparams.round_epochs))

    # ------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self) -> None:
        self.training_reader()
        self.require_fresh_dataloaders()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.score_initial()
        self.activate_round(self.round_of_epoch(self.start_epoch()))

    def on_train_epoch_start(self) -> None:
        expected = self.round_of_epoch(self.trainer.current_epoch)
        if self.round_index != expected:
            self.activate_round(expected)

    def on_train_epoch_end(self) -> None:
        next_epoch = self.trainer.current_epoch + 1
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and 0 <= max_epochs <= next_epoch:
            return
        upcoming = self.round_of_epoch(next_epoch)
        if upcoming != self.round_index:
            self.activate_round(upcoming)

    def on_fit_end(self) -> None:
        self.remove_injector()

    # ------------------------------------------------------------------ loss
    def loss(self, logits: Tensor, batch: Dict[str, Any]) -> Tensor:
        """Cross-entropy on the round's labels + ``mrkld_weight * label_regulariser`` (logged as ``train/label_regulariser``)."""
        ce = super().loss(logits, batch)
        if self.hparams.mrkld_weight <= 0:
            return ce
        reg = label_regulariser(logits, batch["mask"])
        if self._trainer is not None:
            self.log("train/label_regulariser", reg, batch_size=len(batch["id"]) if "id" in batch else logits.shape[0])
        return ce + self.hparams.mrkld_weight * reg
