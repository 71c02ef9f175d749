"""``wsss affinity-labels``: label maps derived from saved CAMs."""

from __future__ import annotations

import argparse
from typing import List

from .registry import command


@command("affinity-labels", "write confident fg / bg / ignore label PNGs from saved CAMs, for AffinityNet")
def affinity_labels(argv: List[str]) -> int:
    """``wsss affinity-labels --cams DIR --root ROOT --split SPLIT --out DIR``: confident fg/bg/ignore maps for AffinityNet."""
    parser = argparse.ArgumentParser(prog="wsss affinity-labels",
                                     description="Write confident affinity label PNGs (class / 0 / 255) from saved CAMs.")
    parser.add_argument("--cams", required=True, help="folder of <id>.npz CAM files")
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", choices=["psa", "irn"], default="psa",
                        help="psa: two CRFs with background powers 4 / 32; irn: thresholds 0.30 / 0.05 refined by CRF")
    args = parser.parse_args(argv)
    from pathlib import Path

    from ..datasets.voc import VOCSegmentation
    from ..refine.affinity_targets import write_affinity_labels

    out = write_affinity_labels(VOCSegmentation(args.root, args.split), Path(args.cams), Path(args.out), mode=args.mode)
    print(f"affinity labels written to {out}")
    return 0
