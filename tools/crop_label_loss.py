"""How often a training crop loses a class its image is labelled with (image-label training's label noise).

    python tools/crop_label_loss.py --root DATA [--split train] --crop-size 160 --scale-range 0.7 1.3 [--every 2]
    python tools/crop_label_loss.py --root DATA --sizes      # how much of its image each class covers

An image-level label says what is somewhere in the image, and the classifier is told the same for every random
crop of it. Where objects are small and a crop covers only part of the scaled image, many crops hold no pixel of
a labelled class, and the classifier learns the context that predicts the label instead of the object. This
tool replays the training transform (the suite's ``train_transform`` with a fixed seed) on the split's images
and counts the (crop, labelled class) pairs whose class keeps fewer than ``--min-pixels`` pixels (at the
original scale) in the crop.
"""

from __future__ import annotations

import argparse
from typing import Dict, Sequence

import numpy as np

from lightning_wsss.datamodules.transforms import train_transform
from lightning_wsss.datasets import open_split


def crop_label_loss(root: str, split: str, crop_size: int, scale_range: Sequence[float], every: int = 1,
                    min_pixels: int = 25, seed: int = 0) -> Dict[str, float]:
    """Replay the training crops; returns ``{"pairs": n, "lost": m, "lost_share": m / n}``."""
    dataset = open_split(root, split, require_masks=True)
    transform = train_transform(crop_size, tuple(scale_range))
    transform.set_random_seed(seed)
    mean_scale = (float(scale_range[0]) + float(scale_range[1])) / 2
    pairs = lost = 0
    for image_id in dataset.ids[::every]:
        sample = dataset.load(image_id)
        out = transform(image=sample["image"], mask=sample["mask"], bboxes=np.zeros((0, 4)), box_labels=[],
                        difficult=[])
        for class_id in np.nonzero(sample["labels"])[0] + 1:
            pairs += 1
            lost += int((out["mask"] == class_id).sum() < min_pixels * mean_scale ** 2)
    return {"pairs": pairs, "lost": lost, "lost_share": lost / max(1, pairs)}


def object_sizes(root: str, split: str, min_pixels: int = 25) -> Dict[str, Dict[str, float]]:
    """Per class: the median and mean share of its image that the class covers, over the images where it has at
    least ``min_pixels`` pixels, and how many such images there are."""
    dataset = open_split(root, split, require_masks=True)
    shares: Dict[int, list] = {c: [] for c in range(1, dataset.num_classes)}
    for image_id in dataset.ids:
        mask = dataset.load(image_id)["mask"]
        for class_id in shares:
            area = int((mask == class_id).sum())
            if area >= min_pixels:
                shares[class_id].append(area / mask.size)
    return {dataset.class_names[c]: {"images": len(v), "median": float(np.median(v)) if v else float("nan"),
                                     "mean": float(np.mean(v)) if v else float("nan")} for c, v in shares.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--crop-size", type=int, default=None, help="the training crop (required unless --sizes)")
    parser.add_argument("--sizes", action="store_true", help="print how much of its image each class covers")
    parser.add_argument("--scale-range", type=float, nargs=2, default=(0.7, 1.3))
    parser.add_argument("--every", type=int, default=1, help="use every N-th image")
    parser.add_argument("--min-pixels", type=int, default=25)
    args = parser.parse_args()
    if args.sizes:
        print(f"{'class':<16}{'images':>8}{'median %':>10}{'mean %':>8}")
        for name, row in object_sizes(args.root, args.split, args.min_pixels).items():
            print(f"{name:<16}{row['images']:>8}{100 * row['median']:>10.2f}{100 * row['mean']:>8.2f}")
        return
    if args.crop_size is None:
        parser.error("--crop-size is required (or --sizes)")
    result = crop_label_loss(args.root, args.split, args.crop_size, args.scale_range, args.every, args.min_pixels)
    print(f"crop {args.crop_size}, scale {args.scale_range[0]:g}-{args.scale_range[1]:g}: {result['lost']} of "
          f"{result['pairs']} labelled classes ({100 * result['lost_share']:.1f} %) keep < {args.min_pixels} px in the crop")


if __name__ == "__main__":
    main()
