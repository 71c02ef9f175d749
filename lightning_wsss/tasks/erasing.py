"""Adversarial erasing (AE-PSL: Wei et al., "Object Region Mining with Adversarial Erasing: A Simple
Classification to Semantic Segmentation Approach", CVPR 2017) on top of
:class:`~lightning_wsss.tasks.classifier.CAMClassifier`.

Design
------
Training runs in phases: phase 0 (``first_round_epochs``, default ``round_epochs``) trains on the images as they
are, every later phase lasts ``round_epochs``. At the start of phase ``k`` (for ``k <= erase_rounds``) the task
freezes a copy of the network (``copy.deepcopy(self.net)``, :func:`frozen_copy`, kept in ``self.round_snapshots``,
saved in checkpoints) and from then on every training batch is erased on the fly before the forward pass:

    for each snapshot j = 0 .. k-1 (in order):
        region_j = { pixels where the snapshot's CAM of a present class, max-normalised per image and class,
                     exceeds ``erase_threshold`` } computed on the image as erased by snapshots 0 .. j-1
        image    = ``erase_value`` on region_j (0 = the mean colour after normalisation)

so snapshot ``j`` mines on the images it was trained on, as in AE-PSL, and the erased area is the union of the
mined regions. Mining during training uses single-scale class activation maps (the classifier weights on the
target features), whatever ``cam_method`` is. Train for ``first_round_epochs + erase_rounds * round_epochs`` epochs;
snapshots are taken only for epochs that will run.

Prediction (:meth:`ErasingCAMClassifier.compute_cams`) replays the rounds on each image with multi-scale +
flip maps of ``cam_method``: snapshot 0 on the image, snapshot 1 on the image erased by snapshot 0's region, ...,
the final network on the image erased by every snapshot. The CAM written is the element-wise max over these
maps (each max-normalised; a later round's map scaled by :func:`peak_ratio`, its activation on the erased image
relative to the unerased one, unless ``relative_to_unerased=False``), so it covers the union of the mined
regions without lifting leftover context to full strength (``combine_rounds=False`` gives the
final network's maps on the unerased image, as the base class). Besides ``cams/`` and ``labels/``, predict
writes ``mined/<id>.png``: the union of mined regions as a seed map (uint8; the class whose map crossed the
threshold where a region was mined, the earliest round winning, 255 where nothing was mined).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from ..callbacks.writers import Artifact
from ..cam import CAMExtractor, multiscale_cams, normalize_maps, upsample
from ..datasets.classes import IGNORE_INDEX
from ..tensors import channel_argmax
from .classifier import CAMClassifier, present_class_ids

__all__ = ["ErasingCAMClassifier", "frozen_copy", "select_class_maps", "mine_regions", "erase_images",
           "mined_label_map", "peak_ratio"]


# ----------------------------------------------------------------------------------------------- functional core
def select_class_maps(maps: Tensor, class_ids: Tensor) -> Tensor:
    """Pick the maps of ``class_ids`` (dataset indices 1..C-1, -1 padding) from all foreground maps.

    Args:
        maps: float [B, C-1, h, w] (channel ``i`` <-> class ``i + 1``).
        class_ids: long [B, K].

    Returns:
        float [B, K, h, w]; all-zero where ``class_ids == -1``.
    """
    index = (class_ids.clamp(min=1) - 1).to(maps.device)
    picked = torch.gather(maps, 1, index[..., None, None].expand(-1, -1, *maps.shape[-2:]))
    return picked * (class_ids >= 1).to(maps.device)[..., None, None].to(maps.dtype)


def mine_regions(cams: Tensor, class_ids: Tensor, threshold: float) -> Tensor:
    """Pixels a round mines: a present class's max-normalised map exceeds ``threshold``.

    Args:
        cams: float [B, K, H, W], each map max-normalised (in [0, 1]).
        class_ids: long [B, K] (-1 = padding, never mined).
        threshold: in [0, 1).

    Returns:
        bool [B, K, H, W] (per class; ``.any(1)`` is the region erased).
    """
    valid = (class_ids >= 1).to(cams.device)[..., None, None]
    return (cams > threshold) & valid


def erase_images(images: Tensor, region: Tensor, value: float = 0.0) -> Tensor:
    """Replace the pixels of ``region`` by ``value`` in every channel.

    Args:
        images: float [B, 3, H, W].
        region: bool [B, H, W].

    Returns:
        float [B, 3, H, W] (a new tensor).
    """
    return images.masked_fill(region[:, None].to(images.device), float(value))


def mined_label_map(mined: Tensor, class_ids: Tensor, cams: Tensor, previous: Optional[Tensor] = None) -> Tensor:
    """Seed label map of a mining step: the class (the strongest one among those mined) where a pixel is mined.

    Args:
        mined: bool [B, K, H, W] from :func:`mine_regions`.
        class_ids: long [B, K].
        cams: float [B, K, H, W] (ranks the classes where several are mined at a pixel).
        previous: long [B, H, W] from earlier steps (kept where already set), or None.

    Returns:
        long [B, H, W]: class index where mined, 255 elsewhere.
    """
    scores = cams.masked_fill(~mined, float("-inf"))
    winner = channel_argmax(scores, dim=1)
    labels = torch.gather(class_ids.to(cams.device).clamp(min=0), 1, winner.flatten(1)).view_as(winner)
    out = torch.where(mined.any(dim=1), labels, torch.full_like(labels, IGNORE_INDEX))
    if previous is not None:
        out = torch.where(previous != IGNORE_INDEX, previous, out)
    return out


# ----------------------------------------------------------------------------------------------- snapshots
def frozen_copy(net: nn.Module) -> nn.Module:
    """A deep copy of ``net`` in eval mode whose parameters take no gradient (forward hooks of CAM extractors
    dropped): an erasing round's miner."""
    snapshot = copy.deepcopy(net)
    for module in snapshot.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
        module._backward_hooks.clear()
    snapshot.requires_grad_(False)
    return snapshot.eval()


