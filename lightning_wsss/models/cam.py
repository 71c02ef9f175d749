"""The CAM network: a backbone's last feature map, a 1x1 classifier and pooled class scores.

:class:`CAMNet` is a plain ``nn.Module`` (``net(images)`` gives class logits), so the CAM toolkit
(:class:`~lightning_wsss.cam.CAMExtractor`) explains it directly: its target layer is ``net.features``. The
task that trains it is :class:`~lightning_wsss.tasks.CAMClassifier`; :class:`ReCAMNet` adds ReCAM's second head.
"""

from __future__ import annotations

import copy
import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["POOLINGS", "pool_class_maps", "LastFeature", "CAMNet", "ReCAMNet"]

POOLINGS = ("gap", "gmp", "lse", "topk")


def pool_class_maps(maps: Tensor, pooling: str, param: Optional[float] = None) -> Tensor:
    """Pool class activation maps [B, C, h, w] to class scores [B, C].

    ``gap``: mean; ``gmp``: max; ``lse``: ``log(mean(exp(r * m))) / r`` with ``r = param`` (default 5), between
    mean (r -> 0) and max (r -> inf); ``topk``: mean of the ``param`` (default 0.1) largest fraction of cells.
    """
    flat = maps.flatten(2)
    if pooling == "gap":
        return flat.mean(-1)
    if pooling == "gmp":
        return flat.amax(-1)
    if pooling == "lse":
        r = float(param if param is not None else 5.0)
        return (torch.logsumexp(r * flat, dim=-1) - math.log(flat.shape[-1])) / r
    if pooling == "topk":
        k = max(1, int(round(float(param if param is not None else 0.1) * flat.shape[-1])))
        return flat.topk(k, dim=-1).values.mean(-1)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


class LastFeature(nn.Module):
    """Wraps a timm ``features_only`` backbone and returns its last feature map [B, D, h, w].

    It is the CAM target layer: hooks on this module see the classifier's input features.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: Tensor) -> Tensor:
        return self.backbone(images)[-1]

    def channels(self) -> int:
        """Channels D of the last feature map."""
        return int(self.backbone.feature_info.channels()[-1])


class CAMNet(nn.Module):
    """Backbone features, a 1x1 classifier ``head`` and pooled class scores.

    Attributes:
        features: :class:`LastFeature` of the backbone (the CAM target layer).
        head: the classifier, a 1x1 convolution from D to C-1 channels.

    Args:
        backbone: a ``features_only`` backbone (``feature_info.channels()``).
        head: the classifier on its last level.
        pooling, pooling_param: how class scores pool their activation maps (:func:`pool_class_maps`).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, pooling: str = "gap",
                 pooling_param: Optional[float] = None) -> None:
        super().__init__()
        self.features = LastFeature(backbone)
        self.head = head
        self.pooling = pooling
        self.pooling_param = pooling_param

    def forward(self, images: Tensor) -> Tensor:
        """Class logits [B, C-1] for images [B, 3, H, W]."""
        return self.classify(self.features(images))

    def classify(self, features: Tensor) -> Tensor:
        """Logits [B, C-1] from features [B, D, h, w]: the head on the pooled features (``gap``), or the pooled
        class activation maps of the head (the head is linear, so both agree for ``gap``)."""
        if self.pooling == "gap":
            return self.head(features.mean(dim=(2, 3), keepdim=True)).flatten(1)
        return pool_class_maps(self.head(features), self.pooling, self.pooling_param)

    def cam_weight(self) -> Tensor:
        """The classifier rows [C-1, D] a CAM projects the features on."""
        return self.head.weight.flatten(1)

    def raw_cams(self, features: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        """ReLU'd class activation maps [B, C-1, h, w] of features [B, D, h, w] on ``weight`` [C-1, D]
        (default: :meth:`cam_weight`)."""
        weight = self.cam_weight() if weight is None else weight
        return F.relu(F.conv2d(features, weight[..., None, None]))

    def head_parameters(self) -> List[nn.Parameter]:
        """The parameters of the layers added to the backbone."""
        return list(self.head.parameters())


RECAM_INIT_SEED = 0
"""Seed of the ReCAM head's own generator (``recam_cam: product``): its draw leaves the global random stream, and
so the classifier's training before ReCAM starts, untouched."""


class ReCAMNet(CAMNet):
    """A :class:`CAMNet` with ReCAM's second classifier ``recam_head``.

    ``recam_cam``: ``head`` (the ``recam_head`` starts as a copy of ``head`` and its rows are the CAM weights) or
    ``product`` (ReCAM's code: the CAM weights are ``recam_head`` times ``head`` element by element, and the
    ``recam_head`` starts as a conv layer's default draw, uniform in +-1/sqrt(D), from its own generator seeded
    :data:`RECAM_INIT_SEED`). Neither touches the global random stream. ``recam_background``: one more row,
    ``recam_background_row`` [D] (zeros at the start), the background's in the softmax cross-entropy; it makes no
    CAM.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, pooling: str = "gap",
                 pooling_param: Optional[float] = None, recam_cam: str = "head", recam_background: bool = False) -> None:
        if recam_cam not in ("head", "product"):
            raise ValueError(f"recam_cam must be 'head' or 'product', got {recam_cam!r}")
        super().__init__(backbone, head, pooling, pooling_param)
        self.recam_cam = recam_cam
        self.recam_head = copy.deepcopy(head)
        self.recam_background_row = nn.Parameter(head.weight.new_zeros(head.weight[0].numel())) if recam_background \
            else None
        if recam_cam == "product":
            weight = self.recam_head.weight
            bound = 1.0 / float(weight[0].numel()) ** 0.5
            generator = torch.Generator().manual_seed(RECAM_INIT_SEED)
            with torch.no_grad():
                weight.copy_(torch.rand(weight.shape, generator=generator) * 2 * bound - bound)

    def cam_weight(self) -> Tensor:
        if self.recam_cam == "product":
            return (self.recam_head.weight * self.head.weight).flatten(1)
        return self.recam_head.weight.flatten(1)

    def head_parameters(self) -> List[nn.Parameter]:
        extra = [] if self.recam_background_row is None else [self.recam_background_row]
        return super().head_parameters() + list(self.recam_head.parameters()) + extra
