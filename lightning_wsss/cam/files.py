"""Reading the CAM files a CAM stage writes (``<id>.npz`` with ``cams`` and ``keys``)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

from ..errors import DataError, PathLike


def load_cams(path: PathLike) -> Dict[str, np.ndarray]:
    """Read ``<id>.npz`` written by the CAM stage.

    Returns:
        ``{"cams": float32 [K, H, W] in [0, 1], "keys": int64 [K] class indices}``.

    Raises:
        DataError: the file is missing, unreadable, or its arrays do not fit together.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "CAM file is missing")
    try:
        with np.load(path, allow_pickle=False) as data:  # a CAM file holds arrays; never unpickle objects
            cams, keys = data["cams"].astype(np.float32), data["keys"].astype(np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(path, f"unreadable CAM file ({exc})") from exc
    if cams.ndim != 3 or len(keys) != cams.shape[0]:
        raise DataError(path, f"CAM file holds cams {cams.shape} with {len(keys)} keys")
    return {"cams": cams, "keys": keys}
