"""Sub-commands of ``wsss`` beyond the data basics: CAM evaluation, pipelines, the demo."""

from __future__ import annotations

import argparse
import json
from typing import List

import numpy as np

from .main import register


@register("evaluate-cams")
def evaluate_cams(argv: List[str]) -> int:
    """``wsss evaluate-cams --cams DIR --root ROOT --split SPLIT``: best background threshold and its mIoU."""
    parser = argparse.ArgumentParser(prog="wsss evaluate-cams",
                                     description="Score CAM pseudo labels over a sweep of background thresholds.")
    parser.add_argument("--cams", required=True, help="folder of <id>.npz CAM files (the 'cams' folder of a CAM prediction)")
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--thresholds", default="0.05:0.60:0.05", help="start:stop:step (inclusive) or a comma list")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if ":" in args.thresholds:
        start, stop, step = (float(v) for v in args.thresholds.split(":"))
        thresholds = [round(float(t), 4) for t in np.arange(start, stop + step / 2, step)]
    else:
        thresholds = [float(t) for t in args.thresholds.split(",")]
    from ..cam.evaluation import evaluate_cam_thresholds

    result = evaluate_cam_thresholds(args.cams, args.root, args.split, thresholds)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"CAM pseudo labels in {args.cams} vs {args.root} [{args.split}], {result['num_images']} images")
    print("bg threshold  mIoU (%)")
    for t, m in zip(result["thresholds"], result["miou"]):
        marker = "  <- best" if t == result["best_threshold"] else ""
        print(f"{t:12.2f}  {100 * m:7.2f}{marker}")
    print(f"best: threshold {result['best_threshold']:.2f}, mIoU {100 * result['best_miou']:.2f}")
    return 0
