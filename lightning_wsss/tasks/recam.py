"""ReCAM (Chen, Wang, Wang, Sun, "Class Re-Activation Maps for Weakly-Supervised Semantic Segmentation",
CVPR 2022) on top of :class:`~lightning_wsss.tasks.classifier.CAMClassifier`.

The multi-label soft-margin (binary cross-entropy) loss lets a class's evidence overlap other classes and the
background, so its CAM both misses object parts and leaks onto context. ReCAM adds a second, softmax
cross-entropy (SCE) loss on *class-masked* features: for every image and present class ``k``, the features
weighted by the class's max-normalised CAM, ``f_k = mean_ij(CAM_k(i, j) * F(i, j))`` [D], are classified by a
new 1x1 head over the foreground classes with target ``k`` (:func:`recam_loss`). SCE makes the classes compete,
so each masked feature must hold its own class only; the CAMs used for pseudo labels are then the ReLU'd
projections of the features on the new head's rows (:meth:`ReCAMClassifier.cam_weight`).

Training: ``loss = BCE + recam_weight * SCE``; the SCE term starts at ``recam_start_epoch`` (ReCAM fine-tunes a
trained CAM classifier: start after the epochs a plain classifier needs). With ``recam_lr_mult`` the epochs before
are a plain classifier's whole schedule and those from it a fresh poly schedule at ``recam_lr_mult`` times the
rates, as ReCAM fine-tunes a trained classifier at its own small rate (its code: 5e-4 for the new head and 5e-5
for the rest, against 0.1 / 1.0 for the CAM classifier), so that the SCE term re-activates the maps without
moving the backbone towards the context the CAM masks hold. The new head starts as a copy of the
classifier's head (so, with the same seed, training up to ``recam_start_epoch`` is the plain classifier's, bit
for bit) and trains at the head learning rate.

The network is a :class:`~lightning_wsss.models.cam.ReCAMNet` (``net_class``: the CAM network with the second
head ``net.recam_head``, trained with the classifier's head). Hooks overridden: :meth:`training_loss` (adds the
SCE term), :meth:`cam_weight` (the classifier's rows when ``cams_from_recam_head`` is off), :meth:`net_kwargs`,
:meth:`schedule_restart` (the fine-tuning rate).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.cam import ReCAMNet
from .classifier import CAMClassifier

__all__ = ["ReCAMClassifier", "class_masked_features", "background_masked_features", "recam_loss"]


def class_masked_features(features: Tensor, cams: Tensor) -> Tensor:
    """Features pooled under each class's max-normalised CAM.

    Args:
        features: float [B, D, h, w].
        cams: float [B, C, h, w], non-negative (ReLU'd class activation maps of all foreground classes).

    Returns:
        float [B, C, D]: ``mean_ij(cams[b, c] / max(cams[b, c]) * features[b])``.
    """
    normalised = cams / (cams.flatten(2).amax(-1)[..., None, None] + 1e-5)
    return torch.einsum("bchw,bdhw->bcd", normalised, features) / float(features.shape[-2] * features.shape[-1])


def background_masked_features(features: Tensor, cams: Tensor, labels: Tensor) -> Tensor:
    """Features pooled under the background of each image: one minus the max of its present classes'
    max-normalised CAMs.

    Args:
        features: float [B, D, h, w].
        cams: float [B, C, h, w], non-negative.
        labels: multi-hot float [B, C] (an image without labels is all background).

    Returns:
        float [B, D]: ``mean_ij((1 - max_k present cams[b, k] / max) * features[b])``.
    """
    normalised = cams / (cams.flatten(2).amax(-1)[..., None, None] + 1e-5)
    present = normalised * (labels > 0.5).to(normalised)[..., None, None]
    background = (1.0 - present.amax(1)).clamp(min=0.0)
    return torch.einsum("bhw,bdhw->bd", background, features) / float(features.shape[-2] * features.shape[-1])


def recam_loss(masked: Tensor, labels: Tensor, weight: Tensor, background: Optional[Tensor] = None,
               background_row: Optional[Tensor] = None) -> Tensor:
    """Softmax cross-entropy of every present class's masked feature against its own class.

    Args:
        masked: float [B, C, D] (:func:`class_masked_features`).
        labels: multi-hot float [B, C].
        weight: the ReCAM head's rows, float [C, D].
        background, background_row: with both (float [B, D] from :func:`background_masked_features`, and [D]),
            the softmax runs over the C classes and the background (index C), and each image adds its
            background feature with the background as target: a class's masked feature must then also tell its
            class from the image's background, not only from the other classes.

    Returns:
        scalar: the sum over images of the mean cross-entropy over each image's present classes (and its
        background), divided by B (ReCAM's normalisation); 0 for a batch without labels and background.
    """
    with_background = background is not None and background_row is not None
    rows_weight = torch.cat([weight, background_row[None].to(weight)]) if with_background else weight
    rows, classes = torch.nonzero(labels > 0.5, as_tuple=True)
    per_image = torch.zeros(labels.shape[0], device=masked.device, dtype=torch.float32)  # float32 under autocast too
    counts = torch.bincount(rows, minlength=labels.shape[0]).to(per_image)
    if rows.numel() > 0:
        per_pair = F.cross_entropy(masked[rows, classes] @ rows_weight.T, classes, reduction="none")
        per_image = per_image.index_add(0, rows, per_pair.to(per_image))
    elif not with_background:
        return masked.sum() * 0.0
    if with_background:
        target = torch.full((labels.shape[0],), weight.shape[0], device=masked.device, dtype=torch.long)
        per_image = per_image + F.cross_entropy(background @ rows_weight.T, target, reduction="none").to(per_image)
        counts = counts + 1
    return (per_image / counts.clamp(min=1)).sum() / labels.shape[0]


class ReCAMClassifier(CAMClassifier):
    """A CAM classifier with ReCAM's softmax cross-entropy on class-masked features (module docstring).

    Args:
        num_classes: classes including background.
        recam_weight: weight of the SCE term (ReCAM: 0.7 on VOC).
        recam_start_epoch: the first epoch with the SCE term (before: the plain classifier's loss).
        recam_lr_mult: ReCAM's fine-tuning schedule: the epochs before ``recam_start_epoch`` are a plain
            classifier's (its poly schedule over them), the epochs from it a fresh poly schedule at this factor
            times the rates (ReCAM: a trained classifier, then 4 epochs at a small rate); None: one poly schedule
            over all epochs (the SCE term joins the classifier's training).
        cams_from_recam_head: CAMs from the ReCAM head (ReCAM); ``False``: from the classifier's head of the
            fine-tuned network (separates what the SCE term does to the backbone from what the new head adds).
        recam_cam: the ReCAM head's CAM weights (:class:`~lightning_wsss.models.cam.ReCAMNet`): ``head``, its own
            rows (it starts as a copy of the classifier's head), or ``product``, its rows times the classifier's
            element by element, as ReCAM's code computes them (it starts from a seeded draw of its own).
        recam_background: add the image's background to the softmax (a row of its own, fed with the features
            pooled under one minus the present classes' CAMs; :func:`recam_loss`). Not in ReCAM: its softmax over
            the foreground classes only teaches the head to tell one class's masked feature from another's, so
            context a class's CAM covers (water under a boat) is free to stay in its row; with the background as a
            competitor it is not. Off by default.
        **kwargs: :class:`CAMClassifier` arguments.
    """

    # the ReCAM head starts as a copy of the classifier's head: no random draw, so the epochs before
    # recam_start_epoch are the plain classifier's, bit for bit, and ReCAM fine-tunes the same classifier
    net_class = ReCAMNet
    ddp_find_unused_parameters = True  # the ReCAM head takes no gradient before recam_start_epoch

    def __init__(self, num_classes: int, recam_weight: float = 0.7, recam_start_epoch: int = 0,
                 cams_from_recam_head: bool = True, recam_lr_mult: Optional[float] = None, recam_cam: str = "head",
                 recam_background: bool = False, **kwargs: Any) -> None:
        if recam_weight < 0:
            raise ValueError(f"recam_weight must be >= 0, got {recam_weight}")
        if recam_cam not in ("head", "product"):
            raise ValueError(f"recam_cam must be 'head' or 'product', got {recam_cam!r}")
        if recam_lr_mult is not None and recam_lr_mult <= 0:
            raise ValueError(f"recam_lr_mult must be > 0, got {recam_lr_mult}")
        super().__init__(num_classes, **kwargs)

    def net_kwargs(self) -> Dict[str, Any]:
        """``recam_cam`` and ``recam_background`` for :class:`~lightning_wsss.models.cam.ReCAMNet`."""
        return {"recam_cam": self.hparams.get("recam_cam", "head"),
                "recam_background": bool(self.hparams.get("recam_background", False))}

    def schedule_restart(self) -> Dict[str, Any]:
        """With ``recam_lr_mult``, the plain poly schedule over the epochs before ``recam_start_epoch`` and a fresh
        one at ``recam_lr_mult`` times the rates after (:func:`~lightning_wsss.tasks.optim.poly_factor`); else
        one poly schedule over all epochs."""
        mult = self.hparams.get("recam_lr_mult")
        if mult is None:
            return {}
        start = self.recam_start_step if int(self.hparams.recam_start_epoch) > 0 else 0
        return {"restart_step": start, "restart_mult": float(mult)}

    def recam_start_step(self) -> int:
        """The optimiser step at which ``recam_start_epoch`` begins."""
        trainer = self.trainer
        per_epoch = math.ceil(trainer.estimated_stepping_batches / max(1, trainer.max_epochs))
        return int(self.hparams.recam_start_epoch) * per_epoch

    def cam_weight(self) -> Tensor:
        """The ReCAM head's rows [C-1, D]: CAMs are re-activated maps (the classifier's rows when
        ``cams_from_recam_head`` is off)."""
        if not self.hparams.get("cams_from_recam_head", True):
            return self.net.head.weight.flatten(1)
        return self.net.cam_weight()

    def training_loss(self, features: Tensor, batch: Dict[str, Any]) -> Tensor:
        """BCE on the class logits plus ``recam_weight`` x SCE on the class-masked features (from
        ``recam_start_epoch`` on). The masks are the plain classifier's CAMs, as in ReCAM."""
        loss = super().training_loss(features, batch)
        if self.current_epoch < int(self.hparams.recam_start_epoch) or not self.hparams.recam_weight:
            return loss
        cams = F.relu(F.conv2d(features, self.net.head.weight))
        background = background_row = None
        if self.hparams.get("recam_background", False):
            background = background_masked_features(features, cams, batch["labels"])
            background_row = self.net.recam_background_row
        sce = recam_loss(class_masked_features(features, cams), batch["labels"], self.net.recam_head.weight.flatten(1),
                         background, background_row)
        if self._trainer is not None and self.trainer.training:
            self.log("train/recam_loss", sce, batch_size=len(batch["id"]))
        return loss + float(self.hparams.recam_weight) * sce
