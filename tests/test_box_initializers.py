"""Tests for lightning_wsss.boxes.initializers (boxes -> pseudo masks)."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_wsss.boxes import (
    INITIALIZERS,
    box_pixel_range,
    box_prior,
    crf_init,
    filled_init,
    grabcut_init,
    inner_init,
    intersect_masks,
    intersection_init,
    make_box_mask,
    validate_boxes,
)
from lightning_wsss.errors import DataError

H = W = 64
DISC_CENTRE = (32.0, 30.0)  # (row, col) of the centre, in pixel-edge coordinates
DISC_RADIUS = 14.0
DISC_BOX = [13.0, 15.0, 47.0, 49.0]  # disc spans cols 16..43, rows 18..45; box adds a 3-px margin


def _disc() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy + 0.5 - DISC_CENTRE[0]) ** 2 + (xx + 0.5 - DISC_CENTRE[1]) ** 2 <= DISC_RADIUS**2


@pytest.fixture(scope="module")
def disc_image():
    """A red disc on a green background with mild noise, plus its ground-truth mask."""
    disc = _disc()
    rng = np.random.default_rng(0)
    img = np.zeros((H, W, 3), dtype=np.int64)
    img[:] = (40, 160, 60)
    img[disc] = (220, 40, 40)
    img = np.clip(img + rng.integers(-15, 16, img.shape), 0, 255).astype(np.uint8)
    return img, disc


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    return float((pred & gt).sum() / (pred | gt).sum())


def test_disc_box_is_tight_with_margin(disc_image):
    _, disc = disc_image
    ys, xs = np.nonzero(disc)
    assert (xs.min() - 3, ys.min() - 3, xs.max() + 1 + 3, ys.max() + 1 + 3) == tuple(DISC_BOX)


# --------------------------------------------------------------------------------------------- pixel coverage
def test_box_pixel_range_floor_ceil():
    assert box_pixel_range([3, 1, 8, 4]) == (3, 1, 8, 4)
    assert box_pixel_range([2.5, 1.2, 5.5, 3.0]) == (2, 1, 6, 3)
    assert box_pixel_range([2.0, 0.0, 2.1, 0.9]) == (2, 0, 3, 1)


def test_filled_fills_exactly_the_box(disc_image):
    img, _ = disc_image
    mask = filled_init(img, np.array([DISC_BOX]), np.array([7]))
    expected = np.zeros((H, W), np.uint8)
    expected[15:49, 13:47] = 7
    assert mask.dtype == np.uint8 and mask.shape == (H, W)
    np.testing.assert_array_equal(mask, expected)


def test_filled_fractional_box_covers_touched_pixels():
    img = np.zeros((6, 8, 3), np.uint8)
    mask = filled_init(img, [[2.5, 1.2, 5.5, 3.0]], [1])
    expected = np.zeros((6, 8), np.uint8)
    expected[1:3, 2:6] = 1  # rows floor(1.2)..ceil(3)-1 = 1..2, cols 2..5
    np.testing.assert_array_equal(mask, expected)


def test_no_boxes_gives_background():
    img = np.zeros((5, 7, 3), np.uint8)
    for name in ("filled", "inner", "crf", "grabcut", "intersection"):
        mask = make_box_mask(name, img, np.zeros((0, 4)), np.zeros((0,), np.int64))
        np.testing.assert_array_equal(mask, np.zeros((5, 7), np.uint8))


# --------------------------------------------------------------------------------------------- inner (Box^i)
def test_inner_has_ignore_band():
    img = np.zeros((16, 16, 3), np.uint8)
    mask = inner_init(img, [[0, 0, 8, 8]], [4], fraction=0.5)
    expected = np.zeros((16, 16), np.uint8)
    expected[0:8, 0:8] = 255
    expected[2:6, 2:6] = 4  # centre 4, half side 2: pixel centres in [2, 6] -> pixels 2..5
    np.testing.assert_array_equal(mask, expected)


def test_inner_fraction_one_is_filled(disc_image):
    img, _ = disc_image
    np.testing.assert_array_equal(
        inner_init(img, [DISC_BOX], [1], fraction=1.0), filled_init(img, [DISC_BOX], [1])
    )


def test_inner_tiny_box_keeps_centre_pixel():
    img = np.zeros((5, 5, 3), np.uint8)
    mask = inner_init(img, [[1, 1, 3, 2]], [2], fraction=0.1)
    assert (mask == 2).sum() == 1
    assert set(np.unique(mask[1:2, 1:3]).tolist()) == {2, 255}


# --------------------------------------------------------------------------------------------- crf / grabcut
def test_crf_and_grabcut_beat_filled(disc_image):
    img, disc = disc_image
    boxes, labels = np.array([DISC_BOX]), np.array([1])
    iou_filled = _iou(filled_init(img, boxes, labels) == 1, disc)
    iou_crf = _iou(crf_init(img, boxes, labels) == 1, disc)
    iou_grabcut = _iou(grabcut_init(img, boxes, labels) == 1, disc)
    assert iou_filled < 0.6  # disc area / box area = pi * 14^2 / 34^2 ~ 0.53
    assert iou_crf > iou_filled and iou_crf > 0.9
    assert iou_grabcut > iou_filled and iou_grabcut > 0.9


def test_crf_foreground_stays_in_box(disc_image):
    from lightning_wsss.refine.crf import crf_from_probs

    img, disc = disc_image
    # a box covering only the left part of the disc, with a weak "outside = background" prior: the CRF itself
    # spreads the box's label over the rest of the disc (checked on the raw CRF), crf_init must clip it
    box = [13.0, 15.0, 30.0, 49.0]
    raw = crf_from_probs(img, box_prior((H, W), np.array([box]), outside_confidence=0.6)).argmax(axis=0)
    assert (raw[:, 30:] == 1).sum() > 50
    mask = crf_init(img, [box], [1], outside_confidence=0.6)
    assert (mask[:, 30:] == 0).all() and (mask[:15] == 0).all() and (mask[49:] == 0).all()
    assert (mask[disc & (np.arange(W)[None, :] < 30)] == 1).mean() > 0.9
    assert set(np.unique(mask).tolist()) <= {0, 1}


def test_box_prior_ramp():
    boxes = np.array([[0.0, 0.0, 10.0, 10.0], [2.0, 2.0, 6.0, 6.0]])
    prior = box_prior((12, 12), boxes, box_confidence=0.9, edge_confidence=0.5, outside_confidence=0.99)
    assert prior.shape == (3, 12, 12)
    np.testing.assert_allclose(prior.sum(axis=0), 1.0, atol=1e-5)
    assert prior[0, 11, 11] == pytest.approx(0.99, abs=1e-5)  # outside: background
    assert prior[1, 5, 8] > prior[1, 9, 9]  # big box (owner at (5, 8)): higher toward the centre
    assert prior[1, 0, 0] == pytest.approx(0.5, abs=1e-2)  # corner: edge confidence
    assert prior[2, 3, 3] > 0.5 and prior[1, 3, 3] < 0.01  # small box owns its pixels


def test_grabcut_falls_back_to_inner_region_on_empty_foreground():
    img = np.full((20, 20, 3), 100, np.uint8)  # nothing to separate: GrabCut finds no foreground
    mask = grabcut_init(img, [[2, 2, 18, 18]], [3], fallback_fraction=0.5)
    expected = np.zeros((20, 20), np.uint8)
    expected[6:14, 6:14] = 3  # centre 10, half side 4
    np.testing.assert_array_equal(mask, expected)


def test_grabcut_tiny_box_filled(disc_image):
    img, _ = disc_image
    mask = grabcut_init(img, [[1, 1, 5, 4]], [2], min_size=8)
    expected = np.zeros((H, W), np.uint8)
    expected[1:4, 1:5] = 2
    np.testing.assert_array_equal(mask, expected)


# --------------------------------------------------------------------------------------------- intersection
def test_intersect_masks_hand_made():
    a = np.array([[0, 1, 1], [0, 2, 255]], np.uint8)
    b = np.array([[0, 1, 2], [1, 2, 2]], np.uint8)
    expected = np.array([[0, 1, 255], [255, 2, 255]], np.uint8)
    np.testing.assert_array_equal(intersect_masks(a, b), expected)


def test_intersection_marks_disagreement_inside_box(disc_image):
    img, disc = disc_image
    mask = intersection_init(img, [DISC_BOX], [1], a="filled", b="grabcut")
    inside = np.zeros((H, W), bool)
    inside[15:49, 13:47] = True
    # filled says 1 in the whole box, grabcut recovers the disc: they disagree on box pixels off the disc
    assert (mask[~inside] == 0).all()
    off_disc = inside & ~disc
    assert (mask[off_disc] == 255).mean() > 0.9
    assert (mask[disc] == 1).mean() > 0.9
    assert set(np.unique(mask).tolist()) == {0, 1, 255}


def test_intersection_default_is_grabcut_and_crf(disc_image):
    img, disc = disc_image
    grab = grabcut_init(img, [DISC_BOX], [1])
    crf = crf_init(img, [DISC_BOX], [1])
    mask = make_box_mask("intersection", img, [DISC_BOX], [1])
    np.testing.assert_array_equal(mask[grab == crf], grab[grab == crf])
    assert (mask[grab != crf] == 255).all()
    assert _iou(mask == 1, disc) > 0.9


# --------------------------------------------------------------------------------------------- overlaps
@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_smaller_box_wins_filled(order):
    img = np.zeros((12, 12, 3), np.uint8)
    boxes = np.array([[0, 0, 10, 10], [2, 2, 5, 6]], float)[list(order)]
    labels = np.array([1, 2])[list(order)]
    mask = filled_init(img, boxes, labels)
    expected = np.zeros((12, 12), np.uint8)
    expected[0:10, 0:10] = 1
    expected[2:6, 2:5] = 2
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_smaller_box_wins_inner(order):
    img = np.zeros((12, 12, 3), np.uint8)
    boxes = np.array([[0, 0, 12, 12], [0, 0, 4, 4]], float)[list(order)]
    labels = np.array([1, 2])[list(order)]
    mask = inner_init(img, boxes, labels, fraction=0.5)
    expected = np.zeros((12, 12), np.uint8)
    expected[:, :] = 255
    expected[3:9, 3:9] = 1  # big box centre 6, half side 3
    expected[0:4, 0:4] = 255
    expected[1:3, 1:3] = 2  # small box centre 2, half side 1
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_smaller_box_wins_grabcut_filled_boxes(order):
    img = np.zeros((12, 12, 3), np.uint8)
    boxes = np.array([[0, 0, 10, 10], [2, 2, 5, 6]], float)[list(order)]
    labels = np.array([1, 2])[list(order)]
    mask = grabcut_init(img, boxes, labels, min_size=50)  # both boxes "tiny": filled
    assert (mask[2:6, 2:5] == 2).all() and (mask[0:2, 0:10] == 1).all()


@pytest.mark.parametrize("init", [crf_init, grabcut_init])
def test_nested_boxes_crf_and_grabcut(init):
    """A big box (class 1) holding a red disc and a small blue disc boxed as class 2."""
    yy, xx = np.mgrid[:H, :W]
    d1 = (yy + 0.5 - 32) ** 2 + (xx + 0.5 - 20) ** 2 <= 10**2
    d2 = (yy + 0.5 - 32) ** 2 + (xx + 0.5 - 44) ** 2 <= 6**2
    rng = np.random.default_rng(1)
    img = np.zeros((H, W, 3), np.int64)
    img[:] = (40, 160, 60)
    img[d1] = (220, 40, 40)
    img[d2] = (40, 40, 220)
    img = np.clip(img + rng.integers(-15, 16, img.shape), 0, 255).astype(np.uint8)
    mask = init(img, [[8, 20, 52, 44], [36, 24, 52, 40]], [1, 2])
    assert (mask[d1] == 1).mean() > 0.9
    assert (mask[d2] == 2).mean() > 0.9
    assert ((mask == 2) & ~d2).sum() < 10 and ((mask == 1) & ~d1).sum() < 20


# --------------------------------------------------------------------------------------------- validation
BAD_BOXES = {
    "zero width": [5, 5, 5, 9],
    "negative height": [2, 6, 5, 3],
    "x_max beyond": [0, 0, 65, 10],
    "negative x_min": [-1, 0, 10, 10],
    "y_max beyond": [0, 0, 10, 64.5],
    "nan": [0, float("nan"), 10, 10],
}


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
@pytest.mark.parametrize("problem", sorted(BAD_BOXES))
def test_bad_boxes_raise_data_error_naming_source(disc_image, name, problem):
    img, _ = disc_image
    boxes = np.array([DISC_BOX, BAD_BOXES[problem]])
    with pytest.raises(DataError) as info:
        make_box_mask(name, img, boxes, [1, 2], source="2007_000042.xml")
    assert "2007_000042.xml" in str(info.value)
    assert "box 1" in str(info.value)


def test_validate_boxes_messages():
    with pytest.raises(DataError, match="zero or negative area"):
        validate_boxes((10, 10), [[1, 1, 1, 5]], [1], source="a.xml")
    with pytest.raises(DataError, match="outside"):
        validate_boxes((10, 10), [[1, 1, 11, 5]], [1], source="a.xml")
    with pytest.raises(DataError, match="class 0"):
        validate_boxes((10, 10), [[1, 1, 3, 5]], [0], source="a.xml")
    with pytest.raises(DataError, match="2 boxes but 1"):
        validate_boxes((10, 10), [[1, 1, 3, 5], [0, 0, 2, 2]], [1], source="a.xml")
    with pytest.raises(DataError, match=r"\[N, 4\]"):
        validate_boxes((10, 10), [[1, 1, 3]], [1])
    boxes, labels = validate_boxes((10, 10), [[0, 0, 10, 10]], [3])
    assert boxes.shape == (1, 4) and labels.tolist() == [3]


def test_bad_image_raises_data_error():
    with pytest.raises(DataError, match="img.png"):
        filled_init(np.zeros((4, 4), np.uint8), [[0, 0, 2, 2]], [1], source="img.png")


def test_unknown_initializer():
    with pytest.raises(ValueError, match="unknown box initializer"):
        make_box_mask("nope", np.zeros((4, 4, 3), np.uint8), [[0, 0, 2, 2]], [1])


# ----------------------------------------------------------------------------------------------- real-photo options
def test_scaled_crf_params_follow_the_image_size():
    from lightning_wsss.boxes import scaled_crf_params
    from lightning_wsss.refine.crf import CRFParams

    small = scaled_crf_params((120, 160))
    assert small.bilateral_sxy == pytest.approx(80 * 160 / 500) and small.gauss_sxy == 1.0
    assert small.bilateral_srgb == CRFParams().bilateral_srgb and small.iterations == CRFParams().iterations
    assert scaled_crf_params((500, 375)).bilateral_sxy == pytest.approx(80)
    assert scaled_crf_params((1000, 10), CRFParams(bilateral_sxy=50)).bilateral_sxy == pytest.approx(100)


def test_plausible_fill_falls_back_to_the_filled_box():
    from lightning_wsss.boxes import plausible_fill

    fg = np.zeros((4, 5), bool)
    fg[1, 1:3] = True  # 2 of 20 pixels: 10 %
    assert np.array_equal(plausible_fill(fg), fg)
    assert np.array_equal(plausible_fill(fg, min_fill=0.1), fg)
    assert plausible_fill(fg, min_fill=0.15).all()
    assert plausible_fill(fg, max_fill=0.05).all()
    with pytest.raises(ValueError):
        plausible_fill(fg, min_fill=0.6, max_fill=0.5)


@pytest.mark.parametrize("name", ["crf", "grabcut"])
def test_initializers_fill_boxes_whose_mask_is_implausible(disc_image, name):
    img, disc = disc_image
    boxes, labels = np.array([DISC_BOX]), np.array([1])
    x0, y0, x1, y1 = box_pixel_range(DISC_BOX)
    plain = make_box_mask(name, img, boxes, labels)
    share = (plain[y0:y1, x0:x1] == 1).mean()
    assert 0.4 < share < 0.9  # the disc covers about 2/3 of its box
    filled = filled_init(img, boxes, labels)
    assert np.array_equal(make_box_mask(name, img, boxes, labels, min_fill=0.95), filled)
    assert np.array_equal(make_box_mask(name, img, boxes, labels, max_fill=0.3), filled)
    assert np.array_equal(make_box_mask(name, img, boxes, labels, min_fill=0.3, max_fill=0.95), plain)


def test_grabcut_with_local_context_and_crf_with_scaled_params_still_segment(disc_image):
    img, disc = disc_image
    boxes, labels = np.array([DISC_BOX]), np.array([1])
    local = grabcut_init(img, boxes, labels, context=0.5)
    assert _iou(local == 1, disc) > 0.85
    x0, y0, x1, y1 = box_pixel_range(DISC_BOX)
    outside = np.ones_like(disc)
    outside[y0:y1, x0:x1] = False
    assert not (local[outside]).any()
    scaled = crf_init(img, boxes, labels, scale_params=True)
    assert _iou(scaled == 1, disc) > 0.8
    from lightning_wsss.refine.crf import CRFParams

    as_dict = crf_init(img, boxes, labels, params={"iterations": 5})  # a config's keyword dict works too
    assert np.array_equal(as_dict, crf_init(img, boxes, labels, params=CRFParams(iterations=5)))
