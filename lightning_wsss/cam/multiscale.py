"""Multi-scale / flip CAM inference, background scoring and CAM -> label conversion (pure functions)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_wsss.cam.functional import normalize_maps, upsample
from lightning_wsss.tensors import channel_argmax

__all__ = ["multiscale_cams", "add_background", "cams_to_label"]

CamFn = Callable[[Tensor, Tensor], Tensor]


def multiscale_cams(
    cam_fn: CamFn,
    images: Tensor,
    class_ids: Tensor,
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    flip: bool = True,
    eps: float = 1e-5,
) -> Tensor:
    """Sum of CAMs over rescaled (and horizontally flipped) copies of the images, max-normalised.

    For every scale ``s`` the images are resized (bilinear) to ``(round(H*s), round(W*s))``; ``cam_fn`` gives
    raw, non-negative maps at that size; flipped copies are un-flipped; every map is resized back to
    ``(H, W)``; all are summed and each summed map is divided by its max (+ ``eps``).

    Args:
        cam_fn: ``(images [B, 3, h, w], class_ids [B, K]) -> raw maps [B, K, h, w]`` (e.g. a
            :class:`~lightning_wsss.cam.CAMExtractor` with ``normalize="none"``).
        images: float ``[B, 3, H, W]``.
        class_ids: long ``[B, K]`` (passed through to ``cam_fn``; ``-1`` padding gives zero maps).
        scales: resize factors.
        flip: also use the horizontally flipped images.
        eps: added to the max in the final normalisation.

    Returns:
        float tensor ``[B, K, H, W]`` in ``[0, 1]`` (all-zero maps stay zero).
    """
    if not scales:
        raise ValueError("scales is empty")
    height, width = images.shape[-2:]
    total = None
    for scale in scales:
        size = (max(1, int(round(height * scale))), max(1, int(round(width * scale))))
        scaled = images if size == (height, width) else F.interpolate(
            images, size=size, mode="bilinear", align_corners=False
        )
        batch = torch.cat([scaled, scaled.flip(-1)]) if flip else scaled
        ids = torch.cat([class_ids, class_ids]) if flip else class_ids
        maps = cam_fn(batch, ids)
        if flip:
            maps = maps[: images.shape[0]] + maps[images.shape[0]:].flip(-1)
        maps = upsample(maps.float(), (height, width))
        total = maps if total is None else total + maps
    return normalize_maps(total, "max", eps)


def add_background(
    cams: Tensor,
    mode: str = "constant",
    bg_threshold: float = 0.15,
    alpha: float = 4.0,
) -> Tensor:
    """Prepend a background channel to normalised foreground CAMs.

    Args:
        cams: float ``[B, K, H, W]`` in ``[0, 1]``.
        mode: ``"constant"`` -- background score ``bg_threshold`` everywhere (IRN-style threshold);
            ``"power"`` -- ``(1 - max_k cams_k) ** alpha`` (PSA-style).
        bg_threshold: the constant background score.
        alpha: the exponent of the power mode.

    Returns:
        float tensor ``[B, K + 1, H, W]``; channel 0 is the background.
    """
    if cams.dim() != 4:
        raise ValueError(f"cams must be [B, K, H, W], got {tuple(cams.shape)}")
    if mode == "constant":
        bg = torch.full_like(cams[:, :1], float(bg_threshold))
    elif mode == "power":
        peak = cams.amax(dim=1, keepdim=True) if cams.shape[1] else torch.zeros_like(cams[:, :1])
        bg = (1.0 - peak).clamp(min=0.0) ** alpha
    else:
        raise ValueError(f"mode must be 'constant' or 'power', got {mode!r}")
    return torch.cat([bg, cams], dim=1)


def cams_to_label(cams_with_bg: Tensor, class_ids: Tensor) -> Tensor:
    """Per-pixel argmax of background + class CAMs, mapped to dataset class indices.

    Args:
        cams_with_bg: float ``[B, K + 1, H, W]``; channel 0 = background, channel ``j > 0`` belongs to
            ``class_ids[:, j - 1]``.
        class_ids: long ``[B, K]`` dataset class indices (1..num_classes-1); ``-1`` = padding, whose
            channel never wins. Ties go to the lower channel (background first).

    Returns:
        long tensor ``[B, H, W]``: 0 for background, else the winning class index.
    """
    if cams_with_bg.dim() != 4 or class_ids.dim() != 2 or cams_with_bg.shape[:2] != (
        class_ids.shape[0], class_ids.shape[1] + 1
    ):
        raise ValueError(
            f"expected cams_with_bg [B, K+1, H, W] and class_ids [B, K], "
            f"got {tuple(cams_with_bg.shape)} and {tuple(class_ids.shape)}"
        )
    class_ids = class_ids.to(cams_with_bg.device).long()
    valid = torch.cat([torch.ones_like(class_ids[:, :1], dtype=torch.bool), class_ids >= 0], dim=1)
    scores = cams_with_bg.masked_fill(~valid[:, :, None, None], float("-inf"))
    winner = channel_argmax(scores, dim=1)  # [B, H, W]
    lookup = torch.cat([torch.zeros_like(class_ids[:, :1]), class_ids.clamp(min=0)], dim=1)  # [B, K+1]
    return torch.gather(lookup, 1, winner.flatten(1)).view_as(winner)
