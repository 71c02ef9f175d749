"""``wsss make-synthetic``, ``wsss boxes-from-masks``: data set commands."""

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


@command("boxes-from-masks", "write VOC box annotations (one box per connected component) from a split's masks")
def boxes_from_masks(argv: List[str]) -> int:
    """``wsss boxes-from-masks --root ROOT --split SPLIT --out DIR [--min-area N] [--overwrite]``."""
    parser = argparse.ArgumentParser(prog="wsss boxes-from-masks", description="Derive box annotations from the "
                                     "masks of a VOC-layout split: one box per 8-connected component of each class, "
                                     "written as <id>.xml. With --out ROOT/Annotations the data set gains box "
                                     "supervision.")
    parser.add_argument("--root", required=True, help="data set root (VOC layout)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, help="folder for the <id>.xml files (ROOT/Annotations to use them)")
    parser.add_argument("--min-area", type=int, default=1, help="drop components with fewer pixels")
    parser.add_argument("--overwrite", action="store_true", help="replace annotation files that exist")
    args = parser.parse_args(argv)
    from ..boxes.from_mask import write_box_annotations
    from ..datasets.voc import VOCSegmentation

    reader = VOCSegmentation(args.root, args.split, require_masks=True)
    files, boxes = write_box_annotations(reader, args.out, min_area=args.min_area, overwrite=args.overwrite)
    print(f"{boxes} boxes of {files} images written to {args.out}")
    return 0
