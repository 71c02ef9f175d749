"""Which candidate each box's mask came from in a BoxSup round, and what that choice did to the box's IoU.

    python tools/boxsup_picks.py --root DATA --stage RUN/box/boxsup/<hash> --round 1

For every box of every training image, the round's segment inside the box is matched against the stored
candidates (``round_0``, the initializer's mask, and each ``rounds/proposals/<name>`` mask); a segment that
matches none of them came from a candidate that is not stored: the network's own (``grabcut_network``, ``crf``,
``network``) or the previous round's. Per class and source it prints the number of boxes and the mean change of
the box's IoU with the ground truth against round 0. A source whose picks lose IoU on average is one the
selection should not trust.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from lightning_wsss.boxes import clip_to_box, mask_iou
from lightning_wsss.datasets.voc import VOCSegmentation
from lightning_wsss.io import read_label_png

UNSTORED = "not stored"


def box_sources(stage: Path) -> List[str]:
    """The stored candidate folders of a BoxSup stage: ``round_0`` and every proposal."""
    proposals = stage / "rounds" / "proposals"
    names = sorted(p.name for p in proposals.iterdir() if p.is_dir()) if proposals.is_dir() else []
    return ["round_0"] + [f"proposals/{name}" for name in names]


def tally(root: str, split: str, stage: Path, round_name: str) -> Dict[Tuple[int, str], List[float]]:
    """``(class id, source) -> [IoU change of each box against round 0]``."""
    reader = VOCSegmentation(root, split)
    sources = box_sources(stage)
    changes: Dict[Tuple[int, str], List[float]] = defaultdict(list)
    for image_id in reader.ids:
        sample = reader.load(image_id)
        picked = read_label_png(stage / "rounds" / round_name / f"{image_id}.png")
        stored = {name: read_label_png(stage / "rounds" / name / f"{image_id}.png") for name in sources}
        for box, class_id in zip(np.asarray(sample["boxes"]).reshape(-1, 4), np.asarray(sample["box_labels"]).reshape(-1)):
            def segment(mask: np.ndarray) -> np.ndarray:
                return clip_to_box(mask == class_id, box).astype(bool)

            chosen = segment(picked)
            source = next((name for name in sources if np.array_equal(segment(stored[name]), chosen)), UNSTORED)
            truth = segment(sample["mask"])
            changes[(int(class_id), source)].append(mask_iou(chosen, truth) - mask_iou(segment(stored["round_0"]), truth))
    return changes


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--stage", required=True, type=Path, help="a BoxSup stage folder (with rounds/)")
    parser.add_argument("--round", type=int, default=1)
    args = parser.parse_args(argv)
    changes = tally(args.root, args.split, args.stage, f"round_{args.round}")
    names = VOCSegmentation(args.root, args.split).class_names
    print(f"round_{args.round}: source of each box's segment, boxes, mean IoU change against round 0 (points)")
    for (class_id, source), values in sorted(changes.items()):
        print(f"{names[class_id]:<12} {source:<18} {len(values):>5}  {100 * float(np.mean(values)):+7.2f}")
    for source in sorted({s for _, s in changes}):
        values = [v for (_, s), vs in changes.items() if s == source for v in vs]
        print(f"{'all':<12} {source:<18} {len(values):>5}  {100 * float(np.mean(values)):+7.2f}")


if __name__ == "__main__":
    main()
