"""The PASCAL VOC colour palette used for every label PNG and overlay."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=4)
def voc_palette(num_colors: int = 256) -> np.ndarray:
    """Return the PASCAL VOC palette (cached; the array is read-only).

    Returns:
        uint8 array [num_colors, 3]; index 0 is black (background), 255 is (224, 224, 192) (void).
    """
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        value, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (red, green, blue)
    palette.flags.writeable = False
    return palette


def colorize(label: np.ndarray) -> np.ndarray:
    """Map a label map [H, W] of indices to RGB colours [H, W, 3] with the VOC palette."""
    return voc_palette()[np.asarray(label, dtype=np.uint8)]
