"""Per-class positive weights ``(N - n_c) / n_c`` of a split's image labels, for ``CAMClassifier(positive_weight=...)``.

    python tools/positive_weights.py --root ../shared/data/camvid-seq05vd --split train

``n_c``: the images whose label set holds class c, ``N``: the split's images. Prints each class's image share
and the YAML list.
"""

from __future__ import annotations

import argparse
from typing import List, Optional

import numpy as np

from lightning_wsss.datasets import open_split


def positive_weights(counts: np.ndarray, num_images: int) -> List[float]:
    """``(N - n_c) / n_c`` per class (a class in no image gets 1)."""
    counts = np.asarray(counts, dtype=np.float64)
    return [round(float((num_images - n) / n), 3) if n > 0 else 1.0 for n in counts]


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    args = parser.parse_args(argv)
    reader = open_split(args.root, args.split)
    labels = np.stack([np.asarray(reader.load(i)["labels"], dtype=np.float64) for i in reader.ids])
    counts = (labels > 0.5).sum(0)
    names = list(reader.class_names)[1:]
    for name, count in zip(names, counts):
        print(f"{name:<12} in {int(count):4d} of {len(reader.ids)} images ({100 * count / len(reader.ids):.1f} %)")
    print(f"positive_weight: {positive_weights(counts, len(reader.ids))}")


if __name__ == "__main__":
    main()
