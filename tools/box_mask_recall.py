"""Where box masks lose their object: per class, the share of the object's pixels inside its box that a mask
labels background, by the pixels' distance to the box border, and how many boxes keep little of their object.

    python tools/box_mask_recall.py --pred RUN/box/box_init/<hash>/crf --root DATA [--split train] [--keep 0.75]

A mask that loses a rim at the border (distance 0) fights the box's edges; one that loses as much deep inside
(distance 3 or more) drops whole parts of the object.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from lightning_wsss.boxes.initializers import box_pixel_range
from lightning_wsss.datasets import open_split
from lightning_wsss.io import read_label_png

BANDS = (("border (0 px)", 0, 0), ("1-2 px", 1, 2), ("3+ px", 3, None))


def border_distance(height: int, width: int) -> np.ndarray:
    """int [height, width]: each pixel's distance in pixels to the nearest edge of the box."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.minimum(np.minimum(rows, height - 1 - rows), np.minimum(cols, width - 1 - cols))


def box_recall(pred: np.ndarray, truth: np.ndarray, box, label: int) -> Dict[str, object]:
    """One box: per band ``(object pixels, of them labelled background)`` and the share of the object kept."""
    x0, y0, x1, y1 = box_pixel_range(box)
    obj = truth[y0:y1, x0:x1] == label
    labels = pred[y0:y1, x0:x1]
    distance = border_distance(*obj.shape)
    bands = {}
    for name, low, high in BANDS:
        band = obj & (distance >= low) & (distance <= (high if high is not None else distance.max()))
        bands[name] = (int(band.sum()), int((band & (labels == 0)).sum()))
    kept = float((obj & (labels == label)).sum()) / max(int(obj.sum()), 1)
    return {"bands": bands, "kept": kept}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pred", required=True, type=Path)
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--keep", type=float, default=0.75, help="count the boxes keeping less than this share")
    args = parser.parse_args(argv)
    dataset = open_split(args.root, args.split, require_masks=True)
    names = list(dataset.class_names)
    totals = {k: {name: [0, 0] for name, _, _ in BANDS} for k in range(1, len(names))}
    boxes = {k: [0, 0] for k in range(1, len(names))}
    for image_id in dataset.ids:
        sample = dataset.load(image_id)
        pred = read_label_png(args.pred / f"{image_id}.png")
        for box, label in zip(np.asarray(sample["boxes"]), np.asarray(sample["box_labels"]).astype(int)):
            scored = box_recall(pred, sample["mask"], box, label)
            for name, (count, lost) in scored["bands"].items():
                totals[label][name][0] += count
                totals[label][name][1] += lost
            boxes[label][0] += 1
            boxes[label][1] += int(scored["kept"] < args.keep)
    bands = [name for name, _, _ in BANDS]
    print("| class | " + " | ".join(f"lost to background, {b}" for b in bands) + f" | boxes keeping < {args.keep:g} |")
    print("|---|" + "---|" * (len(bands) + 1))
    for label, per_band in totals.items():
        if boxes[label][0] == 0:
            continue
        cells = " | ".join(f"{100 * lost / max(count, 1):.1f} %" for count, lost in per_band.values())
        print(f"| {names[label]} | {cells} | {boxes[label][1]} of {boxes[label][0]} |")


if __name__ == "__main__":
    main()
