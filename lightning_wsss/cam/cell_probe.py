"""Linear cell probes on backbone features: pure functions over tensors.

A probe is one logistic regression per class over feature cells (pixels of a feature map). Two users:

- :class:`~lightning_wsss.tasks.probecam.ProbeCAMClassifier` fits it from image labels only: a class's positive
  cells are where its CAM is confident in the images labelled with it, its negative cells are *every* cell of
  the images labelled without it. Those negatives are certain, and they hold the context that predicts the
  label (road without a car, sky without a tree) without the object, so the probe learns what the object adds;
- ``tools/feature_ceiling.py`` fits it to the ground-truth masks, which measures how well any linear map of a
  feature set can localize (the ceiling of a CAM read from those features), and fits it from the image labels alone
  (:func:`fit_image_label_probes`: multiple-instance learning, each image's cells pooled into one score), which
  measures how much of that ceiling image labels select, whatever CAM method reads them.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["hypercolumn", "valid_cells", "cell_targets", "fit_cell_probes", "probe_logits", "probe_maps",
           "parse_pooling", "pool_cells", "cells_per_image", "fit_image_label_probes"]


def hypercolumn(levels: Sequence[Tensor], size: Tuple[int, int]) -> Tensor:
    """Feature levels resized to one grid and concatenated, each L2-normalised over its channels first (so a level
    with many channels or large activations does not drown the others).

    Args:
        levels: float [B, D_i, h_i, w_i] each.
        size: the grid (h, w), usually the finest level's.

    Returns:
        float [B, sum D_i, h, w].
    """
    if not levels:
        raise ValueError("hypercolumn needs at least one feature level")
    resized = [level if tuple(level.shape[-2:]) == tuple(size) else
               F.interpolate(level, size=size, mode="bilinear", align_corners=False) for level in levels]
    return torch.cat([F.normalize(level.float(), dim=1) for level in resized], dim=1)


def valid_cells(sizes: Tensor, padded: Tuple[int, int], grid: Tuple[int, int]) -> Tensor:
    """Which cells of a feature grid lie inside each image of a padded batch (eval batches pad at the bottom and
    right).

    Args:
        sizes: long [B, 2], every image's (height, width) before padding.
        padded: the batch's (H, W).
        grid: the feature map's (h, w).

    Returns:
        bool [B, h * w] (row-major cells).
    """
    rows = torch.arange(grid[0], dtype=torch.float32) * padded[0] / grid[0]
    cols = torch.arange(grid[1], dtype=torch.float32) * padded[1] / grid[1]
    inside = [((rows < int(h))[:, None] & (cols < int(w))[None]).flatten() for h, w in sizes.tolist()]
    return torch.stack(inside)


def cell_targets(mask: Tensor, num_classes: int, grid: Tuple[int, int], ignore_index: int = 255) -> Tensor:
    """Share of every grid cell covered by each foreground class of a label map (area pooling).

    Args:
        mask: long [H, W] class indices (0 background, ``ignore_index`` ignored: counts as no class).
        num_classes: classes including background.
        grid: (h, w) of the feature map.

    Returns:
        float [C-1, h, w] in [0, 1].
    """
    labelled = mask != ignore_index
    one_hot = torch.zeros(num_classes, *mask.shape)
    one_hot[:, labelled] = F.one_hot(mask[labelled].long(), num_classes).T.float()
    return F.adaptive_avg_pool2d(one_hot[None], grid)[0, 1:]


def fit_cell_probes(features: Tensor, positive: Tensor, negative: Tensor, steps: int = 200, lr: float = 0.01,
                    weight_decay: float = 1e-4) -> Tuple[Tensor, Tensor]:
    """One logistic regression per class over cells, positives and negatives weighted half and half.

    Full-batch Adam from zero weights (deterministic for the same inputs). Cells neither positive nor negative for a
    class do not enter its loss; a class without positives or negatives gets weight 0 and bias 0 (its probe is 0.5
    everywhere, a flat map).

    Args:
        features: float [M, D] cell features.
        positive: [M, C] targets in [0, 1] (bool for hard labels, shares for soft ones).
        negative: bool [M, C], cells that are certainly not the class (target 0).
        steps: Adam steps; lr, weight_decay: its settings.

    Returns:
        ``(weight float [C, D], bias float [C])``: the probe of class c is ``sigmoid(features @ weight[c] + bias[c])``.
    """
    if features.dim() != 2 or positive.shape[0] != features.shape[0] or positive.shape != negative.shape:
        raise ValueError(f"features [M, D], positive and negative [M, C] expected, got {tuple(features.shape)}, "
                         f"{tuple(positive.shape)}, {tuple(negative.shape)}")
    target = positive.float()
    is_positive, is_negative = target > 0, negative.bool() & ~(target > 0)
    weights = (0.5 * is_positive.float() / is_positive.sum(0).clamp(min=1)
               + 0.5 * is_negative.float() / is_negative.sum(0).clamp(min=1))
    usable = is_positive.any(0) & is_negative.any(0)
    features = features.float()

    def loss_of(weight: Tensor, bias: Tensor) -> Tensor:
        logits = features @ weight.T + bias
        return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weights).sum()

    weight, bias = _fit_linear(loss_of, target.shape[1], features.shape[1], features.device, steps, lr, weight_decay)
    return weight * usable[:, None], bias * usable


def probe_logits(features: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The probes' logits on every cell.

    Args:
        features: float [B, D, h, w]; weight: [K, D]; bias: [K] (the rows of the classes wanted).

    Returns:
        float [B, K, h, w].
    """
    return (torch.einsum("bdhw,kd->bkhw", features.float(), weight.to(features.device).float())
            + bias.to(features.device).float()[None, :, None, None])


