"""Inter-pixel relations from a class-boundary map (IRN: Ahn, Cho and Kwak, CVPR 2019).

IRN does not learn pair affinities directly: it learns a boundary map ``B`` (1 on boundaries between classes)
and derives the affinity of two pixels from the strongest boundary between them,
``a_ij = 1 - max_{k in path(i, j)} B_k``. The affinities come out in the offset form of
:mod:`lightning_wsss.refine.random_walk` (``aff[n, p, y, x]`` joins pixel ``(y, x)`` and
``(y + dy_p, x + dx_p)``), so the same sparse walk runs on them.

Path rule (:func:`segment_pixels`): the path from ``i`` to ``j = i + (dy, dx)`` holds the pixels ``i + (u, v)``
whose offset ``(u, v)`` lies in the bounding box of ``(0, 0)`` and ``(dy, dx)`` and whose centre is closer than one
pixel to the straight line through the two ends (both ends always belong to it). The line is "thick": a diagonal
step ``(1, 1)`` passes all four pixels of its 2 x 2 box, so a one-pixel-wide diagonal boundary cannot be stepped
over. This is the rule irn's ``PathIndex`` uses.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from lightning_wsss.refine.affinity_labels import affinity_loss, in_map_mask

__all__ = ["segment_pixels", "path_affinity", "boundary_loss"]


@lru_cache(maxsize=None)
def segment_pixels(dy: int, dx: int) -> Tuple[Tuple[int, int], ...]:
    """The pixel offsets ``(u, v)`` on the path from ``(0, 0)`` to ``(dy, dx)`` (both ends included).

    ``(u, v)`` is on the path when ``min(0, dy) <= u <= max(0, dy)``, ``min(0, dx) <= v <= max(0, dx)`` and its
    distance to the line through ``(0, 0)`` and ``(dy, dx)`` is below 1.

    Returns:
        tuple of ``(u, v)``, ordered row by row.
    """
    if dy == 0 and dx == 0:
        return ((0, 0),)
    length_sq = dy * dy + dx * dx
    pixels = []
    for u in range(min(0, dy), max(0, dy) + 1):
        for v in range(min(0, dx), max(0, dx) + 1):
            cross = dy * v - dx * u  # distance to the line = |cross| / length
            if cross * cross < length_sq:
                pixels.append((u, v))
    return tuple(pixels)


def path_affinity(boundary: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Path affinities ``a_ij = 1 - max_{k on path(i, j)} B_k`` for each pixel and neighbour offset.

    Differentiable in ``boundary`` (the gradient reaches the path's maximum).

    Args:
        boundary: float tensor [N, H, W] with values in [0, 1] (1: a boundary).
        offsets: LongTensor [P, 2] of (dy, dx), e.g. :func:`~lightning_wsss.refine.affinity_labels.neighbor_offsets`.

    Returns:
        float tensor [N, P, H, W] in [0, 1]; 0 where ``(y + dy_p, x + dx_p)`` is outside the map.
    """
    if boundary.dim() != 3:
        raise ValueError(f"boundary must be [N, H, W], got {tuple(boundary.shape)}")
    offsets = torch.as_tensor(offsets, dtype=torch.long).cpu()
    if offsets.dim() != 2 or offsets.shape[1] != 2:
        raise ValueError(f"offsets must be [P, 2] (dy, dx), got {tuple(offsets.shape)}")
    h, w = boundary.shape[-2:]
    r = int(offsets.abs().max().item()) if len(offsets) else 0
    padded = F.pad(boundary, (r, r, r, r), value=1.0)  # paths never leave the map where the partner is inside
    out: List[torch.Tensor] = []
    for dy, dx in offsets.tolist():
        path = [padded[:, r + u : r + u + h, r + v : r + v + w] for u, v in segment_pixels(dy, dx)]
        out.append(1.0 - torch.stack(path, dim=1).amax(dim=1))
    aff = torch.stack(out, dim=1) if out else boundary.new_zeros(boundary.shape[0], 0, h, w)
    mask = in_map_mask(h, w, offsets, device=boundary.device)
    return aff * mask.unsqueeze(0).to(aff.dtype)


def boundary_loss(boundary: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor,
                  offsets: torch.Tensor, eps: float = 1e-5) -> Dict[str, torch.Tensor]:
    """IRN's class-boundary loss: the path affinities of ``boundary`` high on positive pairs, low on negative ones.

    ``1/4 mean_bg(-log a) + 1/4 mean_fg(-log a) + 1/2 mean_neg(-log(1 - a))`` with ``a`` from :func:`path_affinity`
    (irn: ``(bg / 2 + fg / 2 + neg) / 2``; the same weighting as AffinityNet's loss, which it reuses).

    Args:
        boundary: float tensor [N, H, W] in [0, 1].
        bg_pos, fg_pos, neg: bool tensors [N, P, H, W], e.g. from
            :func:`~lightning_wsss.refine.affinity_labels.affinity_pairs`.
        offsets: LongTensor [P, 2], the offsets of the pair tensors.

    Returns:
        ``{"loss", "bg", "fg", "neg"}`` scalars.
    """
    return affinity_loss(path_affinity(boundary, offsets), bg_pos, fg_pos, neg, eps)
