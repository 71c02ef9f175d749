"""Bounding-box tightness prior (BBTP; Hsu et al., "Weakly Supervised Instance Segmentation using the Bounding
Box Tightness Prior", NeurIPS 2019), adapted to semantic segmentation maps.

A tight box touches its object on every row and every column it spans, so each horizontal / vertical line
crossing the box inside the box is a *positive bag* (at least one of its pixels is the object); each full
image row / column that crosses no box of a class is a *negative bag* for that class (none of its pixels is
that class). With the plain max as the bag score, the multiple-instance loss is ``-log(max)`` for positive
bags and ``-log(1 - max)`` for negative bags. A pairwise term keeps neighbouring predictions equal.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .initializers import box_pixel_range

__all__ = ["tightness_prior_loss", "pairwise_smoothness_loss"]


def _activate(scores: Tensor, activation: str) -> Tensor:
    if activation == "softmax":
        return scores.softmax(dim=1)
    if activation == "sigmoid":
        return scores.sigmoid()
    if activation == "none":
        return scores
    raise ValueError(f"activation must be 'softmax', 'sigmoid' or 'none', got {activation!r}")


def tightness_prior_loss(
    scores: Tensor,
    boxes: Sequence[Tensor],
    box_labels: Sequence[Tensor],
    *,
    activation: str = "softmax",
    negative_weight: float = 1.0,
    eps: float = 1e-6,
) -> Tensor:
    """Multiple-instance tightness loss over rows and columns.

    For image ``b`` and foreground class ``c`` (channel ``c``, ``1..C-1``; channel 0 is background and gets
    no term):

    * positive bags: for each box of class ``c`` and each row it covers, the pixels of that row *inside the
      box*; likewise each column. Term: ``-log(max_p)``.
    * negative bags: each full image row (column) not covered by any box of class ``c`` in image ``b``;
      classes without boxes in the image have all rows and columns negative. Term: ``-log(1 - max_p)``.

    Box pixel coverage follows :func:`~lightning_wsss.boxes.initializers.box_pixel_range` (``floor(x_min) ..
    ceil(x_max) - 1``), clipped to the map. Boxes must be given in the coordinates of ``scores`` (rescale them
    when the network predicts at a lower resolution).

    Args:
        scores: float [B, C, H, W]: logits (``activation="softmax"`` over C, or ``"sigmoid"``) or
            probabilities (``activation="none"``).
        boxes: length-B sequence of float [N_b, 4] ``(x_min, y_min, x_max, y_max)``.
        box_labels: length-B sequence of int [N_b], classes in ``1..C-1``.
        negative_weight: weight of the negative-bag mean.
        eps: probabilities are clamped to ``[eps, 1 - eps]`` before the logs.

    Returns:
        scalar tensor ``mean(positive terms) + negative_weight * mean(negative terms)`` (a mean that has no
        terms contributes 0), differentiable w.r.t. ``scores``.
    """
    if scores.ndim != 4:
        raise ValueError(f"scores must be [B, C, H, W], got {list(scores.shape)}")
    batch, num_classes, height, width = scores.shape
    if len(boxes) != batch or len(box_labels) != batch:
        raise ValueError(f"need one box tensor and one label tensor per image ({batch}), "
                         f"got {len(boxes)} and {len(box_labels)}")
    probs = _activate(scores, activation).clamp(eps, 1.0 - eps)

    positives = []
    negatives = []
    for b in range(batch):
        p = probs[b]  # [C, H, W]
        covered_rows = torch.zeros(num_classes, height, dtype=torch.bool, device=p.device)
        covered_cols = torch.zeros(num_classes, width, dtype=torch.bool, device=p.device)
        b_boxes = torch.as_tensor(boxes[b]).reshape(-1, 4).tolist()
        b_labels = torch.as_tensor(box_labels[b]).reshape(-1).tolist()
        if len(b_boxes) != len(b_labels):
            raise ValueError(f"image {b}: {len(b_boxes)} boxes but {len(b_labels)} labels")
        for box, cls in zip(b_boxes, b_labels):
            cls = int(cls)
            if not 1 <= cls < num_classes:
                raise ValueError(f"image {b}: box class {cls} outside 1..{num_classes - 1}")
            x0, y0, x1, y1 = box_pixel_range(box)
            x0, x1 = max(x0, 0), min(x1, width)
            y0, y1 = max(y0, 0), min(y1, height)
            if x1 <= x0 or y1 <= y0:
                continue
            region = p[cls, y0:y1, x0:x1]
            positives.append(-torch.log(region.amax(dim=1)))  # one bag per row
            positives.append(-torch.log(region.amax(dim=0)))  # one bag per column
            covered_rows[cls, y0:y1] = True
            covered_cols[cls, x0:x1] = True
        row_max = p[1:].amax(dim=2)  # [C-1, H]
        col_max = p[1:].amax(dim=1)  # [C-1, W]
        negatives.append(-torch.log1p(-row_max[~covered_rows[1:]]))
        negatives.append(-torch.log1p(-col_max[~covered_cols[1:]]))

    zero = scores.sum() * 0.0  # keeps the graph when a term has no bags
    pos = torch.cat(positives) if positives else None
    neg = torch.cat(negatives) if negatives else None
    pos_term = pos.mean() if pos is not None and pos.numel() else zero
    neg_term = neg.mean() if neg is not None and neg.numel() else zero
    return pos_term + negative_weight * neg_term


_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))  # right, down, down-right, down-left: each 8-neighbour pair once


def _shifted_pair(x: Tensor, dy: int, dx: int):
    """Views ``(a, b)`` of ``x`` [..., H, W] such that ``b[..., i, j] = x[..., i + dy, j + dx]``."""
    height, width = x.shape[-2:]
    ys_a = slice(0, height - dy)
    ys_b = slice(dy, height)
    if dx >= 0:
        xs_a, xs_b = slice(0, width - dx), slice(dx, width)
    else:
        xs_a, xs_b = slice(-dx, width), slice(0, width + dx)
    return x[..., ys_a, xs_a], x[..., ys_b, xs_b]


def pairwise_smoothness_loss(
    probs: Tensor,
    image: Optional[Tensor] = None,
    *,
    sigma: float = 0.1,
) -> Tensor:
    """Neighbour-consistency term (BBTP's pairwise loss, optionally colour-weighted).

    For every pair of 8-connected neighbouring pixels ``(i, j)`` (each pair counted once):
    ``w_ij * sum_c (p_ci - p_cj)^2`` with ``w_ij = 1`` when ``image`` is None, else
    ``w_ij = exp(-||I_i - I_j||^2 / (2 sigma^2))`` so that label changes across colour edges are cheap.

    Args:
        probs: float [B, C, H, W] probabilities (apply softmax / sigmoid first).
        image: optional float [B, 3, H, W] in the units ``sigma`` is given in (default 0.1 suits [0, 1] RGB).
        sigma: colour bandwidth.

    Returns:
        scalar tensor: the mean of the pair terms over all pairs and images.
    """
    if probs.ndim != 4:
        raise ValueError(f"probs must be [B, C, H, W], got {list(probs.shape)}")
    if image is not None and (image.ndim != 4 or image.shape[0] != probs.shape[0]
                              or image.shape[-2:] != probs.shape[-2:]):
        raise ValueError(f"image {list(image.shape)} does not match probs {list(probs.shape)}")
    total = probs.sum() * 0.0
    count = 0
    for dy, dx in _OFFSETS:
        a, b = _shifted_pair(probs, dy, dx)
        if a.numel() == 0:
            continue
        diff = (a - b).pow(2).sum(dim=1)  # [B, H', W']
        if image is not None:
            ia, ib = _shifted_pair(image.to(probs.dtype), dy, dx)
            diff = diff * torch.exp(-(ia - ib).pow(2).sum(dim=1) / (2.0 * sigma**2))
        total = total + diff.sum()
        count += diff.numel()
    return total / max(count, 1)
