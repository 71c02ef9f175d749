"""BoxSup (Dai et al., "BoxSup: Exploiting Bounding Boxes to Supervise Convolutional Networks for Semantic
Segmentation", ICCV 2015) on top of :class:`~lightning_wsss.tasks.segmenter.DeepLabSegmenter`, with an optional
BBTP tightness prior (Hsu et al., NeurIPS 2019).

Design (how the pseudo masks reach the training batches)
---------------------------------------------------------
Training alternates between rounds of ``round_epochs`` epochs; round ``k`` trains on the pseudo-mask set
``out_dir/round_{k}/<id>.png`` (uint8, original image size). Round 0 comes from a box initializer
(:func:`lightning_wsss.boxes.make_box_mask`); round ``k > 0`` re-chooses, for every box, one candidate segment
with the BoxSup cost, using the network as it is after epoch ``k * round_epochs - 1``.

* The masks are written as PNG files (atomically) and the training data reads them: at ``on_fit_start`` the
  task wraps the ``prepare`` function of the datamodule's training dataset with :class:`PseudoMaskInjector`,
  which adds ``mask = out_dir/round_{k}/<id>.png`` to each raw sample *before* augmentation, so the mask follows
  every random scale / crop / flip with the image (``PseudoMaskDataModule`` semantics on any datamodule, e.g.
  ``BoxDataModule``, whose boxes stay in the batch). ``on_fit_end`` removes the wrapper.
* The round to train on is a function of the epoch: ``k = epoch // round_epochs``. Round ``k + 1`` is built at
  the end of epoch ``(k + 1) * round_epochs - 1`` (not after the last epoch), and the injector then points to it.
  Because persistent DataLoader workers hold a copy of the dataset, the task sets
  ``trainer.reload_dataloaders_every_n_epochs = 1`` (when it is 0; any other value is refused), so every epoch
  gets a fresh loader that reads the current round.
* Restart: a round's masks are files, a mask already on disk is read instead of recomputed, and
  ``out_dir/rounds.json`` (``{"round_0": 0.61, ...}``, null without ground truth) is written when a round is
  complete. A run resumed from a checkpoint builds (or reloads) the round of its first epoch.
* The current round's masks are also held in memory (``self.masks``: id -> uint8 [H, W]; under DDP each rank
  holds the share of images it built, ``ids[rank::world_size]``), to give the "previous mask" candidate.
* Ground-truth masks of the training split, where the reader has them, are used only to score each round
  (``boxsup/round_miou``), never for training.

With ``mask_loss_weight=0`` (BBTP mode) no pseudo masks are built: the network trains from the tightness prior
(and the pairwise term) on the batch's boxes alone.
"""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from ..boxes import (
    boundary_band,
    clip_to_box,
    grabcut_from_mask,
    keep_unless_better,
    make_box_mask,
    mask_iou,
    pairwise_smoothness_loss,
    paint_order,
    score_candidates,
    select_candidate,
    tightness_prior_loss,
)
from ..io import read_label_png, write_label_png
from ..metrics import SegmentationIoU
from .rounds import PseudoMaskInjector, RoundsMixin, round_dir
from .rounds import resume_epoch as _resume_epoch  # noqa: F401  (kept importable from here)
from .segmenter import DeepLabSegmenter

__all__ = ["BoxSupSegmenter", "BoxSupTrainer", "PseudoMaskInjector", "round_dir"]


