"""Box initializers: turn bounding boxes into a pseudo segmentation mask.

Every initializer has the signature ``init(image, boxes, box_labels, *, source=None, **options)`` with

* ``image``: uint8 [H, W, 3] RGB,
* ``boxes``: float [N, 4] as ``(x_min, y_min, x_max, y_max)`` in 0-based pixel-edge coordinates,
* ``box_labels``: int [N], class indices in ``1..254``,
* ``source``: optional file name / id named in :class:`~lightning_wsss.errors.DataError` messages,

and returns a uint8 [H, W] mask: ``0`` background, ``c`` class ``c``, ``255`` ignore.

Conventions shared by all initializers:

* **Pixel coverage** of a box: columns ``floor(x_min) .. ceil(x_max) - 1`` and rows
  ``floor(y_min) .. ceil(y_max) - 1`` (inclusive), i.e. every pixel the box touches. A box with
  ``x_min=3, x_max=8`` covers columns 3..7. See :func:`box_pixel_range`.
* Pixels **outside every box** are background ``0``.
* **Overlapping boxes: the smaller box wins.** Boxes are painted in order of decreasing pixel area (ties: input
  order, later boxes painted last), so a small object in front of a large one keeps its label.
* Degenerate boxes (zero / negative width or height, non-finite coordinates) and boxes reaching outside the
  image raise :class:`DataError` naming ``source``.

Initializers (see :data:`INITIALIZERS`): ``filled`` (whole box), ``inner`` (SDI's Box^i: a central region is
the class, the rest of the box ignored), ``crf`` (dense CRF with a box prior), ``grabcut`` (OpenCV GrabCut per
box) and ``intersection`` (two initializers; where they disagree: ignore).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from ..datasets.boxes import validate_boxes
from ..errors import PathLike
from ..images import check_rgb_image
from ..refine.crf import scaled_crf_params

IGNORE = 255

__all__ = [
    "INITIALIZERS",
    "box_pixel_range",
    "validate_boxes",
    "paint_order",
    "box_prior",
    "filled_init",
    "inner_init",
    "crf_init",
    "scaled_crf_params",
    "plausible_fill",
    "grabcut_init",
    "grabcut_from_mask",
    "intersect_masks",
    "intersection_init",
    "make_box_mask",
]


# ----------------------------------------------------------------------------------------------- validation
def box_pixel_range(box: Sequence[float]) -> Tuple[int, int, int, int]:
    """Integer pixel range covered by a box.

    Args:
        box: ``(x_min, y_min, x_max, y_max)`` in pixel-edge coordinates.

    Returns:
        ``(x0, y0, x1, y1)`` with ``x0 = floor(x_min)``, ``x1 = ceil(x_max)`` (exclusive), same for y: the box
        covers ``mask[y0:y1, x0:x1]``.
    """
    x_min, y_min, x_max, y_max = (float(v) for v in box)
    return math.floor(x_min), math.floor(y_min), math.ceil(x_max), math.ceil(y_max)


def paint_order(boxes: np.ndarray) -> np.ndarray:
    """Indices of ``boxes`` [N, 4] sorted by decreasing pixel area (stable: ties keep input order).

    Painting in this order makes the smaller box win where boxes overlap. Returns: int64 [N].
    """
    areas = np.array(
        [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in (box_pixel_range(b) for b in boxes)], dtype=np.int64
    )
    return np.argsort(-areas, kind="stable")


def _prepare(image, boxes, box_labels, source):
    image = check_rgb_image(image, source)
    boxes_np, labels_np = validate_boxes(image.shape[:2], boxes, box_labels, source)
    return image, boxes_np, labels_np


def _inner_range(box: Sequence[float], fraction: float) -> Tuple[int, int, int, int]:
    """Pixel range of the central region of ``box`` whose sides are ``fraction`` of the box's sides.

    Always at least one pixel (the centre pixel) and always inside the box's pixel range.
    """
    x_min, y_min, x_max, y_max = (float(v) for v in box)
    cx, cy = 0.5 * (x_min + x_max), 0.5 * (y_min + y_max)
    hw, hh = 0.5 * fraction * (x_max - x_min), 0.5 * fraction * (y_max - y_min)
    bx0, by0, bx1, by1 = box_pixel_range(box)
    # pixel i covers [i, i+1); keep pixels whose centre i + 0.5 lies in the inner region
    x0 = max(bx0, math.ceil(cx - hw - 0.5))
    x1 = min(bx1, math.floor(cx + hw - 0.5) + 1)
    y0 = max(by0, math.ceil(cy - hh - 0.5))
    y1 = min(by1, math.floor(cy + hh - 0.5) + 1)
    if x1 <= x0:  # too thin: keep the centre column
        x0 = min(max(math.floor(cx), bx0), bx1 - 1)
        x1 = x0 + 1
    if y1 <= y0:
        y0 = min(max(math.floor(cy), by0), by1 - 1)
        y1 = y0 + 1
    return x0, y0, x1, y1


# ----------------------------------------------------------------------------------------------- initializers
def filled_init(image, boxes, box_labels, *, source: Optional[PathLike] = None) -> np.ndarray:
    """Fill every box with its class (smaller boxes painted last).

    Returns:
        uint8 [H, W]: box class inside boxes, 0 elsewhere.
    """
    image, boxes_np, labels_np = _prepare(image, boxes, box_labels, source)
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    for i in paint_order(boxes_np):
        x0, y0, x1, y1 = box_pixel_range(boxes_np[i])
        mask[y0:y1, x0:x1] = labels_np[i]
    return mask


def inner_init(
    image, boxes, box_labels, *, fraction: float = 0.5, source: Optional[PathLike] = None
) -> np.ndarray:
    """SDI's Box^i (Khoreva et al., CVPR 2017): the centre of each box is the class, the rest of the box ignore.

    The central region is a box with the same centre whose width and height are ``fraction`` of the box's
    (default 0.5, i.e. 25% of the box area; SDI describes a central region of roughly 20% of the area, which
    is ``fraction ~= 0.45``). A pixel belongs to it when its centre lies inside; it is never empty (at least the
    centre pixel). Each box paints its whole pixel range (ignore band + class centre) in order of decreasing
    area, so a smaller box overrides a larger one, ignore band included.

    Returns:
        uint8 [H, W]: class in box centres, 255 in the rest of the boxes, 0 outside every box.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    image, boxes_np, labels_np = _prepare(image, boxes, box_labels, source)
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    for i in paint_order(boxes_np):
        x0, y0, x1, y1 = box_pixel_range(boxes_np[i])
        mask[y0:y1, x0:x1] = IGNORE
        ix0, iy0, ix1, iy1 = _inner_range(boxes_np[i], fraction)
        mask[iy0:iy1, ix0:ix1] = labels_np[i]
    return mask


