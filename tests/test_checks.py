"""The one image check (CRF, box initializers) and the one box check (readers, initializers, crop inference)."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_wsss.datasets.boxes import validate_boxes
from lightning_wsss.errors import DataError
from lightning_wsss.images import check_rgb_image


def test_check_rgb_image():
    image = np.zeros((4, 5, 3), np.uint8)
    assert check_rgb_image(image) is not None and check_rgb_image(image).dtype == np.uint8
    assert check_rgb_image(np.full((2, 2, 3), 200, np.int64)).dtype == np.uint8
    with pytest.raises(DataError, match=r"a\.png: image must be RGB \[H, W, 3\], got shape \(4, 5\)"):
        check_rgb_image(np.zeros((4, 5)), "a.png")
    with pytest.raises(DataError, match=r"\(image \* 255\)"):
        check_rgb_image(np.full((2, 2, 3), 0.5, np.float32))
    with pytest.raises(DataError, match="outside 0..255"):
        check_rgb_image(np.full((2, 2, 3), 300, np.int64))


def test_validate_boxes_tolerance_clips_and_strict_refuses():
    boxes = [[-0.5, 0, 10.5, 8]]
    clipped, labels = validate_boxes((8, 10), boxes, source="a.xml", tolerance=1.0)
    assert clipped.tolist() == [[0, 0, 10, 8]] and labels.tolist() == [1]
    with pytest.raises(DataError, match=r"a\.xml: box 0 \(-0\.5, 0, 10\.5, 8\) lies outside the 10x8 image"):
        validate_boxes((8, 10), boxes, source="a.xml")
    with pytest.raises(DataError, match="non-finite"):
        validate_boxes((8, 10), [[0, float("nan"), 2, 2]], tolerance=1.0)
