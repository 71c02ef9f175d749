"""A CAM classifier trained with a focal multi-label loss: one hook of CAMClassifier overridden."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch.nn.functional as F
from torch import Tensor

from lightning_wsss.tasks import CAMClassifier


class FocalCAMClassifier(CAMClassifier):
    """:class:`~lightning_wsss.tasks.CAMClassifier` whose loss down-weights the labels it already predicts well
    (focal loss, Lin et al. ICCV 2017, per class): the rare and hard classes drive the training."""

    gamma: float = 2.0

    def loss(self, logits: Tensor, labels: Tensor, batch: Optional[Dict[str, Any]] = None) -> Tensor:
        """Mean over images and classes of ``(1 - p_t) ** gamma * BCE``; ``logits`` and ``labels`` [B, C-1]."""
        labels = labels.float()
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        p_t = logits.sigmoid() * labels + (1 - logits.sigmoid()) * (1 - labels)
        return ((1 - p_t) ** self.gamma * bce).mean()
