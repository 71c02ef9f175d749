"""What AffinityNet is taught: the pairs of its confident labels against the masks' pairs.

    python tools/affinity_pair_labels.py --labels RUN/image/affinity/<hash>/affinity_labels --root DATA \
        [--stride 8] [--radius 5] [--split train] [--json]

The affinity stage's label maps (``<id>.png``, 255 unlabelled) and the masks are subsampled to AffinityNet's grid as
its training step subsamples a crop (the centre pixel of every ``stride`` cell), here on whole images without the
crops and scaling of training. Every pair within ``radius`` that the labels teach (``affinity_pairs``: both cells
labelled) is compared with the masks' relation of the same two cells; pairs with a 255 in the masks are left out:

- ``positive`` / ``negative``: shares of the taught pairs taught as one region / as a boundary;
- ``negative_inside``: of the taught negative pairs, the share whose two cells lie in one ground-truth region (a
  boundary taught where there is none);
- ``negative_inside_object``: of the taught negative pairs, the share whose two cells lie in one object class's
  region (a boundary taught through an object; the rest of ``negative_inside`` lies inside the background);
- ``positive_across``: of the taught positive pairs, the share whose two cells lie in two regions (a boundary taught
  away);
- ``boundaries_taught``: of the masks' pairs across a region boundary, the share taught as negative.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

from lightning_wsss.datasets import open_split
from lightning_wsss.metrics import label_pairs
from lightning_wsss.refine.affinity_labels import affinity_pairs
from lightning_wsss.tasks.affinity import downsample_labels

COUNTS = ("taught", "positive", "negative", "negative_inside", "negative_inside_object", "positive_across", "across",
          "across_taught")


def pair_counts(label: np.ndarray, truth: np.ndarray, stride: int, radius: int) -> Dict[str, int]:
    """Pair counts of one image: ``label`` and ``truth`` uint8 [H, W] (255 unknown) at the grid of ``stride``."""
    size = (-(-label.shape[0] // stride), -(-label.shape[1] // stride))
    maps = [downsample_labels(torch.from_numpy(np.asarray(m, np.int64))[None], stride, size) for m in (label, truth)]
    taught_bg, taught_fg, taught_neg = affinity_pairs(maps[0], radius)
    true_bg, true_fg, true_neg = affinity_pairs(maps[1], radius)
    same, across = true_bg | true_fg, true_neg
    known = same | across
    positive, negative = (taught_bg | taught_fg) & known, taught_neg & known
    return {"taught": int((positive | negative).sum()), "positive": int(positive.sum()),
            "negative": int(negative.sum()), "negative_inside": int((negative & same).sum()),
            "negative_inside_object": int((negative & true_fg).sum()),
            "positive_across": int((positive & across).sum()), "across": int(across.sum()),
            "across_taught": int((across & taught_neg).sum())}


def pair_rates(pairs: Iterable[Tuple[np.ndarray, np.ndarray]], stride: int, radius: int) -> Dict[str, float]:
    """The module docstring's shares over every ``(label, truth)`` pair of maps."""
    totals = dict.fromkeys(COUNTS, 0)
    for label, truth in pairs:
        for key, value in pair_counts(label, truth, stride, radius).items():
            totals[key] += value
    return {"positive": totals["positive"] / max(1, totals["taught"]),
            "negative": totals["negative"] / max(1, totals["taught"]),
            "negative_inside": totals["negative_inside"] / max(1, totals["negative"]),
            "negative_inside_object": totals["negative_inside_object"] / max(1, totals["negative"]),
            "positive_across": totals["positive_across"] / max(1, totals["positive"]),
            "boundaries_taught": totals["across_taught"] / max(1, totals["across"]),
            "taught_pairs": totals["taught"]}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, required=True, help="the affinity stage's affinity_labels folder")
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--stride", type=int, default=8,
                        help="the stride of AffinityNet's grid (its `stride`: 8 with feature_levels [2, 3, 4])")
    parser.add_argument("--radius", type=int, default=5, help="AffinityNet's pair radius")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    dataset = open_split(args.root, args.split, require_masks=True)
    rates = pair_rates(label_pairs(args.labels, dataset, args.split), args.stride, args.radius)
    if args.json:
        print(json.dumps(rates, indent=1))
        return
    print(f"{args.labels} ({len(dataset.ids)} images, stride {args.stride}, radius {args.radius}): "
          f"{rates['taught_pairs']} taught pairs, {100 * rates['positive']:.1f} % positive, "
          f"{100 * rates['negative']:.1f} % negative")
    print(f"negative pairs inside one ground-truth region: {100 * rates['negative_inside']:.1f} % "
          f"(inside an object class's region: {100 * rates['negative_inside_object']:.1f} %)")
    print(f"positive pairs across a region boundary: {100 * rates['positive_across']:.1f} %")
    print(f"ground-truth boundary pairs taught as negative: {100 * rates['boundaries_taught']:.1f} %")


if __name__ == "__main__":
    main()
