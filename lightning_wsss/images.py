"""The one check of an in-memory RGB image handed to the CRF and the box initializers."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .errors import DataError, PathLike


def check_rgb_image(image, source: Optional[PathLike] = None) -> np.ndarray:
    """``image`` as a C-contiguous uint8 array [H, W, 3].

    A uint8 image passes unchanged; an integer or float image with values in 0..255 is cast to uint8.

    Raises:
        DataError: naming ``source``: not [H, W, 3], a float image in 0..1 (convert it with
            ``(image * 255).astype(np.uint8)``), or values outside 0..255.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(source, f"image must be RGB [H, W, 3], got shape {tuple(image.shape)}")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise DataError(source, f"image must be uint8 RGB in 0..255, got dtype {image.dtype}")
    if image.size and np.issubdtype(image.dtype, np.floating) and image.max() <= 1.0:
        raise DataError(source, f"image must be uint8 RGB in 0..255, got a {image.dtype} image with max <= 1; "
                                "convert it with (image * 255).astype(np.uint8)")
    if image.size and (image.min() < 0 or image.max() > 255):
        raise DataError(source, f"image values {image.min()}..{image.max()} lie outside 0..255")
    return np.ascontiguousarray(image.astype(np.uint8))
