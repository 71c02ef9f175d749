"""Local class prototypes (LPCAM: Chen and Sun, "Extracting Class Activation Maps from Non-Discriminative
Features as Well", CVPR 2023): pure functions over tensors.

A CAM projects every local feature on one classifier row, so only the most discriminative parts of an object
light up. LPCAM clusters the local features that a class's CAM covers into prototypes, keeps those the
classifier still assigns to the class, and scores every pixel by its mean cosine similarity to them, minus its
similarity to the class's *context* prototypes (features outside the CAM that the classifier half-assigns to the
class: rails next to trains, road next to cars). Non-discriminative parts of the object resemble some prototype,
so they activate as well.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["spherical_kmeans", "cluster_means", "select_prototypes", "nearest_shares", "negative_ratios",
           "prototype_map", "PROTOTYPE_SCORES"]


def spherical_kmeans(features: Tensor, num_clusters: int, iterations: int = 30, seed: int = 0,
                     tol: float = 1e-4) -> Tuple[Tensor, Tensor]:
    """K-means under cosine distance (unit-norm centres), k-means++ seeding from a fixed seed.

    Args:
        features: float [N, D].
        num_clusters: K (clipped to N).
        iterations: Lloyd steps at most.
        seed: seeds the k-means++ draws (deterministic).
        tol: stop when no centre moves by more than this (cosine).

    Returns:
        ``(centres float [K', D] unit-norm, assignment long [N])``; K' = min(K, N); empty clusters are dropped.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be [N, D], got {tuple(features.shape)}")
    points = F.normalize(features.float(), dim=1)
    count = min(int(num_clusters), points.shape[0])
    if count == 0:
        return points.new_zeros(0, points.shape[1]), torch.zeros(0, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    first = int(torch.randint(points.shape[0], (1,), generator=generator))
    centres = [points[first]]
    distance = 1.0 - points @ centres[0]
    for _ in range(1, count):
        weights = distance.clamp(min=0) ** 2
        index = int(torch.multinomial(weights, 1, generator=generator)) if float(weights.sum()) > 0 else \
            int(torch.randint(points.shape[0], (1,), generator=generator))
        centres.append(points[index])
        distance = torch.minimum(distance, 1.0 - points @ points[index])
    centre = torch.stack(centres)
    assignment = (points @ centre.T).argmax(1)
    for _ in range(iterations):
        sums = torch.zeros_like(centre).index_add_(0, assignment, points)
        filled = torch.bincount(assignment, minlength=centre.shape[0]) > 0
        updated = torch.where(filled[:, None], F.normalize(sums, dim=1), centre)
        moved = float((1.0 - (updated * centre).sum(1)).max())
        centre = updated
        assignment = (points @ centre.T).argmax(1)
        if moved < tol:
            break
    keep = torch.bincount(assignment, minlength=centre.shape[0]) > 0
    centre = centre[keep]
    return centre, (points @ centre.T).argmax(1)


def cluster_means(features: Tensor, assignment: Tensor, num_clusters: int) -> Tensor:
    """Mean feature of every cluster, at the features' own scale (what the classifier was trained on).

    Args:
        features: float [N, D]; assignment: long [N] in ``[0, num_clusters)``.

    Returns:
        float [num_clusters, D] (zeros for an empty cluster).
    """
    sums = features.new_zeros(num_clusters, features.shape[1]).index_add_(0, assignment, features)
    counts = torch.bincount(assignment, minlength=num_clusters).clamp(min=1).to(features)
    return sums / counts[:, None]


def select_prototypes(means: Tensor, classifier_weight: Tensor, class_index: int, low: float,
                      high: float = 1.0) -> Tensor:
    """The cluster means whose softmax class probability for ``class_index`` lies in ``(low, high]``.

    LPCAM keeps object prototypes with probability above 0.9 (``low=0.9, high=1``) and context prototypes between
    0.05 and 0.9; the probability is the classifier's softmax over the foreground classes of the mean feature.

    Args:
        means: float [K, D] cluster means (:func:`cluster_means`).
        classifier_weight: float [C, D] (rows = foreground classes).
        class_index: row of the class.

    Returns:
        float [K', D]: the selected means.
    """
    if means.shape[0] == 0:
        return means
    probs = (means @ classifier_weight.T.to(means)).softmax(dim=1)[:, class_index]
    return means[(probs > low) & (probs <= high)]


def nearest_shares(means: Tensor, features: Tensor) -> Tensor:
    """The share of ``features`` whose nearest mean (cosine) is each of ``means``.

    Args:
        means: float [K, D] (K >= 1); features: float [N, D].

    Returns:
        float [K], summing to 1 (all zeros when N is 0).
    """
    if features.shape[0] == 0:
        return means.new_zeros(means.shape[0])
    nearest = (F.normalize(features, dim=1) @ F.normalize(means.to(features), dim=1).T).argmax(1)
    return torch.bincount(nearest, minlength=means.shape[0]).to(means) / features.shape[0]


def negative_ratios(means: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
    """How much more often the images without a class hold each cluster than the images with it.

    Every feature goes to its nearest mean; a cluster's ratio is its share of ``negatives`` (features of the images
    not labelled with the class) over its share of ``positives`` (features of the images labelled with it). About
    0 for a cluster of the object (it is not in the images without it), about 1 or more for the context that both
    kinds of image share.

    Args:
        means: float [K, D] cluster means; positives: float [N, D]; negatives: float [M, D].

    Returns:
        float [K]: the ratios (``inf`` where no positive is nearest to the mean).
    """
    if means.shape[0] == 0:
        return means.new_zeros(0)
    negative, positive = nearest_shares(means, negatives), nearest_shares(means, positives)
    ratios = negative / positive.clamp(min=torch.finfo(positive.dtype).tiny)
    return torch.where(positive > 0, ratios, torch.full_like(ratios, torch.inf))


PROTOTYPE_SCORES = ("mean", "nearest")
"""How :func:`prototype_map` reduces a pixel's similarities to the prototypes (and to the context prototypes)."""


def prototype_map(features: Tensor, prototypes: Tensor, context: Optional[Tensor] = None,
                  score: str = "mean") -> Tensor:
    """LPCAM's map of one class: cosine similarity to its prototypes minus that to its context, ReLU'd.

    ``score="mean"`` (the paper's) averages each pixel's similarities over the prototypes (and over the context
    prototypes); ``"nearest"`` takes the most similar of each set, so a pixel scores where it is closer to some
    prototype than to every context prototype, however many prototypes of other parts the class has.

    Args:
        features: float [B, D, h, w].
        prototypes: float [P, D] (P >= 1).
        context: float [Q, D] or ``None`` / empty (no context term).
        score: ``"mean"`` or ``"nearest"``.

    Returns:
        float [B, h, w], non-negative (not normalised).
    """
    if score not in PROTOTYPE_SCORES:
        raise ValueError(f"score must be one of {PROTOTYPE_SCORES}, got {score!r}")
    if prototypes.shape[0] == 0:
        return features.new_zeros(features.shape[0], *features.shape[2:])
    unit = F.normalize(features, dim=1)

    def similarity(means: Tensor) -> Tensor:
        each = torch.einsum("bdhw,pd->bphw", unit, F.normalize(means.to(unit), dim=1))
        return each.mean(1) if score == "mean" else each.amax(1)

    result = similarity(prototypes)
    if context is not None and context.shape[0] > 0:
        result = result - similarity(context)
    return F.relu(result)