def box_prior(
    image_hw: Tuple[int, int],
    boxes: np.ndarray,
    box_confidence: float = 0.9,
    edge_confidence: float = 0.5,
    outside_confidence: float = 0.99,
) -> np.ndarray:
    """Per-box probability prior used by :func:`crf_init` (boxes must be validated).

    Channel 0 is background, channel ``k + 1`` is box ``k`` (one channel per box, so foreground can be kept in
    its own box). Each pixel inside a box is owned by the smallest box covering it (paint order); there the
    owner's probability ramps linearly with the elliptical distance ``d`` from the box centre
    (``d = sqrt((dx / half_w)^2 + (dy / half_h)^2)``, clipped to 1) from ``box_confidence`` at the centre to
    ``edge_confidence`` at the ellipse inscribed in the box and beyond (box corners); background takes the rest.
    Outside every box background has probability ``outside_confidence``. Remaining mass is spread evenly over
    the other channels.

    Returns:
        float32 [N + 1, H, W], sums to 1 over the channel axis.
    """
    height, width = image_hw
    n = boxes.shape[0]
    channels = n + 1
    owner = np.full((height, width), -1, dtype=np.int64)  # -1: outside every box
    owner_prob = np.zeros((height, width), dtype=np.float64)
    ys = np.arange(height) + 0.5
    xs = np.arange(width) + 0.5
    for i in paint_order(boxes):
        x_min, y_min, x_max, y_max = boxes[i]
        x0, y0, x1, y1 = box_pixel_range(boxes[i])
        cx, cy = 0.5 * (x_min + x_max), 0.5 * (y_min + y_max)
        half_w, half_h = 0.5 * (x_max - x_min), 0.5 * (y_max - y_min)
        dx = (xs[x0:x1] - cx) / half_w
        dy = (ys[y0:y1] - cy) / half_h
        dist = np.clip(np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2), 0.0, 1.0)
        owner[y0:y1, x0:x1] = i
        owner_prob[y0:y1, x0:x1] = box_confidence + (edge_confidence - box_confidence) * dist

    probs = np.empty((channels, height, width), dtype=np.float64)
    inside = owner >= 0
    # a small share of the mass inside a box goes to the boxes that do not own the pixel
    eps = 1e-3 if n > 1 else 0.0
    other_inside = eps / max(n - 1, 1)
    other_outside = (1.0 - outside_confidence) / max(n, 1)
    probs[0] = np.where(inside, (1.0 - owner_prob) * (1.0 - eps), outside_confidence)
    for k in range(n):
        probs[k + 1] = np.where(owner == k, owner_prob * (1.0 - eps), np.where(inside, other_inside, other_outside))
    if n == 0:
        probs[0] = 1.0
    return (probs / probs.sum(axis=0, keepdims=True)).astype(np.float32)


