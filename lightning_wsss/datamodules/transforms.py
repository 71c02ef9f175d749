"""Albumentations pipelines that keep images, masks and boxes in sync.

Training: random rescale, pad (image with the mean colour, masks with 255), random crop, horizontal flip,
optional colour jitter, optional grid shuffle, normalisation. Validation, test and prediction: normalisation
only (no randomness; images keep their size, batches are padded by the collate function). :func:`denormalize`
inverts the normalisation for drawing and for the CRF, which needs the original colours.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import albumentations as A
import cv2
import numpy as np
import torch

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)

BBOX_PARAMS = dict(format="pascal_voc", label_fields=["box_labels", "difficult"], min_visibility=0.1, min_area=4.0, clip=True)


def train_transform(
    crop_size: int,
    scale_range: Tuple[float, float] = (0.7, 1.3),
    hflip: bool = True,
    color_jitter: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    grid_shuffle: int = 0,
) -> A.Compose:
    """Random-scale, pad, crop, flip and normalise; boxes follow every geometric step.

    ``grid_shuffle`` > 1 cuts the crop into that many cells per side and shuffles them (albumentations'
    ``RandomGridShuffle``, masks alike): an image's labels stay true, but the layout around each object (sky above,
    road below) no longer predicts them."""
    fill = tuple(float(255 * m) for m in mean)
    steps = [
        A.RandomScale(scale_limit=(scale_range[0] - 1.0, scale_range[1] - 1.0), interpolation=cv2.INTER_LINEAR,
                      mask_interpolation=cv2.INTER_NEAREST, p=1.0),
        A.PadIfNeeded(min_height=crop_size, min_width=crop_size, border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=255),
        A.RandomCrop(height=crop_size, width=crop_size),
    ]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if color_jitter > 0:
        steps.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter, hue=0.0, p=0.8))
    if grid_shuffle > 1:
        steps.append(A.RandomGridShuffle(grid=(grid_shuffle, grid_shuffle), p=1.0))
    steps.append(A.Normalize(mean=mean, std=std))
    return A.Compose(steps, bbox_params=A.BboxParams(**BBOX_PARAMS), additional_targets={"gt_mask": "mask"}, seed=None)


def eval_transform(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> A.Compose:
    """Normalisation only: no random step at validation, test or prediction time."""
    return A.Compose([A.Normalize(mean=mean, std=std)], additional_targets={"gt_mask": "mask"})


def apply_transform(transform: A.Compose, sample: Dict[str, Any]) -> Dict[str, Any]:
    """Run an albumentations pipeline on a raw sample and convert the result to tensors.

    Returns:
        a dict with ``image`` float [3, H, W], ``mask``/``gt_mask`` int64 [H, W] where the sample had them,
        ``boxes`` float [N, 4], ``box_labels`` int64 [N], ``labels`` float [C - 1], ``id`` str and ``size``
        int64 [2] (the transformed height and width).
    """
    boxes = {
        "bboxes": np.asarray(sample.get("boxes", np.zeros((0, 4))), dtype=np.float32).reshape(-1, 4),
        "box_labels": np.asarray(sample.get("box_labels", np.zeros(0)), dtype=np.int64),
        "difficult": np.asarray(sample.get("difficult", np.zeros(len(sample.get("box_labels", [])))), dtype=bool),
    }
    geometric = "bboxes" in transform.processors  # a pipeline without box processing leaves boxes unchanged
    kwargs: Dict[str, Any] = {"image": sample["image"], **(boxes if geometric else {})}
    for key in ("mask", "gt_mask"):
        if sample.get(key) is not None:
            kwargs[key] = sample[key]
    out = transform(**kwargs)
    if not geometric:
        out.update(boxes)
    result: Dict[str, Any] = {
        "id": sample["id"],
        "image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))).float(),
        "boxes": torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)),
        "box_labels": torch.as_tensor(np.asarray(out["box_labels"], dtype=np.int64).reshape(-1)),
        "labels": torch.as_tensor(sample["labels"], dtype=torch.float32),
    }
    result["size"] = torch.tensor(result["image"].shape[1:], dtype=torch.long)
    for key in ("mask", "gt_mask"):
        if key in out:
            result[key] = torch.from_numpy(np.array(out[key], dtype=np.int64))
    return result


def normalize(image, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Normalise a uint8 image [H, W, 3] as the pipelines do; returns float32 [3, H, W] (:func:`denormalize`'s inverse)."""
    array = (np.asarray(image, np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def denormalize(image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Invert normalisation of a float image [3, H, W]; returns uint8 [H, W, 3]."""
    array = np.asarray(image, dtype=np.float32).transpose(1, 2, 0)
    array = array * np.asarray(std, dtype=np.float32) + np.asarray(mean, dtype=np.float32)
    return (array.clip(0, 1) * 255).round().astype(np.uint8)
