"""``wsss make-synthetic``: data set commands."""

from __future__ import annotations

import argparse
from typing import List

from .registry import command


@command("make-synthetic", "write the synthetic WSSS data set (VOC layout: images, masks, boxes, splits)")
def make_synthetic(argv: List[str]) -> int:
    """``wsss make-synthetic --out DIR [--num-train N --num-val N --size PX --seed S --workers W]``."""
    parser = argparse.ArgumentParser(prog="wsss make-synthetic", description="Write the synthetic WSSS data set (VOC layout).")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-train", type=int, default=800)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0 = in this process)")
    args = parser.parse_args(argv)
    from ..datasets.synthetic import make_synthetic as write_synthetic

    root = write_synthetic(args.out, num_train=args.num_train, num_val=args.num_val, size=args.size, seed=args.seed,
                           workers=args.workers)
    print(f"synthetic data set ready at {root}")
    return 0
