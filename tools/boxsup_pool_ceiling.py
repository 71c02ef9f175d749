"""How much a BoxSup round could gain: the per-box ceiling of its proposal pool, and how often the network chose right.

    python tools/boxsup_pool_ceiling.py --root DATA --rounds RUN/box/boxsup/<hash>/rounds [--proposal crf]

For every box: the better (against the ground truth, inside the box) of the round-0 mask and a proposal's mask
is taken; the mIoU of those choices is the ceiling a round choosing between the two could reach. It also counts
the boxes where round 1 differs from round 0 and whether that made the box better or worse.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lightning_wsss.datasets.voc import VOCSegmentation
from lightning_wsss.io import read_label_png
from lightning_wsss.metrics import score_label_maps


def box_slices(box):
    x0, y0, x1, y1 = box
    return slice(int(y0), int(np.ceil(y1))), slice(int(x0), int(np.ceil(x1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--rounds", required=True, help="the BoxSup stage's rounds/ folder")
    parser.add_argument("--proposal", default="crf", help="proposal folder under rounds/proposals/")
    args = parser.parse_args()
    reader = VOCSegmentation(args.root, args.split)
    rounds = Path(args.rounds)
    pairs = {"round_0": [], "proposal": [], "round_1": [], "ceiling": []}
    better = worse = 0
    for image_id in reader.ids:
        sample = reader.load(image_id)
        gt = sample["mask"]
        first = read_label_png(rounds / "round_0" / f"{image_id}.png")
        second = read_label_png(rounds / "round_1" / f"{image_id}.png")
        proposal = read_label_png(rounds / "proposals" / args.proposal / f"{image_id}.png")
        ceiling = first.copy()
        for box, label in zip(sample["boxes"], sample["box_labels"]):
            region = box_slices(box)
            target, valid = gt[region] == label, gt[region] != 255
            accuracy = lambda mask: float(((mask[region] == label) == target)[valid].mean()) if valid.any() else 0.0
            if accuracy(proposal) > accuracy(first):
                ceiling[region] = np.where(proposal[region] == label, label, np.where(ceiling[region] == label, 0, ceiling[region]))
            change = accuracy(second) - accuracy(first)
            better += change > 1e-6
            worse += change < -1e-6
        for key, mask in (("round_0", first), ("proposal", proposal), ("round_1", second), ("ceiling", ceiling)):
            pairs[key].append((mask, gt))
    for key, items in pairs.items():
        print(f"{key:>9}: mIoU {100 * score_label_maps(iter(items), reader.num_classes, reader.class_names)['miou']:.2f}")
    print(f"boxes where round 1 differs from round 0: {better + worse}; better {better}, worse {worse}")


if __name__ == "__main__":
    main()
