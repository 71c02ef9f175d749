"""A synthetic PASCAL-VOC-style data set: a fair miniature of weakly supervised semantic segmentation.

Each image holds 1-4 objects on a textured background. An object is a *body* (an irregular star-convex /
superellipse blob whose colour and texture come from one distribution shared by every class, so the body
alone says nothing about the class) plus a small class-specific *emblem* (a distinctive shape, colour and
pattern covering roughly 10-22 % of the body, placed at a random spot inside it). A classifier therefore
learns the emblem, and its CAM covers only part of each object, as on real photos; the body still differs
from the background in low-level cues (colour, texture, shading, edges), usually but not always clearly, so
CRF / affinity / GrabCut refinement can grow seeds into full objects.

Two classes carry a context bias, as boats and water or cows and grass do in VOC: ``alpha`` appears on a
"water" background (blue waves) and ``beta`` on "grass" (green streaky noise) with probability
:data:`CONTEXT_PROBABILITY`; the other classes appear on random backgrounds. Later objects occlude earlier
ones; masks, instance maps and boxes describe visible pixels only, and an object too occluded to be
recognised (few visible pixels, or most of its emblem hidden) is not drawn at all, so every object in the
annotation is visible in the image and every drawn object is annotated.

:func:`render_sample` is the pure in-memory core; :func:`make_synthetic` writes the VOC layout
(``JPEGImages``, ``SegmentationClass``, ``SegmentationObject``, ``Annotations``,
``ImageSets/Segmentation/{train,val}.txt``, ``class_names.txt``, ``synthetic.json``).
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from ..errors import DataError, PathLike
from ..io import write_bytes_atomic, write_json_atomic, write_label_png
from ..palette import voc_palette
from .annotations import voc_xml as annotation_xml

SYNTHETIC_CLASSES: Tuple[str, ...] = ("background", "alpha", "beta", "gamma", "delta", "epsilon", "zeta")
"""Class names, background first; label value = index."""

BACKGROUND_FAMILIES: Tuple[str, ...] = ("gradient", "noise", "stripes", "wavy", "water", "grass")
"""Background texture families; ``water`` and ``grass`` are the context backgrounds."""

CONTEXT_BACKGROUNDS: Dict[int, str] = {1: "water", 2: "grass"}
"""Class index -> the background family it co-occurs with."""

CONTEXT_PROBABILITY: float = 0.8
"""Probability that an image holding a context class is drawn on that class's background."""

# Backgrounds of images without a context class (and the remaining 20 % of those with one).
_RANDOM_BACKGROUND_WEIGHTS = np.array([0.25, 0.25, 0.2, 0.2, 0.05, 0.05])

GENERATOR_VERSION = 1
"""Bumped whenever the rendering changes; stored in ``synthetic.json`` so old folders are not mixed with new."""

_NUM_OBJECTS_P = np.array([0.4, 0.3, 0.2, 0.1])  # P(1..4 objects drawn, before occlusion culling)
_REPEAT_CLASS_P = 0.3  # chance that an object re-uses a class already in the image (same-class instances)
_LOW_CONTRAST_P = 0.15  # chance that a body takes (nearly) the background's mean colour
_EMBLEM_FRACTION = (0.10, 0.22)  # emblem area / body area
_MIN_EMBLEM_VISIBLE = 0.3  # fraction of an emblem that must stay visible for the object to be kept
_MAX_VISIBLE_EMBLEM_SHARE = 0.5  # visible emblem pixels / visible object pixels must stay below this

# Emblem unit shapes (radius 1) and their areas; colours are the class-specific part.
_EMBLEM_AREA = {1: np.pi, 2: 4 * 0.85**2, 3: 3 * np.sqrt(3) / 4, 4: 4 * 0.66 - 0.66**2, 5: np.pi * (1 - 0.55**2), 6: 2.0}
_EMBLEM_COLORS = {  # (main, secondary) RGB
    1: ((215, 35, 40), (250, 245, 235)),  # red disc with a white centre dot
    2: ((240, 210, 30), (25, 25, 25)),  # yellow/black checkerboard square
    3: ((30, 210, 220), (30, 210, 220)),  # cyan triangle
    4: ((215, 40, 200), (215, 40, 200)),  # magenta plus
    5: ((250, 140, 20), (250, 140, 20)),  # orange ring
    6: ((245, 245, 250), (30, 50, 200)),  # white/blue striped diamond
}


