"""Box crop prediction over a data set: :func:`~lightning_wsss.boxes.crop_inference.box_crop_inference` on every
image with its annotated boxes, written as label PNGs (``wsss predict-box-crops``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, Tuple, Union

import torch

from ..errors import PathLike
from ..tensors import channel_argmax
from .crop_inference import SegmentFn, box_crop_inference


def predict_box_crops(
    segment_fn: SegmentFn,
    batches: Iterable[Dict[str, Any]],
    out_dir: PathLike,
    crop_size: Union[int, Tuple[int, int]] = 320,
    context: float = 0.1,
    combine: str = "max",
    device: Union[str, torch.device] = "cpu",
) -> Tuple[int, int]:
    """Write ``<out_dir>/<id>.png``, the argmax of the box crop inference of every image of ``batches``.

    Args:
        segment_fn: maps normalised images [1, 3, h, w] to logits [1, C, h, w] (a segmenter's ``forward``).
        batches: DataModule batches (``id``, ``image``, ``size``, ``boxes`` as :func:`collate_samples` makes them;
            boxes in the image's own coordinates, as the evaluation transform leaves them).
        out_dir, crop_size, context, combine: see :func:`box_crop_inference`.
        device: where ``segment_fn`` runs.

    Returns:
        ``(images written, images skipped because their PNG exists)``: a rerun completes an interrupted one.
    """
    from ..io import write_label_png

    out_dir = Path(out_dir)
    written = skipped = 0
    for batch in batches:
        for index, image_id in enumerate(batch["id"]):
            path = out_dir / f"{image_id}.png"
            if path.is_file():
                skipped += 1
                continue
            height, width = (int(v) for v in batch["size"][index])
            image = batch["image"][index, :, :height, :width].to(device)
            probs = box_crop_inference(segment_fn, image, batch["boxes"][index], crop_size, context, combine)
            write_label_png(path, channel_argmax(probs, dim=0).to(torch.uint8).cpu().numpy())
            written += 1
    return written, skipped
