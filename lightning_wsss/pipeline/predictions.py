"""Argmax predictions of a trained segmenter checkpoint on a few images (the report's galleries, tools)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..datasets.voc import VOCSegmentation
from ..tensors import channel_argmax

__all__ = ["predict_val", "load_segmenter"]


def load_segmenter(checkpoint: Path, class_path: Optional[str] = None):
    """A segmenter checkpoint for prediction, as ``class_path`` (a short name of the suite or a full path); without
    one (stages made before their class was recorded), as ``DeepLabSegmenter``, and a subclass's checkpoint (its own
    arguments beside the network's, SEC's losses) as the network alone: a ``DeepLabSegmenter`` from the arguments it
    takes, with the checkpoint's weights."""
    from ..serialization import checkpoint_hparams, load_model_checkpoint, safe_torch_load
    from ..tasks import DeepLabSegmenter
    from .config import resolve_class
    from .options import parameters

    if class_path:
        return load_model_checkpoint(resolve_class(class_path, "model"), checkpoint)
    hparams = checkpoint_hparams(checkpoint)
    accepted = set(parameters(DeepLabSegmenter))
    if set(hparams) <= accepted:
        return load_model_checkpoint(DeepLabSegmenter, checkpoint)
    model = DeepLabSegmenter(**{k: v for k, v in hparams.items() if k in accepted})
    model.load_state_dict(safe_torch_load(checkpoint, "checkpoint")["state_dict"])
    return model


def predict_val(checkpoint: Path, dataset: VOCSegmentation, ids: Sequence[str],
                class_path: Optional[str] = None) -> List[np.ndarray]:
    """Argmax predictions uint8 [H, W] of a segmenter checkpoint on a few images (``class_path``: the segmenter's
    class, see :func:`load_segmenter`)."""
    import torch

    from ..datamodules.transforms import apply_transform, eval_transform

    model = load_segmenter(checkpoint, class_path).eval()
    transform = eval_transform()
    out = []
    with torch.no_grad():
        for image_id in ids:
            sample = apply_transform(transform, dataset.load(image_id))
            logits = model.predict_logits(sample["image"][None])
            out.append(channel_argmax(logits[0], dim=0).numpy().astype(np.uint8))
    return out