@dataclass
class SyntheticObject:
    """One visible object of a rendered sample.

    Attributes:
        class_index: 1..6 (index into :data:`SYNTHETIC_CLASSES`).
        instance_id: 1..n, its value in the instance map (drawing order: higher ids occlude lower ones).
        box: (x_min, y_min, x_max, y_max) tight bounds of its visible pixels, 0-based pixel-edge coordinates.
        body_area: pixels of the whole (unoccluded, unclipped-by-others) body inside the image.
        emblem_area: pixels of the whole emblem.
        visible_area: visible pixels (its count in the instance map).
        truncated: whether the body is cut by the image border.
    """

    class_index: int
    instance_id: int
    box: Tuple[int, int, int, int]
    body_area: int
    emblem_area: int
    visible_area: int
    truncated: bool

    @property
    def name(self) -> str:
        return SYNTHETIC_CLASSES[self.class_index]


@dataclass
class SyntheticSample:
    """A rendered image with its annotations.

    Attributes:
        image: uint8 [H, W, 3] RGB.
        label: uint8 [H, W] class indices (0 = background; no 255).
        instances: uint8 [H, W] instance ids (0 = background, 1..n as in ``objects``).
        emblems: uint8 [H, W] instance id of each *visible emblem* pixel, 0 elsewhere (a debug map: the
            discriminative part of each object).
        objects: the visible objects, ordered by instance id.
        background: the background family (one of :data:`BACKGROUND_FAMILIES`).
    """

    image: np.ndarray
    label: np.ndarray
    instances: np.ndarray
    emblems: np.ndarray
    objects: List[SyntheticObject] = field(default_factory=list)
    background: str = ""


# ----------------------------------------------------------------------------------------------- helpers


@lru_cache(maxsize=16)
def _grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates: (yy, xx) float32 [size, size] each."""
    coords = np.arange(size, dtype=np.float32)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


@lru_cache(maxsize=64)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """Linear interpolation from ``cells + 1`` knots to ``size`` samples: float32 [size, cells + 1]."""
    pos = np.linspace(0.0, cells, size, dtype=np.float64)
    left = np.minimum(np.floor(pos).astype(int), cells - 1)
    frac = pos - left
    mat = np.zeros((size, cells + 1), dtype=np.float32)
    mat[np.arange(size), left] = 1.0 - frac
    mat[np.arange(size), left + 1] += frac
    mat.setflags(write=False)
    return mat


def _smooth_noise(rng: np.random.Generator, size: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Value noise bilinearly interpolated from a random knot grid, roughly in [0, 1]: float32 [size, size]."""
    knots = rng.random((cells_y + 1, cells_x + 1), dtype=np.float32)
    my, mx = _interp_matrix(size, cells_y), _interp_matrix(size, cells_x)
    # associate so the final product has the small inner dimension (keeps BLAS single-threaded and cheap)
    if cells_y <= cells_x:
        return my @ (knots @ mx.T)
    return (my @ knots) @ mx.T


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (components in [0, 1]) to RGB float [3] in 0..255."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32) * 255.0