@torch.no_grad()
def peak_ratio(network: nn.Module, erased: Tensor, original: Tensor, class_ids: Tensor) -> Tensor:
    """How strong a network's class activation still is after erasing: ``peak(raw CAM on erased) /
    peak(raw CAM on original)`` per present class, clipped to [0, 1] (single scale).

    Args:
        network: has ``features`` and ``raw_cams`` (a :class:`~lightning_wsss.models.cam.CAMNet`).
        erased, original: float [B, 3, H, W].
        class_ids: long [B, K] (-1 padding).

    Returns:
        float [B, K]; 0 for padding.
    """
    def peaks(images: Tensor) -> Tensor:
        maps = select_class_maps(network.raw_cams(network.features(images)).float(), class_ids)
        return maps.flatten(2).amax(dim=-1)

    ratio = peaks(erased) / peaks(original).clamp(min=1e-6)
    return ratio.clamp(0.0, 1.0) * (class_ids >= 1).to(ratio.dtype)


# ----------------------------------------------------------------------------------------------- the task
class ErasingCAMClassifier(CAMClassifier):
    """AE-PSL: a CAM classifier trained in rounds on images whose already-mined regions are erased.

    See the module docstring for the schedule and the prediction. Extra attributes: ``round_snapshots``
    (``nn.ModuleList`` of frozen copies of ``self.net``, one per finished round, in checkpoints; always in eval
    mode, whatever ``train()`` sets).

    Args:
        num_classes: classes including background.
        erase_rounds: number of erasing steps (snapshots); training has ``erase_rounds + 1`` phases.
        round_epochs: epochs per erasing phase.
        first_round_epochs: epochs of phase 0, on unerased images (default ``round_epochs``). AE-PSL trains every
            round to convergence: a miner taken from an under-trained classifier mines poor regions, so give the
            first phase the epochs a plain classifier needs.
        erase_threshold: a pixel is mined when a present class's max-normalised CAM exceeds it.
        erase_value: value written into erased pixels of the normalised image (0 = the mean colour).
        combine_rounds: at prediction, CAM = max over the rounds' maps (False: the final network only).
        relative_to_unerased: at prediction, scale a later round's (max-normalised) map by how strong its raw
            activation on the erased image is compared with the same network's on the unerased image (peak
            ratio, at most 1). Without it, max-normalisation lifts whatever is left after erasing to 1: when the
            object is gone and only correlated context keeps the class score up, that context entered the CAM
            at full strength (measured on the synthetic set: round 1 mined twice the area of round 0, 33 % of it
            on the object against 65 %).
        **kwargs: :class:`CAMClassifier` arguments.
    """

    artifact_patterns = CAMClassifier.artifact_patterns + ("mined/{id}.png",)

    def __init__(
        self,
        num_classes: int,
        erase_rounds: int = 2,
        round_epochs: int = 1,
        erase_threshold: float = 0.5,
        erase_value: float = 0.0,
        combine_rounds: bool = True,
        first_round_epochs: Optional[int] = None,
        relative_to_unerased: bool = True,
        **kwargs: Any,
    ) -> None:
        if erase_rounds < 0:
            raise ValueError(f"erase_rounds must be >= 0, got {erase_rounds}")
        if round_epochs < 1 or (first_round_epochs is not None and first_round_epochs < 1):
            raise ValueError(f"round_epochs and first_round_epochs must be >= 1, got {round_epochs} and {first_round_epochs}")
        if not 0.0 <= erase_threshold < 1.0:
            raise ValueError(f"erase_threshold must be in [0, 1), got {erase_threshold}")
        super().__init__(num_classes, **kwargs)
        self.round_snapshots = nn.ModuleList()
        self._snapshot_extractors: Dict[int, CAMExtractor] = {}
        self._last_mined: Optional[Tensor] = None

    # ------------------------------------------------------------------ rounds
    @property
    def current_round(self) -> int:
        """Erasing steps applied to training batches now (= number of snapshots)."""
        return len(self.round_snapshots)

    def expected_rounds(self, epoch: int) -> int:
        """Snapshots that should exist while training epoch ``epoch``: 0 during the first phase
        (``first_round_epochs``), then one more every ``round_epochs``, at most ``erase_rounds``."""
        hp = self.hparams
        first = int(hp.get("first_round_epochs") or hp.round_epochs)
        if epoch < first:
            return 0
        return min(int(hp.erase_rounds), 1 + (epoch - first) // int(hp.round_epochs))

    def take_snapshot(self) -> nn.Module:
        """Freeze the current network as the next round's miner; returns the snapshot."""
        snapshot = frozen_copy(self.net)
        self.round_snapshots.append(snapshot)
        return snapshot

    def train(self, mode: bool = True) -> "ErasingCAMClassifier":
        """``mode`` for the network; the snapshots stay in eval mode (frozen BatchNorm statistics)."""
        super().train(mode)
        self.round_snapshots.eval()
        return self

    @torch.no_grad()
    def mined_regions(self, images: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
        """Replay the finished rounds on a batch (single-scale CAMs, as in training).

        Args:
            images: float [B, 3, H, W] normalised.
            labels: multi-hot float [B, C-1].

        Returns:
            ``(erased images float [B, 3, H, W], mined bool [B, R, H, W])`` with R the number of snapshots;
            ``mined[:, j]`` is the region snapshot ``j`` mined on the image erased by snapshots ``< j``.
        """
        class_ids = present_class_ids(labels).to(images.device)
        regions: List[Tensor] = []
        current = images
        for snapshot in self.round_snapshots:
            snapshot.eval()
            maps = select_class_maps(snapshot.raw_cams(snapshot.features(current)).float(), class_ids)
            cams = normalize_maps(upsample(maps, current.shape[-2:]), "max", 1e-5)
            region = mine_regions(cams, class_ids, self.hparams.erase_threshold).any(dim=1)
            regions.append(region)
            current = erase_images(current, region, self.hparams.erase_value)
        if not regions:
            return images, torch.zeros((images.shape[0], 0, *images.shape[-2:]), dtype=torch.bool, device=images.device)
        return current, torch.stack(regions, dim=1)

    def mined_union(self, images: Tensor, labels: Tensor) -> Tensor:
        """Union over rounds of the mined regions: bool [B, H, W] (all False before the first round)."""
        return self.mined_regions(images, labels)[1].any(dim=1)

    def erase_batch(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        """The batch with its images erased by every finished round; ``erased`` holds the union (bool [B, H, W])."""
        images, mined = self.mined_regions(batch["image"], batch["labels"])
        return {**batch, "image": images, "erased": mined.any(dim=1)}

    # ------------------------------------------------------------------ Lightning hooks
    def on_train_epoch_start(self) -> None:
        expected = self.expected_rounds(self.trainer.current_epoch)
        if self.current_round < expected:
            if expected - self.current_round > 1:
                rank_zero_info(f"AE-PSL: {expected - self.current_round} rounds lack snapshots (resumed from an early "
                               "checkpoint?); the current weights stand in for all of them")
            while self.current_round < expected:
                self.take_snapshot()
            rank_zero_info(f"AE-PSL: epoch {self.trainer.current_epoch} trains with {expected} erasing round(s)")

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> Tensor:
        if self.current_round:
            batch = self.erase_batch(batch)
            self.log("train/erased_fraction", batch["erased"].float().mean(), batch_size=len(batch["id"]))
        return super().training_step(batch, batch_idx)

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Create as many (placeholder) snapshots as the checkpoint holds, so its state dict loads into them."""
        prefix = "round_snapshots."
        indices = {int(key[len(prefix):].split(".", 1)[0]) for key in checkpoint.get("state_dict", {})
                   if key.startswith(prefix)}
        count = max(indices) + 1 if indices else 0
        while len(self.round_snapshots) < count:
            self.take_snapshot()
        while len(self.round_snapshots) > count:
            del self.round_snapshots[-1]

    # ------------------------------------------------------------------ CAM hooks
    def _snapshot_cams(self, index: int, images: Tensor, class_ids: Tensor) -> Tensor:
        """Multi-scale + flip ``cam_method`` maps of snapshot ``index``: float [B, K, H, W] in [0, 1]."""
        snapshot = self.round_snapshots[index]
        method = self.hparams.cam_method.lower()
        extractor = self._snapshot_extractors.get(index)
        if extractor is None or extractor.method != method or extractor.model is not snapshot:
            if extractor is not None:
                extractor.release()
            extractor = CAMExtractor(snapshot, [snapshot.features], method=method, normalize="none",
                                     classifier_weight=snapshot.cam_weight() if method == "cam" else None)
            self._snapshot_extractors[index] = extractor
        logit_ids = torch.where(class_ids > 0, class_ids - 1, class_ids)
        with torch.inference_mode(False), torch.enable_grad():
            return multiscale_cams(extractor, images.clone(), logit_ids, self.hparams.cam_scales, self.hparams.cam_flip)

    def compute_cams(self, images: Tensor, class_ids: Tensor) -> Tensor:
        """CAMs covering the union of the rounds' mined regions (see the module docstring).

        Also stores the seed map of the mined union in ``self._last_mined`` (long [B, H, W], 255 = not mined),
        which :meth:`predict_step` writes.

        Returns:
            float [B, K, H, W] in [0, 1].
        """
        hp = self.hparams
        class_ids = class_ids.to(images.device)
        combined: Optional[Tensor] = None
        mined: Optional[Tensor] = None
        current = images
        if hp.combine_rounds:
            for index in range(len(self.round_snapshots)):
                snapshot = self.round_snapshots[index]
                cams = self._snapshot_cams(index, current, class_ids)
                region = mine_regions(cams, class_ids, hp.erase_threshold)
                mined = mined_label_map(region, class_ids, cams, mined)
                if combined is not None and hp.get("relative_to_unerased", False):
                    cams = cams * peak_ratio(snapshot, current, images, class_ids)[..., None, None]
                current = erase_images(current, region.any(dim=1), hp.erase_value)
                combined = cams if combined is None else torch.maximum(combined, cams)
        cams = super().compute_cams(current, class_ids)
        mined = mined_label_map(mine_regions(cams, class_ids, hp.erase_threshold), class_ids, cams, mined)
        self._last_mined = mined
        if combined is None:
            return cams
        if hp.get("relative_to_unerased", False):
            cams = cams * peak_ratio(self.net, current, images, class_ids)[..., None, None]
        return torch.maximum(combined, cams)

    def predict_artifacts(self, batch: Dict[str, Any], rows: List[int]) -> List[List[Artifact]]:
        """The base artifacts plus ``mined/<id>.png`` (the union of mined regions, 255 = not mined)."""
        self._last_mined = None
        results = super().predict_artifacts(batch, rows)
        if self._last_mined is None:
            return results
        mined = self._last_mined.cpu().numpy().astype("uint8")
        for row, i in enumerate(rows):
            height, width = batch["size"][i].tolist()
            results[row].append(Artifact(f"mined/{batch['id'][i]}.png", "png", mined[row, :height, :width]))
        self._last_mined = None
        return results