def plausible_fill(fg: np.ndarray, min_fill: float = 0.0, max_fill: float = 1.0) -> np.ndarray:
    """A box's foreground, or the whole box where it covers implausibly little or much of it.

    Thin and small objects (poles, signs, pedestrians) fill most of their box; a GrabCut or CRF mask that keeps
    a sliver of the box (colour model eaten by the background) or the whole box is more wrong than the filled box.

    Args:
        fg: bool [h, w], the box's pixel range (True: foreground).
        min_fill, max_fill: the plausible range of the foreground's share of the box.

    Returns:
        bool [h, w]: ``fg``, or all True where its share is below ``min_fill`` or above ``max_fill``.
    """
    if not 0.0 <= min_fill <= max_fill <= 1.0:
        raise ValueError(f"need 0 <= min_fill <= max_fill <= 1, got {min_fill}, {max_fill}")
    share = float(fg.mean()) if fg.size else 1.0
    if share < min_fill or share > max_fill:
        return np.ones_like(fg, dtype=bool)
    return fg


def crf_init(
    image,
    boxes,
    box_labels,
    *,
    params=None,
    box_confidence: float = 0.9,
    edge_confidence: float = 0.5,
    outside_confidence: float = 0.99,
    scale_params: bool = False,
    min_fill: float = 0.0,
    max_fill: float = 1.0,
    source: Optional[PathLike] = None,
) -> np.ndarray:
    """Dense CRF with the boxes as prior.

    Builds :func:`box_prior` (one channel per box plus background; inside a box the box's probability ramps
    from ``box_confidence`` at the centre to ``edge_confidence`` at the border), runs
    ``lightning_wsss.refine.crf.crf_from_probs`` over the whole image and takes the arg-max. A pixel labelled
    with box ``k``'s channel gets box ``k``'s class only inside box ``k`` (foreground never leaves its box);
    everything else, and everything outside all boxes, is background. Where boxes overlap the prior favours the
    smaller box, but the CRF may give an overlap pixel to either box.

    Args:
        params: ``lightning_wsss.refine.crf.CRFParams`` or its keyword dict (default parameters when None).
        scale_params: scale the CRF's spatial widths with the image (:func:`scaled_crf_params`, psa's values at
            500 px).
        min_fill, max_fill: per-box fallback to the filled box (:func:`plausible_fill`).

    Returns:
        uint8 [H, W] with classes and 0; no ignore pixels.
    """
    from ..refine.crf import CRFParams, crf_from_probs

    if isinstance(params, dict):
        params = CRFParams(**params)

    image, boxes_np, labels_np = _prepare(image, boxes, box_labels, source)
    height, width = image.shape[:2]
    mask = np.zeros((height, width), dtype=np.uint8)
    if boxes_np.shape[0] == 0:
        return mask
    prior = box_prior((height, width), boxes_np, box_confidence, edge_confidence, outside_confidence)
    if scale_params:
        params = scaled_crf_params((height, width), params)
    refined = np.asarray(crf_from_probs(np.ascontiguousarray(image), prior, params or CRFParams()))
    winner = refined.argmax(axis=0)
    for i in paint_order(boxes_np):  # each box's channel, restricted to that box
        x0, y0, x1, y1 = box_pixel_range(boxes_np[i])
        region = plausible_fill(winner[y0:y1, x0:x1] == i + 1, min_fill, max_fill)
        mask[y0:y1, x0:x1][region] = labels_np[i]
    return mask