def _random_color(rng: np.random.Generator, s_range=(0.15, 0.75), v_range=(0.25, 0.95), hue=None) -> np.ndarray:
    h = rng.random() if hue is None else hue % 1.0
    return _hsv_to_rgb(h, rng.uniform(*s_range), rng.uniform(*v_range))


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend colours a, b [3] by weights t [H, W] -> float32 [H, W, 3]."""
    return a[None, None, :] + (b - a)[None, None, :] * t[..., None]


# ------------------------------------------------------------------------------------------- backgrounds


def _render_background(rng: np.random.Generator, size: int, family: str) -> np.ndarray:
    """A textured background of one family: float32 [size, size, 3] in roughly 0..255."""
    yy, xx = _grid(size)
    u, v = yy / size, xx / size
    if family == "water":
        deep = _hsv_to_rgb(rng.uniform(0.55, 0.64), rng.uniform(0.55, 0.9), rng.uniform(0.3, 0.55))
        light = _hsv_to_rgb(rng.uniform(0.52, 0.6), rng.uniform(0.25, 0.6), rng.uniform(0.65, 0.95))
        freq, amp, freq2 = rng.uniform(5, 12), rng.uniform(0.3, 1.2), rng.uniform(1, 4)
        tilt = rng.uniform(-0.3, 0.3)
        waves = np.sin(2 * np.pi * (freq * (u + tilt * v) + amp * np.sin(2 * np.pi * freq2 * v + rng.uniform(0, 6.3))))
        t = 0.5 + 0.35 * waves + 0.3 * (_smooth_noise(rng, size, 4, 4) - 0.5)
        return _mix(deep, light, np.clip(t, 0, 1))
    if family == "grass":
        dark = _hsv_to_rgb(rng.uniform(0.22, 0.33), rng.uniform(0.5, 0.85), rng.uniform(0.25, 0.45))
        light = _hsv_to_rgb(rng.uniform(0.2, 0.3), rng.uniform(0.4, 0.8), rng.uniform(0.55, 0.85))
        blades = _smooth_noise(rng, size, max(2, size // 24), max(4, size // 2))  # vertical streaks
        t = 0.55 * blades + 0.3 * _smooth_noise(rng, size, 3, 3) + 0.3 * rng.random((size, size), dtype=np.float32)
        return _mix(dark, light, np.clip(t - 0.1, 0, 1))
    a, b = _random_color(rng), _random_color(rng)
    if family == "gradient":
        ang = rng.uniform(0, 2 * np.pi)
        t = (np.cos(ang) * (v - 0.5) + np.sin(ang) * (u - 0.5)) / 0.71 * 0.5 + 0.5
        t = t + 0.15 * (_smooth_noise(rng, size, 3, 3) - 0.5)
    elif family == "noise":
        cells = int(rng.integers(3, 12))
        t = 0.75 * _smooth_noise(rng, size, cells, cells) + 0.25 * _smooth_noise(rng, size, 2 * cells, 2 * cells)
    elif family == "stripes":
        ang = rng.uniform(0, np.pi)
        freq = rng.uniform(3, 10)
        phase = np.cos(ang) * v + np.sin(ang) * u
        t = 0.5 + 0.5 * np.tanh(rng.uniform(1, 5) * np.sin(2 * np.pi * freq * phase + rng.uniform(0, 6.3)))
        t = 0.85 * t + 0.15 * _smooth_noise(rng, size, 4, 4)
    elif family == "wavy":
        freq, amp, freq2 = rng.uniform(3, 9), rng.uniform(0.3, 1.5), rng.uniform(1, 4)
        ang = rng.uniform(0, np.pi)
        p, q = np.cos(ang) * v + np.sin(ang) * u, -np.sin(ang) * v + np.cos(ang) * u
        t = 0.5 + 0.45 * np.sin(2 * np.pi * (freq * p + amp * np.sin(2 * np.pi * freq2 * q)))
    else:
        raise ValueError(f"unknown background family {family!r}")
    return _mix(a, b, np.clip(t, 0, 1))


def _choose_background(rng: np.random.Generator, classes: Sequence[int]) -> str:
    """The background family for an image holding ``classes`` (context bias for alpha/beta)."""
    context = sorted({c for c in classes if c in CONTEXT_BACKGROUNDS})
    pick_context = rng.random() < CONTEXT_PROBABILITY
    anchor = int(rng.integers(len(context))) if context else 0
    random_family = BACKGROUND_FAMILIES[int(rng.choice(len(BACKGROUND_FAMILIES), p=_RANDOM_BACKGROUND_WEIGHTS))]
    if context and pick_context:
        return CONTEXT_BACKGROUNDS[context[anchor]]
    return random_family


# ---------------------------------------------------------------------------------------------- geometry


@dataclass
class _Geometry:
    cls: int
    body: np.ndarray  # bool [H, W]
    radial: np.ndarray  # float32 [H, W]: normalised distance from the body centre (0 centre .. 1 border)
    centre: Tuple[float, float]
    radius: float
    emblem: np.ndarray  # bool [H, W]
    emblem_patch: Tuple[int, int, np.ndarray, np.ndarray]  # (y0, x0, patch mask [k, k], patch colours [k, k, 3])
    truncated: bool

    @property
    def window(self) -> Tuple[slice, slice]:
        """Tight bounding window of the body (rows, cols)."""
        rows, cols = np.nonzero(self.body.any(1))[0], np.nonzero(self.body.any(0))[0]
        return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _body_shape(rng: np.random.Generator, size: int, radius: float) -> Tuple[np.ndarray, np.ndarray, Tuple[float, float], bool]:
    """Rasterise a random smooth star-convex superellipse blob.

    Returns:
        (mask bool [H, W], normalised radial distance float32 [H, W], centre (cy, cx), truncated flag).
    """
    cy, cx = rng.uniform(0.1, 0.9, size=2) * size
    theta = rng.uniform(0, 2 * np.pi)
    aspect = np.sqrt(rng.uniform(0.55, 1.0) if rng.random() < 0.5 else 1.0 / rng.uniform(0.55, 1.0))
    power = rng.uniform(1.6, 4.0)  # superellipse exponent (2 = ellipse)
    ks = np.arange(2, 6)
    amps = rng.uniform(0, 0.22, size=4) / np.sqrt(ks - 1)
    phases = rng.uniform(0, 2 * np.pi, size=4)
    reach = radius * np.sqrt(2.0) * (1.0 + amps.sum()) * max(aspect, 1.0 / aspect) + 1.0
    y0, y1 = max(0, int(cy - reach)), min(size, int(cy + reach) + 2)
    x0, x1 = max(0, int(cx - reach)), min(size, int(cx + reach) + 2)
    mask = np.zeros((size, size), dtype=bool)
    radial = np.ones((size, size), dtype=np.float32)
    if y0 >= y1 or x0 >= x1:
        return mask, radial, (cy, cx), True
    yy, xx = _grid(size)
    dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
    a = np.cos(theta) * dx + np.sin(theta) * dy
    b = -np.sin(theta) * dx + np.cos(theta) * dy
    a, b = a / aspect, b * aspect
    rho = np.hypot(a, b)
    phi = np.arctan2(b, a)
    c, s = np.abs(np.cos(phi)), np.abs(np.sin(phi))
    r_se = radius / (c**power + s**power) ** (1.0 / power)
    wobble = 1.0 + (amps[:, None, None] * np.cos(ks[:, None, None] * phi[None] + phases[:, None, None])).sum(0)
    r = r_se * np.maximum(wobble, 0.35)
    local = rho / np.maximum(r, 1e-6)
    mask[y0:y1, x0:x1] = local <= 1.0
    radial[y0:y1, x0:x1] = np.minimum(local, 1.0)
    # truncated if the whole shape would not fit in the image
    truncated = bool(cy - reach < 0 or cx - reach < 0 or cy + reach > size or cx + reach > size) and bool(
        mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
    )
    return mask, radial, (float(cy), float(cx)), truncated


def _emblem_patch(rng: np.random.Generator, cls: int, e: float) -> Tuple[np.ndarray, np.ndarray]:
    """Rasterise class ``cls``'s emblem of radius ``e`` pixels at a random rotation.

    Returns:
        (mask bool [k, k], colours float32 [k, k, 3]) with k = 2 * ceil(e) + 1, centred on the middle pixel.
    """
    half = int(np.ceil(e))
    offs = np.arange(-half, half + 1, dtype=np.float32) / e
    t0, s0 = np.meshgrid(offs, offs, indexing="ij")  # rows, cols in emblem radii
    psi = rng.uniform(0, 2 * np.pi)
    s = np.cos(psi) * s0 + np.sin(psi) * t0
    t = -np.sin(psi) * s0 + np.cos(psi) * t0
    rho = np.hypot(s, t)
    main, second = (np.asarray(c, np.float32) for c in _EMBLEM_COLORS[cls])
    jitter = rng.normal(0, 10, size=3).astype(np.float32)
    main, second = main + jitter, second + jitter
    pattern = np.zeros_like(rho)  # 0 -> main colour, 1 -> secondary colour
    if cls == 1:  # disc with centre dot
        mask = rho <= 1.0
        pattern = (rho <= 0.38).astype(np.float32)
    elif cls == 2:  # checkerboard square
        mask = (np.abs(s) <= 0.85) & (np.abs(t) <= 0.85)
        pattern = ((np.floor((s + 0.85) / 0.567) + np.floor((t + 0.85) / 0.567)) % 2).astype(np.float32)
    elif cls == 3:  # equilateral triangle inscribed in the unit circle
        angles = np.array([np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3])
        mask = np.ones_like(rho, dtype=bool)
        for ang in angles:  # inside the three half-planes facing the vertices' opposite edges
            mask &= (np.cos(ang + np.pi) * s + np.sin(ang + np.pi) * t) <= 0.5
    elif cls == 4:  # plus
        mask = ((np.abs(s) <= 0.33) & (np.abs(t) <= 1.0)) | ((np.abs(t) <= 0.33) & (np.abs(s) <= 1.0))
    elif cls == 5:  # ring
        mask = (rho <= 1.0) & (rho >= 0.55)
    elif cls == 6:  # striped diamond
        mask = (np.abs(s) + np.abs(t)) <= 1.0
        pattern = (np.floor((s + 1.0) / 0.4) % 2).astype(np.float32)
    else:
        raise ValueError(f"no emblem for class {cls}")
    colours = _mix(main, second, pattern)
    return mask, colours


def _place_emblem(rng: np.random.Generator, body: np.ndarray, cls: int, body_area: int) -> Tuple[np.ndarray, Tuple[int, int, np.ndarray, np.ndarray]]:
    """Put class ``cls``'s emblem at a random spot where it fits inside ``body``.

    Returns:
        (emblem mask bool [H, W] (a subset of ``body``), (y0, x0, patch mask, patch colours)).
    """
    size = body.shape[0]
    frac = rng.uniform(*_EMBLEM_FRACTION)
    e = max(1.5, float(np.sqrt(frac * body_area / _EMBLEM_AREA[cls])))
    ys, xs = np.nonzero(body)
    for attempt in range(6):
        pmask, pcol = _emblem_patch(rng, cls, e)
        half = pmask.shape[0] // 2
        dy, dx = np.nonzero(pmask)
        dy, dx = dy - half, dx - half
        pick = rng.integers(len(ys), size=24)
        cy, cx = ys[pick][:, None] + dy[None], xs[pick][:, None] + dx[None]  # [K, F]
        inside = (cy >= 0) & (cy < size) & (cx >= 0) & (cx < size)
        fits = (inside & body[np.clip(cy, 0, size - 1), np.clip(cx, 0, size - 1)]).all(1)
        if fits.any() or attempt == 5:
            k = int(np.argmax(fits)) if fits.any() else 0
            y0, x0 = int(ys[pick[k]]) - half, int(xs[pick[k]]) - half
            break
        e *= 0.85
    emblem = np.zeros_like(body)
    py0, px0 = max(0, y0), max(0, x0)
    py1, px1 = min(size, y0 + pmask.shape[0]), min(size, x0 + pmask.shape[1])
    emblem[py0:py1, px0:px1] = pmask[py0 - y0 : py1 - y0, px0 - x0 : px1 - x0]
    emblem &= body
    return emblem, (y0, x0, pmask, pcol)


def _sample_geometry(rng: np.random.Generator, size: int) -> List[_Geometry]:
    """Draw 1-4 objects (classes, bodies, emblems) in drawing order."""
    n = int(rng.choice(4, p=_NUM_OBJECTS_P)) + 1
    lo, hi = (0.16, 0.38) if n == 1 else (0.09, 0.28)  # mean body radius as a fraction of the side
    num_fg = len(SYNTHETIC_CLASSES) - 1
    geoms: List[_Geometry] = []
    for _ in range(n):
        if geoms and rng.random() < _REPEAT_CLASS_P:
            cls = geoms[int(rng.integers(len(geoms)))].cls
        else:
            cls = int(rng.integers(1, num_fg + 1))
        radius = size * float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        body, radial, centre, truncated = _body_shape(rng, size, radius)
        area = int(body.sum())
        if area < 8:
            continue
        emblem, patch = _place_emblem(rng, body, cls, area)
        geoms.append(_Geometry(cls, body, radial, centre, radius, emblem, patch, truncated))
    return geoms


def _min_visible(size: int) -> int:
    return max(12, int(round(30 * (size / 128.0) ** 2)))


def _cull_occluded(geoms: List[_Geometry], size: int) -> List[_Geometry]:
    """Keep objects that stay recognisable under occlusion by later ones (exact, one back-to-front pass).

    An object is kept if its visible pixels number at least :func:`_min_visible`, at least
    ``_MIN_EMBLEM_VISIBLE`` of its emblem is visible, and visible emblem pixels are under half its visible
    pixels. Dropped objects are not drawn, so they occlude nothing.
    """
    covered = np.zeros((size, size), dtype=bool)
    keep = []
    for g in reversed(geoms):
        vis = g.body & ~covered
        n_vis = int(vis.sum())
        n_emb = int(g.emblem.sum())
        n_emb_vis = int((g.emblem & ~covered).sum())
        if (
            n_vis >= _min_visible(size)
            and n_emb >= 3
            and n_emb_vis >= max(3, _MIN_EMBLEM_VISIBLE * n_emb)
            and n_emb_vis < _MAX_VISIBLE_EMBLEM_SHARE * n_vis
        ):
            keep.append(g)
            covered |= g.body
    return keep[::-1]


# --------------------------------------------------------------------------------------------- rendering


def _body_texture(rng: np.random.Generator, size: int, base: np.ndarray, g: _Geometry) -> np.ndarray:
    """Class-independent body appearance over the body's bounding window ``g.window``.

    Returns:
        float32 [h, w, 3] for the window (only the body pixels matter).
    """
    win = g.window
    yy, xx = (a[win] for a in _grid(size))
    second = np.clip(base * (1.0 + rng.uniform(-0.3, 0.3, size=3)) + rng.normal(0, 30, size=3), 0, 255)
    second = second.astype(np.float32)
    kind = int(rng.integers(4))
    if kind == 0:  # plain with fine noise
        t = 0.15 * rng.random(yy.shape, dtype=np.float32)
    elif kind == 1:  # spots
        cells = int(rng.integers(6, 14))
        t = (_smooth_noise(rng, size, cells, cells)[win] > rng.uniform(0.55, 0.7)).astype(np.float32) * 0.9
    elif kind == 2:  # stripes
        ang, freq = rng.uniform(0, np.pi), rng.uniform(0.04, 0.15) * 128.0 / size  # cycles per pixel
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(ang) * xx + np.sin(ang) * yy) + rng.uniform(0, 6.3))
        t = t * rng.uniform(0.4, 0.9)
    else:  # mottled
        cells = int(rng.integers(4, 10))
        t = _smooth_noise(rng, size, cells, cells)[win]
    colour = _mix(base, second, t)
    # shading: darker towards the rim, lit from a random side
    lang = rng.uniform(0, 2 * np.pi)
    cy, cx = g.centre
    light = (np.cos(lang) * (xx - cx) + np.sin(lang) * (yy - cy)) / max(g.radius, 1.0)
    shade = 1.0 - rng.uniform(0.1, 0.35) * g.radial[win] ** 2 + rng.uniform(0.0, 0.15) * np.clip(light, -1.5, 1.5)
    return colour * shade[..., None]


def render_sample(rng: np.random.Generator, size: int = 128) -> SyntheticSample:
    """Render one synthetic image with exact annotations (pure: depends only on ``rng``'s state).

    Args:
        rng: the random generator (consumed).
        size: image side in pixels (square images; 32 or more).

    Returns:
        a :class:`SyntheticSample` with image uint8 [size, size, 3], label / instances / emblems uint8
        [size, size], at least one object (ordered by instance id) and the background family.
    """
    if size < 32:
        raise ValueError(f"synthetic images need size >= 32, got {size}")
    while True:
        geoms = _cull_occluded(_sample_geometry(rng, size), size)
        if geoms:
            break
    family = _choose_background(rng, [g.cls for g in geoms])
    img = _render_background(rng, size, family)
    label = np.zeros((size, size), dtype=np.uint8)
    instances = np.zeros((size, size), dtype=np.uint8)
    emblems = np.zeros((size, size), dtype=np.uint8)
    for iid, g in enumerate(geoms, start=1):
        if rng.random() < _LOW_CONTRAST_P:
            # camouflage: the body's mean colour is close to what lies behind it; texture, shading and edges
            # remain as cues
            target = np.clip(img[g.body].mean(0) + rng.normal(0, 8, size=3), 0, 255).astype(np.float32)
            tex = _body_texture(rng, size, target, g)
            tex *= (target / np.maximum(tex[g.body[g.window]].mean(0), 1.0))[None, None, :]
        else:
            tex = _body_texture(rng, size, _random_color(rng, s_range=(0.1, 0.8), v_range=(0.25, 0.95)), g)
        body_win = g.body[g.window]
        img[g.window][body_win] = tex[body_win]
        y0, x0, pmask, pcol = g.emblem_patch
        ys, xs = np.nonzero(pmask)
        ys, xs = ys + y0, xs + x0
        ok = (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
        ys, xs, cols = ys[ok], xs[ok], pcol[pmask][ok]
        ok = g.body[ys, xs]
        img[ys[ok], xs[ok]] = cols[ok]
        label[g.body] = g.cls
        instances[g.body] = iid
        emblems[g.body] = 0
        emblems[g.emblem] = iid
    # mild optical blur and sensor noise
    if rng.random() < 0.5:
        img[1:-1] = 0.25 * img[:-2] + 0.5 * img[1:-1] + 0.25 * img[2:]
        img[:, 1:-1] = 0.25 * img[:, :-2] + 0.5 * img[:, 1:-1] + 0.25 * img[:, 2:]
    img += rng.uniform(1.5, 7.0) * rng.standard_normal(img.shape, dtype=np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    objects = []
    for iid, g in enumerate(geoms, start=1):
        vis = instances == iid
        rows, cols = np.nonzero(vis.any(1))[0], np.nonzero(vis.any(0))[0]
        box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
        objects.append(
            SyntheticObject(g.cls, iid, box, int(g.body.sum()), int(g.emblem.sum()), int(vis.sum()), g.truncated)
        )
    return SyntheticSample(image, label, instances, emblems, objects, family)


# --------------------------------------------------------------------------------------------- file I/O


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for sample ``index`` of a data set with ``seed`` (independent of worker count)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def sample_id(index: int) -> str:
    """Id of sample ``index`` (0-based): ``syn_000001`` for index 0."""
    return f"syn_{index + 1:06d}"


def voc_xml(sample: SyntheticSample, image_id: str) -> bytes:
    """The VOC annotation XML of a sample (boxes 1-based inclusive: xmin = first column + 1, xmax = last + 1)."""
    objects = sample.objects
    return annotation_xml(image_id, sample.label.shape, [o.name for o in objects], [o.box for o in objects],
                          [o.truncated for o in objects], folder="synthetic")


@lru_cache(maxsize=1)
def _palette() -> np.ndarray:
    return voc_palette()


_SUBDIRS = ("JPEGImages", "SegmentationClass", "SegmentationObject", "Annotations")


def _sample_paths(root: Path, image_id: str) -> List[Path]:
    return [
        root / "JPEGImages" / f"{image_id}.jpg",
        root / "SegmentationClass" / f"{image_id}.png",
        root / "SegmentationObject" / f"{image_id}.png",
        root / "Annotations" / f"{image_id}.xml",
    ]


def _write_range(root: str, seed: int, size: int, start: int, stop: int) -> int:
    """Render and write samples ``start..stop-1`` (skipping complete ones). Returns how many were written."""
    root_p = Path(root)
    written = 0
    for index in range(start, stop):
        image_id = sample_id(index)
        paths = _sample_paths(root_p, image_id)
        if all(p.is_file() for p in paths):
            continue  # atomic writes: an existing file is complete and, by determinism, identical
        sample = render_sample(sample_rng(seed, index), size)
        buf = io.BytesIO()
        Image.fromarray(sample.image, mode="RGB").save(buf, format="JPEG", quality=95)
        write_bytes_atomic(paths[0], buf.getvalue())
        write_label_png(paths[1], sample.label, _palette())
        write_label_png(paths[2], sample.instances, _palette())
        write_bytes_atomic(paths[3], voc_xml(sample, image_id))
        written += 1
    return written


def _params(num_train: int, num_val: int, size: int, seed: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "num_train": int(num_train), "num_val": int(num_val),
            "size": int(size), "seed": int(seed)}


def _check_params(path: Path, wanted: dict) -> None:
    """Raise :class:`DataError` if the parameters stored at ``path`` differ from ``wanted``."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read synthetic data set parameters ({exc})") from exc
    if stored != wanted:
        raise DataError(
            path,
            f"folder already holds a synthetic data set generated with {stored}, but {wanted} was asked for; "
            "use another folder or delete this one (refusing to mix data sets)",
        )


