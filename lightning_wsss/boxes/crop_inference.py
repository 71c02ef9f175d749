"""Box-guided crop inference: segment each box at a higher resolution and paste the result back.

Small objects are segmented poorly at full-image scale; cropping each box (plus some context), resizing the
crop to a fixed size, segmenting it and pasting the prediction back gives sharper masks for them.
"""

from __future__ import annotations

from typing import Callable, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..datasets.boxes import validate_boxes
from .initializers import box_pixel_range

__all__ = ["box_crop_inference", "context_region"]

SegmentFn = Callable[[Tensor], Tensor]


def context_region(box, image_hw: Tuple[int, int], context: float) -> Tuple[int, int, int, int]:
    """Pixel range of a box enlarged by ``context`` times its width (height) on each side, clipped to the image.

    Returns:
        ``(x0, y0, x1, y1)`` integers, the region is ``image[..., y0:y1, x0:x1]``.
    """
    height, width = image_hw
    x_min, y_min, x_max, y_max = (float(v) for v in box)
    mx, my = context * (x_max - x_min), context * (y_max - y_min)
    x0, y0, x1, y1 = box_pixel_range((x_min - mx, y_min - my, x_max + mx, y_max + my))
    return max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)


def _logits_at(segment_fn: SegmentFn, image: Tensor, size: Tuple[int, int]) -> Tensor:
    """Run ``segment_fn`` on ``image`` [1, 3, h, w] and resize its logits to ``size``. Returns [1, C, *size]."""
    logits = segment_fn(image)
    if logits.ndim != 4 or logits.shape[0] != 1:
        raise ValueError(f"segment_fn must return logits [1, C, h, w], got {list(logits.shape)}")
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return logits.float()


def box_crop_inference(
    segment_fn: SegmentFn,
    image: Tensor,
    boxes,
    crop_size: Union[int, Tuple[int, int]] = 320,
    context: float = 0.1,
    combine: str = "max",
    include_full_image: bool = True,
) -> Tensor:
    """Combine a full-image prediction with predictions on box crops.

    Steps: (1) ``softmax(segment_fn(image))`` on the whole image (when ``include_full_image``); (2) for each
    box, take the box enlarged by ``context`` x its size on every side (clipped to the image), resize that
    crop to ``crop_size`` (bilinear; the aspect ratio is not kept), run ``segment_fn``, resize the logits back to
    the crop's size (bilinear), softmax them and paste them into the crop's region; (3) combine the maps:

    * ``combine="max"``: per pixel and class, the maximum over the full-image map and every crop covering the
      pixel, then renormalised to sum to 1 over classes;
    * ``combine="mean"``: per pixel, the average of the full-image map and every crop covering the pixel.

    Pixels covered by no crop keep the full-image probabilities. Runs under ``torch.no_grad()``; the logits a
    ``segment_fn`` returns at another resolution are resized to its input's size first.

    Args:
        segment_fn: maps float [1, 3, h, w] to logits [1, C, h', w'].
        image: float [3, H, W] (already normalised the way ``segment_fn`` expects).
        boxes: float [N, 4] ``(x_min, y_min, x_max, y_max)`` in pixel-edge coordinates (``N`` may be 0).
        crop_size: ``(h, w)`` or an int for square crops.
        context: margin added on each side, as a fraction of the box's width / height.
        combine: ``"max"`` or ``"mean"``.
        include_full_image: when False, pixels outside every crop are 0 in all classes for ``"max"`` /
            ``"mean"`` (only crops contribute).

    Returns:
        float32 tensor [C, H, W] of probabilities.

    Raises:
        DataError: degenerate boxes or boxes outside the image.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got {list(image.shape)}")
    if combine not in ("max", "mean"):
        raise ValueError(f"combine must be 'max' or 'mean', got {combine!r}")
    if isinstance(crop_size, int):
        crop_size = (crop_size, crop_size)
    crop_size = (int(crop_size[0]), int(crop_size[1]))
    height, width = int(image.shape[1]), int(image.shape[2])
    boxes_np, _ = validate_boxes((height, width), boxes)
    if not include_full_image and boxes_np.shape[0] == 0:
        raise ValueError("include_full_image=False needs at least one box")

    with torch.no_grad():
        batch = image.unsqueeze(0)
        acc = None
        count = torch.zeros(1, height, width, dtype=torch.float32, device=image.device)
        if include_full_image:
            acc = _logits_at(segment_fn, batch, (height, width))[0].softmax(dim=0)
            count += 1.0
        for box in boxes_np:
            x0, y0, x1, y1 = context_region(box, (height, width), context)
            crop = batch[:, :, y0:y1, x0:x1]
            crop = F.interpolate(crop.float(), size=crop_size, mode="bilinear", align_corners=False)
            logits = _logits_at(segment_fn, crop.to(image.dtype), crop_size)
            logits = F.interpolate(logits, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
            probs = logits[0].softmax(dim=0)
            if acc is None:
                acc = torch.zeros(probs.shape[0], height, width, dtype=torch.float32, device=image.device)
            if probs.shape[0] != acc.shape[0]:
                raise ValueError(f"segment_fn returned {probs.shape[0]} classes for a crop, {acc.shape[0]} before")
            region = acc[:, y0:y1, x0:x1]
            if combine == "max":
                acc[:, y0:y1, x0:x1] = torch.maximum(region, probs)
            else:
                acc[:, y0:y1, x0:x1] = region + probs
            count[:, y0:y1, x0:x1] += 1.0
        if combine == "max":
            total = acc.sum(dim=0, keepdim=True)
            out = torch.where(total > 0, acc / total.clamp_min(1e-12), acc)
        else:
            out = acc / count.clamp_min(1.0)
    return out.float()
