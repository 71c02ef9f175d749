"""IRN's inter-pixel relations (Ahn, Cho and Kwak, CVPR 2019): a class-boundary map whose path affinities drive
the random walk. The displacement field (instances) is not implemented."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..refine.affinity_labels import affinity_pairs, neighbor_offsets
from ..refine.path_affinity import boundary_loss, path_affinity
from ..errors import DataError
from .affinity import AffinityRefiner


class BoundaryRefiner(AffinityRefiner):
    """IRN's class-boundary branch trained from the confident labels' pair relations; walks on path affinities.

    Everything but the head and the affinities is :class:`~lightning_wsss.tasks.AffinityRefiner`'s: the data
    (confident labels through ``PseudoMaskDataModule``), the optimiser, ``backbone_init``, validation (loss and
    ``val/aff_*`` separation on the val masks) and prediction (walk modes ``psa`` / ``irn``, steps, ``labels/<id>.png``).

    * head (:meth:`configure_head`, :meth:`embed`): a side output of each of ``feature_levels`` (1x1 conv to
      ``embed_dim`` channels, GroupNorm, ReLU), upsampled to the first level's stride, concatenated, a 1x1 conv to one
      channel and a sigmoid: the boundary map ``B`` [B, 1, h, w] (irn: 5 levels, 32 channels each, stride 4);
    * :meth:`affinity`: the path affinities ``a_ij = 1 - max B`` on the segment from i to j over the walk's
      ``radius`` offsets (:func:`~lightning_wsss.refine.path_affinity.path_affinity`); the walk raises them to
      ``beta`` as for AffinityNet (irn: beta 10, 256 steps);
    * :meth:`training_loss`: irn's loss on path affinities over ``train_radius`` (irn: 10 at stride 4; default: the
      walk's ``radius``), 1/4 bg-positive + 1/4 fg-positive + 1/2 negative
      (:func:`~lightning_wsss.refine.path_affinity.boundary_loss`);
    * :meth:`walk_cams`: with ``boundary_cams`` (irn: on) the CAMs are multiplied by ``1 - B`` before the walk;
    * :meth:`parameter_groups`, :meth:`train`: with ``freeze_backbone`` (irn) only the head trains, the backbone is
      kept in eval mode and no gradient flows into it.

    Args:
        train_radius: radius of the training pairs (None: ``radius``).
        boundary_cams: multiply the CAMs by ``1 - B`` before the walk.
        freeze_backbone: train the boundary head only.
        others: as :class:`~lightning_wsss.tasks.AffinityRefiner`; ``embed_dim`` is the width of each side output.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        weights: Optional[str] = None,
        output_stride: int = 16,
        feature_levels: Sequence[int] = (1, 2, 3, 4),
        embed_dim: int = 32,
        radius: int = 5,
        beta: float = 10.0,
        log_t: Optional[int] = None,
        bg_alpha: float = 16.0,
        cams_dir: Optional[str] = None,
        t: Optional[int] = None,
        walk_mode: str = "psa",
        bg_threshold: float = 0.25,
        irn_normalize: str = "class",
        backbone_init: Optional[str] = None,
        crf: bool = False,
        lr: float = 0.01,
        head_lr_mult: float = 10.0,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        optimizer: str = "sgd",
        poly_power: float = 0.9,
        train_radius: Optional[int] = None,
        boundary_cams: bool = True,
        freeze_backbone: bool = False,
    ) -> None:
        if train_radius is not None and int(train_radius) < 2:
            raise ValueError(f"train_radius must be >= 2, got {train_radius}")
        super().__init__(
            num_classes, backbone=backbone, weights=weights, output_stride=output_stride,
            feature_levels=feature_levels, embed_dim=embed_dim, radius=radius, beta=beta, log_t=log_t,
            bg_alpha=bg_alpha, cams_dir=cams_dir, t=t, walk_mode=walk_mode, bg_threshold=bg_threshold,
            irn_normalize=irn_normalize, backbone_init=backbone_init, crf=crf, lr=lr, head_lr_mult=head_lr_mult,
            weight_decay=weight_decay, momentum=momentum, optimizer=optimizer, poly_power=poly_power,
        )
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        if train_radius is not None:
            self.register_buffer("train_offsets", neighbor_offsets(int(train_radius)), persistent=False)

    # ------------------------------------------------------------------ hooks
    def configure_head(self, level_channels: List[int]) -> None:
        """Side outputs (1x1 conv, GroupNorm, ReLU per level) and the 1x1 ``boundary`` conv on their concatenation."""
        width = int(self.hparams.embed_dim)
        self.side_outputs = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.GroupNorm(4, width), nn.ReLU(inplace=True))
             for c in level_channels]
        )
        self.boundary = nn.Conv2d(width * len(level_channels), 1, 1)

    def parameter_groups(self) -> Tuple[List[nn.Parameter], List[nn.Parameter]]:
        head = list(self.side_outputs.parameters()) + list(self.boundary.parameters())
        return ([] if self.hparams.get("freeze_backbone") else list(self.backbone.parameters())), head

    def train(self, mode: bool = True) -> "BoundaryRefiner":
        super().train(mode)
        if self.hparams.get("freeze_backbone"):
            self.backbone.eval()  # frozen batch-norm statistics too
        return self

    def boundary_logits(self, images: Tensor) -> Tensor:
        """Boundary logits [B, 1, H / stride, W / stride]."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.hparams.get("freeze_backbone")):
            features = self.backbone(images)
        size = features[self.levels[0]].shape[-2:]
        parts = []
        for side, i in zip(self.side_outputs, self.levels):
            part = side(features[i])
            if part.shape[-2:] != size:
                part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
            parts.append(part)
        return self.boundary(torch.cat(parts, dim=1))

    def embed(self, images: Tensor) -> Tensor:
        """The class-boundary map ``B`` in (0, 1) [B, 1, H / stride, W / stride]."""
        return torch.sigmoid(self.boundary_logits(images))

    def affinity(self, embedding: Tensor) -> Tensor:
        """Path affinities [B, P, h, w] of the boundary map [B, 1, h, w] over the radius offsets."""
        return path_affinity(embedding[:, 0], self.offsets)

    def training_loss(self, embedding: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        """irn's loss on the path affinities of pairs within ``train_radius`` (default: the walk's ``radius``)."""
        radius = self.hparams.get("train_radius")
        if radius is None:
            return super().training_loss(embedding, labels)
        bg_pos, fg_pos, neg = affinity_pairs(labels, int(radius))
        return boundary_loss(embedding[:, 0], bg_pos, fg_pos, neg, self.train_offsets)

    def walk_cams(self, cams_fg: Tensor, embedding: Tensor) -> Tensor:
        """CAMs [1, K, h, w] times ``1 - B`` with ``boundary_cams`` (irn), else unchanged."""
        if not self.hparams.get("boundary_cams", True):
            return cams_fg
        return cams_fg * (1.0 - embedding.to(cams_fg.dtype))


def refiner_class(path: str) -> type:
    """:class:`BoundaryRefiner` for a checkpoint with a boundary head (``boundary.*`` weights), else
    :class:`~lightning_wsss.tasks.AffinityRefiner` (for tools given a refiner checkpoint without its class path).

    Raises:
        DataError: unreadable file or no state_dict (naming the file).
    """
    from ..serialization import safe_torch_load

    checkpoint = safe_torch_load(path, "checkpoint")
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise DataError(path, "not a checkpoint with a state_dict")
    return BoundaryRefiner if any(k.startswith("boundary.") for k in state) else AffinityRefiner
