"""Pseudo labels for inter-pixel affinity learning (PSA / IRN).

Two steps:

1. :func:`affinity_label_map_psa` / :func:`affinity_label_map_irn` turn the CAMs of
   one image into a *confident* label map at feature stride: class ids where the
   CAM+CRF is confident, 0 where it is confidently background, 255 elsewhere.
2. :func:`affinity_pairs` turns a batch of such maps into boolean pair targets
   over a fixed set of neighbour offsets (:func:`neighbor_offsets`).

Offset convention (shared with :mod:`lightning_wsss.refine.random_walk`): a tensor
``t[b, p, y, x]`` over offsets describes the pair of pixel ``(y, x)`` and pixel
``(y + dy_p, x + dx_p)``; entries whose partner falls outside the map are unused
(False / 0).
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import numpy as np
import torch

from lightning_wsss.refine.crf import (
    IGNORE_INDEX,
    IRN_CRF_PARAMS,
    CRFParams,
    crf_from_labels,
    crf_from_probs,
)

__all__ = [
    "neighbor_offsets",
    "shift_map",
    "in_map_mask",
    "downsample_label_map",
    "affinity_label_map_psa",
    "affinity_label_map_irn",
    "affinity_pairs",
    "affinity_loss",
]


def neighbor_offsets(radius: int = 5) -> torch.Tensor:
    """Half-disk of neighbour offsets, one per unordered pixel pair (PSA / IRN convention).

    Offsets ``(dy, dx)`` with ``dy**2 + dx**2 < radius**2`` and either ``dy == 0, dx > 0``
    or ``dy > 0``; the mirrored offset ``(-dy, -dx)`` is never included. For radius 5
    this gives 34 offsets.

    Returns:
        LongTensor [P, 2] of (dy, dx), ordered row by row (dy ascending, then dx).
    """
    if radius < 2:
        raise ValueError(f"radius must be >= 2 (radius 1 has no neighbours), got {radius}")
    offs = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dx * dx + dy * dy < radius * radius:
                offs.append((dy, dx))
    return torch.tensor(offs, dtype=torch.long)


def shift_map(x: torch.Tensor, dy: int, dx: int, fill: Any = 0) -> torch.Tensor:
    """Neighbour lookup: ``out[..., y, x] = x[..., y + dy, x + dx]``, ``fill`` outside the map.

    Args:
        x: tensor [..., H, W].

    Returns:
        tensor of the same shape, dtype and device as ``x``.
    """
    h, w = x.shape[-2:]
    out = torch.full_like(x, fill)
    y0, y1 = max(0, -dy), min(h, h - dy)
    x0, x1 = max(0, -dx), min(w, w - dx)
    if y1 > y0 and x1 > x0:
        out[..., y0:y1, x0:x1] = x[..., y0 + dy : y1 + dy, x0 + dx : x1 + dx]
    return out


def in_map_mask(
    height: int, width: int, offsets: torch.Tensor, device: Any = None
) -> torch.Tensor:
    """Which (pixel, offset) pairs have their partner inside an ``height x width`` map.

    Returns:
        bool tensor [P, H, W]; ``mask[p, y, x]`` is True iff ``(y + dy_p, x + dx_p)`` is in the map.
    """
    ys = torch.arange(height, device=device).view(1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, width)
    offsets = offsets.to(device)
    ny = ys + offsets[:, 0].view(-1, 1, 1)
    nx = xs + offsets[:, 1].view(-1, 1, 1)
    return (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)


def downsample_label_map(label: np.ndarray, stride: int) -> np.ndarray:
    """Nearest-neighbour subsampling of a label map to feature stride.

    Output cell ``(i, j)`` takes the pixel at the centre of its ``stride x stride``
    cell, ``(min(i*stride + stride//2, H-1), min(j*stride + stride//2, W-1))``.

    Returns:
        array [ceil(H/stride), ceil(W/stride)] with the dtype of ``label``.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if stride == 1:
        return label.copy()
    h, w = label.shape
    ys = np.minimum(np.arange(0, h, stride) + stride // 2, h - 1)
    xs = np.minimum(np.arange(0, w, stride) + stride // 2, w - 1)
    return label[np.ix_(ys, xs)]


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_cams(
    image: np.ndarray, cams_fg: Any, class_ids: Any, num_classes: int
) -> Tuple[np.ndarray, np.ndarray]:
    cams = _as_numpy(cams_fg).astype(np.float32, copy=False)
    ids = _as_numpy(class_ids).astype(np.int64).reshape(-1)
    if cams.ndim != 3:
        raise ValueError(f"cams_fg must have shape [K, H, W], got {tuple(cams.shape)}")
    if cams.shape[1:] != tuple(np.shape(image)[:2]):
        raise ValueError(
            f"cams_fg {tuple(cams.shape)} does not match image {tuple(np.shape(image))} spatially"
        )
    if ids.shape[0] != cams.shape[0]:
        raise ValueError(f"class_ids has {ids.shape[0]} entries but cams_fg {tuple(cams.shape)}")
    if ids.size and (ids.min() < 1 or ids.max() >= num_classes):
        raise ValueError(f"class_ids must be in 1..{num_classes - 1}, got {ids.tolist()}")
    if num_classes > 255:
        raise ValueError(f"num_classes must be <= 255 for uint8 label maps, got {num_classes}")
    return cams, ids


def affinity_label_map_psa(
    image: np.ndarray,
    cams_fg: Any,
    class_ids: Sequence[int],
    num_classes: int,
    alpha_low: float = 4,
    alpha_high: float = 32,
    params: CRFParams = CRFParams(),
    stride: int = 8,
) -> np.ndarray:
    """PSA's confident label map (Ahn & Kwak 2018, ``infer_cls.py`` + ``VOC12AffDataset``).

    The background score is ``(1 - max_k cam_k) ** alpha``. Since ``1 - max <= 1``,
    a *low* alpha gives a *strong* background, a high alpha a weak one. Two CRFs
    are run on ``[bg, cams]``:

    * ``la`` (alpha_low, strong bg): where it still says foreground, the
      foreground is confident -> its class id;
    * ``ha`` (alpha_high, weak bg): where even it says background, the background
      is confident -> 0 (this overrides ``la``);
    * everything else (``la`` says bg, ``ha`` says fg) -> 255.

    Args:
        image: uint8 RGB [H, W, 3].
        cams_fg: float [K, H, W] CAMs in [0, 1] of the image's K present classes.
        class_ids: [K] class index (1..num_classes-1) of each CAM channel.
        num_classes: C, including background.
        alpha_low, alpha_high: background exponents.
        params: CRF parameters.
        stride: output stride (the labels are subsampled with :func:`downsample_label_map`).

    Returns:
        uint8 label map [ceil(H/stride), ceil(W/stride)], values in {0, class_ids, 255}.
        An image without foreground classes (K = 0) is all background.
    """
    cams, ids = _check_cams(image, cams_fg, class_ids, num_classes)
    h, w = cams.shape[1:]
    if cams.shape[0] == 0:
        return downsample_label_map(np.zeros((h, w), np.uint8), stride)
    keys = np.concatenate([[0], ids])  # compact CRF channel -> class id
    fg_max = np.clip(cams.max(axis=0, keepdims=True), 0.0, 1.0)

    def crf_argmax(alpha: float) -> np.ndarray:
        bg = np.power(1.0 - fg_max, alpha)
        q = crf_from_probs(image, np.concatenate([bg, cams], axis=0), params)
        return keys[np.argmax(q, axis=0)]

    la = crf_argmax(alpha_low)
    ha = crf_argmax(alpha_high)
    label = la.copy()
    label[la == 0] = IGNORE_INDEX
    label[ha == 0] = 0
    return downsample_label_map(label.astype(np.uint8), stride)


def affinity_label_map_irn(
    image: np.ndarray,
    cams_fg: Any,
    class_ids: Sequence[int],
    num_classes: int,
    fg_threshold: float = 0.30,
    bg_threshold: float = 0.05,
    params: CRFParams = IRN_CRF_PARAMS,
    stride: int = 4,
    confidence: float = 0.7,
) -> np.ndarray:
    """IRN's confident label map (Ahn et al. 2019, ``cam_to_ir_label.py``).

    Two hard label maps are made by argmax over ``[threshold, cams]`` (a constant
    background score), each refined by a label CRF (``confidence`` = IRN's gt_prob):

    * ``fg`` map (threshold ``fg_threshold``): where it says foreground -> class id;
    * ``bg`` map (threshold ``bg_threshold``): where *both* CRFs say background -> 0;
    * everything else -> 255.

    Args:
        image: uint8 RGB [H, W, 3].
        cams_fg: float [K, H, W] CAMs in [0, 1] of the K present classes.
        class_ids: [K] class index (1..num_classes-1) of each CAM channel.
        num_classes: C, including background.
        fg_threshold, bg_threshold: constant background scores.
        params: CRF parameters (default: IRN's, bilateral sxy=50, srgb=5).
        stride: output stride (IRN uses 4).
        confidence: probability of the given label in the label CRF.

    Returns:
        uint8 label map [ceil(H/stride), ceil(W/stride)], values in {0, class_ids, 255}.
        An image without foreground classes (K = 0) is all background.
    """
    cams, ids = _check_cams(image, cams_fg, class_ids, num_classes)
    h, w = cams.shape[1:]
    if cams.shape[0] == 0:
        return downsample_label_map(np.zeros((h, w), np.uint8), stride)
    keys = np.concatenate([[0], ids])
    n = keys.shape[0]

    def thresholded_crf(threshold: float) -> np.ndarray:
        scores = np.concatenate([np.full((1, h, w), threshold, np.float32), cams], axis=0)
        hard = np.argmax(scores, axis=0)
        q = crf_from_labels(image, hard, n, confidence=confidence, params=params)
        return keys[np.argmax(q, axis=0)]

    fg_conf = thresholded_crf(fg_threshold)
    bg_conf = thresholded_crf(bg_threshold)
    label = fg_conf.copy()
    label[fg_conf == 0] = IGNORE_INDEX
    label[(fg_conf == 0) & (bg_conf == 0)] = 0
    return downsample_label_map(label.astype(np.uint8), stride)


def affinity_pairs(
    label_map: torch.Tensor, radius: int = 5
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Affinity targets for every (pixel, offset) pair of :func:`neighbor_offsets`.

    Pair ``(b, p, y, x)`` joins pixel ``(y, x)`` and ``(y + dy_p, x + dx_p)``. It is
    excluded (False in all three outputs) if the partner is outside the map or
    either label is 255.

    Args:
        label_map: integer tensor [B, h, w] (or [h, w]), values 0..C-1 or 255.
        radius: neighbourhood radius (offsets with ``dy^2 + dx^2 < radius^2``).

    Returns:
        ``(bg_pos, fg_pos, neg)``, bool tensors [B, P, h, w] (P = len(neighbor_offsets(radius))),
        on the device of ``label_map``:
        ``bg_pos``: both labels 0; ``fg_pos``: same label > 0; ``neg``: different labels.
    """
    if label_map.dim() == 2:
        label_map = label_map.unsqueeze(0)
    if label_map.dim() != 3:
        raise ValueError(f"label_map must be [B, h, w] or [h, w], got {tuple(label_map.shape)}")
    if label_map.is_floating_point():
        raise ValueError(f"label_map must be an integer tensor, got {label_map.dtype}")
    lab = label_map.long()
    offsets = neighbor_offsets(radius)
    bg_pos, fg_pos, neg = [], [], []
    known = lab != IGNORE_INDEX
    for dy, dx in offsets.tolist():
        other = shift_map(lab, dy, dx, fill=IGNORE_INDEX)
        valid = known & (other != IGNORE_INDEX)
        same = lab == other
        bg_pos.append(valid & same & (lab == 0))
        fg_pos.append(valid & same & (lab != 0))
        neg.append(valid & ~same)
    return torch.stack(bg_pos, 1), torch.stack(fg_pos, 1), torch.stack(neg, 1)


def affinity_loss(aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor,
                  eps: float = 1e-5) -> Dict[str, torch.Tensor]:
    """AffinityNet loss: 1/4 bg-positive (-log a) + 1/4 fg-positive (-log a) + 1/2 negative (-log(1 - a)).

    Each term is the mean over its pairs (0 when a batch has none). IRN's boundary loss is this loss on path
    affinities (:func:`lightning_wsss.refine.path_affinity.boundary_loss`).

    Args:
        aff: affinities in [0, 1] [B, P, h, w]; bg_pos, fg_pos, neg: bool [B, P, h, w].

    Returns:
        ``{"loss", "bg", "fg", "neg"}`` scalars.
    """
    def mean_over(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (values * mask).sum() / mask.sum().clamp(min=1)

    log_pos = -torch.log(aff.clamp(min=eps))
    log_neg = -torch.log((1.0 - aff).clamp(min=eps))
    bg, fg, ng = mean_over(log_pos, bg_pos), mean_over(log_pos, fg_pos), mean_over(log_neg, neg)
    return {"loss": 0.25 * bg + 0.25 * fg + 0.5 * ng, "bg": bg, "fg": fg, "neg": ng}
