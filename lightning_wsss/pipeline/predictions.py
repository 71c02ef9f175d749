"""Argmax predictions of a trained segmenter checkpoint on a few images (the report's galleries, tools)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np

from ..datasets.voc import VOCSegmentation
from ..tensors import channel_argmax

__all__ = ["predict_val"]


def predict_val(checkpoint: Path, dataset: VOCSegmentation, ids: Sequence[str]) -> List[np.ndarray]:
    """Argmax predictions uint8 [H, W] of a segmenter checkpoint on a few images."""
    import torch

    from ..datamodules.transforms import apply_transform, eval_transform
    from ..serialization import load_model_checkpoint
    from ..tasks import DeepLabSegmenter

    model = load_model_checkpoint(DeepLabSegmenter, checkpoint).eval()
    transform = eval_transform()
    out = []
    with torch.no_grad():
        for image_id in ids:
            sample = apply_transform(transform, dataset.load(image_id))
            logits = model.predict_logits(sample["image"][None])
            out.append(channel_argmax(logits[0], dim=0).numpy().astype(np.uint8))
    return out
