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

from lightning_wsss.cam.threshold_sweep import DEFAULT_THRESHOLDS, ThresholdSweep
from lightning_wsss.cli.scoring import number_list
from lightning_wsss.datasets import open_split


def perfect_cams(mask: np.ndarray, class_ids: Sequence[int], stride: int) -> np.ndarray:
    """Max-normalised maps float32 [K, H, W] of the classes ``class_ids`` in ``mask`` [H, W] seen at ``stride``.

    Each map is the class's share of every ``stride`` x ``stride`` cell (cells padded at the bottom / right),
    upsampled bilinearly to the mask's size and divided by its maximum.
    """
    height, width = mask.shape
    if not class_ids:
        return np.zeros((0, height, width), np.float32)
    target = torch.as_tensor(mask.astype(np.int64))
    maps = torch.stack([(target == k).float() for k in class_ids])[None]
    cells = F.avg_pool2d(maps, stride, stride, ceil_mode=True) if stride > 1 else maps
    up = F.interpolate(cells, size=(height, width), mode="bilinear", align_corners=False)[0] if stride > 1 else maps[0]
    return (up / up.flatten(1).amax(1).clamp(min=1e-6)[:, None, None]).numpy()


def ceiling(samples: Sequence[dict], class_names: Sequence[str], stride: int,
            thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Dict[str, object]:
    """:meth:`~lightning_wsss.cam.threshold_sweep.ThresholdSweep.result` of the perfect CAMs at ``stride``
    (the protocol of ``wsss evaluate-cams``)."""
    sweep = ThresholdSweep(len(class_names), thresholds)
    for sample in samples:
        mask = sample["mask"]
        ids = [k for k in range(1, len(class_names)) if (mask == k).any()]
        sweep.add(perfect_cams(mask, ids, stride), np.asarray(ids, np.int64), mask)
    return sweep.result(class_names)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--strides", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--thresholds", default="0.05:0.95:0.05", help="start:stop:step (inclusive) or a comma list")
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
        best = ceiling(samples, names, stride, number_list(args.thresholds))
        cells = " | ".join("" if v is None else f"{100 * v:.1f}" for v in best["per_class"].values())
        print(f"| {stride} | {100 * best['best_miou']:.2f} | {best['best_threshold']:.2f} | {cells} |")


if __name__ == "__main__":
    main()