def make_synthetic(
    out: PathLike, num_train: int = 800, num_val: int = 200, size: int = 128, seed: int = 0, workers: int = 0
) -> Path:
    """Write the synthetic data set in PASCAL VOC layout under ``out`` (idempotent and resumable).

    Sample files are written first, each atomically; then ``ImageSets/Segmentation/{train,val}.txt``,
    ``class_names.txt`` and finally ``synthetic.json`` (the parameters), so a folder with ``synthetic.json``
    is complete. An interrupted run leaves ``.synthetic.partial.json`` and is resumed by the same call.
    Output bytes depend only on (num_train, num_val, size, seed), not on ``workers``.

    Args:
        out: target folder (created if missing).
        num_train, num_val: split sizes; ids ``syn_000001..`` go to train first, then val.
        size: image side in pixels.
        seed: random seed.
        workers: processes to render with (0 = in this process).

    Returns:
        the folder path.

    Raises:
        DataError: ``out`` holds a synthetic data set made with other parameters, or a VOC-like folder that
            is not a synthetic data set.
    """
    if num_train < 0 or num_val < 0 or num_train + num_val < 1:
        raise ValueError(f"need at least one sample, got num_train={num_train}, num_val={num_val}")
    if size < 32:
        raise ValueError(f"synthetic images need size >= 32, got {size}")
    root = Path(out)
    params = _params(num_train, num_val, size, seed)
    final, partial = root / "synthetic.json", root / ".synthetic.partial.json"
    split_dir = root / "ImageSets" / "Segmentation"
    if final.is_file():
        _check_params(final, params)
        if all(p.is_file() for p in (split_dir / "train.txt", split_dir / "val.txt", root / "class_names.txt")):
            return root
    elif partial.is_file():
        _check_params(partial, params)
    elif root.is_dir() and any((root / d).exists() for d in (*_SUBDIRS, "ImageSets")):
        raise DataError(root, "folder holds VOC-style data that is not a synthetic data set (no synthetic.json); "
                              "refusing to write into it")
    root.mkdir(parents=True, exist_ok=True)
    if not final.is_file():
        write_json_atomic(partial, params)

    total = num_train + num_val
    if workers and workers > 0 and total > 1:
        chunk = max(1, -(-total // (workers * 4)))
        bounds = [(s, min(total, s + chunk)) for s in range(0, total, chunk)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_write_range, str(root), seed, size, a, b) for a, b in bounds]
            for fut in futures:
                fut.result()
    else:
        _write_range(str(root), seed, size, 0, total)

    ids = [sample_id(i) for i in range(total)]
    write_bytes_atomic(split_dir / "train.txt", "".join(f"{i}\n" for i in ids[:num_train]).encode())
    write_bytes_atomic(split_dir / "val.txt", "".join(f"{i}\n" for i in ids[num_train:]).encode())
    write_bytes_atomic(root / "class_names.txt", "".join(f"{n}\n" for n in SYNTHETIC_CLASSES).encode())
    write_json_atomic(final, params)
    partial.unlink(missing_ok=True)
    return root


__all__ = [
    "SYNTHETIC_CLASSES",
    "BACKGROUND_FAMILIES",
    "CONTEXT_BACKGROUNDS",
    "CONTEXT_PROBABILITY",
    "GENERATOR_VERSION",
    "SyntheticObject",
    "SyntheticSample",
    "render_sample",
    "sample_rng",
    "sample_id",
    "voc_xml",
    "make_synthetic",
]
