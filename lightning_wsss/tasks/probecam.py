"""ProbeCAM: CAM seeds re-read by a linear cell probe trained against the images that lack the class.

This suite's own method (not from a paper), built for the failure measured on the CamVid street tiles (README,
"Image labels on real photos"): the labels are predicted by the objects' context (road for cars, sky for
trees), so the classifier's row of a class weighs the context, and its CAM fires there. The data set itself holds
the counter-evidence: the images labelled *without* the class show the same context without the object. W-OoD
(Lee et al., CVPR 2022) collects such images from outside the data set; here they are the data set's own
negative images, used per cell:

1. every prediction image's plain single-scale (+ flip) CAM, max-normalised, on the probe's grid;
2. per foreground class, a logistic regression over feature cells (:func:`~lightning_wsss.cam.cell_probe.
   fit_cell_probes`): positives are the cells where the class's CAM exceeds ``seed_threshold`` in the images
   labelled with it, negatives are all cells of the images labelled without it (certainly not the class).
   With ``probe_positives: image_labels`` no CAM chooses the positives: the probe is fit from the image labels by
   multiple-instance learning (:func:`~lightning_wsss.cam.cell_probe.fit_image_label_probes`), each image's cell
   logits pooled by ``probe_pooling`` (the mean of its top 5 % by default) into its class scores, with the same
   cell negatives, so the fit itself picks which cells of a labelled image make the label;
3. a class's map is its probe's probability, multi-scale + flip and max-normalised as the plain CAM. A class
   without negative images (one in every image, as the horses) or without seeds has no probe and keeps its plain
   CAM.

``probe_features`` chooses the cells' features: ``"imagenet"`` (default), the hypercolumn of an ImageNet backbone of
the same architecture at ``probe_levels``, or ``"classifier"``, the same levels of the trained classifier's own
backbone. Fine-tuning on image labels teaches the backbone the context, and the ImageNet hypercolumn localizes
better: fit to the ground truth on CamVid, a linear probe reaches 30.6 mIoU on it against 24.0 on the classifier's
last stage (``tools/feature_ceiling.py``, README). ``rounds`` > 1 refits the probes with their own maps above
``refine_threshold`` as the positives.

The probes are built before prediction from the images of the predict loader (the training split in the pipeline's
CAM stage), read once through the DataModule's ``predict_dataloader`` (every DDP rank builds the same probes), or
from any loader passed to :meth:`ProbeCAMClassifier.build_probes`. At most ``max_cells`` cells (a uniform
fixed-seed subset, kept while reading) enter the fit.

Hooks overridden: :meth:`compute_cams` (probe maps), ``on_predict_start`` (builds the probes). Training is the
plain classifier's, so a plain :class:`CAMClassifier` checkpoint loads into this class (the pipeline's ``cams``
stage takes ``class_path: ProbeCAMClassifier``) and ProbeCAM is compared with the plain CAM on the same classifier.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from ..cam import multiscale_cams
from ..cam.cell_probe import (cells_per_image, fit_cell_probes, fit_image_label_probes, parse_pooling,
                              probe_logits, valid_cells)
from .classifier import CAMClassifier
from .hypercolumn import HYPERCOLUMN_SOURCES, HypercolumnFeatures

__all__ = ["ProbeCAMClassifier"]

PROBE_FEATURES = HYPERCOLUMN_SOURCES
PROBE_OPTIONS = ("probe_features", "probe_levels")
PROBE_OUTPUTS = ("probability", "logit")
PROBE_POSITIVES = ("cam_seeds", "image_labels")


class ProbeCAMClassifier(HypercolumnFeatures, CAMClassifier):
    """A CAM classifier whose maps come from cell probes fit against the negative images (module docstring).

    Args:
        num_classes: classes including background.
        probe_features: ``"imagenet"`` or ``"classifier"`` (see the module docstring).
        probe_levels: backbone levels of the hypercolumn (timm ``features_only`` indices; EfficientNet-Lite0 and
            ResNets: 2, 3, 4 are strides 8, 16, 16 at output stride 16); the grid is the first level's.
        seed_threshold: max-normalised plain CAM above which a labelled class's cell is a positive.
        probe_positives: ``"cam_seeds"`` (the cells above ``seed_threshold``) or ``"image_labels"`` (no CAM: the
            fit picks them by multiple-instance learning over ``probe_pooling``; README "ProbeCAM" measures both).
        probe_pooling: how ``image_labels`` pools an image's cells: ``gap``, ``max``, ``topk:F``, ``lse:R``
            (:func:`~lightning_wsss.cam.cell_probe.parse_pooling`).
        probe_output: ``"probability"``, the probe's sigmoid, or ``"logit"``, its ReLU'd logit (a linear map
            like a CAM's, which does not saturate near 1 before the max-normalisation).
        multiply_cam: multiply every probe map by the plain CAM of its class (a cell must be both). README
            "ProbeCAM" measures it: on the synthetic set it lifts the seeds' probe to the plain CAM, no higher;
            ``probe_positives: image_labels`` beats the plain CAM there.
        rounds: probe fits; each after the first takes the previous maps above ``refine_threshold`` as positives.
        refine_threshold: see ``rounds``.
        probe_steps, probe_lr, probe_weight_decay: the fit (:func:`~lightning_wsss.cam.cell_probe.fit_cell_probes`).
        max_cells: at most this many cells enter the fit (a uniform fixed-seed subset, kept while the cells are
            read, so a large data set never holds all its cells in memory).
        probe_seed: seeds that subset.
        **kwargs: :class:`CAMClassifier` arguments.
    """

    def __init__(
        self,
        num_classes: int,
        probe_features: str = "imagenet",
        probe_levels: Sequence[int] = (2, 3, 4),
        seed_threshold: float = 0.8,
        probe_positives: str = "cam_seeds",
        probe_pooling: str = "topk:0.05",
        probe_output: str = "probability",
        multiply_cam: bool = False,
        rounds: int = 1,
        refine_threshold: float = 0.9,
        probe_steps: int = 200,
        probe_lr: float = 0.01,
        probe_weight_decay: float = 1e-4,
        max_cells: int = 400000,
        probe_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if probe_features not in PROBE_FEATURES:
            raise ValueError(f"probe_features must be one of {PROBE_FEATURES}, got {probe_features!r}")
        if not probe_levels:
            raise ValueError("probe_levels is empty")
        for name, value in (("seed_threshold", seed_threshold), ("refine_threshold", refine_threshold)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if probe_positives not in PROBE_POSITIVES:
            raise ValueError(f"probe_positives must be one of {PROBE_POSITIVES}, got {probe_positives!r}")
        parse_pooling(probe_pooling)
        if probe_output not in PROBE_OUTPUTS:
            raise ValueError(f"probe_output must be one of {PROBE_OUTPUTS}, got {probe_output!r}")
        if rounds < 1 or probe_steps < 1 or max_cells < 1:
            raise ValueError(f"rounds, probe_steps and max_cells must be >= 1, got {rounds}, {probe_steps}, {max_cells}")
        super().__init__(num_classes, **kwargs)
        self.probe_weight: Optional[Tensor] = None
        self.probe_bias: Optional[Tensor] = None
        self.probe_usable: Optional[Tensor] = None

    # ------------------------------------------------------------------ features
    def probe_backbone(self) -> nn.Module:
        """The backbone whose levels make the probe's features (built once; ImageNet weights or the classifier's)."""
        return self.hypercolumn_backbone(self.hparams.probe_features, self.hparams.probe_levels, PROBE_OPTIONS)

    def hypercolumn_features(self, images: Tensor) -> Tensor:
        """Hypercolumn [B, D, h, w] of ``probe_levels`` on the first level's grid."""
        return self.hypercolumn_of(images, self.hparams.probe_features, self.hparams.probe_levels, PROBE_OPTIONS)

    def flip_averaged_features(self, images: Tensor) -> Tensor:
        """:meth:`hypercolumn_features` of the images and of their mirror images (un-flipped), averaged."""
        return (self.hypercolumn_features(images) + self.hypercolumn_features(images.flip(-1)).flip(-1)) / 2

    def seed_cams(self, images: Tensor, grid) -> Tensor:
        """Plain single-scale CAMs of every foreground class, image and flip averaged, max-normalised, on ``grid``:
        float [B, C-1, h, w]."""
        features = self.net.features(images)
        maps = self.raw_cams(features) + self.raw_cams(self.net.features(images.flip(-1))).flip(-1)
        maps = maps / (maps.flatten(2).amax(-1)[..., None, None] + 1e-5)
        return F.interpolate(maps, size=grid, mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------ probes
    @torch.no_grad()
    def collect_cells(self, batches: Iterable[Dict[str, Any]]) -> Dict[str, Tensor]:
        """``{"features" [M, D], "seeds" [M, C-1] (plain CAM on the cell), "labels" bool [M, C-1] (the cell's
        image labels), "image" long [M]}`` over the valid cells of every image; at most ``max_cells`` of them, a
        uniform fixed-seed subset kept while reading (each cell draws a key; the lowest keys stay), so memory stays
        bounded on large data sets."""
        hp = self.hparams
        generator = torch.Generator().manual_seed(int(hp.probe_seed))
        kept: Dict[str, Tensor] = {}
        count = 0
        for batch in batches:
            images = batch["image"].to(self.device)
            features = self.flip_averaged_features(images)
            grid = tuple(features.shape[-2:])
            seeds = self.seed_cams(images, grid)
            inside = valid_cells(batch["size"], tuple(images.shape[-2:]), grid)
            parts: Dict[str, List[Tensor]] = {"features": [], "seeds": [], "labels": [], "image": []}
            for row in range(images.shape[0]):
                keep = inside[row].to(features.device)
                cells = int(keep.sum())
                parts["features"].append(features[row].flatten(1).T[keep].float().cpu())
                parts["seeds"].append(seeds[row].flatten(1).T[keep].float().cpu())
                parts["labels"].append((batch["labels"][row] > 0.5).cpu()[None].expand(cells, -1))
                parts["image"].append(torch.full((cells,), count))
                count += 1
            new = {key: torch.cat(values) for key, values in parts.items()}
            new["key"] = torch.rand(new["image"].shape[0], generator=generator)
            kept = new if not kept else {key: torch.cat([kept[key], new[key]]) for key in kept}
            if kept["key"].shape[0] > int(hp.max_cells):
                lowest = kept["key"].topk(int(hp.max_cells), largest=False).indices.sort().values
                kept = {key: value[lowest] for key, value in kept.items()}
        kept.pop("key", None)
        return kept

    def build_probes(self, batches: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
        """Fit the probes on the images of ``batches`` (kept in ``self.probe_weight`` [C-1, D], ``self.probe_bias``).

        Returns:
            ``{"cells": M, "positives": [per class], "negatives": [per class]}`` of the last round.
        """
        hp = self.hparams
        was_training = self.training
        self.eval()
        cells = self.collect_cells(batches)
        self.train(was_training)
        labels, negative = cells["labels"], ~cells["labels"]
        positive = labels & (cells["seeds"] > float(hp.seed_threshold))
        from_image_labels = hp.get("probe_positives", "cam_seeds") == "image_labels"
        for round_index in range(int(hp.rounds)):
            if round_index == 0 and from_image_labels:
                weight, bias = self._fit_from_image_labels(cells)
                positive = labels  # every labelled image holds positives; the fit chose which cells
            else:
                weight, bias = fit_cell_probes(cells["features"], positive, negative, int(hp.probe_steps),
                                               float(hp.probe_lr), float(hp.probe_weight_decay))
            if round_index + 1 < int(hp.rounds):
                probs = torch.sigmoid(cells["features"] @ weight.T + bias)
                positive = labels & (self._per_image_max_normalised(probs, cells["image"]) > float(hp.refine_threshold))
        self.probe_weight, self.probe_bias = weight.to(self.device), bias.to(self.device)
        self.probe_usable = (positive.any(0) & negative.any(0)).to(self.device)
        report = {"cells": int(cells["features"].shape[0]), "positives": positive.sum(0).tolist(),
                  "negatives": negative.sum(0).tolist(), "plain_cam": (~self.probe_usable).nonzero().flatten().add(1).tolist()}
        kind = ("cells of the labelled images (the fit picks the positives among them)" if from_image_labels
                else "positives")
        rank_zero_info(f"ProbeCAM: {report['cells']} cells, {kind} per class {report['positives']}; classes "
                       f"without negative images keep the plain CAM: {report['plain_cam']}")
        return report

    def _fit_from_image_labels(self, cells: Dict[str, Tensor]):
        """Multiple-instance probes from the image labels of :meth:`collect_cells`' cells, regrouped per image."""
        hp = self.hparams
        features, valid, labels = cells_per_image(cells["features"], cells["image"], cells["labels"])
        return fit_image_label_probes(features, valid, labels, hp.get("probe_pooling", "topk:0.05"),
                                      cell_negatives=True, steps=int(hp.probe_steps), lr=float(hp.probe_lr),
                                      weight_decay=float(hp.probe_weight_decay))

    @staticmethod
    def _per_image_max_normalised(values: Tensor, image: Tensor) -> Tensor:
        """``values`` [M, K] divided, per image (``image`` long [M]) and column, by their max."""
        peaks = torch.zeros(int(image.max()) + 1, values.shape[1]).index_reduce_(0, image, values, "amax",
                                                                               include_self=False)
        return values / (peaks[image] + 1e-5)

    # ------------------------------------------------------------------ hooks
    def on_predict_start(self) -> None:
        self.build_probes(self.predict_images_loader("probe's images", "build_probes(loader)"))

    def compute_cams(self, images: Tensor, class_ids: Tensor) -> Tensor:
        """Multi-scale + flip probe maps of ``class_ids`` (dataset indices, -1 padding): float [B, K, H, W] in
        [0, 1], each divided by its max."""
        if self.probe_weight is None:
            raise RuntimeError("ProbeCAMClassifier has no probes: call build_probes(loader) first")
        with torch.no_grad():
            return multiscale_cams(self._probe_maps, images, class_ids.to(images.device), self.hparams.cam_scales,
                                   self.hparams.cam_flip)

    def _probe_maps(self, images: Tensor, class_ids: Tensor) -> Tensor:
        """Probe maps [B, K, h, w] of ``class_ids`` [B, K] on ``images`` (zeros for -1 padding)."""
        features = self.hypercolumn_features(images)
        rows = (class_ids - 1).clamp(min=0)
        logits = torch.stack([probe_logits(features[b:b + 1], self.probe_weight[rows[b]], self.probe_bias[rows[b]])[0]
                              for b in range(images.shape[0])])
        maps = F.relu(logits) if self.hparams.get("probe_output", "probability") == "logit" else torch.sigmoid(logits)
        plain = ~self.probe_usable[rows]  # [B, K]: classes without a probe (in every image) keep the plain CAM
        if bool(plain.any()) or self.hparams.get("multiply_cam", False):
            cams = F.interpolate(self.raw_cams(self.net.features(images)), size=maps.shape[-2:], mode="bilinear",
                                 align_corners=False)
            cams = torch.gather(cams, 1, rows[..., None, None].expand(-1, -1, *cams.shape[-2:])).to(maps)
            if self.hparams.get("multiply_cam", False):
                maps = maps * cams
            maps = torch.where(plain[..., None, None], cams, maps)
        return maps * (class_ids > 0)[..., None, None].to(maps)