def probe_maps(features: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The probes' probabilities on every cell: float [B, K, h, w] in (0, 1) (:func:`probe_logits`' arguments)."""
    return torch.sigmoid(probe_logits(features, weight, bias))


def parse_pooling(text: str) -> Tuple[str, float]:
    """A pooling of cell scores into an image score: ``"gap"`` (mean, the CAM classifier's), ``"max"``,
    ``"topk:F"`` (mean of the top fraction F of the image's cells) or ``"lse:R"`` (log-sum-exp with sharpness R)
    -> ``(kind, argument)``."""
    kind, _, argument = text.partition(":")
    if kind in ("gap", "max") and not argument:
        return kind, 0.0
    if kind in ("topk", "lse") and argument:
        value = float(argument)
        if (kind == "topk" and 0.0 < value <= 1.0) or (kind == "lse" and value > 0.0):
            return kind, value
    raise ValueError(f"pooling is 'gap', 'max', 'topk:F' (0 < F <= 1) or 'lse:R' (R > 0), got {text!r}")


def pool_cells(logits: Tensor, valid: Tensor, pooling: str) -> Tensor:
    """Pool every image's cell logits into one score per class, over its valid cells only.

    Args:
        logits: float [N, C, M]; valid: bool [N, M] (padding cells False; every image needs one valid cell).
        pooling: see :func:`parse_pooling`.

    Returns:
        float [N, C].
    """
    kind, argument = parse_pooling(pooling)
    count = valid.sum(1).clamp(min=1).to(logits.dtype)[:, None]  # [N, 1]
    masked = logits.masked_fill(~valid[:, None], float("-inf"))
    if kind == "gap":
        return (logits * valid[:, None]).sum(-1) / count
    if kind == "max":
        return masked.amax(-1)
    if kind == "lse":
        return (torch.logsumexp(argument * masked, -1) - torch.log(count)) / argument
    k = max(1, int(argument * int(valid.sum(1).min())))
    return masked.topk(k, dim=-1).values.mean(-1)


def cells_per_image(features: Tensor, image: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Regroup cells listed one per row (any order, any number per image) into padded per-image sets.

    Args:
        features: float [M, D]; image: long [M], each cell's image id (ids need not be contiguous);
        labels: bool [M, C], each cell's image labels.

    Returns:
        ``(features float [N, D, K], valid bool [N, K], labels bool [N, C])`` for the N distinct images in
        increasing id order, K the most cells of one image; each image's cells keep their listed order.
    """
    index = torch.unique(image, return_inverse=True)[1]
    counts = torch.bincount(index)
    order = torch.argsort(index, stable=True)
    slot = torch.zeros_like(index)
    slot[order] = torch.arange(index.shape[0]) - (torch.cumsum(counts, 0) - counts)[index[order]]
    grouped = features.new_zeros(counts.shape[0], features.shape[1], int(counts.max()))
    grouped[index, :, slot] = features
    valid = torch.zeros(counts.shape[0], int(counts.max()), dtype=torch.bool)
    valid[index, slot] = True
    image_labels = torch.zeros(counts.shape[0], labels.shape[1], dtype=torch.bool)
    image_labels[index] = labels.bool()
    return grouped, valid, image_labels


def fit_image_label_probes(features: Tensor, valid: Tensor, labels: Tensor, pooling: str = "topk:0.05",
                           cell_negatives: bool = True, steps: int = 300, lr: float = 0.01,
                           weight_decay: float = 1e-4) -> Tuple[Tensor, Tensor]:
    """One linear probe per class fit from image labels alone (multiple-instance learning, no CAM, no masks).

    Each image's cell logits are pooled (:func:`pool_cells`) into its class scores, fit to its labels with a
    binary cross-entropy whose positives are weighted up to balance the negatives; with ``cell_negatives`` every
    valid cell of an image without a class is also a negative of that class (the images without it are certain
    negatives cell by cell, as in ProbeCAM). Full-batch Adam from zero weights, deterministic.

    Args:
        features: float [N, D, M] cells of N images (padded to M cells); valid: bool [N, M].
        labels: [N, C] image labels (1: the class is in the image).
        pooling: see :func:`parse_pooling`; steps, lr, weight_decay: Adam's.

    Returns:
        ``(weight float [C, D], bias float [C])``, used as :func:`probe_maps`' arguments.
    """
    if features.dim() != 3 or valid.shape != (features.shape[0], features.shape[2]) \
            or labels.shape[0] != features.shape[0]:
        raise ValueError(f"features [N, D, M], valid [N, M] and labels [N, C] expected, got {tuple(features.shape)}, "
                         f"{tuple(valid.shape)}, {tuple(labels.shape)}")
    parse_pooling(pooling)
    target = labels.float()
    positive_weight = (1 - target).sum(0) / target.sum(0).clamp(min=1)
    negative_cells = (1 - target)[..., None] * valid[:, None].float()  # [N, C, M]
    features = features.float()

    def loss_of(weight: Tensor, bias: Tensor) -> Tensor:
        logits = torch.einsum("ndm,cd->ncm", features, weight) + bias[None, :, None]
        pooled = pool_cells(logits, valid, pooling)
        loss = F.binary_cross_entropy_with_logits(pooled, target, pos_weight=positive_weight)
        if cell_negatives:
            cells = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
            loss = loss + (cells * negative_cells).sum() / negative_cells.sum().clamp(min=1)
        return loss

    return _fit_linear(loss_of, target.shape[1], features.shape[1], features.device, steps, lr, weight_decay)


def _fit_linear(loss_of, classes: int, dim: int, device, steps: int, lr: float,
                weight_decay: float) -> Tuple[Tensor, Tensor]:
    """Full-batch Adam on ``loss_of(weight [classes, dim], bias [classes])`` from zeros (deterministic); the
    detached ``(weight, bias)``."""
    weight = torch.zeros(classes, dim, device=device, requires_grad=True)
    bias = torch.zeros(classes, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(int(steps)):
            optimizer.zero_grad()
            loss_of(weight, bias).backward()
            optimizer.step()
    return weight.detach(), bias.detach()
