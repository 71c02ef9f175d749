"""How much of what a CAM covers is its class: the precision of ``cam > t`` against the ground truth.

    python tools/cam_precision.py --cams RUN/image/cams/<hash>/cams --root DATA [--split train] \\
        [--thresholds 0.1 0.3 0.5 0.7]

For every saved map (one per present class and image, max-normalised) and threshold ``t``, the pixels where the
map exceeds ``t`` are counted, and those whose ground truth is that class. The ratio, pooled over all maps, is
the precision LPCAM's prototype features have when they are selected at ``select_threshold = t``: where it is
low, the "object" features are mostly context and so become prototypes of the context.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from lightning_wsss.cam.files import load_cams
from lightning_wsss.datasets import open_split


def cam_precision(cam_dir: Path, root: str, split: str, thresholds: Sequence[float]) -> Dict[float, Dict[str, float]]:
    """``{t: {"precision": on-class share of the covered pixels, "coverage": covered share of all pixels}}``."""
    dataset = open_split(root, split, require_masks=True)
    covered = np.zeros(len(thresholds), np.int64)
    hits = np.zeros(len(thresholds), np.int64)
    total = 0
    for image_id in dataset.ids:
        data = load_cams(Path(cam_dir) / f"{image_id}.npz")
        mask = dataset.load(image_id)["mask"]
        total += mask.size * max(1, len(data["keys"]))
        for cam, key in zip(data["cams"], data["keys"]):
            for index, threshold in enumerate(thresholds):
                region = cam > threshold
                covered[index] += int(region.sum())
                hits[index] += int((region & (mask == key)).sum())
    return {float(t): {"precision": hits[i] / max(1, covered[i]), "coverage": covered[i] / max(1, total)}
            for i, t in enumerate(thresholds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cams", required=True, type=Path)
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7])
    args = parser.parse_args()
    print("threshold  precision %  coverage %")
    for threshold, row in cam_precision(args.cams, args.root, args.split, args.thresholds).items():
        print(f"{threshold:9.2f}  {100 * row['precision']:11.1f}  {100 * row['coverage']:10.1f}")


if __name__ == "__main__":
    main()