def grabcut_init(
    image,
    boxes,
    box_labels,
    *,
    iterations: int = 5,
    min_size: int = 8,
    fallback_fraction: float = 0.5,
    context: Optional[float] = None,
    min_fill: float = 0.0,
    max_fill: float = 1.0,
    source: Optional[PathLike] = None,
) -> np.ndarray:
    """OpenCV GrabCut (``GC_INIT_WITH_RECT``) per box on the whole image.

    For each box, GrabCut is initialised with the box's pixel range as rectangle; the pixels GrabCut marks as
    (probable) foreground inside the box get the class. Boxes with a side shorter than ``min_size`` pixels are
    filled. When GrabCut returns no foreground (or fails, e.g. a box covering the whole image leaves no
    background samples), the box falls back to its central region (side ``fallback_fraction`` of the box's, as
    in :func:`inner_init`) labelled with the class. Pixels inside boxes that no box claims are background.

    ``context``: run GrabCut on the box enlarged by ``context`` times its width / height on every side (clipped
    to the image) instead of the whole image, so the background colour model is the box's surroundings, at a
    scale that follows the box (a pedestrian's box is not judged against the whole street's colours).
    ``min_fill`` / ``max_fill``: a box whose GrabCut foreground covers less / more of it is filled
    (:func:`plausible_fill`; with ``min_fill > 0`` an empty result is filled too).

    Foreground is painted in order of decreasing box area: where two boxes both claim a pixel the smaller
    box wins, and a small box's background never erases a larger box's foreground.

    Returns:
        uint8 [H, W] with classes and 0; no ignore pixels.
    """
    import cv2

    image, boxes_np, labels_np = _prepare(image, boxes, box_labels, source)
    height, width = image.shape[:2]
    mask = np.zeros((height, width), dtype=np.uint8)
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    for i in paint_order(boxes_np):
        x0, y0, x1, y1 = box_pixel_range(boxes_np[i])
        if (x1 - x0) < min_size or (y1 - y0) < min_size:
            mask[y0:y1, x0:x1] = labels_np[i]
            continue
        fg = None
        cx0, cy0, cx1, cy1 = 0, 0, width, height
        if context is not None:
            mx, my = int(math.ceil(context * (x1 - x0))), int(math.ceil(context * (y1 - y0)))
            cx0, cy0, cx1, cy1 = max(0, x0 - mx), max(0, y0 - my), min(width, x1 + mx), min(height, y1 + my)
        try:
            crop = np.ascontiguousarray(bgr[cy0:cy1, cx0:cx1])
            gc_mask = np.zeros(crop.shape[:2], dtype=np.uint8)
            bgd_model = np.zeros((1, 65), dtype=np.float64)
            fgd_model = np.zeros((1, 65), dtype=np.float64)
            cv2.setRNGSeed(0)  # GrabCut's GMM k-means init is random: fix it so masks are reproducible
            cv2.grabCut(
                crop, gc_mask, (x0 - cx0, y0 - cy0, x1 - x0, y1 - y0), bgd_model, fgd_model, int(iterations),
                cv2.GC_INIT_WITH_RECT,
            )
            inside = gc_mask[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
            fg = (inside == cv2.GC_FGD) | (inside == cv2.GC_PR_FGD)
        except cv2.error:
            fg = None
        if fg is None or not fg.any():
            if min_fill > 0.0:  # an empty mask is below any plausible share: the filled box
                mask[y0:y1, x0:x1] = labels_np[i]
                continue
            ix0, iy0, ix1, iy1 = _inner_range(boxes_np[i], fallback_fraction)
            mask[iy0:iy1, ix0:ix1] = labels_np[i]
        else:
            mask[y0:y1, x0:x1][plausible_fill(fg, min_fill, max_fill)] = labels_np[i]
    return mask


def grabcut_from_mask(image: np.ndarray, box: Sequence[float], seed: np.ndarray, iterations: int = 5) -> np.ndarray:
    """GrabCut of one box started from a mask (``GC_INIT_WITH_MASK``) instead of the rectangle.

    Inside the box, ``seed`` pixels are probable foreground and the rest probable background; outside the box
    is sure background. BoxSup's "GrabCut re-run from the network's mask": the colour model starts from what the
    network found, and GrabCut snaps it to colour edges.

    Args:
        image: uint8 [H, W, 3] RGB.
        box: ``(x_min, y_min, x_max, y_max)`` (validated by the caller).
        seed: bool [H, W]; only its part inside the box is used.
        iterations: GrabCut iterations.

    Returns:
        bool [H, W], foreground inside the box only; the seed (clipped to the box) where GrabCut cannot run (an
        empty or full seed, or OpenCV fails).
    """
    import cv2

    height, width = image.shape[:2]
    x0, y0, x1, y1 = box_pixel_range(box)
    inside = np.zeros((height, width), dtype=bool)
    inside[y0:y1, x0:x1] = True
    seed = np.asarray(seed, dtype=bool) & inside
    count = int(seed.sum())
    if count == 0 or count == int(inside.sum()):
        return seed
    gc_mask = np.full((height, width), cv2.GC_BGD, dtype=np.uint8)
    gc_mask[inside] = cv2.GC_PR_BGD
    gc_mask[seed] = cv2.GC_PR_FGD
    try:
        cv2.setRNGSeed(0)
        cv2.grabCut(np.ascontiguousarray(image[:, :, ::-1]), gc_mask, None, np.zeros((1, 65), np.float64),
                    np.zeros((1, 65), np.float64), int(iterations), cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return seed
    return ((gc_mask == cv2.GC_FGD) | (gc_mask == cv2.GC_PR_FGD)) & inside


def intersect_masks(mask_a: np.ndarray, mask_b: np.ndarray) -> np.ndarray:
    """Keep labels where two masks agree; everything else (disagreement, or 255 in either) becomes 255.

    Initializer masks are both 0 outside every box, so disagreements only happen inside boxes.

    Returns:
        uint8 [H, W].
    """
    mask_a = np.asarray(mask_a)
    mask_b = np.asarray(mask_b)
    if mask_a.shape != mask_b.shape:
        raise ValueError(f"masks differ in shape: {mask_a.shape} vs {mask_b.shape}")
    out = np.where(mask_a == mask_b, mask_a, IGNORE).astype(np.uint8)
    return out


def intersection_init(
    image,
    boxes,
    box_labels,
    *,
    a: str = "grabcut",
    b: str = "crf",
    a_kwargs: Optional[dict] = None,
    b_kwargs: Optional[dict] = None,
    source: Optional[PathLike] = None,
) -> np.ndarray:
    """Run two initializers (default GrabCut and CRF) and keep only the pixels where they agree.

    Args:
        a, b: names in :data:`INITIALIZERS` (not ``"intersection"``).
        a_kwargs, b_kwargs: options for each.

    Returns:
        uint8 [H, W]: the common label where both agree, 255 where they disagree (only inside boxes).
    """
    if "intersection" in (a, b):
        raise ValueError("intersection_init cannot nest 'intersection'")
    mask_a = make_box_mask(a, image, boxes, box_labels, source=source, **(a_kwargs or {}))
    mask_b = make_box_mask(b, image, boxes, box_labels, source=source, **(b_kwargs or {}))
    return intersect_masks(mask_a, mask_b)


INITIALIZERS: Dict[str, Callable[..., np.ndarray]] = {
    "filled": filled_init,
    "inner": inner_init,
    "crf": crf_init,
    "grabcut": grabcut_init,
    "intersection": intersection_init,
}


def make_box_mask(name: str, image, boxes, box_labels, **kwargs) -> np.ndarray:
    """Run the initializer registered as ``name`` (see :data:`INITIALIZERS`) with ``kwargs``.

    Returns:
        uint8 [H, W] pseudo mask (0 background, classes, 255 ignore).

    Raises:
        ValueError: unknown initializer name.
        DataError: bad image or boxes.
    """
    try:
        init = INITIALIZERS[name]
    except KeyError:
        raise ValueError(f"unknown box initializer {name!r}; choose from {sorted(INITIALIZERS)}") from None
    return init(image, boxes, box_labels, **kwargs)