class BoxSupSegmenter(RoundsMixin, DeepLabSegmenter):
    """BoxSup: train DeepLab on box-derived pseudo masks that are re-estimated every ``round_epochs`` epochs.

    Per box, the candidates (:meth:`candidates`) are the network's prediction of the box's class inside the
    box, its dense-CRF refinement, the previous round's segment and the initializer's segment; each is scored
    by :meth:`score_candidate` (``overlap_cost + ce_weight * network cross-entropy``,
    :mod:`lightning_wsss.boxes.scoring`) and one is picked (``selection="greedy"`` or ``"sample"`` among the
    ``top_k`` best). :meth:`update_mask` paints the chosen segments, clipped to their boxes, larger boxes first
    (the smaller box wins), background everywhere else. See the module docstring for how the masks reach the
    training batches, and for restarts.

    Hooks: :meth:`initial_mask` / :meth:`initial_masks` (round 0), :meth:`candidates` (:meth:`trusted`),
    :meth:`score_candidate`, :meth:`update_mask` / :meth:`update_masks` (rounds > 0), plus the segmenter's.

    Args:
        num_classes: classes including background.
        out_dir: folder of the rounds (``round_{k}/<id>.png``) and ``rounds.json``.
        round_epochs: epochs per round.
        initializer: round-0 initializer name (``filled``, ``inner``, ``crf``, ``grabcut``, ``intersection``).
        initializer_kwargs: its options.
        selection: ``greedy`` or ``sample``; top_k: pool size for ``sample``.
        ce_weight: weight of the network cross-entropy in the candidate cost (BoxSup: 3).
        ce_ignore_band: the cross-entropy leaves out the pixels within this many pixels of any candidate's
            boundary (:func:`~lightning_wsss.boxes.boundary_band`): a network of output stride ``s`` cannot place
            a boundary more finely than about ``s / 2`` pixels, and there its cross-entropy rewards the smoother
            of two candidates, not the better one (measured on the demo: README "Boxes"). ``"auto"``:
            ``output_stride // 2``; ``"uncertain"``: that band, only where the network's largest probability is
            below ``ce_band_confidence`` (meant to keep a sharp network's say at boundaries; measured, it does not:
            the demo's blurry network is confident and wrong inside the band, README "Boxes"); ``None`` or 0:
            every pixel of the box counts (BoxSup as published).
        ce_band_confidence: the confidence of ``"uncertain"``.
        ce_confirm_unbanded: a replacement chosen with the band must also beat the box's current mask by
            ``replace_margin`` with every pixel counted (:meth:`confirmed`): the band removes the blurry network's
            bias towards smooth masks, the full term keeps a sharp network's evidence at the boundaries, and a
            mask changes only where both views agree (the pipelines' default; README "Boxes").
        crf_candidate: include the dense-CRF refinement of the prediction as a candidate.
        network_candidate: include the network's raw argmax inside the box as a candidate. Off by default: the
            cross-entropy term scores candidates *with that same network*, so its own argmax always has the
            lowest cost and, early in training, a weak network's output replaces good masks round after round
            (measured on the synthetic set: GrabCut's 92.7 mIoU fell to 43.6 in round 1). BoxSup itself selects
            among fixed region proposals (MCG) and lets the network only *score* them.
        proposals: initializer names whose masks join every box's candidate pool, the stand-in for BoxSup's
            proposal pool (computed once per image, cached under ``out_dir/proposals/<name>/``); ``filled`` puts
            the whole box in the pool.
        proposal_kwargs: options of each proposal initializer (``{"grabcut": {"context": 0.5}}``).
        grabcut_candidate: add GrabCut re-run from the network's mask of the box
            (:func:`~lightning_wsss.boxes.grabcut_from_mask`) to the pool.
        replace_margin: a candidate replaces the box's current mask (the previous round's) only when its cost is
            lower by more than this (:func:`~lightning_wsss.boxes.keep_unless_better`); ``None``: the plain
            choice, which switches on any difference. Each round logs how many boxes changed.
        network_min_iou: the candidates made from the network's own prediction (``network``, ``crf``,
            ``grabcut_network``) join a box's pool only where their IoU with the box's current mask is at least
            this: the network term scores them with the network they copy, so their cost is low by construction
            and, unguarded, a weak network's blob replaces a good mask wholesale (measured on the CamVid tiles:
            the boxes whose round-1 mask was GrabCut re-run from the network lost 20 to 73 IoU points each,
            README "Boxes"). They may refine the current mask, not replace it by another shape. ``None``: no
            guard; round 1 of a box without a previous mask is never guarded.
        candidate_crf_params: ``CRFParams`` keyword arguments for that candidate.
        seed: seed of the ``sample`` selection (per round and image).
        mask_loss_weight: weight of the pseudo-mask cross-entropy (0: BBTP, boxes only, no rounds).
        tightness_weight: weight of the BBTP tightness-prior loss on the batch's boxes (0 = off).
        pairwise_weight: weight of the colour-weighted pairwise smoothness loss (0 = off).
        pairwise_sigma: its colour bandwidth (RGB in [0, 1]).
        **kwargs: :class:`DeepLabSegmenter` arguments (``arch``, ``encoder``, ``lr``...).
    """

    def __init__(
        self,
        num_classes: int,
        out_dir: str,
        round_epochs: int = 1,
        initializer: str = "filled",
        initializer_kwargs: Optional[Dict[str, Any]] = None,
        selection: str = "greedy",
        top_k: int = 3,
        ce_weight: float = 3.0,
        ce_ignore_band: Union[int, str, None] = "auto",
        ce_band_confidence: float = 0.9,
        ce_confirm_unbanded: bool = False,
        crf_candidate: bool = True,
        network_candidate: bool = False,
        proposals: Sequence[str] = ("grabcut", "crf"),
        candidate_crf_params: Optional[Dict[str, float]] = None,
        grabcut_candidate: bool = False,
        replace_margin: Optional[float] = None,
        network_min_iou: Optional[float] = None,
        proposal_kwargs: Optional[Dict[str, Dict[str, Any]]] = None,
        seed: int = 0,
        mask_loss_weight: float = 1.0,
        tightness_weight: float = 0.0,
        pairwise_weight: float = 0.0,
        pairwise_sigma: float = 0.1,
        **kwargs: Any,
    ) -> None:
        if round_epochs < 1:
            raise ValueError(f"round_epochs must be >= 1, got {round_epochs}")
        if selection not in ("greedy", "sample"):
            raise ValueError(f"selection must be 'greedy' or 'sample', got {selection!r}")
        if mask_loss_weight <= 0 and tightness_weight <= 0:
            raise ValueError("nothing to train: mask_loss_weight and tightness_weight are both 0")
        if replace_margin is not None and replace_margin < 0:
            raise ValueError(f"replace_margin must be >= 0 or None, got {replace_margin}")
        if network_min_iou is not None and not 0.0 <= network_min_iou <= 1.0:
            raise ValueError(f"network_min_iou must be in [0, 1] or None, got {network_min_iou}")
        if not (ce_ignore_band in (None, "auto", "uncertain")
                or (isinstance(ce_ignore_band, int) and ce_ignore_band >= 0)):
            raise ValueError(f"ce_ignore_band must be 'auto', 'uncertain', None or an int >= 0, got {ce_ignore_band!r}")
        if not 0.0 < ce_band_confidence <= 1.0:
            raise ValueError(f"ce_band_confidence must be in (0, 1], got {ce_band_confidence}")
        super().__init__(num_classes, **kwargs)
        self.out_dir = Path(out_dir)
        self.masks: Dict[str, np.ndarray] = {}
        self.replaced = {"boxes": 0, "replaced": 0}  # boxes re-estimated / switched away from their current mask
        self.init_rounds()

    round_log_prefix = "boxsup"

    # ------------------------------------------------------------------ properties
    @property
    def uses_masks(self) -> bool:
        """Whether training needs pseudo masks (False in BBTP mode)."""
        return self.hparams.mask_loss_weight > 0

    # ------------------------------------------------------------------ hooks: round 0
    def initial_mask(self, sample: Dict[str, Any]) -> np.ndarray:
        """Round-0 mask of one raw sample: ``make_box_mask(initializer, ...)``. Returns uint8 [H, W]."""
        return make_box_mask(self.hparams.initializer, sample["image"], sample["boxes"], sample["box_labels"],
                             source=sample["id"], **(self.hparams.initializer_kwargs or {}))

    def initial_masks(self) -> Dict[str, np.ndarray]:
        """Build (or reload) round 0 for this rank's share of the training images. Returns id -> uint8 [H, W]."""
        return self.build_round(0, lambda sample: self.initial_mask(sample))

    # ------------------------------------------------------------------ hooks: rounds > 0
    def candidates(
        self,
        image: np.ndarray,
        probs: np.ndarray,
        box: Sequence[float],
        class_id: int,
        previous_mask: Optional[np.ndarray],
        init_mask: Optional[np.ndarray],
        refined_probs: Optional[np.ndarray] = None,
        proposals: Sequence[np.ndarray] = (),
    ) -> List[np.ndarray]:
        """Candidate segments of one box.

        Args:
            image: uint8 [H, W, 3].
            probs: float [C, H, W] network probabilities.
            box: ``(x_min, y_min, x_max, y_max)``; class_id: its class.
            previous_mask, init_mask: uint8 [H, W] label maps of the previous round and of the initializer
                (None to leave the candidate out).
            refined_probs: float [C, H, W] CRF marginals of ``probs`` (computed here when None and
                ``crf_candidate`` is set).
            proposals: uint8 [H, W] label maps of the proposal initializers.

        Returns:
            bool masks [H, W], each restricted to the box: network argmax == class (if ``network_candidate``),
            CRF argmax == class, previous == class, initializer == class, each proposal == class (in that order,
            absent ones left out; the network's candidates only where :meth:`trusted`).
        """
        current = None if previous_mask is None else clip_to_box(np.asarray(previous_mask) == class_id, box)
        pool = self.candidate_pool(image, probs, box, class_id, previous_mask, init_mask, refined_probs, proposals)
        return [mask for _, mask in self.trusted(pool, current)]

    NETWORK_CANDIDATES = ("network", "crf", "grabcut_network")
    """The candidates made from the network's own prediction (guarded by ``network_min_iou``)."""

    def trusted(self, pool: List[Tuple[str, np.ndarray]], current: Optional[np.ndarray]) -> List[Tuple[str, np.ndarray]]:
        """``pool`` without the network's candidates whose IoU with ``current`` (bool [H, W], the box's current
        mask) is below ``network_min_iou`` (all kept without a current mask or a guard)."""
        threshold = self.hparams.get("network_min_iou")
        if threshold is None or current is None:
            return pool
        return [(name, mask) for name, mask in pool
                if name not in self.NETWORK_CANDIDATES or mask_iou(mask, current) >= float(threshold)]

    def candidate_pool(
        self,
        image: np.ndarray,
        probs: np.ndarray,
        box: Sequence[float],
        class_id: int,
        previous_mask: Optional[np.ndarray],
        init_mask: Optional[np.ndarray],
        refined_probs: Optional[np.ndarray] = None,
        proposals: Sequence[np.ndarray] = (),
    ) -> List[Tuple[str, np.ndarray]]:
        """:meth:`candidates` with their names: ``network``, ``crf``, ``grabcut_network`` (GrabCut re-run from the
        network's mask, if ``grabcut_candidate``), ``previous``, ``init``, ``proposal_<k>``."""
        hp = self.hparams
        network = probs.argmax(axis=0) == class_id
        out = [("network", clip_to_box(network, box))] if hp.network_candidate else []
        if hp.crf_candidate:
            if refined_probs is None:
                refined_probs = self.refine_probs(image, probs)
            out.append(("crf", clip_to_box(refined_probs.argmax(axis=0) == class_id, box)))
        if hp.get("grabcut_candidate", False):
            out.append(("grabcut_network", grabcut_from_mask(image, box, network)))
        named = [("previous", previous_mask), ("init", init_mask)]
        named += [(f"proposal_{k}", mask) for k, mask in enumerate(proposals)]
        for name, mask in named:
            if mask is not None:
                out.append((name, clip_to_box(np.asarray(mask) == class_id, box)))
        return out

    def proposal_masks(self, sample: Dict[str, Any]) -> List[np.ndarray]:
        """The proposal initializers' masks of one raw sample, cached as PNGs under ``out_dir/proposals``."""
        masks = []
        for name in self.hparams.proposals:
            if name == self.hparams.initializer:
                continue  # already the init candidate
            path = Path(self.out_dir) / "proposals" / name / f"{sample['id']}.png"
            if path.is_file():
                masks.append(read_label_png(path))
                continue
            options = (self.hparams.get("proposal_kwargs") or {}).get(name, {})
            mask = make_box_mask(name, sample["image"], sample["boxes"], sample["box_labels"], source=sample["id"],
                                 **options)
            write_label_png(path, mask)
            masks.append(mask)
        return masks

    def refine_probs(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Dense-CRF marginals float32 [C, H, W] of ``probs`` on ``image`` uint8 [H, W, 3]."""
        from ..refine.crf import CRFParams, crf_from_probs

        return crf_from_probs(image, probs, CRFParams(**(self.hparams.candidate_crf_params or {})))

    def score_candidate(self, candidate: np.ndarray, box: Sequence[float], class_id: int,
                        log_probs: Optional[Tensor], ignore: Optional[Tensor] = None) -> float:
        """BoxSup cost of one candidate (lower is better): ``overlap_cost + ce_weight * cross-entropy``.

        Args:
            candidate: bool [H, W]; log_probs: float [C, H, W] network log-probabilities (None: overlap only).
            ignore: bool [H, W] pixels the cross-entropy leaves out (:meth:`ignored_pixels`), or None.
        """
        return float(score_candidates([candidate], box, class_id, log_probs, self.hparams.ce_weight, ignore)[0])

    def confirmed(self, candidates: Sequence[np.ndarray], pick: int, current: Optional[int], box: Sequence[float],
                  class_id: int, log_probs: Tensor) -> int:
        """``pick`` if it also beats the ``current`` candidate by ``replace_margin`` with every pixel of the box
        counted (no band), else ``current`` (``ce_confirm_unbanded``)."""
        if current is None or pick == current:
            return pick
        full = [self.score_candidate(candidates[k], box, class_id, log_probs) for k in (pick, current)]
        return pick if full[0] < full[1] - float(self.hparams.get("replace_margin") or 0.0) else current

    def ignored_pixels(self, candidates: Sequence[np.ndarray], probs: Optional[np.ndarray] = None) -> Optional[Tensor]:
        """The pixels of one box the network term leaves out: the ``ce_ignore_band`` around the candidates'
        boundaries (None when the band is off); with ``"uncertain"`` only where ``probs`` (float [C, H, W]) has
        no class above ``ce_band_confidence``."""
        band = self.hparams.get("ce_ignore_band")
        if not band:
            return None
        width = int(self.hparams.output_stride) // 2 if band in ("auto", "uncertain") else int(band)
        ignore = boundary_band(candidates, width)
        if band == "uncertain" and probs is not None:
            confident = np.asarray(probs).max(axis=0) >= float(self.hparams.get("ce_band_confidence", 0.9))
            ignore &= ~torch.from_numpy(confident)
        return ignore

    def update_mask(
        self,
        image: np.ndarray,
        probs: np.ndarray,
        boxes,
        box_labels,
        previous_mask: Optional[np.ndarray],
        init_mask: Optional[np.ndarray],
        generator: Optional[torch.Generator] = None,
        proposals: Sequence[np.ndarray] = (),
    ) -> np.ndarray:
        """Re-estimate one image's mask from its boxes.

        For each box: build :meth:`candidates`, score them (:meth:`score_candidate`), pick one
        (``selection``/``top_k``) which replaces the previous round's segment only by ``replace_margin``, clip it
        to the box. Boxes are painted by decreasing area so the smaller box
        wins where they overlap; a box paints only its chosen foreground (never its background over another
        box's foreground). Pixels outside every chosen segment are background.

        Args:
            image: uint8 [H, W, 3]; probs: float [C, H, W] network probabilities at the image's size.
            boxes: float [N, 4]; box_labels: int [N].

        Returns:
            uint8 [H, W] with values 0..C-1.
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(box_labels, dtype=np.int64).reshape(-1)
        height, width = image.shape[:2]
        mask = np.zeros((height, width), dtype=np.uint8)
        if len(boxes) == 0:
            return mask
        probs = np.asarray(probs, dtype=np.float32)
        log_probs = torch.from_numpy(np.log(np.clip(probs, 1e-8, 1.0)))
        refined = self.refine_probs(image, probs) if self.hparams.crf_candidate else None
        for i in paint_order(boxes):
            box, class_id = boxes[i], int(labels[i])
            cands = self.candidates(image, probs, box, class_id, previous_mask, init_mask, refined_probs=refined,
                                    proposals=proposals)
            ignore = self.ignored_pixels(cands, probs)
            scores = torch.tensor([self.score_candidate(c, box, class_id, log_probs, ignore) for c in cands],
                                  dtype=torch.float64)
            pick = select_candidate(scores, self.hparams.selection, self.hparams.top_k, generator)
            current = None  # the candidate that is the box's current (previous round's) segment
            if previous_mask is not None:
                segment = clip_to_box(np.asarray(previous_mask) == class_id, box)
                current = next((k for k, c in enumerate(cands) if np.array_equal(np.asarray(c, bool), segment)), None)
            pick = keep_unless_better(scores, pick, current, self.hparams.get("replace_margin"))
            if ignore is not None and self.hparams.get("ce_confirm_unbanded"):
                pick = self.confirmed(cands, pick, current, box, class_id, log_probs)
            self.replaced["boxes"] += 1
            self.replaced["replaced"] += int(current is not None and not np.array_equal(cands[pick], cands[current]))
            chosen = clip_to_box(cands[pick], box).astype(bool)
            mask[chosen] = class_id
        return mask

    def update_masks(self, round_index: int) -> Dict[str, np.ndarray]:
        """Build (or reload) round ``round_index`` > 0 with the current network. Returns id -> uint8 [H, W]."""
        previous = round_index - 1

        def build(sample: Dict[str, Any]) -> np.ndarray:
            image_id = sample["id"]
            prev = self.masks.get(image_id) if self.round_index == previous else None
            if prev is None:
                prev = self._read_round_mask(previous, image_id)
            init = self._read_round_mask(0, image_id)
            probs = self.image_probs(sample["image"])
            generator = torch.Generator().manual_seed(
                int(self.hparams.seed) * 1_000_003 + round_index * 7919 + zlib.crc32(image_id.encode()))
            return self.update_mask(sample["image"], probs, sample["boxes"], sample["box_labels"], prev, init, generator,
                                    proposals=self.proposal_masks(sample))

        self.replaced = {"boxes": 0, "replaced": 0}
        masks = self.build_round(round_index, build)
        if self.replaced["boxes"]:
            rank_zero_info(f"BoxSup round_{round_index}: {self.replaced['replaced']} of {self.replaced['boxes']} boxes "
                           f"changed their mask (replace_margin {self.hparams.get('replace_margin')})")
        return masks

    # ------------------------------------------------------------------ round machinery
    def _read_round_mask(self, round_index: int, image_id: str) -> Optional[np.ndarray]:
        path = round_dir(self.out_dir, round_index) / f"{image_id}.png"
        return read_label_png(path) if path.is_file() else None

    def image_probs(self, image: np.ndarray) -> np.ndarray:
        """Network probabilities float32 [C, H, W] of one raw uint8 image [H, W, 3] (``predict_logits``)."""
        return self.whole_image_probs(image).cpu().numpy()

    def build_round(self, round_index: int, make: Callable[[Dict[str, Any]], np.ndarray]) -> Dict[str, np.ndarray]:
        """Write round ``round_index`` for this rank's share of the training images and score it.

        Masks already on disk are read, not recomputed. Unless the round is complete and recorded in
        ``rounds.json``, it is scored against the ground truth (where the reader has it), rank 0 records the
        mIoU (None without ground truth) in ``rounds.json``, and it is logged as ``boxsup/round_miou``.

        Returns:
            id -> uint8 [H, W] for this rank's share (``ids[rank::world_size]``).
        """
        reader, folder, key, share, missing_all = self.round_files(round_index)
        strategy = self.trainer.strategy
        recorded = self.read_rounds()
        rescore = missing_all > 0 or key not in recorded
        metric = SegmentationIoU(self.num_classes).to(self.device)
        scored = 0
        masks: Dict[str, np.ndarray] = {}
        for index in share:
            image_id = reader.ids[index]
            path = folder / f"{image_id}.png"
            sample = None
            if path.is_file():
                mask = read_label_png(path)
            else:
                sample = reader[index]
                mask = np.asarray(make(sample), dtype=np.uint8)
                write_label_png(path, mask)
            masks[image_id] = mask
            if rescore:
                gt = (sample if sample is not None else reader[index])["mask"]
                if gt is not None:
                    metric.update(torch.from_numpy(mask.astype(np.int64)).to(self.device),
                                  torch.from_numpy(gt.astype(np.int64)).to(self.device))
                    scored += 1
        strategy.barrier("boxsup_round")
        miou = self.reduced_miou(metric, scored) if rescore else recorded[key]
        self.record_round(key, miou, write=rescore)
        rank_zero_info(f"BoxSup {key}: {missing_all} masks built, {len(reader) - missing_all} reused; mIoU vs ground "
                       f"truth {'n/a' if miou is None else f'{100 * miou:.2f}'}")
        strategy.barrier("boxsup_round_done")
        return masks

    def activate_round(self, round_index: int) -> None:
        """Make round ``round_index`` the training set: build or reload it, point the injector at it."""
        if round_index == 0:
            self.masks = self.initial_masks()
        else:
            if "round_0" not in self.read_rounds():  # the initializer's masks are candidates of every round
                self.initial_masks()
            self.masks = self.update_masks(round_index)
        self.round_index = round_index
        if self._injector is not None:
            self._injector.mask_dir = round_dir(self.out_dir, round_index)

    # ------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self) -> None:
        if not self.uses_masks:
            return
        self.training_reader()
        self.require_fresh_dataloaders()
        start = self.start_epoch()
        self.install_injector(round_dir(self.out_dir, 0))
        self.activate_round(start // self.hparams.round_epochs)

    def on_train_epoch_start(self) -> None:
        if not self.uses_masks:
            return
        expected = self.trainer.current_epoch // self.hparams.round_epochs
        if self.round_index != expected:  # only after an unusual resume: the round is normally set beforehand
            rank_zero_warn(f"BoxSup: epoch {self.trainer.current_epoch} should train on round {expected} but round "
                           f"{self.round_index} is active; switching now (with DataLoader workers, batches already "
                           "prefetched this epoch keep the previous masks)")
            self.activate_round(expected)

    def on_train_epoch_end(self) -> None:
        if not self.uses_masks:
            return
        next_epoch = self.trainer.current_epoch + 1
        max_epochs = self.trainer.max_epochs
        if next_epoch % self.hparams.round_epochs or (max_epochs is not None and 0 <= max_epochs <= next_epoch):
            return
        self.activate_round(next_epoch // self.hparams.round_epochs)

    def on_fit_end(self) -> None:
        self.remove_injector()

    # ------------------------------------------------------------------ loss
    def loss(self, logits: Tensor, batch: Dict[str, Any]) -> Tensor:
        """``mask_loss_weight * CE(pseudo mask) + tightness_weight * BBTP + pairwise_weight * smoothness``.

        Boxes are the batch's (augmented-image coordinates); logits are at input resolution.
        """
        hp = self.hparams
        total = logits.sum() * 0.0
        batch_size = len(batch["id"])
        if hp.mask_loss_weight > 0:
            total = total + hp.mask_loss_weight * super().loss(logits, batch)
        if hp.tightness_weight > 0:
            tight = tightness_prior_loss(logits.float(), batch["boxes"], batch["box_labels"])
            self.log("train/tightness_loss", tight, batch_size=batch_size)
            total = total + hp.tightness_weight * tight
        if hp.pairwise_weight > 0:
            mean, std = self.normalization()
            mean_t = torch.as_tensor(mean, dtype=logits.dtype, device=logits.device).view(1, 3, 1, 1)
            std_t = torch.as_tensor(std, dtype=logits.dtype, device=logits.device).view(1, 3, 1, 1)
            rgb = batch["image"].to(logits.dtype) * std_t + mean_t
            pair = pairwise_smoothness_loss(logits.float().softmax(dim=1), rgb, sigma=hp.pairwise_sigma)
            self.log("train/pairwise_loss", pair, batch_size=batch_size)
            total = total + hp.pairwise_weight * pair
        return total


class BoxSupTrainer(BoxSupSegmenter):
    """Deprecated alias of :class:`BoxSupSegmenter` (a LightningModule, not a Trainer); warns when built."""

    def __init__(self, num_classes: int, out_dir: str, **kwargs: Any) -> None:
        warnings.warn("BoxSupTrainer is deprecated: use BoxSupSegmenter (the same task under its new name)",
                      FutureWarning, stacklevel=2)
        super().__init__(num_classes, out_dir, **kwargs)
