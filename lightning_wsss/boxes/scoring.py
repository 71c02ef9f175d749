"""Candidate-segment scoring for BoxSup (Dai et al., "BoxSup: Exploiting Bounding Boxes to Supervise
Convolutional Networks for Semantic Segmentation", ICCV 2015).

BoxSup alternates between training the network on pseudo masks and re-choosing, for every box, one segment
among candidate segments (e.g. region proposals). A candidate's cost is

    cost = overlap_cost + weight * cross_entropy_cost

where ``overlap_cost = 1 - IoU(box, tight box of the candidate)`` (BoxSup's objective E_o) and
``cross_entropy_cost`` is the network's cross-entropy of the labelling the candidate implies (BoxSup's E_r,
here restricted to and averaged over the box's pixels). BoxSup uses ``weight = 3`` and picks either the best
candidate (greedy) or a random one among the top k (k = 5 in the paper) to avoid bad local optima.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .initializers import box_pixel_range

__all__ = ["clip_to_box", "mask_iou", "overlap_cost", "cross_entropy_cost", "boundary_band", "score_candidates",
           "select_candidate", "keep_unless_better"]


def _as_bool_tensor(mask) -> Tensor:
    if isinstance(mask, Tensor):
        return mask.bool()
    return torch.from_numpy(np.asarray(mask).astype(bool))


def _box_floats(box) -> tuple:
    values = torch.as_tensor(box, dtype=torch.float64).reshape(-1).tolist()
    if len(values) != 4:
        raise ValueError(f"box must have 4 values (x_min, y_min, x_max, y_max), got {values}")
    return tuple(values)


def clip_to_box(mask, box):
    """Zero a mask outside a box's pixel range (``floor(x_min) .. ceil(x_max) - 1``, same for y).

    Args:
        mask: [H, W] numpy array or tensor (any dtype).
        box: ``(x_min, y_min, x_max, y_max)``.

    Returns:
        a copy of ``mask`` of the same type, dtype and shape, 0 / False outside the box.
    """
    x0, y0, x1, y1 = box_pixel_range(_box_floats(box))
    height, width = mask.shape[-2:]
    x0, x1 = max(x0, 0), min(x1, width)
    y0, y1 = max(y0, 0), min(y1, height)
    if isinstance(mask, Tensor):
        out = torch.zeros_like(mask)
    else:
        mask = np.asarray(mask)
        out = np.zeros_like(mask)
    if x1 > x0 and y1 > y0:
        out[..., y0:y1, x0:x1] = mask[..., y0:y1, x0:x1]
    return out


def mask_iou(a, b) -> float:
    """IoU of two bool masks [H, W] (numpy or tensor); 1 when both are empty."""
    a, b = _as_bool_tensor(a), _as_bool_tensor(b)
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def overlap_cost(candidate_mask, box) -> float:
    """``1 - IoU`` between the tight bounding box of a candidate segment and ``box``.

    The candidate's tight box is in pixel-edge coordinates (pixels in columns 3..7 give ``x_min=3,
    x_max=8``).

    Args:
        candidate_mask: bool [H, W] (numpy or tensor).
        box: ``(x_min, y_min, x_max, y_max)``.

    Returns:
        float in ``[0, 1]``; 1 for an empty candidate.
    """
    cand = _as_bool_tensor(candidate_mask)
    if not bool(cand.any()):
        return 1.0
    rows = torch.nonzero(cand.any(dim=1)).flatten()
    cols = torch.nonzero(cand.any(dim=0)).flatten()
    cx0, cx1 = float(cols[0]), float(cols[-1]) + 1.0
    cy0, cy1 = float(rows[0]), float(rows[-1]) + 1.0
    bx0, by0, bx1, by1 = _box_floats(box)
    inter = max(0.0, min(cx1, bx1) - max(cx0, bx0)) * max(0.0, min(cy1, by1) - max(cy0, by0))
    union = (cx1 - cx0) * (cy1 - cy0) + max(0.0, bx1 - bx0) * max(0.0, by1 - by0) - inter
    return 1.0 - (inter / union if union > 0 else 0.0)


def boundary_band(candidates: Sequence, width: int) -> Tensor:
    """Pixels within ``width`` pixels (Chebyshev distance) of the boundary of any candidate.

    A network with output stride ``s`` cannot place a boundary more finely than about ``s / 2`` input pixels, so
    its cross-entropy there rewards the smoother of two candidates, not the better one; BoxSup's network term
    leaves these pixels out (:func:`score_candidates`' ``ignore``).

    Args:
        candidates: M >= 1 bool masks [H, W].
        width: band half-width in pixels (0: only the boundary pixels themselves).

    Returns:
        bool tensor [H, W].
    """
    import cv2

    band = np.zeros(np.asarray(candidates[0]).shape, dtype=np.uint8)
    cross = np.ones((3, 3), np.uint8)
    for cand in candidates:
        band |= cv2.morphologyEx(np.asarray(cand).astype(np.uint8), cv2.MORPH_GRADIENT, cross)
    if width > 0:
        band = cv2.dilate(band, np.ones((2 * width + 1, 2 * width + 1), np.uint8))
    return torch.from_numpy(band > 0)


def cross_entropy_cost(log_probs: Tensor, candidate_mask, class_id: int, box, ignore: Optional[Tensor] = None) -> float:
    """Mean network cross-entropy of the labelling a candidate implies inside its box.

    Inside the box's pixel range, pixels of the candidate are labelled ``class_id`` and the others
    background (0); the cost is ``mean(-log_probs[label, y, x])`` over those pixels, ignored pixels counting 0
    (so candidates of one box stay comparable).

    Args:
        log_probs: float [C, H, W] log-probabilities (``log_softmax`` of the logits).
        candidate_mask: bool [H, W].
        class_id: the box's class, ``1..C-1``.
        box: ``(x_min, y_min, x_max, y_max)``.
        ignore: optional bool [H, W] of pixels left out (:func:`boundary_band`).

    Returns:
        float (``nan`` only if the box covers no pixel of the map).
    """
    if log_probs.ndim != 3:
        raise ValueError(f"log_probs must be [C, H, W], got {list(log_probs.shape)}")
    cand = _as_bool_tensor(candidate_mask).to(log_probs.device)
    if cand.shape != log_probs.shape[-2:]:
        raise ValueError(f"candidate {list(cand.shape)} and log_probs {list(log_probs.shape)} differ in size")
    num_classes, height, width = log_probs.shape
    if not 0 <= int(class_id) < num_classes:
        raise ValueError(f"class_id {class_id} outside 0..{num_classes - 1}")
    x0, y0, x1, y1 = box_pixel_range(_box_floats(box))
    x0, x1 = max(x0, 0), min(x1, width)
    y0, y1 = max(y0, 0), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return float("nan")
    region = log_probs[:, y0:y1, x0:x1]
    target = torch.where(cand[y0:y1, x0:x1], int(class_id), 0).long()
    picked = region.gather(0, target.unsqueeze(0)).squeeze(0)
    if ignore is not None:
        picked = picked.masked_fill(ignore.to(picked.device)[y0:y1, x0:x1], 0.0)
    return float(-picked.detach().double().mean())


def score_candidates(
    candidates: Sequence,
    box,
    class_id: int,
    log_probs: Optional[Tensor] = None,
    weight: float = 3.0,
    ignore: Optional[Tensor] = None,
) -> Tensor:
    """BoxSup cost of each candidate segment for one box (lower is better).

    ``cost_m = overlap_cost(candidate_m, box) + weight * cross_entropy_cost(log_probs, candidate_m, class_id,
    box)``; with ``log_probs=None`` (no trained network yet) only the overlap term is used. Candidates are
    scored as given (not clipped), so a candidate leaking out of the box pays through its overlap cost; clip
    the chosen one with :func:`clip_to_box` before painting it.

    Args:
        candidates: M bool masks [H, W].
        box: ``(x_min, y_min, x_max, y_max)``.
        class_id: the box's class.
        log_probs: float [C, H, W] network log-probabilities, or None.
        weight: weight of the cross-entropy term (BoxSup: 3).
        ignore: optional bool [H, W] of pixels the cross-entropy leaves out (:func:`boundary_band`).

    Returns:
        float64 tensor [M].
    """
    costs = []
    for cand in candidates:
        cost = overlap_cost(cand, box)
        if log_probs is not None:
            cost += weight * cross_entropy_cost(log_probs, cand, class_id, box, ignore)
        costs.append(cost)
    return torch.tensor(costs, dtype=torch.float64)


def select_candidate(
    scores: Tensor,
    mode: str = "greedy",
    top_k: int = 3,
    generator: Optional[torch.Generator] = None,
) -> int:
    """Pick a candidate from costs (lower is better).

    Args:
        scores: float [M] costs from :func:`score_candidates`, ``M >= 1``.
        mode: ``"greedy"``: the minimum (first on ties); ``"sample"``: uniformly at random among the
            ``top_k`` lowest costs (BoxSup's random top-k choice).
        top_k: size of the pool for ``"sample"``.
        generator: optional ``torch.Generator`` for reproducible sampling.

    Returns:
        int index into ``scores``.
    """
    scores = torch.as_tensor(scores).reshape(-1)
    if scores.numel() == 0:
        raise ValueError("select_candidate needs at least one candidate")
    if mode == "greedy":
        return int(torch.argmin(scores))
    if mode == "sample":
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        order = torch.sort(scores, stable=True).indices[: min(top_k, scores.numel())]
        pick = torch.randint(order.numel(), (1,), generator=generator)
        return int(order[pick])
    raise ValueError(f"mode must be 'greedy' or 'sample', got {mode!r}")


def keep_unless_better(scores: Tensor, pick: int, current: Optional[int], margin: Optional[float]) -> int:
    """BoxSup's choice with a replacement margin: the picked candidate replaces the box's current mask only when
    its cost is lower by more than ``margin``.

    Without it a blurry network's cross-entropy, which favours the smoother of two near-equal masks, switches a
    box to a worse mask on any difference of cost, round after round.

    Args:
        scores: float [M] costs (lower is better).
        pick: the index :func:`select_candidate` chose.
        current: index of the box's current mask among the candidates (None: no current mask, keep ``pick``).
        margin: the cost gain a replacement needs (``None``: the plain choice, ``pick``; ``0``: ties keep the
            current mask).

    Returns:
        ``pick`` when ``scores[pick] < scores[current] - margin``, else ``current``.
    """
    if margin is None or current is None or pick == current:
        return int(pick)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    scores = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    return int(pick) if float(scores[pick]) < float(scores[current]) - float(margin) else int(current)
