"""Bounds on what a refinement may change in the labels it starts from: a class may not grow past a multiple of
its area, and a region may not vanish.

A dense CRF (after the CAM or after the random walk) snaps labels to colour edges, but on the demo it also floods
context classes over their context and erases weakly activated objects; labels with such changes score higher in
mIoU yet teach a worse segmenter (README "Bounded CRF"). These pure functions keep the CRF's edge snapping and undo
those two changes.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

__all__ = ["limit_growth", "keep_regions", "bound_changes"]


def bound_changes(reference: np.ndarray, refined: np.ndarray, max_growth: Optional[float] = None,
                  min_kept: Optional[float] = None) -> np.ndarray:
    """:func:`limit_growth` then :func:`keep_regions` of uint8 labels [H, W] against ``reference`` labels [H, W]
    (either bound ``None``: not applied)."""
    if reference.shape != refined.shape:
        raise ValueError(f"reference labels {tuple(reference.shape)} do not fit labels of size {tuple(refined.shape)}")
    if max_growth is not None:
        refined = limit_growth(reference, refined, max_growth)
    if min_kept is not None:
        refined = keep_regions(reference, refined, min_kept)
    return refined


def limit_growth(reference: np.ndarray, refined: np.ndarray, max_growth: float) -> np.ndarray:
    """Refined labels in which no class gains more than ``max_growth`` times its area in ``reference``.

    A CRF snaps labels to the edges near them; where it adds more pixels to a class than the reference gave it, it
    has flooded a region of similar colour (a context class over its context: README "Bounded CRF"), and the
    class's added pixels go back to their reference labels. What the CRF removes is kept.

    Args:
        reference: uint8 labels [H, W] the refinement started from (the CAM's, or the walk's before its CRF).
        refined: uint8 refined labels [H, W] of the same image.
        max_growth: the largest accepted ratio of a class's added pixels to its CAM pixels (0: nothing added).

    Returns:
        uint8 labels [H, W].
    """
    out = refined.copy()
    for label in np.unique(refined):
        if label in (0, 255):
            continue
        added = (refined == label) & (reference != label)
        if added.sum() > max_growth * (reference == label).sum():
            out[added] = reference[added]
    return out


def keep_regions(reference: np.ndarray, refined: np.ndarray, min_kept: float) -> np.ndarray:
    """Refined labels in which every connected region of ``reference`` keeps its class on at least ``min_kept``
    of its pixels.

    A CRF whose pairwise terms outweigh a weakly activated object's unary erases it; the object then teaches the
    segmenter that its class is background (on the demo the CRF lost 4-11 % of each class's objects against the
    CAM's 0-4 %: README "Bounded CRF"). A region kept below ``min_kept`` gets its reference labels back.

    Args:
        reference: uint8 labels [H, W] the refinement started from.
        refined: uint8 refined labels [H, W] of the same image.
        min_kept: the smallest accepted share of a reference region still labelled with its class (0: any).

    Returns:
        uint8 labels [H, W].
    """
    out = refined.copy()
    for label in np.unique(reference):
        if label in (0, 255):
            continue
        count, regions = cv2.connectedComponents((reference == label).astype(np.uint8), connectivity=8)
        for index in range(1, count):
            region = regions == index
            if (refined[region] == label).mean() < min_kept:
                out[region] = label
    return out
