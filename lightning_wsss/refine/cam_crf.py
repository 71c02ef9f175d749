"""CAM + dense CRF: pseudo labels from the CAM maps refined by a CRF at full resolution, with no affinity network.

The common "CAM + CRF" baseline of weakly supervised segmentation, and what a pipeline runs where no walk beats
none (``wsss sweep-walk`` best at 0 steps): the ``cam_crf`` stage.
"""

from __future__ import annotations

import inspect
from typing import Optional

import numpy as np
import torch

from ..cam.multiscale import add_background
from .crf import CRFSpec, crf_from_scores
from .label_bounds import bound_changes

__all__ = ["cam_crf_labels", "background_settings", "BACKGROUND_KEYS"]

BACKGROUND_KEYS = ("bg_mode", "bg_threshold", "bg_alpha")
"""The settings that score the background of CAMs, named as :class:`~lightning_wsss.tasks.CAMClassifier` names them."""


def cam_crf_labels(image: np.ndarray, cams: np.ndarray, keys: np.ndarray, bg_mode: str = "constant",
                   bg_threshold: float = 0.15, bg_alpha: float = 16.0, crf: CRFSpec = True,
                   ignore_changes: bool = False, max_growth: Optional[float] = None,
                   min_kept: Optional[float] = None, reference: Optional[np.ndarray] = None) -> np.ndarray:
    """Labels of one image: its CAMs with a background channel, through a dense CRF, arg-maxed.

    Args:
        image: uint8 RGB image [H, W, 3].
        cams: float CAMs [K, H, W] in [0, 1] at the image's size (K may be 0: background everywhere).
        keys: int class indices [K] of the CAM channels (1..num_classes-1).
        bg_mode, bg_threshold, bg_alpha: the background channel, as the CAM stage's
            (:func:`~lightning_wsss.cam.multiscale.add_background`: ``"constant"`` or ``"power"``).
        crf: the CRF's :data:`~lightning_wsss.refine.crf.CRFSpec` (``False``: the CAM labels themselves).
        ignore_changes: label 255 (ignored by the segmenter) where the CRF changed the CAM labels, so only the
            pixels both agree on are taught.
        max_growth: :func:`~.label_bounds.limit_growth`'s bound on the pixels the CRF adds to a class over
            ``reference`` (``None``: no bound).
        min_kept: :func:`~.label_bounds.keep_regions`' share of each ``reference`` region the CRF must keep
            (``None``: none).
        reference: uint8 labels [H, W] both bounds are measured against, e.g. the CAM stage's labels at its own
            background threshold when the CRF starts from a lower one (default: the CAM labels of ``bg_*``).

    Returns:
        uint8 labels [H, W]: 0 for background, else the class index (255 where ignored).

    Raises:
        ValueError: the CAMs or the reference labels do not match the image's size, or the CAMs their keys.
    """
    if cams.ndim != 3 or cams.shape[1:] != image.shape[:2] or len(keys) != cams.shape[0]:
        raise ValueError(f"CAMs {tuple(cams.shape)} with {len(keys)} keys do not fit an image of size "
                         f"{tuple(image.shape[:2])}")
    if cams.shape[0] == 0:  # no foreground class
        return np.zeros(image.shape[:2], np.uint8)
    scores = add_background(torch.from_numpy(np.ascontiguousarray(cams, np.float32))[None], mode=bg_mode,
                            bg_threshold=bg_threshold, alpha=bg_alpha)[0].numpy()
    classes = np.concatenate([[0], np.asarray(keys, np.int64)])
    labels = classes[crf_from_scores(image, scores, crf).argmax(axis=0)].astype(np.uint8)
    cam_labels = classes[scores.argmax(axis=0)].astype(np.uint8)
    labels = bound_changes(cam_labels if reference is None else reference, labels, max_growth, min_kept)
    if ignore_changes:
        labels[labels != cam_labels] = 255
    return labels


def background_settings(stage: Optional[dict], checkpoint_hparams: Optional[dict]) -> dict:
    """``{bg_mode, bg_threshold, bg_alpha}``: the stage's own, else the classifier's hyperparameters, else the
    defaults of :func:`cam_crf_labels` (those of :class:`~lightning_wsss.tasks.CAMClassifier`, which a test keeps
    equal; the CAM stage's ``cam`` settings are copied into the stage's section when the pipeline is planned)."""
    defaults = inspect.signature(cam_crf_labels).parameters
    out = {key: defaults[key].default for key in BACKGROUND_KEYS}
    for source in (checkpoint_hparams or {}, stage or {}):
        out.update({k: source[k] for k in out if source.get(k) is not None})
    return out
