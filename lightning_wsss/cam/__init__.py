"""Class activation maps: pure functions, a hook-based extractor for any classifier, multi-scale inference.

* :mod:`lightning_wsss.cam.functional` -- CAM / Grad-CAM / Grad-CAM++ / XGrad-CAM / LayerCAM maths on tensors.
* :mod:`lightning_wsss.cam.extractor` -- :class:`CAMExtractor`, maps for all classes of a batch in one forward.
* :mod:`lightning_wsss.cam.multiscale` -- multi-scale + flip CAMs, background channel, CAM -> label map.
* :mod:`lightning_wsss.cam.files` -- reading the ``<id>.npz`` CAM files a CAM stage writes.
* :mod:`lightning_wsss.cam.threshold_sweep` -- scoring CAMs as pseudo labels over background thresholds.
* :mod:`lightning_wsss.cam.prototypes` -- LPCAM's local class prototypes.
* :mod:`lightning_wsss.cam.box_restriction` -- CAMs restricted to the boxes of their class (hybrid supervision).
"""

from lightning_wsss.cam.extractor import METHODS, CAMExtractor, find_classifier_weight
from lightning_wsss.cam.functional import (
    NORMALIZE_MODES,
    cam_weights_from_classifier,
    gradcam_weights,
    gradcampp_weights,
    layercam_map,
    normalize_maps,
    upsample,
    weighted_sum,
    xgradcam_weights,
)
from lightning_wsss.cam.multiscale import add_background, cams_to_label, multiscale_cams

__all__ = [
    "CAMExtractor",
    "METHODS",
    "NORMALIZE_MODES",
    "find_classifier_weight",
    "cam_weights_from_classifier",
    "gradcam_weights",
    "gradcampp_weights",
    "xgradcam_weights",
    "layercam_map",
    "weighted_sum",
    "upsample",
    "normalize_maps",
    "multiscale_cams",
    "add_background",
    "cams_to_label",
]
