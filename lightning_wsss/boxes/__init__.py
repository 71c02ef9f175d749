"""Box supervision: pseudo masks from bounding boxes and the losses / scores used to train from boxes.

* :mod:`.initializers`: boxes -> pseudo mask (``filled``, ``inner`` (SDI Box^i), ``crf``, ``grabcut``,
  ``intersection``), registry :data:`INITIALIZERS` and :func:`make_box_mask`.
* :mod:`.from_mask`: boxes of the connected components of a label map; VOC annotations from a split's masks.
* :mod:`.tightness`: BBTP tightness-prior MIL loss and a pairwise smoothness loss.
* :mod:`.scoring`: BoxSup candidate costs and selection.
* :mod:`.crop_inference`: segment box crops at higher resolution and paste them back.
* :mod:`.crop_prediction`: the same over a data set, written as label PNGs.

Box convention: float ``(x_min, y_min, x_max, y_max)`` in 0-based pixel-edge coordinates; a box covers pixel
columns ``floor(x_min) .. ceil(x_max) - 1`` (see :func:`box_pixel_range`).
"""

from .crop_inference import box_crop_inference, context_region
from .crop_prediction import predict_box_crops
from .from_mask import boxes_from_mask, write_box_annotations
from .initializers import (
    INITIALIZERS,
    box_pixel_range,
    box_prior,
    crf_init,
    filled_init,
    grabcut_from_mask,
    grabcut_init,
    inner_init,
    intersect_masks,
    intersection_init,
    make_box_mask,
    paint_order,
    plausible_fill,
    scaled_crf_params,
    validate_boxes,
)
from .scoring import (boundary_band, clip_to_box, cross_entropy_cost, keep_unless_better, mask_iou, overlap_cost,
                      score_candidates, select_candidate)
from .tightness import pairwise_smoothness_loss, tightness_prior_loss

__all__ = [
    "INITIALIZERS",
    "boundary_band",
    "box_crop_inference",
    "box_pixel_range",
    "box_prior",
    "boxes_from_mask",
    "clip_to_box",
    "context_region",
    "crf_init",
    "cross_entropy_cost",
    "filled_init",
    "grabcut_init",
    "inner_init",
    "keep_unless_better",
    "grabcut_from_mask",
    "intersect_masks",
    "intersection_init",
    "make_box_mask",
    "mask_iou",
    "overlap_cost",
    "pairwise_smoothness_loss",
    "paint_order",
    "predict_box_crops",
    "plausible_fill",
    "scaled_crf_params",
    "score_candidates",
    "select_candidate",
    "tightness_prior_loss",
    "validate_boxes",
    "write_box_annotations",
]
