"""Writing confident affinity label maps (fg / bg / 255) for every training image from saved CAMs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
from tqdm.auto import tqdm

from ..cam.files import load_cams
from ..datasets.base import SegmentationDataset
from ..io import write_label_png
from .affinity_labels import affinity_label_map_irn, affinity_label_map_psa
from .crf import CRFParams


MODE_PARAMETERS = {"psa": ("alpha_low", "alpha_high"), "irn": ("fg_threshold", "bg_threshold")}
"""The parameters of each mode: those of the other mode are ignored, so a config that switches a base's
``labels: {mode: psa, alpha_low: 4, alpha_high: 32}`` to ``{mode: irn}`` does not inherit psa's settings."""


def mode_kwargs(mode: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """``kwargs`` without the parameters that belong to the other modes only."""
    foreign = {name for names in MODE_PARAMETERS.values() for name in names} - set(MODE_PARAMETERS.get(mode, ()))
    return {k: v for k, v in kwargs.items() if k not in foreign}


def affinity_label_map(image: np.ndarray, cams: np.ndarray, keys: np.ndarray, num_classes: int, mode: str = "psa",
                       **kwargs: Any) -> np.ndarray:
    """Confident label map at full resolution, uint8 [H, W] in {0, classes, 255}.

    ``mode="psa"``: two CRFs with background powers ``alpha_low``/``alpha_high`` (defaults 4 / 32);
    ``mode="irn"``: two thresholds ``fg_threshold``/``bg_threshold`` (0.30 / 0.05) refined by label CRFs.
    The other mode's parameters in ``kwargs`` are ignored (:data:`MODE_PARAMETERS`).
    """
    kwargs = mode_kwargs(mode, kwargs)
    if mode == "psa":
        return affinity_label_map_psa(image, cams, keys, num_classes, stride=1, **kwargs)
    if mode == "irn":
        return affinity_label_map_irn(image, cams, keys, num_classes, stride=1, **kwargs)
    raise ValueError(f"mode must be 'psa' or 'irn', got {mode!r}")


def write_affinity_labels(dataset: SegmentationDataset, cams_dir: Path, out_dir: Path, mode: str = "psa",
                          crf_params: Optional[Dict[str, float]] = None, progress: bool = True,
                          **kwargs: Any) -> Path:
    """Write ``out_dir/<id>.png`` for every image of ``dataset`` (images already written are skipped).

    Returns:
        ``out_dir``.
    """
    params = CRFParams(**(crf_params or {})) if crf_params is not None else None
    extra = dict(kwargs)
    if params is not None:
        extra["params"] = params
    for image_id in tqdm(dataset.ids, desc=f"affinity labels ({mode})", disable=not progress):
        path = Path(out_dir) / f"{image_id}.png"
        if path.is_file():
            continue
        cams = load_cams(Path(cams_dir) / f"{image_id}.npz")
        image = dataset.load(image_id)["image"]
        label = affinity_label_map(image, cams["cams"], cams["keys"], dataset.num_classes, mode, **extra)
        write_label_png(path, label)
    return Path(out_dir)
