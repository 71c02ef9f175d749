"""A post-processing stage: every pseudo label map through a majority (mode) filter."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np
from scipy import ndimage

from lightning_wsss.io import read_label_png, write_label_png
from lightning_wsss.pipeline.registry import stage
from lightning_wsss.pipeline.stages import pseudo_miou, split_reader

IGNORE = 255


def majority(labels: np.ndarray, size: int, num_classes: int) -> np.ndarray:
    """Each pixel takes the most frequent class of its ``size`` x ``size`` window; ignored pixels (255) do not
    vote and stay ignored."""
    votes = [ndimage.uniform_filter((labels == c).astype(np.float32), size=size, mode="nearest")
             for c in range(num_classes)]
    out = np.argmax(np.stack(votes), axis=0).astype(np.uint8)
    out[labels == IGNORE] = IGNORE
    return out


@stage("majority_filter", reads=("labels",), writes=("labels",), summary={"pseudo_miou": "majority_filter"},
       options={"size": int})
def majority_filter(ctx, stage_dir: Path, upstream: Dict[str, Any], cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The labels read (the random walk's, in the image pipeline) through :func:`majority` with ``size`` (5);
    images already written are skipped, so an interrupted stage resumes. Under several processes each filters
    its share of the images (``ctx.world.share``); ``pseudo_miou`` waits for them all and scores the whole."""
    size = int(cfg.get("size", 5))
    if size < 1:
        raise ValueError(f"stages.majority_filter.size must be >= 1, got {size}")
    source = Path(upstream["labels"].outputs["labels_dir"])
    target = stage_dir / "labels"
    reader = split_reader(ctx)
    for image_id in ctx.world.share(reader.ids):
        path = target / f"{image_id}.png"
        if not path.is_file():
            write_label_png(path, majority(read_label_png(source / f"{image_id}.png"), size, reader.num_classes))
    return {"outputs": {"labels_dir": str(target)}, "metrics": {"pseudo_miou": pseudo_miou(ctx, target)}}
