"""What a *perfect* CAM would score at a given output stride: the resolution ceiling of CAM pseudo labels.

    python tools/cam_resolution_ceiling.py --root DATA [--split train] [--strides 4 8 16 32] \\
        [--thresholds 0.05:0.95:0.05] [--limit N]

For every image and every class it holds, the ground-truth mask of the class is averaged over the cells of the
stride (what a map that fires exactly on the object, and nowhere else, holds at that resolution), upsampled
bilinearly, divided by its maximum, and scored like a CAM (constant background threshold, argmax, the best
threshold over the grid). A CAM stage cannot beat this number at that stride with any classifier; where it
scores far below it, what stops it is not the resolution but where the maps fire.
"""

from __future__ import annotations

import argparse
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lightning_wsss.datasets import open_split
from lightning_wsss.metrics import score_label_maps


def perfect_cams(mask: np.ndarray, class_ids: Sequence[int], stride: int) -> torch.Tensor:
    """Max-normalised maps [K, H, W] of the classes ``class_ids`` in ``mask`` [H, W] seen at ``stride``.

    Each map is the class's share of every ``stride`` x ``stride`` cell (cells padded at the bottom / right),
    upsampled bilinearly to the mask's size and divided by its maximum.
    """
    height, width = mask.shape
    if not class_ids:
        return torch.zeros(0, height, width)
    target = torch.as_tensor(mask.astype(np.int64))
    maps = torch.stack([(target == k).float() for k in class_ids])[None]
    cells = F.avg_pool2d(maps, stride, stride, ceil_mode=True) if stride > 1 else maps
    up = F.interpolate(cells, size=(height, width), mode="bilinear", align_corners=False)[0] if stride > 1 else maps[0]
    return up / up.flatten(1).amax(1).clamp(min=1e-6)[:, None, None]


def threshold_labels(cams: torch.Tensor, class_ids: Sequence[int], threshold: float) -> np.ndarray:
    """uint8 [H, W]: argmax over ``[threshold, cams]``, mapped to 0 and ``class_ids``."""
    keys = torch.tensor([0, *class_ids])
    scores = torch.cat([torch.full((1, *cams.shape[1:]), float(threshold)), cams])
    return keys[scores.argmax(0)].numpy().astype(np.uint8)


def ceiling(samples: Sequence[dict], num_classes: int, stride: int, thresholds: Sequence[float]) -> Dict[str, object]:
    """The best mIoU over ``thresholds`` of the perfect CAMs at ``stride``: ``{"miou", "threshold", "per_class"}``."""
    prepared = []
    for sample in samples:
        mask = sample["mask"]
        ids = [k for k in range(1, num_classes) if (mask == k).any()]
        prepared.append((perfect_cams(mask, ids, stride), ids, mask))
    best: Optional[Dict[str, object]] = None
    for threshold in thresholds:
        scored = score_label_maps(((threshold_labels(c, ids, threshold), m) for c, ids, m in prepared), num_classes)
        if best is None or scored["miou"] > best["miou"]:
            best = {"miou": scored["miou"], "threshold": float(threshold), "per_class": scored["per_class"]}
    return best


def parse_grid(text: str) -> List[float]:
    """``"0.1,0.2"`` or ``"start:stop:step"`` (stop included) -> floats."""
    if ":" in text:
        start, stop, step = (float(v) for v in text.split(":"))
        return [round(v, 6) for v in np.arange(start, stop + step / 2, step)]
    return [float(v) for v in text.split(",")]


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--strides", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--thresholds", default="0.05:0.95:0.05")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    dataset = open_split(args.root, args.split, require_masks=True)
    ids = dataset.ids[: args.limit] if args.limit else dataset.ids
    samples = [dataset.load(image_id) for image_id in ids]
    names = list(dataset.class_names)
    print(f"{len(samples)} images of {args.root} ({args.split}): a perfect CAM at each output stride")
    print("| output stride | best mIoU % | threshold | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for stride in args.strides:
        best = ceiling(samples, len(names), stride, parse_grid(args.thresholds))
        cells = " | ".join("" if v is None else f"{100 * v:.1f}" for v in best["per_class"].values())
        print(f"| {stride} | {100 * best['miou']:.2f} | {best['threshold']:.2f} | {cells} |")


if __name__ == "__main__":
    main()
