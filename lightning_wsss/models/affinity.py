"""The affinity networks: multi-level backbone features fused into one map at the first level's stride.

:class:`AffinityNet` (AffinityNet, Ahn and Kwak, CVPR 2018) gives an embedding whose L1 distances are pixel
affinities; :class:`BoundaryNet` (IRN, Ahn, Cho and Kwak, CVPR 2019) a class-boundary map. The tasks that train
them and walk on their affinities are :class:`~lightning_wsss.tasks.AffinityRefiner` and
:class:`~lightning_wsss.tasks.BoundaryRefiner`.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AffinityNet", "BoundaryNet", "freeze_after"]


def level_branch(in_channels: int, width: int) -> nn.Module:
    """A 1x1 convolution to ``width`` channels, GroupNorm and ReLU (one per backbone level)."""
    return nn.Sequential(nn.Conv2d(in_channels, width, 1, bias=False), nn.GroupNorm(4, width), nn.ReLU(inplace=True))


def freeze_after(backbone: nn.Module, module_name: str) -> None:
    """Stop gradients to the backbone modules that run after ``module_name`` (a dotted path: its later siblings,
    and those of each of its parents): the levels after the last one used never reach the loss, and DDP refuses
    trainable parameters without gradients (in one process they would not change either)."""
    parent = backbone
    for part in module_name.split("."):
        names = list(parent._modules)
        if part not in names:  # not a plain module tree: leave it as it is
            return
        for later in names[names.index(part) + 1:]:
            parent._modules[later].requires_grad_(False)
        parent = parent._modules[part]


class AffinityNet(nn.Module):
    """Backbone levels, a 1x1 projection per level and a 1x1 ``fuse`` into an ``embed_dim`` embedding.

    Attributes:
        backbone: the timm ``features_only`` backbone.
        levels: the backbone levels used; the first sets the output stride ``stride``.

    Args:
        backbone: a ``features_only`` backbone (``feature_info.channels()`` and ``.reduction()``).
        feature_levels: the levels fused.
        embed_dim: channels of the embedding.
    """

    def __init__(self, backbone: nn.Module, feature_levels: Sequence[int], embed_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.levels = list(feature_levels)
        self.stride = int(backbone.feature_info.reduction()[self.levels[0]])
        channels = backbone.feature_info.channels()
        self.build_head([int(channels[i]) for i in self.levels], embed_dim)
        freeze_after(backbone, backbone.feature_info.module_name()[max(self.levels)])

    def build_head(self, level_channels: List[int], embed_dim: int) -> None:
        """The projections (``max(32, embed_dim // 2)`` channels each) and ``fuse``."""
        width = max(32, embed_dim // 2)
        self.projections = nn.ModuleList([level_branch(c, width) for c in level_channels])
        self.fuse = nn.Conv2d(width * len(level_channels), embed_dim, 1)

    def head_parameters(self) -> List[nn.Parameter]:
        """The parameters of the layers added to the backbone."""
        return list(self.projections.parameters()) + list(self.fuse.parameters())

    def fused_levels(self, features: List[Tensor], branches: nn.ModuleList) -> Tensor:
        """Each level through its branch, resized to the first level's size, concatenated: [B, sum, h, w]."""
        size = features[self.levels[0]].shape[-2:]
        parts = []
        for branch, i in zip(branches, self.levels):
            part = branch(features[i])
            if part.shape[-2:] != size:
                part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
            parts.append(part)
        return torch.cat(parts, dim=1)

    def forward(self, images: Tensor) -> Tensor:
        """The embedding [B, embed_dim, H / stride, W / stride]."""
        return self.fuse(self.fused_levels(self.backbone(images), self.projections))


class BoundaryNet(AffinityNet):
    """IRN's class-boundary branch: a side output per level (``width`` channels), upsampled to the first level's
    stride, concatenated, a 1x1 ``boundary`` convolution to one channel and a sigmoid.

    With ``freeze_backbone`` the backbone takes no gradient and stays in eval mode (frozen batch-norm statistics).
    """

    def __init__(self, backbone: nn.Module, feature_levels: Sequence[int], width: int,
                 freeze_backbone: bool = False) -> None:
        super().__init__(backbone, feature_levels, width)
        self.freeze_backbone = bool(freeze_backbone)
        if self.freeze_backbone:
            self.backbone.requires_grad_(False)

    def build_head(self, level_channels: List[int], embed_dim: int) -> None:
        """The side outputs (``embed_dim`` channels each) and ``boundary``."""
        self.side_outputs = nn.ModuleList([level_branch(c, embed_dim) for c in level_channels])
        self.boundary = nn.Conv2d(embed_dim * len(level_channels), 1, 1)

    def head_parameters(self) -> List[nn.Parameter]:
        return list(self.side_outputs.parameters()) + list(self.boundary.parameters())

    def train(self, mode: bool = True) -> "BoundaryNet":
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def boundary_logits(self, images: Tensor) -> Tensor:
        """Boundary logits [B, 1, H / stride, W / stride]."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            features = self.backbone(images)
        return self.boundary(self.fused_levels(features, self.side_outputs))

    def forward(self, images: Tensor) -> Tensor:
        """The class-boundary map ``B`` in (0, 1) [B, 1, H / stride, W / stride]."""
        return torch.sigmoid(self.boundary_logits(images))
