"""Batching of samples of different sizes and different numbers of boxes."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F

from ..datasets.classes import IGNORE_INDEX


def _pad_to(tensor: torch.Tensor, height: int, width: int, value: float) -> torch.Tensor:
    return F.pad(tensor, (0, width - tensor.shape[-1], 0, height - tensor.shape[-2]), value=value)


def collate_samples(samples: Sequence[Dict[str, Any]], size_divisor: int = 1) -> Dict[str, Any]:
    """Collate transformed samples into a batch.

    Images are padded at the bottom and right to the largest size in the batch (rounded up to
    ``size_divisor``) with 0 (the mean colour after normalisation); masks are padded with 255, and a sample
    without a mask gets an all-255 one, so padding and unknown pixels are ignored by the loss and the metrics.

    Returns:
        ``image`` float [B, 3, H, W]; ``mask``/``gt_mask`` int64 [B, H, W] when any sample has one;
        ``labels`` float [B, C - 1]; ``boxes`` list of float [N_i, 4]; ``box_labels`` list of int64 [N_i];
        ``size`` int64 [B, 2] each sample's unpadded (height, width); ``id`` list of str.
    """
    height = max(int(s["image"].shape[-2]) for s in samples)
    width = max(int(s["image"].shape[-1]) for s in samples)
    if size_divisor > 1:
        height = -(-height // size_divisor) * size_divisor
        width = -(-width // size_divisor) * size_divisor
    batch: Dict[str, Any] = {
        "id": [s["id"] for s in samples],
        "image": torch.stack([_pad_to(s["image"], height, width, 0.0) for s in samples]),
        "labels": torch.stack([s["labels"] for s in samples]),
        "boxes": [s["boxes"] for s in samples],
        "box_labels": [s["box_labels"] for s in samples],
        "size": torch.stack([s["size"] for s in samples]),
    }
    for key in ("mask", "gt_mask"):
        if any(key in s for s in samples):
            masks: List[torch.Tensor] = []
            for s in samples:
                mask = s.get(key)
                if mask is None:
                    mask = torch.full(s["image"].shape[-2:], IGNORE_INDEX, dtype=torch.long)
                masks.append(_pad_to(mask, height, width, IGNORE_INDEX))
            batch[key] = torch.stack(masks)
    return batch
