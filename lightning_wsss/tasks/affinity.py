"""AffinityNet (Ahn and Kwak, CVPR 2018): learn pixel affinities from confident CAM labels, then random-walk."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..callbacks.writers import Artifact, find_writer
from ..cam.evaluation import load_cams
from ..models.backbones import build_backbone
from ..refine.affinity_labels import affinity_pairs, neighbor_offsets
from ..refine.random_walk import affinity_from_features, random_walk
from .optim import configure_poly


def downsample_labels(mask: Tensor, stride: int, size: Tuple[int, int]) -> Tensor:
    """Subsample label maps [B, H, W] at the centre of every ``stride`` cell to ``size`` (padding 255)."""
    sub = mask[:, stride // 2 :: stride, stride // 2 :: stride]
    sub = sub[:, : size[0], : size[1]]
    return F.pad(sub, (0, size[1] - sub.shape[-1], 0, size[0] - sub.shape[-2]), value=255)


def affinity_loss(aff: Tensor, bg_pos: Tensor, fg_pos: Tensor, neg: Tensor, eps: float = 1e-5) -> Dict[str, Tensor]:
    """AffinityNet loss: 1/4 bg-positive (-log a) + 1/4 fg-positive (-log a) + 1/2 negative (-log(1 - a)).

    Each term is the mean over its pairs (0 when a batch has none).

    Args:
        aff: affinities in (0, 1] [B, P, h, w]; bg_pos, fg_pos, neg: bool [B, P, h, w].

    Returns:
        ``{"loss", "bg", "fg", "neg"}`` scalars.
    """
    def mean_over(values: Tensor, mask: Tensor) -> Tensor:
        return (values * mask).sum() / mask.sum().clamp(min=1)

    log_pos = -torch.log(aff.clamp(min=eps))
    log_neg = -torch.log((1.0 - aff).clamp(min=eps))
    bg, fg, ng = mean_over(log_pos, bg_pos), mean_over(log_pos, fg_pos), mean_over(log_neg, neg)
    return {"loss": 0.25 * bg + 0.25 * fg + 0.5 * ng, "bg": bg, "fg": fg, "neg": ng}


PSA_REFERENCE_CELLS = 56  # psa walks 2 ** 8 steps on 448 px crops at stride 8


class AffinityRefiner(L.LightningModule):
    """AffinityNet: multi-level backbone features fused into an embedding whose L1 distances give affinities.

    Trains on confident label maps (``mask``: class, background 0, 255 unknown) written from the CAM stage and
    read through :class:`~lightning_wsss.datamodules.PseudoMaskDataModule`; pairs of pixels within ``radius``
    at the embedding's stride are bg-positive, fg-positive or negative. ``predict`` reads each image's CAMs
    from ``cams_dir``, adds the background channel ``(1 - max cam) ** bg_alpha`` (psa), propagates all
    channels with the sparse random walk ``(D^-1 A^beta)^t`` and writes the argmax at image resolution to
    ``labels/<id>.png`` (optionally dense-CRF refined).

    Hooks for subclasses: :meth:`configure_backbone`, :meth:`affinity`, :meth:`loss`, :meth:`propagate`.

    Args:
        num_classes: classes including background.
        backbone, weights, output_stride: as :class:`~lightning_wsss.tasks.CAMClassifier`.
        feature_levels: backbone levels fused into the embedding; the first sets the embedding stride.
        embed_dim: channels of the affinity embedding.
        radius: neighbourhood radius of the pairs and of the random walk.
        beta: random-walk exponent (psa: 8).
        log_t: number of steps ``2 ** log_t``; ``None`` (default) scales psa's 256 steps on a 56-cell map (448 px at
            stride 8) to the map at hand, ``t = 256 * (min(h, w) / 56) ** 2``: a walk diffuses about ``r * sqrt(t)``
            cells, so a fixed ``t`` over-smooths small maps across object boundaries.
        bg_alpha: background power of the CAMs before the walk.
        cams_dir: folder of the CAM stage's ``<id>.npz`` files (needed by ``predict``).
        crf: dense-CRF post-processing of the walked probabilities.
        lr, head_lr_mult, weight_decay, momentum, optimizer, poly_power: optimisation.
    """

    artifact_patterns = ("labels/{id}.png",)

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        weights: Optional[str] = None,
        output_stride: int = 16,
        feature_levels: Sequence[int] = (2, 3, 4),
        embed_dim: int = 128,
        radius: int = 5,
        beta: float = 8.0,
        log_t: Optional[int] = None,
        bg_alpha: float = 16.0,
        cams_dir: Optional[str] = None,
        crf: bool = False,
        lr: float = 0.01,
        head_lr_mult: float = 10.0,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        optimizer: str = "sgd",
        poly_power: float = 0.9,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.num_classes = num_classes
        self.backbone = self.configure_backbone()
        channels = self.backbone.feature_info.channels()
        reductions = self.backbone.feature_info.reduction()
        self.levels = list(feature_levels)
        self.stride = int(reductions[self.levels[0]])
        width = max(32, embed_dim // 2)
        self.projections = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(channels[i], width, 1, bias=False), nn.GroupNorm(4, width), nn.ReLU(inplace=True))
             for i in self.levels]
        )
        self.fuse = nn.Conv2d(width * len(self.levels), embed_dim, 1)
        self.register_buffer("offsets", neighbor_offsets(radius), persistent=False)

    # ------------------------------------------------------------------ hooks
    def configure_backbone(self) -> nn.Module:
        """The timm ``features_only`` backbone."""
        hp = self.hparams
        return build_backbone(hp.backbone, hp.weights, output_stride=hp.output_stride)

    def embed(self, images: Tensor) -> Tensor:
        """Affinity embedding [B, D, H / stride, W / stride]."""
        features = self.backbone(images)
        size = features[self.levels[0]].shape[-2:]
        parts = [F.interpolate(proj(features[i]), size=size, mode="bilinear", align_corners=False)
                 if features[i].shape[-2:] != size else proj(features[i])
                 for proj, i in zip(self.projections, self.levels)]
        return self.fuse(torch.cat(parts, dim=1))

    def affinity(self, embedding: Tensor) -> Tensor:
        """Pair affinities a_ij = exp(-mean |f_i - f_j|) [B, P, h, w] over the radius offsets."""
        return affinity_from_features(embedding, self.offsets)

    def loss(self, aff: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        """AffinityNet loss from affinities [B, P, h, w] and confident labels at the embedding stride [B, h, w]."""
        bg_pos, fg_pos, neg = affinity_pairs(labels, self.hparams.radius)
        return affinity_loss(aff, bg_pos, fg_pos, neg)

    def propagate(self, cams_with_bg: Tensor, aff: Tensor) -> Tensor:
        """Random walk of [B, C, h, w] scores (background channel first) over affinities [B, P, h, w]."""
        hp = self.hparams
        return random_walk(cams_with_bg, aff, self.offsets, beta=hp.beta, t=self.walk_steps(tuple(aff.shape[-2:])))

    def walk_steps(self, size: Tuple[int, int]) -> int:
        """Number of random-walk steps for a map of ``size`` cells (see ``log_t``)."""
        if self.hparams.log_t is not None:
            return 2 ** int(self.hparams.log_t)
        return max(1, int(round(256 * (min(size) / PSA_REFERENCE_CELLS) ** 2)))

    # ------------------------------------------------------------------ steps
    def _step(self, batch: Dict[str, Any], stage: str) -> Tensor:
        embedding = self.embed(batch["image"])
        aff = self.affinity(embedding)
        labels = downsample_labels(batch["mask"], self.stride, tuple(embedding.shape[-2:]))
        losses = self.loss(aff, labels)
        batch_size = len(batch["id"])
        self.log(f"{stage}/loss", losses["loss"], prog_bar=stage == "train", batch_size=batch_size, sync_dist=stage != "train")
        for key in ("bg", "fg", "neg"):
            self.log(f"{stage}/loss_{key}", losses[key], batch_size=batch_size, sync_dist=stage != "train")
        return losses["loss"]

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        # validation images carry ground truth; the affinity loss on it measures how well boundaries are learnt
        self._step(batch, "val")

    def predict_step(self, batch: Dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> List[Optional[List[Artifact]]]:
        if not self.hparams.cams_dir:
            raise ValueError("AffinityRefiner.predict needs cams_dir (the CAM stage's cams folder)")
        writer = find_writer(self._trainer)
        results: List[Optional[List[Artifact]]] = [None] * len(batch["id"])
        todo = [i for i, image_id in enumerate(batch["id"]) if writer is None or not writer.is_done(image_id, self)]
        if not todo:
            return results
        embedding = self.embed(batch["image"][todo])
        aff = self.affinity(embedding)
        h, w = embedding.shape[-2:]
        for row, i in enumerate(todo):
            image_id = batch["id"][i]
            height, width = batch["size"][i].tolist()
            data = load_cams(Path(self.hparams.cams_dir) / f"{image_id}.npz")
            cams = torch.from_numpy(data["cams"]).to(aff.device, aff.dtype)[None]
            keys = np.concatenate([[0], data["keys"]]).astype(np.uint8)
            scores = self.cams_with_background(cams, (h, w), (height, width))
            walked = self.propagate(scores, aff[row : row + 1])
            probs = self.upsample_scores(walked, (h * self.stride, w * self.stride))[:, :, :height, :width]
            if self.hparams.crf:
                probs = self.crf_refine(batch, i, probs)
            label = keys[probs[0].argmax(0).cpu().numpy()]
            results[i] = [Artifact(f"labels/{image_id}.png", "png", label)]
        return results

    def cams_with_background(self, cams: Tensor, size: Tuple[int, int], image_size: Tuple[int, int]) -> Tensor:
        """CAMs [1, K, H, W] at image size -> [1, K+1, h, w] at the embedding size with the psa background."""
        height, width = image_size
        if cams.shape[1] == 0:  # no foreground class: background everywhere
            return cams.new_ones(1, 1, *size)
        padded = F.pad(cams, (0, size[1] * self.stride - width, 0, size[0] * self.stride - height))
        small = F.interpolate(padded, size=size, mode="bilinear", align_corners=False)
        bg = (1.0 - small.amax(dim=1, keepdim=True)).clamp(min=0) ** self.hparams.bg_alpha
        return torch.cat([bg, small], dim=1)

    @staticmethod
    def upsample_scores(scores: Tensor, size: Tuple[int, int]) -> Tensor:
        """Bilinear upsampling of walked scores [1, C, h, w] to ``size``."""
        return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)

    def crf_refine(self, batch: Dict[str, Any], index: int, probs: Tensor) -> Tensor:
        """Dense-CRF of normalised walked scores [1, C, H, W] on the denormalised image."""
        from ..datamodules.plotting import denormalize
        from ..refine.crf import crf_from_probs

        height, width = probs.shape[-2:]
        mean, std = self._normalization()
        image = denormalize(batch["image"][index, :, :height, :width].cpu().numpy(), mean, std)
        p = probs[0].clamp(min=0)
        p = p / p.sum(0, keepdim=True).clamp(min=1e-8)
        return torch.from_numpy(crf_from_probs(image, p.cpu().numpy().astype(np.float32)))[None]

    def _normalization(self):
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        from ..datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD

        return (getattr(datamodule, "mean", IMAGENET_MEAN), getattr(datamodule, "std", IMAGENET_STD))

    def configure_optimizers(self):
        hp = self.hparams
        head = list(self.projections.parameters()) + list(self.fuse.parameters())
        return configure_poly(self, self.backbone.parameters(), head, hp.lr, hp.head_lr_mult, hp.weight_decay,
                              hp.optimizer, hp.momentum, hp.poly_power)
