"""The share of the pixels each class gets in a folder of label maps, next to its share in the ground truth.

    python tools/label_shares.py --labels RUN/image/random_walk/<hash>/labels --root DATA [--split train]

Pseudo labels that give one class far more pixels than the ground truth does (a CAM that covers the whole
image, a background threshold that never fires) teach the segmenter to predict that class everywhere.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict

import numpy as np

from lightning_wsss.datasets import open_split
from lightning_wsss.datasets.classes import IGNORE_INDEX
from lightning_wsss.metrics import label_pairs


def class_shares(labels: Path, root: Path, split: str = "train") -> Dict[str, Dict[str, float]]:
    """Per-class pixel shares over a split's images.

    Returns:
        ``{"labels": {class name: share}, "ground_truth": {class name: share}, "ignored": {"labels": share,
        "ground_truth": share}}``; shares are fractions of all pixels of the split (ignored pixels, 255, counted
        apart, so a class's share plus the ignored share of its side sum to 1 over all classes).

    Raises:
        DataError: a label map is missing, or its size differs from the ground truth's (see
        :func:`lightning_wsss.metrics.label_pairs`).
    """
    dataset = open_split(root, split, **({} if str(split).endswith(".json") else {"require_masks": True}))
    names = list(dataset.class_names)
    counts = {"labels": np.zeros(len(names) + 1, np.int64), "ground_truth": np.zeros(len(names) + 1, np.int64)}
    total = 0
    for label, truth in label_pairs(labels, dataset, split):
        for key, array in (("labels", label), ("ground_truth", truth)):
            values = np.where(array == IGNORE_INDEX, len(names), array).ravel()
            counts[key] += np.bincount(values, minlength=len(names) + 1)[: len(names) + 1]
        total += label.size
    shares = {key: {name: float(c[k]) / total for k, name in enumerate(names)} for key, c in counts.items()}
    shares["ignored"] = {key: float(c[-1]) / total for key, c in counts.items()}
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", required=True, type=Path, help="folder of label PNGs named by image id")
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--split", default="train")
    args = parser.parse_args()
    shares = class_shares(args.labels, args.root, args.split)
    width = max(len(name) for name in [*shares["labels"], "ignored (255)"])
    print(f"{'class':<{width}}  labels %  ground truth %")
    for name in shares["labels"]:
        print(f"{name:<{width}}  {100 * shares['labels'][name]:8.1f}  {100 * shares['ground_truth'][name]:14.1f}")
    print(f"{'ignored (255)':<{width}}  {100 * shares['ignored']['labels']:8.1f}  "
          f"{100 * shares['ignored']['ground_truth']:14.1f}")


if __name__ == "__main__":
    main()
