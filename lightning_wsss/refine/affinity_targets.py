"""Writing confident affinity label maps (fg / bg / 255) for every training image from saved CAMs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
from tqdm.auto import tqdm

from ..cam.files import load_cams
from ..datasets.base import SegmentationDataset
from ..io import write_label_png
from .affinity_labels import affinity_label_map_irn, affinity_label_map_psa
from .crf import IRN_CRF_PARAMS, CRFParams, CRFSpec, crf_params_for


MODE_PARAMETERS = {"psa": ("alpha_low", "alpha_high"), "irn": ("fg_threshold", "bg_threshold")}
"""The parameters of each mode: those of the other mode are ignored, so a config that switches a base's
``labels: {mode: psa, alpha_low: 4, alpha_high: 32}`` to ``{mode: irn}`` does not inherit psa's settings."""

MODE_CRF_PARAMS = {"psa": CRFParams(), "irn": IRN_CRF_PARAMS}
"""Each mode's own label-CRF parameters (psa's and irn's, both meant for ~500 px images)."""


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
                          crf_params: CRFSpec = None, progress: bool = True, **kwargs: Any) -> Path:
    """Write ``out_dir/<id>.png`` for every image of ``dataset`` (images already written are skipped).

    Args:
        crf_params: the label CRFs' parameters, a :data:`~lightning_wsss.refine.crf.CRFSpec` resolved per image
            over the mode's own (:data:`MODE_CRF_PARAMS`): ``{scale_params: true}`` scales their spatial widths
            from 500 px to the image, other keys replace fields; ``None`` / ``False`` / ``True``: the mode's own.

    Returns:
        ``out_dir``.
    """
    crf_params_for(crf_params, (1, 1))  # an unknown key fails before the first image
    for image_id in tqdm(dataset.ids, desc=f"affinity labels ({mode})", disable=not progress):
        path = Path(out_dir) / f"{image_id}.png"
        if path.is_file():
            continue
        cams = load_cams(Path(cams_dir) / f"{image_id}.npz")
        image = dataset.load(image_id)["image"]
        label = affinity_label_map(image, cams["cams"], cams["keys"], dataset.num_classes, mode,
                                   **label_kwargs(mode, kwargs, crf_params, np.asarray(image).shape[:2]))
        write_label_png(path, label)
    return Path(out_dir)


def label_kwargs(mode: str, kwargs: Dict[str, Any], crf_params: CRFSpec, image_hw: Tuple[int, int]) -> Dict[str, Any]:
    """``kwargs`` plus ``params``: the label-CRF parameters ``crf_params`` asks for on an image of size ``image_hw``
    over ``mode``'s own (:data:`MODE_CRF_PARAMS`; none added where it asks for none)."""
    params = crf_params_for(crf_params, image_hw, MODE_CRF_PARAMS.get(mode, CRFParams()))
    return dict(kwargs) if params is None else {**kwargs, "params": params}
