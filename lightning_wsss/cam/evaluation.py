"""Old import path of the CAM file reader and the threshold sweep, kept for code that imports them from here.

New code imports :func:`~lightning_wsss.cam.files.load_cams` from :mod:`lightning_wsss.cam.files` and the sweep
from :mod:`lightning_wsss.cam.threshold_sweep`.
"""

from .files import load_cams
from .threshold_sweep import DEFAULT_THRESHOLDS, ThresholdSweep, cams_to_label_map, evaluate_cam_thresholds

__all__ = ["DEFAULT_THRESHOLDS", "ThresholdSweep", "cams_to_label_map", "evaluate_cam_thresholds", "load_cams"]
