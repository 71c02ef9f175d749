"""Drawing of samples (image, mask overlay, boxes, labels) for datamodules, notebooks and reports."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np

from ..palette import voc_palette
from .transforms import denormalize

__all__ = ["denormalize", "overlay", "plot_sample"]  # denormalize: its old import path


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a label map [H, W] in VOC colours over an RGB image [H, W, 3]; background and 255 stay clear."""
    colours = voc_palette()[mask.astype(np.uint8)].astype(np.float32)
    blend = np.where(((mask > 0) & (mask < 255))[..., None], (1 - alpha) * image + alpha * colours, image)
    return blend.clip(0, 255).astype(np.uint8)


def plot_sample(
    sample: Dict[str, Any],
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    ax=None,
    title: Optional[str] = None,
):
    """Draw one transformed sample (keys as produced by the datamodules). Returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    image = denormalize(sample["image"], mean, std)
    if ax is None:
        fig, ax = plt.subplots(figsize=(4, 4))
    else:
        fig = ax.figure
    mask = sample.get("mask")
    if mask is not None:
        image = overlay(image, np.asarray(mask))
    ax.imshow(image)
    palette = voc_palette() / 255.0
    boxes = np.asarray(sample.get("boxes", np.zeros((0, 4)))).reshape(-1, 4)
    for (x0, y0, x1, y1), label in zip(boxes, np.asarray(sample.get("box_labels", []))):
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=palette[int(label)], linewidth=1.5))
        ax.text(x0, y0, class_names[int(label)], fontsize=7, color="white", bbox=dict(facecolor=palette[int(label)], pad=1))
    present = [class_names[i + 1] for i in np.flatnonzero(np.asarray(sample["labels"]) > 0.5)]
    ax.set_title(title or f"{sample.get('id', '')}: {', '.join(present)}", fontsize=8)
    ax.axis("off")
    return fig
